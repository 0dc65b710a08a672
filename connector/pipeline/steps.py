"""The steps of a sync. Each is idempotent: run twice, it does its work once.

Progress is committed as it is made (a batch uuid the moment the upload returns, a launch the
moment ApexVerify accepts it, write-back outcomes per CRM call), so a step that is killed and
run again resumes instead of repeating anything that costs credits or CRM calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from connector.apexverify import (
    ApexVerifyClient,
    ApexVerifyError,
    BatchStatus,
    LaunchOutcome,
    iter_export_records,
)
from connector.chaos import chaos_point
from connector.db import (
    affected_rows,
    analyze,
    copy_rows,
    uses_postgresql,
)
from connector.metrics import call_outcome, count
from connector.models import (
    ContactOutcome,
    Sync,
    SyncBatch,
    SyncContact,
    SyncStatus,
    SyncValue,
    utcnow,
)
from connector.pipeline.actions import actions_at_most, verdict_actions
from connector.pipeline.batchfiles import collect_values, sync_dir, write_batch_files
from connector.pipeline.normalize import normalize
from connector.pipeline.record_history import (
    record_hash_key,
    reverify_changed_values,
)
from connector.pipeline.sources import source_for, writer_for
from connector.pipeline.state import Advance, Halt, StepAborted, StepContext, StepResult, Wait
from connector.pipeline.verdicts import INVALID_FORMAT, store_verdicts, verdict_columns
from connector.pipeline.write_back import action_runner, write_back_flags
from connector.states import check_steps

CHUNK = 5000
RESULT_CHUNK = 100_000

log = logging.getLogger(__name__)


def _client(ctx: StepContext) -> ApexVerifyClient:
    """The ApexVerify client of this sync's step: its calls take the sync's connection's fair share."""
    with ctx.session() as session:
        connection_id = session.scalar(select(Sync.connection_id).where(Sync.id == ctx.sync_id))
    client = ApexVerifyClient.from_settings(
        ctx.runtime.settings, ctx.runtime.redis, sleep=ctx.sleep, connection_id=connection_id
    )
    client.on_call = lambda endpoint, status: count(
        ctx.runtime.redis, "api_calls", service="apexverify", outcome=call_outcome(status)
    )
    return client


def start(ctx: StepContext) -> StepResult:
    return Advance(SyncStatus.EXPORTING)


# --- exporting -------------------------------------------------------------------------------


def export_segment(ctx: StepContext) -> StepResult:
    """Read the segment into contact rows, then group distinct values into batch files."""
    with ctx.session() as session:
        sync = ctx.load(session)
        _forget_partial_export(session, sync.id)
        source = source_for(ctx.runtime, sync, sleep=ctx.sleep)
        writer = writer_for(ctx.runtime, sync, sleep=ctx.sleep)
        type_, country, sync_id = sync.type, sync.target_country, sync.id
        fresh_after = utcnow() - timedelta(days=sync.reverify_after_days)
    # Before any credit is spent: a write-back (or an action) that cannot happen fails the sync now.
    writer.prepare()
    _prepare_actions(ctx)
    chunk: list[tuple[Any, ...]] = []
    for record in source.iter_records():
        chunk.append(_contact_row(sync_id, record, type_, country, fresh_after))
        if len(chunk) >= CHUNK:
            _insert_contacts(ctx, chunk)
            chunk = []
            chaos_point("export.mid")
    _insert_contacts(ctx, chunk)
    key = record_hash_key(ctx.runtime)
    max_rows = ctx.runtime.settings.apexverify_max_batch_rows
    with ctx.session() as session:  # its own transaction: ANALYZE's lock is held until commit
        analyze(session, "sync_contacts")
    with ctx.session() as session:
        sync = ctx.load(session)
        reverify_changed_values(session, sync, key)
        collect_values(session, sync, fresh_after, max_rows)
        batches = write_batch_files(session, ctx.runtime, sync)
    with ctx.session() as session:
        analyze(session, "sync_values")
    if not batches:  # a plan still stops for approval: nothing is written before it
        to = SyncStatus.READY if sync.plan_requested else SyncStatus.WRITING_BACK
        return Advance(to, "nothing to verify: every value is known or unusable")
    return Advance(SyncStatus.UPLOADING)


def _prepare_actions(ctx: StepContext) -> None:
    with ctx.session() as session:
        actions = verdict_actions(ctx.load(session))
    if actions:
        runner = action_runner(ctx, 0)
        for action in actions:
            runner.prepare(action)


def _forget_partial_export(session: Session, sync_id: int) -> None:
    uploaded = session.scalar(
        select(func.count()).where(SyncBatch.sync_id == sync_id, SyncBatch.batch_uuid.is_not(None))
    )
    if uploaded:
        raise RuntimeError(f"sync {sync_id} already uploaded batches; refusing to export again")
    for model in (SyncBatch, SyncValue, SyncContact):
        session.execute(delete(model).where(model.sync_id == sync_id))


