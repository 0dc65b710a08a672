"""Writing verdicts back onto the CRM's records, and what became of the records that refused them.

Records are written a page at a time (a REST batch's worth, or one bulk job) and each page's
outcomes are committed with it, so a retry resumes after the last page written; a page written
again sets the same flags. Before a page's outcomes are committed its refusals are sorted out:

- A refusal the CRM means as temporary (`WriteFailure.transient`: a 429 or 5xx for that record
  alone, a locked row) is written again, up to TRANSIENT_TRIES times with 1, 2, 4 s between, and
  counts as a failure only after that.
- A record the CRM no longer keeps as it was is asked about (`RecordReader.fates`), since
  merged, deleted and converted records are the refusals users report most (issue 17):
  deleted or archived ends `skipped`, reason `deleted`; merged into another contact or converted
  from a lead to a contact gets its flags on that record, `verified` with reason
  `merged_into` / `converted_to` and `written_to` naming it. Only when that record holds the value
  verified, though: a merge keeps the primary's email and a lead converted into an existing
  contact keeps that contact's, and flags describe a value; on another value they would not be
  true. Such a contact ends `skipped`, reason `successor_value_differs`, nothing written.
- Every other refusal is a write failure with the CRM's code and message; `POST
  /admin/syncs/<id>/retry` on the completed sync sets those contacts pending again and runs this
  step once more (connector.pipeline.syncs), from the stored verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from connector.chaos import chaos_point
from connector.crm.base import (
    CONVERTED_TO,
    DELETED,
    MERGED_INTO,
    ActionRunner,
    FlagUpdate,
    FlagWriter,
    RecordFate,
    RecordReader,
    Verdict,
    WriteFailure,
)
from connector.crm.calls import chunks
from connector.db import forbid_nested_loops, raise_work_mem, text_rows, uses_postgresql
from connector.errors import ConnectorError, TransientError
from connector.metrics import count
from connector.models import ContactOutcome, SyncContact, SyncStatus, SyncValue
from connector.pipeline.actions import take_actions
from connector.pipeline.normalize import normalize
from connector.pipeline.record_history import record_hash_key, remember_written_values
from connector.pipeline.sources import action_runner_for, reader_for, writer_for
from connector.pipeline.state import Advance, StepContext, StepResult
from connector.pipeline.verdicts import verdict_from_text
from connector.retry import backoff

log = logging.getLogger(__name__)

TRANSIENT_TRIES = 3
TRANSIENT_BACKOFF_CAP = 4.0
SUCCESSOR_VALUE_DIFFERS = "successor_value_differs"
# The reasons of contacts whose record became another one (the sync detail lists them).
MOVED_REASONS = (MERGED_INTO, CONVERTED_TO, SUCCESSOR_VALUE_DIFFERS)
# How many record ids one statement names (SQLite allows 32,766 bound parameters).
IDS_PER_QUERY = 1000
_BECAME = {MERGED_INTO: "merged into", CONVERTED_TO: "converted to"}


def write_back_flags(ctx: StepContext) -> StepResult:
    """Write verdicts onto the records still pending, one CRM call (or bulk job) at a time; then
    take the segment's verdict actions on the records written."""
    with ctx.session() as session:
        _fail_orphans(session, ctx.sync_id)
        sync = ctx.load(session)
        pending = session.scalar(
            select(func.count()).where(
                SyncContact.sync_id == sync.id, SyncContact.outcome == ContactOutcome.PENDING
            )
        )
        writer = writer_for(ctx.runtime, sync, expected_updates=pending or 0, sleep=ctx.sleep)
        crm = sync.crm
    writer.prepare()
    refusals = Refusals(ctx, writer)
    after_id = 0
    while True:
        page = PendingUpdates(ctx, after_id, writer.batch_size)
        failures = writer.write(page)
        if not page.count:
            break
        chaos_point("write_back.after_call")
        exceptions = refusals.settle(after_id, page.last_id, failures)
        _record_outcomes(ctx, after_id, page.last_id, exceptions)
        failed = sum(1 for e in exceptions if e.outcome == ContactOutcome.WRITE_FAILED)
        count(ctx.runtime.redis, "contacts_written", page.count - failed, crm=crm, result="ok")
        count(ctx.runtime.redis, "contacts_written", failed, crm=crm, result="failed")
        after_id = page.last_id
    chaos_point("actions.before")  # every flag written, no action taken yet
    take_actions(ctx, lambda expected: action_runner(ctx, expected))
    return Advance(SyncStatus.COMPLETED)


