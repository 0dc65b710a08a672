"""The `connector` command line."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from connector.config import Settings
from connector.crm.registry import CRMS, check_settings, record_objects, segment_kinds
from connector.errors import ConnectorError
from connector.extras import ExtraMissing, require_sandbox_extra, sandbox_extra_installed
from connector.logs import configure_logging
from connector.sandbox import SANDBOXES, Sandbox, sandboxes_help

if TYPE_CHECKING:
    from connector.runtime import Runtime


class ConnectorGroup(click.Group):
    """Turns a ConnectorError into its message and exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ExtraMissing as error:  # its message ends in the pip command: no code after it
            click.echo(f"error: {error.message}", err=True)
            sys.exit(2)
        except ConnectorError as error:
            click.echo(f"error: {error.message} ({error.code})", err=True)
            sys.exit(2)


@click.group(cls=ConnectorGroup)
def main() -> None:
    """ApexVerify CRM Connector."""


class SandboxGroup(click.Group):
    """The sandboxes of `connector.sandbox.SANDBOXES`, each loaded only when it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SANDBOXES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = SANDBOXES.get(cmd_name)
        if found is None:
            return None
        return found.command() if sandbox_extra_installed() else _needs_sandbox_extra(found)


def _needs_sandbox_extra(found: Sandbox) -> click.Command:
    """What stands in for a sandbox's command where the sandbox extra is not installed."""

    def refuse(args: tuple[str, ...]) -> None:
        raise ExtraMissing(f"connector sandbox {found.name}")

    return click.Command(
        found.name,
        help=found.help,
        callback=refuse,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True},
    )


@main.group(cls=SandboxGroup, help=sandboxes_help())
def sandbox() -> None:
    pass


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


_VERIFY_EPILOG = """\b
Environment:
  APEXVERIFY_API_KEY   the account's key (required; a sandbox takes any)
  APEXVERIFY_BASE_URL  default https://api.apexverify.com; for a sandbox
                       started with `connector sandbox apexverify --port
                       8100`: http://127.0.0.1:8100
  DATABASE_URL         the database (default sqlite:///var/connector.db)
  REDIS_URL            a Redis to share; unset: an in-process broker
  LOG_LEVEL            the log level with --verbose (default INFO)

\b
Exit codes:
  0    completed, or (--plan) stopped before the launch with its plan
  1    failed, cancelled, or gave up waiting (--max-wait): see --resume
  2    bad input: arguments, no APEXVERIFY_API_KEY, FILE empty or not text
  3    awaiting approval (--max-net-cost): see --approve
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): see --resume
"""


@main.command(epilog=_VERIFY_EPILOG)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--type", "type_", type=click.Choice(["email", "phone"]), help="What FILE holds.")
@click.option("--country", help="ISO2 target country, e.g. US.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="An ApexVerify parameter.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write verdicts here.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), help="Default: from --output's suffix.")
@click.option("--max-net-cost", type=float, help="Stop for approval above this many credits.")
@click.option("--reverify-after-days", type=int, default=30, show_default=True)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after this long of pauses in a row (ApexVerify unreachable, rate limited).",
)
@click.option(
    "--plan",
    is_flag=True,
    help="Upload and parse, then stop before the launch and print the plan (values, estimated credits).",
)
@click.option("--resume", type=int, metavar="SYNC_ID", help="Continue a sync a stopped run left behind.")
@click.option(
    "--approve", is_flag=True, help="With --resume: approve a sync awaiting approval (a plan), then run it."
)
@click.option("--verbose", "-v", is_flag=True, help="Show logs below WARNING too.")
def verify(
    file: Path | None,
    type_: str | None,
    country: str | None,
    params: tuple[str, ...],
    output: Path | None,
    fmt: str | None,
    max_net_cost: float | None,
    reverify_after_days: int,
    max_wait: float,
    plan: bool,
    resume: int | None,
    approve: bool,
    verbose: bool,
) -> None:
    """Verify the emails or phones in FILE (one per line, or a CSV with an email/phone column).

    FILE, --type and --country are needed unless --resume names a sync to continue.
    """
    from connector.verify_command import run_verify

    use_redis = bool(os.environ.get("REDIS_URL"))
    if not use_redis:  # the in-process broker is fakeredis
        require_sandbox_extra("connector verify without REDIS_URL", alternative="set REDIS_URL")
    if resume is None and file is not None and not file.is_file():
        raise click.BadParameter(f"{file} does not exist or is not a file", param_hint="FILE")
    code = run_verify(
        _settings(for_people=True, verbose=verbose),
        file=file,
        type_=type_,
        country=country,
        params=params,
        output=output,
        fmt=fmt,
        max_net_cost=max_net_cost,
        reverify_after_days=reverify_after_days,
        max_wait=max_wait,
        resume=resume,
        use_redis=use_redis,
        plan=plan,
        approve=approve,
    )
    sys.exit(code)