def _contact_row(
    sync_id: int, record: Any, type_: str, country: str, fresh_after: datetime
) -> tuple[Any, ...]:
    """The values of _CONTACT_COLUMNS for one record (a tuple: COPY takes them as they are)."""
    normalized = normalize(record.value, type_, country)
    outcome, reason = ContactOutcome.PENDING, normalized.problem
    if normalized.problem == "no_value":
        outcome = ContactOutcome.SKIPPED
    elif record.verified_at is not None and record.verified_at >= fresh_after:
        outcome, reason = ContactOutcome.SKIPPED, "recently_verified"
    return sync_id, str(record.record_id)[:64], record.object_type, normalized.value, outcome, reason


_CONTACT_COLUMNS = ("sync_id", "record_id", "object_type", "value", "outcome", "reason")


def _insert_contacts(ctx: StepContext, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    with ctx.session() as session:
        # The lease is renewed in the insert's own transaction, not after it: a job that overran its
        # lease (a CRM retried for longer) may have been replaced by one that already cleared the
        # export and reads it again, and rows added now would duplicate that job's contacts.
        ctx.renew_lease(session)
        if uses_postgresql(session):  # COPY: the export's largest cost otherwise
            copy_rows(session, "sync_contacts", _CONTACT_COLUMNS, rows)
        else:
            session.execute(
                SyncContact.__table__.insert(),
                [dict(zip(_CONTACT_COLUMNS, row, strict=True)) for row in rows],
            )


# --- ApexVerify lifecycle ---------------------------------------------------------------------


def _batches(session: Session, sync_id: int, *conditions: Any) -> list[SyncBatch]:
    """The sync's live batches (not abandoned) that meet `conditions`."""
    query = (
        select(SyncBatch)
        .where(SyncBatch.sync_id == sync_id, SyncBatch.abandoned_at.is_(None), *conditions)
        .order_by(SyncBatch.seq)
    )
    return list(session.scalars(query))


def upload_batches(ctx: StepContext) -> StepResult:
    client = _client(ctx)
    with ctx.session() as session:
        sync = ctx.load(session)
        todo = _batches(session, sync.id, SyncBatch.batch_uuid.is_(None))
        total = len(_batches(session, sync.id))
        name, type_, country = sync.name, sync.type, sync.target_country
    for batch in todo:
        batch_uuid = client.upload(
            Path(batch.file_path),
            name=f"{name} ({batch.seq + 1}/{total})"[:255],
            type=type_,
            target_country=country,
            description=f"ApexVerify CRM Connector sync {ctx.sync_id}, part {batch.seq + 1} of {total}",
        )
        chaos_point("upload.after_call")
        _keep_uploaded_batch(ctx, batch.id, batch_uuid)
    return Advance(SyncStatus.CONFIGURING)


def _keep_uploaded_batch(ctx: StepContext, batch_id: int, batch_uuid: str) -> None:
    """Commit the uuid before anything else, so a retry never uploads these rows again.

    Only while this job still owns the sync and only once: a job that overran its lease and was
    replaced must not put its upload over the one the new job may already have configured or
    launched. Its own upload is then left unlaunched, which costs no credits.
    """
    try:
        with ctx.session() as session:
            ctx.renew_lease(session)
            kept = affected_rows(
                session.execute(
                    update(SyncBatch)
                    .where(SyncBatch.id == batch_id, SyncBatch.batch_uuid.is_(None))
                    .values(batch_uuid=batch_uuid)
                )
            )
            if not kept:
                raise StepAborted(f"sync {ctx.sync_id} batch {batch_id} was uploaded by another job")
    except StepAborted:
        log.warning("upload_left_unlaunched", extra={"sync_id": ctx.sync_id, "batch_uuid": batch_uuid})
        raise


def configure_batches(ctx: StepContext) -> StepResult:
    client = _client(ctx)
    with ctx.session() as session:
        sync = ctx.load(session)
        parameters = {**sync.parameters, "type": sync.type, "target_country": sync.target_country}
        todo = _batches(session, sync.id, SyncBatch.configured.is_(False))
    for batch in todo:
        client.configure(batch.batch_uuid or "", parameters)
        chaos_point("configure.after_call")
        with ctx.session() as session:
            session.execute(
                update(SyncBatch)
                .where(SyncBatch.id == batch.id)
                .values(configured=True, parse_requested=False)
            )
    return Advance(SyncStatus.PARSING)


def parse_batches(ctx: StepContext) -> StepResult:
    """Trigger parsing where it was not yet, then wait until every batch is ready."""
    client = _client(ctx)
    with ctx.session() as session:
        batches = _batches(session, ctx.sync_id, SyncBatch.launched_at.is_(None))
    ready = 0
    for batch in batches:
        uuid = batch.batch_uuid or ""
        if not batch.parse_requested:
            client.parse(uuid)
            chaos_point("parse.after_call")
            _update_batch(ctx, batch.id, parse_requested=True)
            continue
        details = client.details(uuid)
        if details.status == BatchStatus.INTERNAL_ERROR:
            _update_batch(ctx, batch.id, remote_status=details.status)
            raise ApexVerifyError(
                "apexverify_internal_error", f"ApexVerify failed while parsing batch {uuid}"
            )
        if details.status != BatchStatus.PARSING_CONTENT:
            ready += 1
            _update_batch(
                ctx,
                batch.id,
                remote_status=details.status,
                found_content=details.found_content,
                found_cost=details.found_cost,
            )
    if ready < len(batches):
        return Wait()
    _record_cost(ctx)
    return Advance(SyncStatus.READY)


def _update_batch(ctx: StepContext, batch_id: int, **values: Any) -> None:
    with ctx.session() as session:
        session.execute(update(SyncBatch).where(SyncBatch.id == batch_id).values(**values))


_COST_PARTS = {
    "total": "total_",
    "net": "net_",
    "cache_account_return": "_cache_account_return",
    "cache_global_return": "_cache_global_return",
}


def _cost_summary(batches: list[SyncBatch]) -> dict[str, float]:
    """Credits across the sync's batches; `charged` counts only batches already launched."""
    summary = dict.fromkeys([*_COST_PARTS, "charged"], 0.0)
    for batch in batches:
        cost = batch.found_cost or {}
        for part, marker in _COST_PARTS.items():
            summary[part] += sum(float(v) for k, v in cost.items() if marker in k)
        if batch.launched_at is not None:
            summary["charged"] += _batch_net_cost(batch)
    return summary


def _batch_net_cost(batch: SyncBatch) -> float:
    return sum(float(v) for k, v in (batch.found_cost or {}).items() if k.startswith("net_"))


def check_cost(ctx: StepContext) -> StepResult:
    """Launch, unless the operator is to approve first: a plan was asked for, or the net cost is over
    the budget. Either way the sync then carries its plan (what approving it would do)."""
    with ctx.session() as session:
        sync = ctx.load(session)
        if sync.approved_at is not None:
            return Advance(SyncStatus.LAUNCHING)
        net = float((sync.cost or {}).get("net", 0.0))
        if sync.plan_requested:
            sync.plan = plan = plan_of(session, sync)
            return Halt(
                SyncStatus.AWAITING_APPROVAL,
                f"plan ready: {plan['to_send']} values to send for an estimated {net:g} credits",
            )
        if sync.max_net_cost is not None and net > sync.max_net_cost:
            sync.plan = plan_of(session, sync)
            return Halt(
                SyncStatus.AWAITING_APPROVAL,
                f"net cost {net:g} credits is over the budget of {sync.max_net_cost:g}",
            )
    return Advance(SyncStatus.LAUNCHING)


def plan_of(session: Session, sync: Sync) -> dict[str, Any]:
    """What launching the sync's batches would do, as parsed: its contacts, distinct values, contacts
    skipped as recently verified, values sent, net credits (what the launch charges while the
    account's cache does not change) and, per action, the contacts it would touch at most."""
    contacts, skipped_recent = session.execute(
        select(
            func.count(),
            func.count().filter(
                SyncContact.outcome == ContactOutcome.SKIPPED, SyncContact.reason == "recently_verified"
            ),
        ).where(SyncContact.sync_id == sync.id)
    ).one()
    values = session.scalar(select(func.count()).where(SyncValue.sync_id == sync.id))
    to_send = sum(batch.rows for batch in _batches(session, sync.id))
    return {
        "contacts": contacts,
        "distinct_values": values or 0,
        "skipped_recent": skipped_recent,
        "to_send": to_send,
        "estimated_cost": float((sync.cost or {}).get("net", 0.0)),
        "actions": actions_at_most(session, sync),
    }


def launch_batches(ctx: StepContext) -> StepResult:
    """Launch each batch not yet launched; a cancel arriving meanwhile stops the launches still to come.

    The lease is renewed (which fails once the sync was cancelled or taken over) before every
    launch, so a cancel costs at most the launch already in flight. What was launched is recorded
    and counted in the sync's cost however the step ends.
    """
    client = _client(ctx)
    with ctx.session() as session:
        todo = _batches(session, ctx.sync_id, SyncBatch.launched_at.is_(None))
    try:
        for batch in todo:
            ctx.heartbeat()
            outcome = client.launch(batch.batch_uuid or "")
            chaos_point("launch.after_call")
            if outcome == LaunchOutcome.NOT_READY:
                _update_batch(ctx, batch.id, parse_requested=False)
                return Advance(SyncStatus.PARSING, f"batch {batch.batch_uuid} was not ready; parsing again")
            _record_launch(ctx, batch, outcome)
    finally:
        _record_cost(ctx)
    return Advance(SyncStatus.VERIFYING)


def _record_launch(ctx: StepContext, batch: SyncBatch, outcome: LaunchOutcome) -> None:
    now = utcnow()
    _update_batch(
        ctx, batch.id, launched_at=now, seen_ongoing_at=now, remote_status=BatchStatus.VERIFICATION_ONGOING
    )
    if outcome == LaunchOutcome.OK:
        count(ctx.runtime.redis, "credits_spent", _batch_net_cost(batch))


def _record_cost(ctx: StepContext) -> None:
    with ctx.session() as session:
        sync = ctx.load(session)
        sync.cost = _cost_summary(sync.batches)


def await_verification(ctx: StepContext) -> StepResult:
    client = _client(ctx)
    with ctx.session() as session:
        todo = _batches(session, ctx.sync_id, SyncBatch.done_at.is_(None))
    pending = 0
    for batch in todo:
        status = client.status(batch.batch_uuid or "")
        chaos_point("verify.after_call")
        if status == BatchStatus.INTERNAL_ERROR:
            _update_batch(ctx, batch.id, remote_status=status)
            raise ApexVerifyError(
                "apexverify_internal_error",
                f"ApexVerify reported an internal error for launched batch {batch.batch_uuid}; its credits"
                " are spent, so a retry polls it again rather than launching anew. If it persists, contact"
                " ApexVerify support with this batch uuid.",
            )
        if status == BatchStatus.VERIFICATION_DONE:
            _update_batch(ctx, batch.id, done_at=utcnow(), remote_status=status)
        else:
            _update_batch(ctx, batch.id, seen_ongoing_at=utcnow())
            pending += 1
    return Wait() if pending else Advance(SyncStatus.FETCHING_RESULTS)


def fetch_results(ctx: StepContext) -> StepResult:
    """Stream each batch's JSON export into the value rows; values ApexVerify dropped are invalid_format."""
    client = _client(ctx)
    with ctx.session() as session:
        sync = ctx.load(session)
        type_ = sync.type
        todo = _batches(session, sync.id, SyncBatch.results_fetched_at.is_(None))
        directory = sync_dir(ctx.runtime, sync.id)
    for batch in todo:
        export = client.download_json_export(batch.batch_uuid or "", directory / f"export-{batch.seq}.json")
        details = client.details(batch.batch_uuid or "")
        verified_at = batch.done_at or utcnow()
        ctx.heartbeat()
        with ctx.session() as session:
            store_verdicts(
                session, ctx.sync_id, batch.seq, type_, _verdict_rows(ctx, type_, export), verified_at
            )
        chaos_point("fetch.mid")  # verdicts stored, batch not yet marked fetched
        with ctx.session() as session:
            session.execute(
                update(SyncValue)
                .where(
                    SyncValue.sync_id == ctx.sync_id,
                    SyncValue.batch_seq == batch.seq,
                    SyncValue.status.is_(None),
                )
                .values(**INVALID_FORMAT, verified_at=verified_at)
            )
            session.execute(
                update(SyncBatch)
                .where(SyncBatch.id == batch.id)
                .values(results_fetched_at=utcnow(), stats=details.stats)
            )
    with ctx.session() as session:  # the statuses were all NULL when collect_values analysed it
        analyze(session, "sync_values")
    return Advance(SyncStatus.WRITING_BACK)


def _verdict_rows(ctx: StepContext, type_: str, export: Path) -> Iterator[tuple[Any, ...]]:
    """(value, *verdict) per export record, parsed as the COPY consumes them; the lease is renewed
    as they go (a batch holds up to 500,000)."""
    for position, (value, record) in enumerate(iter_export_records(export), start=1):
        yield (value, *verdict_columns(type_, record))
        if position % RESULT_CHUNK == 0:
            ctx.heartbeat()


# One function for each runnable state of connector.states.PIPELINE, checked below at import.
STEPS: dict[SyncStatus, Callable[[StepContext], StepResult]] = {
    SyncStatus.PENDING: start,
    SyncStatus.EXPORTING: export_segment,
    SyncStatus.UPLOADING: upload_batches,
    SyncStatus.CONFIGURING: configure_batches,
    SyncStatus.PARSING: parse_batches,
    SyncStatus.READY: check_cost,
    SyncStatus.LAUNCHING: launch_batches,
    SyncStatus.VERIFYING: await_verification,
    SyncStatus.FETCHING_RESULTS: fetch_results,
    SyncStatus.WRITING_BACK: write_back_flags,  # and the refused records' fates: write_back.py
}
check_steps(STEPS)