def action_runner(ctx: StepContext, expected: int) -> ActionRunner:
    """The runner of the sync's verdict actions (`expected` records: batches or bulk)."""
    with ctx.session() as session:
        return action_runner_for(ctx.runtime, ctx.load(session), expected=expected, sleep=ctx.sleep)


class PendingUpdates:
    """The next `limit` flag updates, streamed from the database as the writer consumes them."""

    def __init__(self, ctx: StepContext, after_id: int, limit: int) -> None:
        self.ctx, self.after_id, self.limit = ctx, after_id, limit
        self.count = 0
        self.last_id = after_id

    def __iter__(self) -> Iterator[FlagUpdate]:
        with self.ctx.session() as session:
            # As text from one COPY: a row object and a timestamp per contact cost more than the
            # writer's own work (10 % of the worker's CPU at 300,000 contacts).
            forbid_nested_loops(session)
            rows = text_rows(session, _pending_with_verdicts(self.ctx.sync_id, self.after_id, self.limit))
            verdicts: dict[tuple[str | None, ...], Verdict] = {}  # shared, so writers memoize per verdict
            for contact_id, record_id, object_type, *fields in rows:
                self.count += 1
                self.last_id = int(contact_id or 0)
                key = tuple(fields)
                verdict = verdicts.get(key)
                if verdict is None:
                    verdict = verdicts[key] = verdict_from_text(key)
                yield FlagUpdate(record_id or "", object_type, verdict)


def _pending_with_verdicts(sync_id: int, after_id: int, limit: int) -> Any:
    return _with_verdicts(
        SyncContact.sync_id == sync_id,
        SyncContact.outcome == ContactOutcome.PENDING,
        SyncContact.id > after_id,
    ).limit(limit)


def _with_verdicts(*conditions: Any) -> Any:
    """Contacts (id, record id, object type) with their verdict's columns, in id order."""
    return (
        select(
            SyncContact.id,
            SyncContact.record_id,
            SyncContact.object_type,
            SyncValue.status,
            SyncValue.valid,
            SyncValue.wrong,
            SyncValue.unknown,
            SyncValue.is_role,
            SyncValue.is_disposable,
            SyncValue.verified_at,
        )
        .join(SyncValue, and_(SyncValue.sync_id == SyncContact.sync_id, SyncValue.value == SyncContact.value))
        .where(*conditions, SyncValue.status.is_not(None))
        .order_by(SyncContact.id)
    )


# --- a page's refusals -----------------------------------------------------------------------


@dataclass(frozen=True)
class RefusalOutcome:
    """A contact of a page that did not simply get its flags, and what it ends as."""

    record_id: str
    outcome: str  # a ContactOutcome
    reason: str
    message: str | None = None
    written_to: str | None = None


