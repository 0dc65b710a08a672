"""Coalescing: contacts that arrive one by one are buffered and verified together.

A buffer is (connection, type). It is flushed into one sync when it holds
COALESCE_MAX_CONTACTS contacts or its oldest contact is COALESCE_WINDOW_SECONDS old, so a burst
of thousands of webhook calls becomes one ApexVerify batch. The buffer lives in the database:
a webhook is acknowledged once its contacts are committed, whether or not Redis answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import JSON, BigInteger, DateTime, Row, String, bindparam, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from connector.crm.base import IncomingContact, RecordReader, SourceRecord
from connector.errors import ConnectorError
from connector.metrics import count
from connector.models import CoalescedContact, Connection, Sync, utcnow
from connector.pipeline.jobs import schedule_step
from connector.pipeline.syncs import add_sync
from connector.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)
READ_CHUNK = 1000


def buffer_contacts(
    session: Session, connection_id: int, type_: str, contacts: Iterable[IncomingContact]
) -> int:
    """Add contacts to the buffer; a contact already waiting keeps the newest value. Returns how many.

    "Newest" is by `occurred_at`, not by arrival: a CRM may deliver an older change after a newer
    one. A contact that says nothing of its time (a workflow webhook, an outbound message) counts as
    observed when it arrived, and that time is stored, so a later comparison sees it. A contact
    without a value (a creation event) never replaces one: it only says "read the record", and the
    value it would be read for is at least as new as any hint. Ties go to the later arrival.
    """
    arrived = utcnow()
    latest: dict[tuple[str, str], tuple[str | None, datetime]] = {}
    for contact in contacts:  # one row per record: an upsert may not touch a row twice
        key = (contact.object_type, contact.record_id[:64])
        incoming = (contact.value, contact.occurred_at or arrived)
        waiting = latest.get(key)
        if waiting is None or _replaces(incoming, waiting):
            latest[key] = incoming
    if not latest:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        incoming_rows = json.dumps([[o, r, v, t.isoformat()] for (o, r), (v, t) in latest.items()])
        session.execute(
            _BUFFER_PG, {"connection_id": connection_id, "type": type_, "incoming": incoming_rows}
        )
        return len(latest)
    statement = sqlite.insert(CoalescedContact)
    rows = [
        {"connection_id": connection_id, "type": type_, "object_type": object_type, "record_id": record_id,
         "value": value, "occurred_at": occurred_at, "received_at": arrived}
        for (object_type, record_id), (value, occurred_at) in latest.items()
    ]  # fmt: skip
    session.execute(_newest_value_wins(statement), rows)
    return len(rows)


def _replaces(incoming: tuple[str | None, datetime], waiting: tuple[str | None, datetime]) -> bool:
    """The rule of `_newest_value_wins`, for contacts of one delivery."""
    (value, occurred_at), (waiting_value, waiting_at) = incoming, waiting
    return value is not None and (waiting_value is None or occurred_at >= waiting_at)


def _newest_value_wins(statement: Any) -> Any:
    waiting, excluded = statement.table.c, statement.excluded
    # Rows buffered before occurred_at existed stand for their arrival.
    waiting_at = func.coalesce(waiting.occurred_at, waiting.received_at)
    return statement.on_conflict_do_update(
        index_elements=["connection_id", "type", "object_type", "record_id"],
        index_where=waiting.sync_id.is_(None),
        set_={"value": excluded.value, "occurred_at": excluded.occurred_at},
        where=excluded.value.is_not(None) & (waiting.value.is_(None) | (excluded.occurred_at >= waiting_at)),
    )


# One statement whatever the delivery's size, so it is compiled and prepared once. The contacts
# travel as one JSON text of [object_type, record_id, value, occurred_at] rows: psycopg adapts a
# list parameter element by element in Python, which was the largest cost of a webhook of 100 events.
_INCOMING = func.json_array_elements(cast(bindparam("incoming", type_=String), JSON)).table_valued(
    "value", name="incoming"
)
_BUFFER_PG = _newest_value_wins(
    postgresql.insert(CoalescedContact.__table__).from_select(
        ["connection_id", "type", "object_type", "record_id", "value", "occurred_at", "received_at"],
        select(
            bindparam("connection_id", type_=BigInteger),
            bindparam("type", type_=String),
            _INCOMING.c.value.op("->>")(0),
            _INCOMING.c.value.op("->>")(1),
            _INCOMING.c.value.op("->>")(2),
            cast(_INCOMING.c.value.op("->>")(3), DateTime(timezone=True)),
            func.now(),
        ),
    )
)


def note_buffered(
    runtime: Runtime, connection: Connection, added: dict[str, int], *, accepted: int, duplicates: int
) -> None:
    """After the commit: count what a webhook buffered, and ask for a flush when a buffer fills.

    The per-buffer count lives in Redis (one round trip with the metrics) rather than in a
    COUNT(*) of the buffer on every webhook. It is a hint: the flush counts the rows for real,
    and if Redis lost the count, the cron sweep still flushes the buffer when its window closes.
    """
    try:
        with runtime.redis.pipeline(transaction=False) as pipe:
            for type_, number in added.items():
                pipe.incrby(_buffer_key(connection.id, type_), number)
            count(pipe, "webhook_events", accepted, source=connection.crm, result="accepted")
            count(pipe, "webhook_events", duplicates, source=connection.crm, result="duplicate")
            waiting = pipe.execute()[: len(added)]
    except redis.exceptions.RedisError as error:
        log.warning(
            "buffer_not_counted", extra={"connection_id": connection.id, "error": type(error).__name__}
        )
        return
    for (type_, number), total in zip(added.items(), waiting, strict=True):
        request_flush(runtime, connection.id, type_, waiting=int(total), added=number)


def _buffer_key(connection_id: int, type_: str) -> str:
    return f"connector:buffered:{connection_id}:{type_}"


def request_flush(runtime: Runtime, connection_id: int, type_: str, *, waiting: int, added: int) -> None:
    """Ask a worker to flush now (buffer full) or when the window closes (first contacts).

    Best effort: with Redis down the cron sweep flushes the buffer later.
    """
    settings = runtime.settings
    try:
        queue = runtime.queue()
        if waiting >= settings.coalesce_max_contacts:
            queue.enqueue(flush_buffer_job, connection_id, type_, job_timeout=600)
        elif waiting == added:
            # RQ schedules in whole seconds (the registry's score is truncated), so a flush asked
            # for at exactly the window could run up to 1 s before it closes, find it open and do
            # nothing — leaving the contacts to the next cron sweep, up to 10 s later (a webhook
            # contact took 12.6 s to reach a sync instead of 5.5 s with a 5 s window).
            delay = timedelta(seconds=settings.coalesce_window_seconds + 1)
            queue.enqueue_in(delay, flush_buffer_job, connection_id, type_, job_timeout=600)
    except redis.exceptions.RedisError as error:
        log.warning(
            "flush_not_enqueued", extra={"connection_id": connection_id, "error": type(error).__name__}
        )


def flush_buffer_job(connection_id: int, type_: str) -> int | None:
    return flush_buffer(get_runtime(), connection_id, type_)


def flush_due_buffers(runtime: Runtime | None = None) -> list[int]:
    """The cron sweep: flush every buffer that is full or whose window has closed."""
    runtime = runtime or get_runtime()
    with runtime.session() as session:
        buffers = session.execute(
            select(CoalescedContact.connection_id, CoalescedContact.type)
            .where(CoalescedContact.sync_id.is_(None))
            .group_by(CoalescedContact.connection_id, CoalescedContact.type)
        ).all()
    created = [flush_buffer(runtime, connection_id, type_) for connection_id, type_ in buffers]
    return [sync_id for sync_id in created if sync_id is not None]


def flush_buffer(runtime: Runtime, connection_id: int, type_: str, *, force: bool = False) -> int | None:
    """Turn the buffer into one sync if it is due; returns the new sync's id.

    The connection row is locked so that two flushes of one buffer cannot both take its contacts.
    """
    settings = runtime.settings
    with runtime.session() as session:
        connection = session.get(Connection, connection_id, with_for_update=True)
        if connection is None:
            return None
        waiting = select(CoalescedContact.id).where(
            CoalescedContact.connection_id == connection_id,
            CoalescedContact.type == type_,
            CoalescedContact.sync_id.is_(None),
        )
        waiting_now, oldest = session.execute(
            select(func.count(), func.min(CoalescedContact.received_at)).where(
                CoalescedContact.id.in_(waiting)
            )
        ).one()
        window_closed = oldest is not None and oldest <= utcnow() - timedelta(
            seconds=settings.coalesce_window_seconds
        )
        if not waiting_now or not (force or window_closed or waiting_now >= settings.coalesce_max_contacts):
            return None
        last_id = session.scalar(
            waiting.order_by(CoalescedContact.id).offset(settings.coalesce_max_contacts - 1).limit(1)
        )
        sync = _new_coalesced_sync(session, connection, type_)
        taken = waiting.where(CoalescedContact.id <= last_id) if last_id is not None else waiting
        session.execute(
            update(CoalescedContact).where(CoalescedContact.id.in_(taken)).values(sync_id=sync.id)
        )
        sync_id = sync.id
    _recount(runtime, connection_id, type_, left=max(waiting_now - settings.coalesce_max_contacts, 0))
    log.info("buffer_flushed", extra={"sync_id": sync_id, "connection_id": connection_id, "type": type_})
    schedule_step(runtime, sync_id)
    return sync_id


def _recount(runtime: Runtime, connection_id: int, type_: str, *, left: int) -> None:
    with contextlib.suppress(redis.exceptions.RedisError):  # a hint; the cron sweep does without
        runtime.redis.set(_buffer_key(connection_id, type_), left)


def _new_coalesced_sync(session: Session, connection: Connection, type_: str) -> Sync:
    settings = connection.settings or {}
    return add_sync(
        session,
        note="created from coalesced webhook contacts",
        connection_id=connection.id,
        crm=connection.crm,
        type=type_,
        target_country=settings.get("default_country", "US"),
        parameters=settings.get("parameters", {}),
        source={"kind": "coalesced"},
        trigger="webhook",
        name=f"{connection.name}: {type_} changes {utcnow():%Y-%m-%d %H:%M}",
        reverify_after_days=int(settings.get("reverify_after_days", 30)),
    )


class CoalescedSource:
    """The contacts a flush moved into a sync, with the values to verify.

    A value the webhook carried is used as it is unless `read_back` is set; values it did not
    carry are always read from the CRM. With `read_back` every record's current value is read by
    id (one reader call per chunk of rows): the message's values are hints, not facts, and a record
    deleted since ends skipped with no value.
    """

    def __init__(
        self,
        runtime: Runtime,
        sync_id: int,
        type_: str,
        reader: RecordReader | None,
        *,
        read_back: bool = False,
    ) -> None:
        self.runtime, self.sync_id, self.type, self.reader = runtime, sync_id, type_, reader
        self.read_back = read_back

    def iter_records(self) -> Iterator[SourceRecord]:
        after_id = 0
        while True:
            with self.runtime.session() as session:
                rows = session.execute(
                    select(
                        CoalescedContact.id,
                        CoalescedContact.record_id,
                        CoalescedContact.object_type,
                        CoalescedContact.value,
                    )
                    .where(CoalescedContact.sync_id == self.sync_id, CoalescedContact.id > after_id)
                    .order_by(CoalescedContact.id)
                    .limit(READ_CHUNK)
                ).all()
            if not rows:
                return
            after_id = rows[-1].id
            yield from self._with_values(rows)

    def _with_values(self, rows: Sequence[Row[int, str, str, str | None]]) -> Iterator[SourceRecord]:
        to_read = rows if self.read_back else [r for r in rows if r.value is None]
        if not self.read_back:
            for row in rows:
                if row.value is not None:
                    yield SourceRecord(row.record_id, row.value, row.object_type or None)
        if not to_read:
            return
        if self.reader is None:
            raise ConnectorError(
                "no_record_reader", f"sync {self.sync_id} has contacts whose values must be read"
            )
        found = {r.record_id: r for r in self.reader.read_records([m.record_id for m in to_read], self.type)}
        for row in to_read:
            # A contact deleted since the webhook still gets an outcome: skipped, no value.
            yield found.get(row.record_id, SourceRecord(row.record_id, None, row.object_type or None))
