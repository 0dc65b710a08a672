"""Starting syncs and the operator actions on them (retry, cancel, approve).

A CRM segment (list, campaign, SOQL filter) is synced by at most one unsettled sync at a time,
whoever asks: the admin API, the ops page, the schedule or a webhook. Every sync row carries its
source's normalised key and a partial unique index over the unsettled ones decides races in the
database; the loser answers with the winner's sync.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from connector.apexverify import BatchStatus
from connector.crm.registry import segment_kinds
from connector.db import affected_rows, dialect_insert
from connector.errors import ConnectorError, NotFoundError
from connector.models import Connection, ContactOutcome, Sync, SyncContact, SyncStatus, SyncTransition, utcnow
from connector.pipeline.batchfiles import write_batch_files
from connector.pipeline.counts import refresh_counts
from connector.pipeline.jobs import schedule_step
from connector.pipeline.parameters import validate_country, validate_parameters, validate_type
from connector.pipeline.state import transition
from connector.runtime import Runtime
from connector.states import RUNNABLE_STATES, TERMINAL_STATES, UNSETTLED_VALUES


class SyncStateError(ConnectorError):
    """The sync is not in a state that allows the action."""

    http_status = 409


def ensure_connection(session: Session, crm: str, external_id: str, name: str | None = None) -> Connection:
    """The connection row, created if missing; concurrent first requests agree on one row."""
    query = select(Connection).where(Connection.crm == crm, Connection.external_id == external_id)
    connection = session.scalar(query)
    if connection is None:
        session.execute(
            dialect_insert(session, Connection)
            .values(crm=crm, external_id=external_id, name=name or f"{crm} {external_id}", settings={},
                    created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["crm", "external_id"])
        )  # fmt: skip
        connection = session.scalars(query).one()
    return connection


def create_sync(
    runtime: Runtime,
    *,
    connection_id: int,
    crm: str,
    type_: str,
    target_country: str,
    source: dict[str, Any],
    trigger: str,
    name: str,
    parameters: dict[str, Any] | None = None,
    segment_id: int | None = None,
    reverify_after_days: int = 30,
    max_net_cost: float | None = None,
    idempotency_key: str | None = None,
    actions: list[dict[str, str]] | None = None,
    plan_requested: bool = False,
) -> Sync:
    """Record a new sync and enqueue its first step. With an idempotency key, a repeat returns the first.

    `plan_requested`: the sync stops in awaiting_approval before its launch, whatever the cost,
    carrying its `plan` (steps.check_cost); approving it launches the batches already uploaded.
    """
    valid_type = validate_type(type_)
    fields = {
        "connection_id": connection_id,
        "crm": crm,
        "type": valid_type,
        "target_country": validate_country(target_country),
        "parameters": validate_parameters(parameters),
        "source": source,
        "trigger": trigger,
        "name": name[:255],
        "segment_id": segment_id,
        "reverify_after_days": reverify_after_days,
        "max_net_cost": max_net_cost,
        "idempotency_key": idempotency_key,
        "actions": actions or [],
        "plan_requested": plan_requested,
    }
    try:
        with runtime.session() as session:
            sync = add_sync(session, note=f"created by {trigger}", **fields)
    except IntegrityError:
        with runtime.session() as session:
            existing = _existing(session, idempotency_key, source_key(connection_id, source, valid_type))
        if existing is None:
            raise
        return existing
    schedule_step(runtime, sync.id)
    return sync


def _existing(session: Session, idempotency_key: str | None, key: str | None) -> Sync | None:
    """The sync an insert lost to: the one with its idempotency key, else its source's unsettled one."""
    if idempotency_key is not None:
        sync = session.scalars(select(Sync).where(Sync.idempotency_key == idempotency_key)).one_or_none()
        if sync is not None:
            return sync
    return unsettled_sync(session, key)


def source_key(connection_id: int, source: dict[str, Any], type_: str) -> str | None:
    """What makes two syncs read the same contacts: connection, segment kind and ref, object, type.

    None for sources no other sync shares (a file, coalesced webhook contacts). A ref counts in
    its segment kind's canonical form (`SegmentKind.same_ref`); one too long for the index (a long
    query) counts by its SHA-256.
    """
    ref = source.get("ref")
    if not ref:
        return None
    kind = str(source.get("kind"))
    found = segment_kinds().get(kind)
    ref = found[1].same_ref(str(ref)) if found else str(ref)
    head = f"{connection_id}|{kind}|{source.get('object') or ''}|{type_}|"
    if len(head) + len(ref) > 200:
        ref = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
    return head + ref


def unsettled_sync(session: Session, key: str | None) -> Sync | None:
    """The sync still running (or awaiting approval) for the source with this key, if any."""
    if key is None:
        return None
    return session.scalars(
        select(Sync).where(Sync.source_key == key, Sync.status.in_(UNSETTLED_VALUES))
    ).first()