class Refusals:
    """Sorts a page's refusals out: temporary ones written again, gone records asked about."""

    def __init__(self, ctx: StepContext, writer: FlagWriter) -> None:
        self.ctx, self.writer = ctx, writer
        with ctx.session() as session:
            sync = ctx.load(session)
            self.type, self.country = sync.type, sync.target_country
        self._reader: RecordReader | None = None

    def settle(self, after_id: int, last_id: int, failures: list[WriteFailure]) -> list[RefusalOutcome]:
        """What the page's refused contacts end as (every other contact of it was written)."""
        failures = self._retry_transient(after_id, last_id, failures)
        if not failures:
            return []
        fates = {fate.record_id: fate for fate in self._fates(failures)}
        pending = _updates_of(self.ctx, after_id, last_id, set(fates))
        followed = {record_id: fate for record_id, fate in fates.items() if record_id in pending}
        exceptions = [
            RefusalOutcome(f.record_id, ContactOutcome.WRITE_FAILED, f.code[:60], f.message)
            for f in failures
            if f.record_id not in followed
        ]
        return exceptions + self._follow(followed, pending)

    def _retry_transient(
        self, after_id: int, last_id: int, failures: list[WriteFailure]
    ) -> list[WriteFailure]:
        for attempt in range(1, TRANSIENT_TRIES + 1):
            transient = {f.record_id for f in failures if f.transient}
            if not transient:
                break
            self.ctx.sleep(backoff(attempt, TRANSIENT_BACKOFF_CAP))
            pending = _updates_of(self.ctx, after_id, last_id, transient)
            log.info(
                "write_back_transient_retry", extra={"sync_id": self.ctx.sync_id, "records": len(pending)}
            )
            again = self._small_writer(len(pending)).write(u for u, _ in pending.values()) if pending else []
            # A refusal whose record is not in the page (the CRM named it otherwise) stays as it was.
            failures = [f for f in failures if not (f.transient and f.record_id in pending)] + again
        return failures

    def _fates(self, failures: list[WriteFailure]) -> list[RecordFate]:
        if self._reader is None:
            with self.ctx.session() as session:
                self._reader = reader_for(self.ctx.runtime, self.ctx.load(session), sleep=self.ctx.sleep)
        return [] if self._reader is None else self._reader.fates(failures, self.type)

    def _follow(
        self, fates: dict[str, RecordFate], pending: dict[str, tuple[FlagUpdate, str]]
    ) -> list[RefusalOutcome]:
        """Deleted records skipped; merged and converted ones written onto the record they became."""
        exceptions, moves = [], []
        for record_id, fate in fates.items():
            written, value = pending[record_id]
            if fate.reason == DELETED or fate.successor_id is None:
                message = "the CRM no longer has this record (deleted or archived): nothing written"
                exceptions.append(RefusalOutcome(record_id, ContactOutcome.SKIPPED, DELETED, message))
            elif normalize(fate.successor_value, self.type, self.country).value != value:
                message = (
                    f"{_BECAME.get(fate.reason, fate.reason)} {fate.successor_id}, which holds another "
                    f"{self.type}: nothing written"
                )
                exceptions.append(
                    RefusalOutcome(record_id, ContactOutcome.SKIPPED, SUCCESSOR_VALUE_DIFFERS, message)
                )
            else:
                moves.append((fate, FlagUpdate(fate.successor_id, fate.successor_type, written.verdict)))
        return exceptions + self._write_successors(moves)

    def _write_successors(self, moves: list[tuple[RecordFate, FlagUpdate]]) -> list[RefusalOutcome]:
        if not moves:
            return []
        objects = tuple(sorted({u.object_type for _, u in moves if u.object_type}))
        try:
            writer = self._small_writer(len(moves), objects)
            refused = {f.record_id: f for f in writer.write(move for _, move in moves)}
        except TransientError:
            raise  # the CRM did not answer: the sync pauses and writes the page again
        except ConnectorError as error:  # e.g. the successors' object lacks the flag fields
            refused = {u.record_id: WriteFailure(u.record_id, error.code, error.message) for _, u in moves}
        exceptions = []
        for fate, move in moves:
            became = f"{_BECAME.get(fate.reason, fate.reason)} {move.record_id}"
            failure = refused.get(move.record_id)
            if failure is None:
                exceptions.append(
                    RefusalOutcome(
                        fate.record_id,
                        ContactOutcome.VERIFIED,
                        fate.reason,
                        f"{became}: flags written there",
                        written_to=move.record_id,
                    )
                )
            else:
                exceptions.append(
                    RefusalOutcome(
                        fate.record_id,
                        ContactOutcome.WRITE_FAILED,
                        failure.code[:60],
                        f"{became}, which refused the flags: {failure.message}",
                    )
                )
        return exceptions

    def _small_writer(self, expected: int, objects: tuple[str, ...] = ()) -> FlagWriter:
        """A writer for a handful of records (REST, not a bulk job); prepared when it writes objects
        the sync's own writer did not (a converted lead's contact)."""
        with self.ctx.session() as session:
            sync = self.ctx.load(session)
            writer = writer_for(
                self.ctx.runtime,
                sync,
                expected_updates=expected,
                sleep=self.ctx.sleep,
                objects=objects or None,
            )
        if objects:
            writer.prepare()
        return writer


