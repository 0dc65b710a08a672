"""The `connector` command line."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import click

from connector.config import Settings
from connector.errors import ConnectorError
from connector.logs import configure_logging

SANDBOXES = ("apexverify", "hubspot", "salesforce")


class ConnectorGroup(click.Group):
    """Turns a ConnectorError into its message and exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConnectorError as error:
            click.echo(f"error: {error.message} ({error.code})", err=True)
            sys.exit(2)


@click.group(cls=ConnectorGroup)
def main() -> None:
    """ApexVerify CRM Connector."""


class SandboxGroup(click.Group):
    """Loads `connector.sandbox.<name>.command` only when that sandbox is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SANDBOXES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SANDBOXES:
            return None
        module = importlib.import_module(f"connector.sandbox.{cmd_name}")
        return module.command


@main.group(cls=SandboxGroup)
def sandbox() -> None:
    """Run a local fake of ApexVerify, HubSpot or Salesforce."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations up to the latest (the `release` process)."""
    from connector.db import upgrade_database
    from connector.runtime import make_engine

    settings = _settings()
    upgrade_database(make_engine(settings.database_url))
    click.echo("database is at the latest migration")


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty (for tests and one-off runs).")
def worker(burst: bool) -> None:
    """Run an RQ worker with the scheduler enabled (the `worker` process)."""
    from connector.runtime import build_runtime, set_runtime
    from connector.worker import run_worker

    runtime = build_runtime(_settings())
    set_runtime(runtime)
    run_worker(runtime, burst=burst)


@main.command("reconcile")
def reconcile_command() -> None:
    """Re-enqueue syncs whose step job vanished (the cron process does this every minute)."""
    from connector.pipeline.reconcile import reconcile
    from connector.runtime import build_runtime

    revived = reconcile(build_runtime(_settings()))
    click.echo(f"re-enqueued {len(revived)} sync(s)" + (f": {revived}" if revived else ""))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "type_", type=click.Choice(["email", "phone"]), required=True)
@click.option("--country", required=True, help="ISO2 target country, e.g. US.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="An ApexVerify parameter.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write verdicts here.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), help="Default: from --output's suffix.")
@click.option("--max-net-cost", type=float, help="Stop for approval above this many credits.")
@click.option("--reverify-after-days", type=int, default=30, show_default=True)
def verify(
    file: Path,
    type_: str,
    country: str,
    params: tuple[str, ...],
    output: Path | None,
    fmt: str | None,
    max_net_cost: float | None,
    reverify_after_days: int,
) -> None:
    """Verify the emails or phones in FILE (one per line, or a CSV with an email/phone column)."""
    from connector.verify_command import run_verify

    if not file.is_file():
        raise click.BadParameter(f"{file} does not exist or is not a file", param_hint="FILE")
    code = run_verify(
        _settings(),
        file=file,
        type_=type_,
        country=country,
        params=params,
        output=output,
        fmt=fmt,
        max_net_cost=max_net_cost,
        reverify_after_days=reverify_after_days,
    )
    sys.exit(code)


@main.command()
@click.option("--size", default=3000, show_default=True, help="How many values to generate.")
def demo(size: int) -> None:
    """Verify a generated list against a local ApexVerify sandbox and print the verdicts."""
    from connector.demo import run_demo

    sys.exit(run_demo(_settings(), size=size))


@main.group()
def segments() -> None:
    """CRM segments to verify, now or on a schedule."""


@segments.command("add")
@click.option("--crm", type=click.Choice(["hubspot", "salesforce"]), required=True)
@click.option(
    "--kind", type=click.Choice(["hubspot_list", "salesforce_campaign", "salesforce_soql"]), required=True
)
@click.option("--ref", required=True, help="List id, campaign id, or SOQL WHERE clause.")
@click.option("--object", "object_", type=click.Choice(["Contact", "Lead"]), help="Salesforce object.")
@click.option("--type", "type_", type=click.Choice(["email", "phone"]), default="email", show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="An ApexVerify parameter.")
@click.option("--schedule", help="Cron expression (UTC), e.g. '0 3 * * *'.")
@click.option("--reverify-after-days", type=int, default=30, show_default=True)
@click.option("--max-net-cost", type=float)
@click.option("--name")
@click.option("--target-country", help="ISO2 region for phones (default: the connection's).")
def segments_add(**options: object) -> None:
    """Create a segment."""
    from connector.pipeline.parameters import parse_cli_parameter
    from connector.pipeline.segments import create_segment, segment_json

    data = {k: v for k, v in options.items() if v is not None and k not in ("params", "object_", "type_")}
    data.update(object=options["object_"], type=options["type_"])
    data["parameters"] = dict(parse_cli_parameter(str(p)) for p in options["params"])  # type: ignore[union-attr]
    click.echo(json.dumps(segment_json(create_segment(_runtime(), data)), indent=2))


@segments.command("list")
def segments_list() -> None:
    """List segments."""
    from rich.console import Console
    from rich.table import Table

    from connector.pipeline.segments import list_segments

    table = Table("id", "name", "crm", "kind", "ref", "type", "schedule", "reverify days", "max net cost")
    with _runtime().session() as session:
        for s in list_segments(session):
            table.add_row(
                str(s.id),
                s.name or "",
                s.crm,
                s.kind,
                s.ref[:40],
                s.type,
                s.schedule or "",
                str(s.reverify_after_days),
                "" if s.max_net_cost is None else f"{s.max_net_cost:g}",
            )
    Console().print(table)


@segments.command("sync")
@click.argument("segment_id", type=int)
def segments_sync(segment_id: int) -> None:
    """Start a sync of a segment now (workers run it)."""
    from connector.pipeline.segments import sync_segment

    sync = sync_segment(_runtime(), segment_id, "cli")
    click.echo(f"sync {sync.id}: {sync.status}")


def _runtime():  # type: ignore[no-untyped-def]
    from connector.db import upgrade_database
    from connector.runtime import build_runtime

    runtime = build_runtime(_settings())
    upgrade_database(runtime.engine)
    return runtime


def _settings() -> Settings:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.secrets())
    return settings


if __name__ == "__main__":
    main()
