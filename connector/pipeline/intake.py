"""Taking in what a CRM sends: de-duplicated contacts into the coalescing buffer, segments into syncs.

Both CRMs' webhooks end here, so redelivery handling and buffering work the same for each.
Everything is committed before the webhook answers; enqueueing afterwards is best effort.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import JSON, String, bindparam, cast, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from connector.crm.base import IncomingContact
from connector.crm.registry import crm_named
from connector.db import dialect_insert
from connector.errors import NotFoundError
from connector.models import Connection, Sync, WebhookEvent
from connector.pipeline.coalesce import buffer_contacts, note_buffered
from connector.pipeline.syncs import create_sync, ensure_connection, source_key, unsettled_sync
from connector.runtime import Runtime

KeyedContacts = tuple[str, list[tuple[str, IncomingContact]]]


def crm_connection(runtime: Runtime, crm: str) -> Connection:
    """The connection row of the one account (portal, org) of `crm` the environment configures."""
    settings = runtime.settings
    found = crm_named(crm)
    external_id = (found.account_id(settings) if found else None) or "default"
    with runtime.session() as session:
        connection = ensure_connection(session, crm, external_id, f"{crm} {external_id}")
        if "default_country" not in (connection.settings or {}):
            connection.settings = {**(connection.settings or {}), "default_country": settings.default_country}
    return connection


def connection_row(runtime: Runtime, connection_id: int) -> Connection:
    """The connection's row as committed now (detached)."""
    with runtime.session() as session:
        connection = session.get(Connection, connection_id)
        if connection is None:  # a webhook's directory named it: only a CRM reader's bug gets here
            raise NotFoundError("connection_not_found", f"connection {connection_id} does not exist")
        session.expunge(connection)
    return connection


def remembered_connection(runtime: Runtime, connection_id: int) -> Connection:
    """`connection_row`, remembered by this process: buffering needs only its id and CRM, which
    never change (whether it may take deliveries is the directory's answer, read fresh)."""
    key = ("connection_row", connection_id)
    if key not in runtime.memo:
        runtime.memo[key] = connection_row(runtime, connection_id)
    found: Connection = runtime.memo[key]
    return found


def webhook_connection(runtime: Runtime, crm: str) -> Connection:
    """`crm_connection`, remembered by this process: webhooks need only its id and CRM, which never change."""
    key = ("webhook_connection", crm)
    if key not in runtime.memo:
        runtime.memo[key] = crm_connection(runtime, crm)
    return runtime.memo[key]


def accept_contacts(
    runtime: Runtime,
    connection: Connection,
    *,
    keyed: Iterable[KeyedContacts] = (),
    unkeyed: Iterable[tuple[str, IncomingContact]] = (),
) -> int:
    """Buffer contacts; those under a dedupe key already seen are dropped. Returns how many were new."""
    keyed = list(keyed)
    by_type: dict[str, list[IncomingContact]] = {}
    with runtime.session() as session:
        fresh = _first_seen(session, connection.crm, [key for key, _ in keyed])
        accepted = 0
        for key, brought in keyed:
            if key[:200] in fresh:
                accepted += 1
                for type_, contact in brought:
                    by_type.setdefault(type_, []).append(contact)
        duplicates = len(keyed) - accepted
        for type_, contact in unkeyed:
            by_type.setdefault(type_, []).append(contact)
            accepted += 1
        for type_, contacts in by_type.items():
            buffer_contacts(session, connection.id, type_, contacts)
    added = {type_: len(contacts) for type_, contacts in by_type.items()}
    note_buffered(runtime, connection, added, accepted=accepted, duplicates=duplicates)
    return accepted


def _first_seen(session: Session, source: str, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    keys = [key[:200] for key in dict.fromkeys(keys)]
    if session.get_bind().dialect.name == "postgresql":
        return set(session.scalars(_FIRST_SEEN_PG, {"source": source, "keys": json.dumps(keys)}))
    statement = (
        dialect_insert(session, WebhookEvent)
        .values([{"source": source, "dedupe_key": key} for key in keys])
        .on_conflict_do_nothing(index_elements=["source", "dedupe_key"])
        .returning(WebhookEvent.dedupe_key)
    )
    return set(session.scalars(statement))


# One statement whatever the delivery's size (one JSON text of keys, not a VALUES row per key), so
# PostgreSQL and SQLAlchemy prepare and compile it once instead of on every webhook; JSON rather
# than an array parameter, which psycopg adapts element by element in Python.
_KEYS = func.json_array_elements_text(cast(bindparam("keys", type_=String), JSON)).column_valued("key")
_EVENTS = WebhookEvent.__table__
_FIRST_SEEN_PG = (
    postgresql.insert(_EVENTS)
    .from_select(
        ["source", "dedupe_key", "received_at"], select(bindparam("source", type_=String), _KEYS, func.now())
    )
    .on_conflict_do_nothing(index_elements=["source", "dedupe_key"])
    .returning(_EVENTS.c.dedupe_key)
)


def start_segment_sync(
    runtime: Runtime,
    connection: Connection,
    *,
    source: dict[str, str | None],
    type_: str,
    trigger: str,
    name: str,
) -> Sync:
    """A sync of a whole segment, unless the same segment is already being synced (then that one)."""
    with runtime.session() as session:
        running = unsettled_sync(session, source_key(connection.id, source, type_))
    if running is not None:
        return running
    settings = connection.settings or {}
    return create_sync(
        runtime,
        connection_id=connection.id,
        crm=connection.crm,
        type_=type_,
        target_country=settings.get("default_country", runtime.settings.default_country),
        source=source,
        trigger=trigger,
        name=name,
        parameters=settings.get("parameters"),
    )