def _updates_of(
    ctx: StepContext, after_id: int, last_id: int, record_ids: set[str]
) -> dict[str, tuple[FlagUpdate, str]]:
    """The pending flag updates of these records in the page, with the value each verdict is for."""
    found: dict[str, tuple[FlagUpdate, str]] = {}
    with ctx.session() as session:
        for ids in chunks(sorted(record_ids), IDS_PER_QUERY):
            query = _with_verdicts(
                SyncContact.sync_id == ctx.sync_id,
                SyncContact.outcome == ContactOutcome.PENDING,
                SyncContact.id > after_id,
                SyncContact.id <= last_id,
                SyncContact.record_id.in_(ids),
            ).add_columns(SyncContact.value)
            for _id, record_id, object_type, *fields, value in text_rows(session, query):
                update = FlagUpdate(record_id or "", object_type, verdict_from_text(fields))
                found[record_id or ""] = (update, value or "")
    return found


# --- recording -------------------------------------------------------------------------------


def _record_outcomes(ctx: StepContext, after_id: int, last_id: int, exceptions: list[RefusalOutcome]) -> None:
    """Every pending contact of the written id range was written, except `exceptions`."""
    in_range = (
        SyncContact.sync_id == ctx.sync_id,
        SyncContact.outcome == ContactOutcome.PENDING,
        SyncContact.id > after_id,
        SyncContact.id <= last_id,
    )
    key = record_hash_key(ctx.runtime)
    with ctx.session() as session:
        # In the same transaction: a replaced job records (and counts) nothing; its successor
        # writes this page again, which sets the same flags.
        ctx.renew_lease(session)
        raise_work_mem(session)
        if exceptions and uses_postgresql(session):
            _record_exceptions_at_once(session, in_range, exceptions)
        elif exceptions:
            _record_exceptions_one_by_one(session, in_range, exceptions)
        session.execute(update(SyncContact).where(*in_range).values(outcome=ContactOutcome.VERIFIED))
        remember_written_values(session, ctx.load(session), key, after_id, last_id)


def _record_exceptions_at_once(
    session: Session, in_range: tuple[Any, ...], exceptions: list[RefusalOutcome]
) -> None:
    """One UPDATE joined to the exceptions as arrays: a statement per refusal rescanned the whole
    written range each time (5,000 refusals in a page of 250,000 took minutes)."""
    columns = ("record_id", "outcome", "reason", "message", "written_to")
    arrays = [
        bindparam(name, [getattr(e, name) for e in exceptions], type_=postgresql.ARRAY(String))
        for name in columns
    ]
    refused = func.unnest(*arrays).table_valued(*columns).render_derived(name="refused")
    table = SyncContact.__table__
    session.execute(
        update(table)
        .where(*in_range, table.c.record_id == refused.c.record_id)
        .values(
            outcome=refused.c.outcome,
            reason=refused.c.reason,
            error_message=refused.c.message,
            written_to=refused.c.written_to,
        )
    )


def _record_exceptions_one_by_one(
    session: Session, in_range: tuple[Any, ...], exceptions: list[RefusalOutcome]
) -> None:
    table = SyncContact.__table__
    session.execute(
        table.update()
        .where(*in_range, table.c.record_id == bindparam("b_record_id"))
        .values(
            outcome=bindparam("b_outcome"),
            reason=bindparam("b_reason"),
            error_message=bindparam("b_message"),
            written_to=bindparam("b_written_to"),
        ),
        [
            {
                "b_record_id": e.record_id,
                "b_outcome": e.outcome,
                "b_reason": e.reason,
                "b_message": e.message,
                "b_written_to": e.written_to,
            }  # fmt: skip
            for e in exceptions
        ],
    )


def _fail_orphans(session: Session, sync_id: int) -> None:
    """A pending contact with no verdict would be silently dropped: say so instead."""
    unjudged = select(SyncValue.id).where(SyncValue.sync_id == sync_id, SyncValue.status.is_(None))
    # Every pending contact's value has its row (collect_values made them from exactly these
    # contacts): with no row left without a verdict there is no orphan, and 1,000,000 contacts
    # need not be matched against the values (0.9 s of PostgreSQL CPU).
    if session.execute(unjudged.limit(1)).first() is None:
        return
    judged = select(SyncValue.value).where(SyncValue.sync_id == sync_id, SyncValue.status.is_not(None))
    session.execute(
        update(SyncContact)
        .where(
            SyncContact.sync_id == sync_id,
            SyncContact.outcome == ContactOutcome.PENDING,
            SyncContact.value.not_in(judged),
        )
        .values(
            outcome=ContactOutcome.SKIPPED,
            reason="no_verdict",
            error_message="ApexVerify returned no verdict for this value",
        )
    )
