"""`connector verify FILE`: one sync of a local file, driven in this process, verdicts written out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from connector.config import Settings
from connector.db import upgrade_database
from connector.errors import InputError
from connector.models import Sync, SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.parameters import parse_cli_parameter
from connector.pipeline.syncs import create_sync, ensure_connection
from connector.progress import SyncProgress
from connector.results import iter_verdicts, write_csv, write_json
from connector.runtime import Runtime, build_runtime

EXIT_FAILED = 1
EXIT_AWAITING_APPROVAL = 3


def run_verify(
    settings: Settings,
    *,
    file: Path,
    type_: str,
    country: str,
    params: tuple[str, ...],
    output: Path | None,
    fmt: str | None,
    max_net_cost: float | None,
    reverify_after_days: int,
) -> int:
    fmt = fmt or (output.suffix.lstrip(".").lower() if output else "csv")
    if fmt not in ("csv", "json"):
        raise InputError(
            "invalid_format_option", f"cannot tell the output format from {output}; use --format"
        )
    runtime = build_runtime(settings, allow_fallback_broker=True)
    upgrade_database(runtime.engine)
    sync = start_file_sync(
        runtime,
        file,
        type_=type_,
        country=country,
        parameters=dict(parse_cli_parameter(p) for p in params),
        max_net_cost=max_net_cost,
        reverify_after_days=reverify_after_days,
    )
    with SyncProgress() as progress:
        sync = drive_until_settled(runtime, sync.id, on_tick=progress.update)
    if output is not None:
        count = export_verdicts(runtime, sync.id, output, fmt)
        click.echo(f"wrote {count} verdicts to {output}", err=True)
    print_outcome(sync)
    if sync.status == SyncStatus.AWAITING_APPROVAL:
        return EXIT_AWAITING_APPROVAL
    return 0 if sync.status == SyncStatus.COMPLETED else EXIT_FAILED


def start_file_sync(runtime: Runtime, file: Path, *, type_: str, country: str, **options: object) -> Sync:
    with runtime.session() as session:
        connection_id = ensure_connection(session, "file", "local", "local files").id
    return create_sync(
        runtime,
        connection_id=connection_id,
        crm="file",
        type_=type_,
        target_country=country,
        source={"kind": "file", "path": str(file.resolve())},
        trigger="cli",
        name=file.name,
        **options,  # type: ignore[arg-type]
    )


def export_verdicts(runtime: Runtime, sync_id: int, output: Path, fmt: str) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    with runtime.session() as session, output.open("w", encoding="utf-8", newline="") as handle:
        rows = iter_verdicts(session, sync_id)
        return write_csv(rows, handle) if fmt == "csv" else write_json(rows, handle)


def print_outcome(sync: Sync) -> None:
    counts = sync.counts or {}
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("verdicts") or {}).items()))
    click.echo(f"sync {sync.id}: {sync.status}", err=True)
    click.echo(
        f"  contacts {counts.get('contacts', 0)}, values {counts.get('values', 0)} "
        f"(sent {counts.get('values_sent', 0)}, from cache {counts.get('values_from_cache', 0)}), "
        f"skipped {counts.get('skipped', 0)}",
        err=True,
    )
    if verdicts:
        click.echo(f"  verdicts: {verdicts}", err=True)
    if sync.cost:
        click.echo(
            f"  credits: net {sync.cost.get('net', 0):g}, charged {sync.cost.get('charged', 0):g}", err=True
        )
    if sync.error_code:
        click.echo(f"  error: {sync.error_code}: {sync.error_message}", err=True)
    sys.stderr.flush()