_DEMO_EPILOG = """\b
State: CONNECTOR_DATA_DIR/demo (default ./var/demo): the demo's own SQLite
database and generated file; `rm -rf var/demo` resets it. DATABASE_URL and
REDIS_URL are used only with --use-env-services.

\b
Exit codes:
  0    all three syncs completed
  1    a sync did not complete
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""


@main.command(epilog=_DEMO_EPILOG)
@click.option("--size", default=3000, show_default=True, help="How many values to generate.")
@click.option(
    "--use-env-services",
    is_flag=True,
    help="Use DATABASE_URL and REDIS_URL instead of the demo's own SQLite and in-process broker.",
)
@click.option("--verbose", "-v", is_flag=True, help="Show logs below WARNING too.")
def demo(size: int, use_env_services: bool, verbose: bool) -> None:
    """Verify a generated list against a local ApexVerify sandbox and print the verdicts.

    Nothing leaves this machine: ApexVerify and the CRMs are local sandboxes.
    """
    require_sandbox_extra("connector demo")
    from connector.demo import run_demo

    settings = _settings(for_people=True, verbose=verbose)
    sys.exit(run_demo(settings, size=size, use_env_services=use_env_services))


def _ref_help() -> str:
    return "; ".join(f"{name}: {kind.ref_help}" for name, (_, kind) in segment_kinds().items()) + "."


@main.group()
def segments() -> None:
    """CRM segments to verify, now or on a schedule."""


@segments.command("add")
@click.option("--crm", type=click.Choice(list(CRMS)), required=True)
@click.option("--kind", type=click.Choice(list(segment_kinds())), required=True)
@click.option("--ref", required=True, help=_ref_help())
@click.option(
    "--object", "object_", type=click.Choice(record_objects()), help="Record type, where the CRM has several."
)
@click.option("--type", "type_", type=click.Choice(["email", "phone"]), default="email", show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="An ApexVerify parameter.")
@click.option("--schedule", help="Cron expression (UTC), e.g. '0 3 * * *'.")
@click.option("--reverify-after-days", type=int, default=30, show_default=True)
@click.option("--max-net-cost", type=float)
@click.option("--name")
@click.option("--target-country", help="ISO2 region for phones (default: the connection's).")
@click.option(
    "--connection-id", type=int, help="The connection it syncs through (needed when the CRM has several)."
)
def segments_add(**options: object) -> None:
    """Create a segment."""
    from connector.pipeline.parameters import parse_cli_parameter
    from connector.pipeline.segments import create_segment, segment_json

    data = {k: v for k, v in options.items() if v is not None and k not in ("params", "object_", "type_")}
    data.update(object=options["object_"], type=options["type_"])
    params = options["params"]
    assert isinstance(params, tuple)  # click's multiple=True
    data["parameters"] = dict(parse_cli_parameter(str(p)) for p in params)
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


@main.group()
def keys() -> None:
    """CONNECTOR_SECRET_KEY: the Fernet keys that encrypt stored OAuth tokens."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new key. To rotate: put it first in CONNECTOR_SECRET_KEY (comma-separated, the old key
    after it), run `connector keys rotate`, then drop the old key."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


@keys.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored token under the first key of CONNECTOR_SECRET_KEY."""
    from connector.pipeline.connections import rotate_keys
    from connector.secretbox import require_secret_box

    require_secret_box(_settings())  # unset or malformed: one line and exit 2, before any connection
    done = rotate_keys(_runtime())
    click.echo(f"{done} connections re-encrypted")


def _runtime() -> Runtime:
    from connector.db import upgrade_database
    from connector.runtime import build_runtime

    runtime = build_runtime(_settings())
    upgrade_database(runtime.engine)
    return runtime


def _settings(*, for_people: bool = False, verbose: bool = False) -> Settings:
    """Settings from the environment, logging configured: JSON lines for processes, short
    lines at WARNING and above (LOG_LEVEL with --verbose) for a command a person watches."""
    settings = Settings.from_env()
    check_settings(settings)  # a malformed CRM variable stops the command here, not mid-sync
    if for_people and not verbose:
        settings = dataclasses.replace(settings, log_level="WARNING")  # also for apps the command starts
    configure_logging(settings.log_level, settings.secrets(), human=for_people)
    return settings


if __name__ == "__main__":
    main()
