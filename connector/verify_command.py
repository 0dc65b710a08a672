"""`connector verify FILE`: one sync of a local file, driven in this process, verdicts written out.

Input is judged before anything is sent, so a mistake costs neither a request nor a credit: no
API key, a file that is not UTF-8 text (a binary, a Latin-1 export) or holds no value exit 2; a
file whose values mostly do not look like emails or phones gets a warning with the count.

The run drives only its own sync (connector.pipeline.drive) and can always be left: Ctrl-C,
SIGTERM or `--max-wait` of pauses end it with one line naming the sync, where it stopped and the
`--resume` command that continues it (no second upload or launch: the batches are kept).

`--plan` stops before the launch, whatever the cost, and prints what the launch would do (values
sent, estimated credits); `--resume SYNC_ID --approve` then launches the batches already uploaded,
as it does for a sync stopped over `--max-net-cost`. Until then not a credit is spent.
"""

from __future__ import annotations

import codecs
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from connector.config import Settings
from connector.crm.file import FileSegmentSource
from connector.db import upgrade_database
from connector.errors import ConfigError, InputError, NotFoundError
from connector.models import Sync, SyncStatus, utcnow
from connector.pipeline.drive import DriveStopped, drive_until_settled, private_queue, stop_on_signals
from connector.pipeline.jobs import schedule_step
from connector.pipeline.normalize import Normalized, normalize
from connector.pipeline.parameters import parse_cli_parameter, validate_country, validate_parameters
from connector.pipeline.syncs import SyncStateError, approve_sync, create_sync, ensure_connection, retry_sync
from connector.progress import SyncProgress
from connector.results import iter_verdicts, write_csv, write_json
from connector.runtime import Runtime, build_runtime
from connector.states import RUNNABLE_STATES

EXIT_FAILED = 1
EXIT_AWAITING_APPROVAL = 3
# Values judged for the "mostly malformed" warning: enough to tell, cheap even for phones (~1 s).
_CHECKED_VALUES = 100_000
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def run_verify(
    settings: Settings,
    *,
    file: Path | None,
    type_: str | None,
    country: str | None,
    params: tuple[str, ...],
    output: Path | None,
    fmt: str | None,
    max_net_cost: float | None,
    reverify_after_days: int,
    max_wait: float | None = None,
    resume: int | None = None,
    use_redis: bool = True,
    plan: bool = False,
    approve: bool = False,
) -> int:
    """Verify FILE (or continue sync `resume`); returns the exit code. `use_redis`: REDIS_URL was given.

    `plan`: stop before the launch with the sync's plan (exit 0); `approve`: approve the resumed
    sync if it awaits approval, then drive it to its end.
    """
    hint = _resume_hint(output, fmt)
    fmt = _output_format(output, fmt)
    _check_plan_options(resume, plan=plan, approve=approve)
    require_api_key(settings)
    request = None
    if resume is None:
        request = checked_request(
            file,
            type_,
            country,
            params,
            max_net_cost=max_net_cost,
            reverify_after_days=reverify_after_days,
            plan_requested=plan,
        )
    runtime = build_runtime(settings, allow_fallback_broker=True, in_process_broker=not use_redis)
    upgrade_database(runtime.engine)
    with stop_on_signals(), private_queue(runtime) as runtime:
        try:
            if request is not None:
                sync_id = start_file_sync(runtime, **request).id
            else:
                assert resume is not None  # no request is built when resuming
                sync_id = resume_file_sync(runtime, resume, approve=approve)
            with SyncProgress() as progress:
                sync = drive_until_settled(runtime, sync_id, on_tick=progress.update, max_wait=max_wait)
        except DriveStopped as stop:
            click.echo(stopped_line(stop, hint, max_wait), err=True)
            return stop.exit_code
        return _finish(runtime, sync, output, fmt, hint)


def _check_plan_options(resume: int | None, *, plan: bool, approve: bool) -> None:
    if approve and resume is None:
        raise InputError(
            "approve_needs_resume",
            "--approve launches a sync awaiting approval: name it with --resume SYNC_ID",
        )
    if plan and resume is not None:
        raise InputError(
            "plan_needs_file",
            "--plan starts a new sync of FILE; to launch a planned one: --resume SYNC_ID --approve",
        )


def checked_request(
    file: Path | None, type_: str | None, country: str | None, params: tuple[str, ...], **options: object
) -> dict[str, Any]:
    """The arguments of start_file_sync, every one checked (InputError otherwise) before anything is sent."""
    if file is None or type_ is None or country is None:
        raise InputError("missing_argument", "FILE, --type and --country are required (or --resume SYNC_ID)")
    country = validate_country(country)
    parameters = validate_parameters(dict(parse_cli_parameter(p) for p in params))
    check_input_file(file, type_, country)
    return {"file": file, "type_": type_, "country": country, "parameters": parameters, **options}


def _finish(runtime: Runtime, sync: Sync, output: Path | None, fmt: str, hint: str) -> int:
    if sync.status == SyncStatus.AWAITING_APPROVAL:  # no verdicts yet: nothing to write
        print_outcome(sync)
        print_plan(sync)
        click.echo(f"approve with: connector verify --resume {sync.id} --approve{hint}", err=True)
        # A plan stopping here did what was asked; a budget stopping the run did not.
        return 0 if sync.plan_requested else EXIT_AWAITING_APPROVAL
    if output is not None:
        count = export_verdicts(runtime, sync.id, output, fmt)
        click.echo(f"wrote {count} verdicts to {output}", err=True)
    print_outcome(sync)
    return 0 if sync.status == SyncStatus.COMPLETED else EXIT_FAILED


