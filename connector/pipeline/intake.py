"""Taking in what a CRM sends: de-duplicated contacts into the coalescing buffer, segments into syncs.

Both CRMs' webhooks end here, so redelivery handling and buffering work the same for each.
Everything is committed before the webhook answers; enqueueing afterwards is best effort.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from connector.metrics import count
from connector.models import RUNNABLE_STATES, Connection, Sync, WebhookEvent
from connector.pipeline.coalesce import IncomingContact, buffer_contacts, request_flush, waiting_count
from connector.pipeline.syncs import create_sync, ensure_connection
from connector.runtime import Runtime

KeyedContacts = tuple[str, list[tuple[str, IncomingContact]]]


def crm_connection(runtime: Runtime, crm: str) -> Connection:
    """The connection row of the one HubSpot portal / Salesforce org the environment configures."""
    settings = runtime.settings
    external_id = {"hubspot": settings.hubspot_portal_id, "salesforce": settings.salesforce_org_id}[
        crm
    ] or "default"
    with runtime.session() as session:
        connection = ensure_connection(session, crm, external_id, f"{crm} {external_id}")
        if "default_country" not in (connection.settings or {}):
            connection.settings = {**(connection.settings or {}), "default_country": settings.default_country}
    return connection


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
            if key in fresh:
                accepted += 1
                for type_, contact in brought:
                    by_type.setdefault(type_, []).append(contact)
        duplicates = len(keyed) - accepted
        for type_, contact in unkeyed:
            by_type.setdefault(type_, []).append(contact)
            accepted += 1
        waiting = {}
        for type_, contacts in by_type.items():
            buffer_contacts(session, connection.id, type_, contacts)
            waiting[type_] = waiting_count(session, connection.id, type_)
    for type_, number in waiting.items():
        request_flush(runtime, connection.id, type_, waiting=number)
    count(runtime.redis, "webhook_events", accepted, source=connection.crm, result="accepted")
    count(runtime.redis, "webhook_events", duplicates, source=connection.crm, result="duplicate")
    return accepted


def _first_seen(session, source: str, keys: list[str]) -> set[str]:  # type: ignore[no-untyped-def]
    if not keys:
        return set()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(WebhookEvent)
        .values([{"source": source, "dedupe_key": key[:200]} for key in dict.fromkeys(keys)])
        .on_conflict_do_nothing(index_elements=["source", "dedupe_key"])
        .returning(WebhookEvent.dedupe_key)
    )
    return set(session.scalars(statement))


def start_segment_sync(
    runtime: Runtime,
    connection: Connection,
    *,
    source: dict[str, str],
    type_: str,
    trigger: str,
    name: str,
) -> Sync:
    """A sync of a whole segment, unless the same segment is already being synced (then that one)."""
    with runtime.session() as session:
        active = session.scalars(
            select(Sync).where(
                Sync.connection_id == connection.id,
                Sync.type == type_,
                Sync.status.in_([str(s) for s in RUNNABLE_STATES]),
            )
        ).all()
        for sync in active:
            if sync.source == source:
                return sync
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