def add_sync(session: Session, *, note: str, **fields: Any) -> Sync:
    """Insert a pending sync and the first line of its history (the caller commits and schedules).

    Raises IntegrityError (at flush or commit) when its source already has an unsettled sync.
    """
    key = source_key(fields["connection_id"], fields["source"], fields["type"])
    sync = Sync(status=SyncStatus.PENDING, source_key=key, **fields)
    session.add(sync)
    session.flush()
    session.add(SyncTransition(sync_id=sync.id, from_status=None, to_status=SyncStatus.PENDING, note=note))
    return sync


def retry_sync(runtime: Runtime, sync_id: int) -> Sync:
    """Resume a failed sync at the step that failed (its batches and progress are kept), or write
    a completed sync's failed writes again."""
    try:
        with runtime.session() as session:
            sync = _get(session, sync_id)
            if sync.status == SyncStatus.COMPLETED:
                _check_source_free(session, sync)
                _reopen_failed_writes(session, sync)
            elif sync.status == SyncStatus.FAILED and sync.failed_step is not None:
                _check_source_free(session, sync)
                step = _reset_broken_batches(runtime, session, sync, SyncStatus(sync.failed_step))
                transition(session, sync, step, f"retry after {sync.error_code}")
                sync.failed_step = sync.error_code = sync.error_message = None
            else:
                raise SyncStateError(
                    "not_failed",
                    f"sync {sync_id} is {sync.status}; only a failed sync, or a completed one with "
                    "write failures, can be retried",
                )
    except IntegrityError:  # another sync of the source started since the check
        with runtime.session() as session:
            _check_source_free(session, _get(session, sync_id))
        raise
    schedule_step(runtime, sync_id)
    return sync


def _reopen_failed_writes(session: Session, sync: Sync) -> None:
    """Set the contacts the CRM refused pending again and go back to writing back: the step writes
    them from the verdicts stored with the sync (nothing is uploaded, no credit is spent) and
    completes again. Refused contacts of a purged sync are gone: nothing to retry."""
    reopened = affected_rows(
        session.execute(
            update(SyncContact)
            .where(SyncContact.sync_id == sync.id, SyncContact.outcome == ContactOutcome.WRITE_FAILED)
            .values(outcome=ContactOutcome.PENDING, reason=None, error_message=None, written_to=None)
        )
    )
    if not reopened:
        raise SyncStateError(
            "nothing_to_retry", f"sync {sync.id} completed without write failures; nothing to retry"
        )
    note = f"retry {reopened} failed writes from the stored verdicts"
    transition(session, sync, SyncStatus.WRITING_BACK, note)
    refresh_counts(session, sync)


def _check_source_free(session: Session, sync: Sync) -> None:
    """A settled sync runs again only while no other sync holds its source (the index would refuse it)."""
    other = unsettled_sync(session, sync.source_key)
    if other is not None and other.id != sync.id:
        raise SyncStateError(
            "source_busy", f"sync {other.id} of the same source is {other.status}; retry after it settles"
        )


def _reset_broken_batches(runtime: Runtime, session: Session, sync: Sync, step: SyncStatus) -> SyncStatus:
    """Recover batches ApexVerify reported as internal_error; returns the step to resume at.

    A batch not yet launched is simply parsed again (free). A launched one cannot be launched
    again, so its values move to a new batch (uploaded from the start) and the broken one is
    abandoned; its charge stays in the sync's cost for the operator to claim back.
    """
    for batch in sync.batches:
        if batch.remote_status != BatchStatus.INTERNAL_ERROR or batch.abandoned_at is not None:
            continue
        batch.remote_status = None
        if batch.launched_at is None:
            batch.parse_requested = False
            continue
        batch.abandoned_at = utcnow()
        write_batch_files(session, runtime, sync, from_batch_seq=batch.seq)
        step = SyncStatus.UPLOADING
    if step == SyncStatus.UPLOADING:
        session.flush()
        refresh_counts(session, sync)  # the new batches' values are sent again; uploading does not count
    return step


def cancel_sync(runtime: Runtime, sync_id: int, note: str = "cancelled by operator") -> Sync:
    """End the sync; a step running now stops at its next lease renewal (before any further launch)."""
    with runtime.session() as session:
        sync = _get(session, sync_id)
        if sync.status in TERMINAL_STATES:
            raise SyncStateError("not_cancellable", f"sync {sync_id} is already {sync.status}")
        transition(session, sync, SyncStatus.CANCELLED, note)
        sync.job_id = None
        sync.lease_until = None
    return sync


def approve_sync(runtime: Runtime, sync_id: int) -> Sync:
    with runtime.session() as session:
        sync = _get(session, sync_id)
        if sync.status != SyncStatus.AWAITING_APPROVAL:
            raise SyncStateError(
                "not_awaiting_approval", f"sync {sync_id} is {sync.status}, not awaiting approval"
            )
        sync.approved_at = utcnow()
        transition(session, sync, SyncStatus.LAUNCHING, "cost approved by operator")
    schedule_step(runtime, sync_id)
    return sync


def _get(session: Session, sync_id: int) -> Sync:
    sync = session.get(Sync, sync_id, with_for_update=True)
    if sync is None:
        raise NotFoundError("sync_not_found", f"sync {sync_id} does not exist")
    return sync


def is_runnable(status: str) -> bool:
    return SyncStatus(status) in RUNNABLE_STATES