def _output_format(output: Path | None, fmt: str | None) -> str:
    fmt = fmt or (output.suffix.lstrip(".").lower() if output else "csv")
    if fmt not in ("csv", "json"):
        raise InputError(
            "invalid_format_option", f"cannot tell the output format from {output}; use --format"
        )
    return fmt


def require_api_key(settings: Settings) -> None:
    if not settings.apexverify_api_key:
        raise ConfigError(
            "missing_api_key",
            "APEXVERIFY_API_KEY is not set: export your ApexVerify API key (a sandbox accepts any)",
        )


def check_input_file(file: Path, type_: str, country: str) -> None:
    """Refuse what cannot be a list of values; warn when most values do not look like `type_`."""
    _require_utf8_text(file)
    values, malformed = _count_values(file, type_, country)
    if values == 0:
        raise InputError("nothing_to_verify", f"nothing to verify: {file} holds no {type_} values")
    if malformed * 2 > values:
        scope = f"the first {values:,}" if values >= _CHECKED_VALUES else f"{values:,}"
        click.echo(
            f"warning: {malformed:,} of {scope} values in {file.name} do not look like {type_}s "
            "(they will come back wrong or invalid_format)",
            err=True,
        )


def _require_utf8_text(file: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            if b"\0" in chunk:
                raise InputError("not_a_text_file", f"{file} is not a text file (it holds NUL bytes)")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise InputError(
                    "not_a_text_file", f"{file} is not a text file: not UTF-8 at byte {offset + error.start}"
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InputError(
            "not_a_text_file", f"{file} is not a text file: it ends inside a character"
        ) from None


def _count_values(file: Path, type_: str, country: str) -> tuple[int, int]:
    """Values (blank lines aside) among the first _CHECKED_VALUES, and how many of them look malformed."""
    values = malformed = 0
    for record in FileSegmentSource(file, type_).iter_records():
        normalized = normalize(record.value, type_, country)
        if normalized.problem == "no_value":
            continue
        values += 1
        malformed += not _plausible(normalized, type_)
        if values >= _CHECKED_VALUES:
            break
    return values, malformed


def _plausible(normalized: Normalized, type_: str) -> bool:
    """Shaped like an email, or a phone number that parses (normalized to E.164)."""
    if normalized.problem is not None or normalized.value is None:
        return False
    if type_ == "email":
        return _EMAIL_SHAPE.fullmatch(normalized.value) is not None
    return normalized.value.startswith("+")


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


def resume_file_sync(runtime: Runtime, sync_id: int, *, approve: bool = False) -> int:
    """Set a stopped run's sync moving again from where it is; a failed one is retried from its failed step.

    Its batches are kept, so nothing is uploaded or launched twice. A sync whose step another
    process holds (an unexpired lease) is refused rather than run twice at once. With `approve`, a
    sync awaiting approval (a plan, a cost over budget) is approved: it launches the batches it has;
    one approved before just goes on, any other is refused.
    """
    with runtime.session() as session:
        sync = session.get(Sync, sync_id)
        if sync is None or sync.crm != "file":
            raise NotFoundError("sync_not_found", f"no `connector verify` sync {sync_id} in this database")
        status, lease_until, approved = (
            SyncStatus(sync.status),
            sync.lease_until,
            sync.approved_at is not None,
        )
    if approve and status == SyncStatus.AWAITING_APPROVAL:
        approve_sync(runtime, sync_id)
    elif approve and not approved:
        raise SyncStateError("not_awaiting_approval", f"sync {sync_id} is {status}, not awaiting approval")
    elif status == SyncStatus.FAILED:
        retry_sync(runtime, sync_id)
    elif status in RUNNABLE_STATES:
        if lease_until is not None and lease_until > utcnow():
            raise SyncStateError(
                "sync_busy",
                f"sync {sync_id} is being run by another process (its lease ends {lease_until:%H:%M:%S} UTC)",
            )
        schedule_step(runtime, sync_id)
    return sync_id


def stopped_line(stop: DriveStopped, hint: str, max_wait: float | None) -> str:
    """One line: why the run stopped, where the sync was left, and the command that continues it."""
    sync = stop.sync
    if sync is None:
        return f"{stop.reason}: stopped before the sync was under way"
    command = f"resume with: connector verify --resume {sync.id}{hint}"
    if stop.reason == "max_wait":
        pause = " ".join((sync.pause_reason or "").split())
        return f"gave up after {max_wait:g} s of pauses: sync {sync.id} at {sync.status} ({pause}); {command}"
    return f"{stop.reason}: sync {sync.id} left at {sync.status}; {command}"


def _resume_hint(output: Path | None, fmt: str | None) -> str:
    hint = f" -o {shlex.quote(str(output))}" if output is not None else ""
    return hint + (f" --format {fmt}" if fmt else "")


def export_verdicts(runtime: Runtime, sync_id: int, output: Path, fmt: str) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    with runtime.session() as session, output.open("w", encoding="utf-8", newline="") as handle:
        rows = iter_verdicts(session, sync_id)
        return write_csv(rows, handle) if fmt == "csv" else write_json(rows, handle)


def print_plan(sync: Sync) -> None:
    """The sync's plan, one figure a line: what approving it would send, cost and do."""
    plan = sync.plan
    if not plan:
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("contacts", f"{plan['contacts']:,}"),
        ("distinct values", f"{plan['distinct_values']:,}"),
        ("skipped as recently verified", f"{plan['skipped_recent']:,}"),
        ("values to send", f"{plan['to_send']:,}"),
        ("estimated cost", f"{plan['estimated_cost']:g} credits"),
        *((f"action {name}", f"at most {n:,} contacts") for name, n in (plan.get("actions") or {}).items()),
    ]
    for label, figure in rows:
        table.add_row(label, figure)
    console = Console(stderr=True, highlight=False)
    console.print(f"plan of sync {sync.id} (nothing launched yet):")
    console.print(table)


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
