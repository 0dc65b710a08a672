"""Personal data is kept only as long as it is useful, then deleted.

`purge_expired_data` runs hourly (connector/cron.py), so every bound below holds to within an hour.
N is DATA_RETENTION_DAYS (7).

- A sync's files (batch `.txt` files, CRM exports and imports: all under data_dir/syncs/<id>) go
  as soon as it completes. N days after it ends (completed, cancelled, or failed and left alone)
  its contacts, values, coalesced contacts and files go too; the sync row keeps its counts, cost
  and history.
- A sync left unsettled (runnable, paused, or awaiting approval) for N days since its last state
  change is cancelled, with "cancelled: contact data expired after N days unsettled" in its
  history, and purged the same way. Cancelled rather than kept: without its contacts it could only
  write back nothing and report success, and a step still running stops at its next lease renewal
  instead of launching batches for data that is gone. Its history says why; a new sync starts fresh.
- Contacts still waiting in a coalescing buffer (no sync yet) go N days after they arrived.
- `verified_values` rows go once `verified_at` is more than W days old, where W is the longest
  `reverify_after_days` any sync can still use: the largest of 30 (what a sync gets when nothing
  says otherwise: the CLI, the admin API, a webhook's list trigger), every live segment's, every
  connection's `reverify_after_days` setting (30 when unset) and every unsettled sync's. A row
  older than W can never let a value skip verification, so it would only be a copy of personal
  data. `record_verifications` rows go by the same rule on `written_at`: a record's flags are
  never newer than when they were written, so the record is verified again anyway.
- `webhook_events` (delivery keys, kept to ignore redeliveries) go after 7 days, past every
  CRM's redelivery window (the longest, 3 days; each CRM's webhook module gives its own).
- Stray files: the directory of a sync already purged (or gone) is removed, say one a killed step
  wrote after the purge; files older than N days in data_dir/<crm>, where exports were
  downloaded before they moved into the sync's own directory, are deleted.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from connector.crm.registry import CRMS
from connector.db import affected_rows
from connector.models import (
    CoalescedContact,
    Connection,
    RecordVerification,
    Segment,
    Sync,
    SyncAction,
    SyncContact,
    SyncValue,
    VerifiedValue,
    WebhookEvent,
    utcnow,
)
from connector.pipeline.batchfiles import remove_sync_files
from connector.pipeline.syncs import SyncStateError, cancel_sync
from connector.runtime import Runtime, get_runtime
from connector.states import ENDED_VALUES, UNSETTLED_VALUES

log = logging.getLogger(__name__)
DEFAULT_REVERIFY_AFTER_DAYS = 30
WEBHOOK_REDELIVERY_DAYS = 7


def purge_expired_data(runtime: Runtime | None = None) -> list[int]:
    """Delete whatever personal data has outlived its use; returns the syncs whose data went."""
    runtime = runtime or get_runtime()
    now = utcnow()
    cutoff = now - timedelta(days=runtime.settings.data_retention_days)
    abandoned = _cancel_abandoned_syncs(runtime, cutoff)
    with runtime.session() as session:
        ended = session.scalars(
            select(Sync.id).where(
                Sync.status.in_(ENDED_VALUES),
                Sync.updated_at < cutoff,
                Sync.data_purged_at.is_(None),
            )
        ).all()
    expired = sorted({*ended, *abandoned})
    for sync_id in expired:
        purge_sync_data(runtime, sync_id)
    window, rows = _delete_expired_rows(runtime, now, cutoff)
    removed_files = _remove_stray_files(runtime, cutoff)
    # An hourly run that found nothing to delete is routine (DEBUG); one that deleted something is news.
    level = logging.INFO if expired or removed_files or any(rows.values()) else logging.DEBUG
    log.log(
        level,
        "personal_data_purged",
        extra={
            "sync_ids": expired,
            "cancelled_sync_ids": abandoned,
            "files": removed_files,
            "reverify_window_days": window,
            **rows,
        },
    )
    return expired


def purge_sync_data(runtime: Runtime, sync_id: int) -> None:
    remove_sync_files(runtime, sync_id)
    with runtime.session() as session:
        # A sync's verdict actions go with its contacts (a CRM's refusal may quote a value).
        for model in (SyncContact, SyncValue, SyncAction, CoalescedContact):
            session.execute(delete(model).where(model.sync_id == sync_id))
        session.execute(update(Sync).where(Sync.id == sync_id).values(data_purged_at=utcnow()))


def _cancel_abandoned_syncs(runtime: Runtime, cutoff: datetime) -> list[int]:
    """Cancel the syncs unsettled since before `cutoff`: their contact data is about to go."""
    days = runtime.settings.data_retention_days
    with runtime.session() as session:
        stale = session.scalars(
            select(Sync.id).where(Sync.status.in_(UNSETTLED_VALUES), Sync.updated_at < cutoff)
        ).all()
    cancelled = []
    for sync_id in stale:
        try:
            cancel_sync(runtime, sync_id, note=f"cancelled: contact data expired after {days} days unsettled")
        except SyncStateError:
            continue  # it ended meanwhile: purged by the ended syncs' rule in due time
        cancelled.append(sync_id)
    return cancelled


def reverify_window_days(session: Session) -> int:
    """W: the longest `reverify_after_days` a sync can still use (see the module docstring)."""
    segments = session.scalar(
        select(func.max(Segment.reverify_after_days)).where(Segment.deleted_at.is_(None))
    )
    unsettled = session.scalar(
        select(func.max(Sync.reverify_after_days)).where(Sync.status.in_(UNSETTLED_VALUES))
    )
    connections = [
        int((settings or {}).get("reverify_after_days", DEFAULT_REVERIFY_AFTER_DAYS))
        for settings in session.scalars(select(Connection.settings))
    ]
    return max(DEFAULT_REVERIFY_AFTER_DAYS, segments or 0, unsettled or 0, *connections)


def _delete_expired_rows(runtime: Runtime, now: datetime, cutoff: datetime) -> tuple[int, dict[str, int]]:
    """The reverify window in days, and the rows deleted per table."""
    with runtime.session() as session:
        window = reverify_window_days(session)
        unusable = now - timedelta(days=window)
        redelivered = now - timedelta(days=WEBHOOK_REDELIVERY_DAYS)
        written = RecordVerification.written_at
        statements = {
            "verified_values": delete(VerifiedValue).where(VerifiedValue.verified_at < unusable),
            "record_verifications": delete(RecordVerification).where(written < unusable),
            "webhook_events": delete(WebhookEvent).where(WebhookEvent.received_at < redelivered),
            "buffered_contacts": delete(CoalescedContact).where(
                CoalescedContact.sync_id.is_(None), CoalescedContact.received_at < cutoff
            ),
        }
        deleted = {name: affected_rows(session.execute(statement)) for name, statement in statements.items()}
    return window, deleted


def _remove_stray_files(runtime: Runtime, cutoff: datetime) -> int:
    """Directories of syncs already purged or gone, and old files of the former shared export directory."""
    data_dir = runtime.settings.data_dir
    root = data_dir / "syncs"
    on_disk = {int(path.name) for path in root.iterdir() if path.name.isdigit()} if root.is_dir() else set()
    with runtime.session() as session:
        keep = set(
            session.scalars(select(Sync.id).where(Sync.id.in_(on_disk), Sync.data_purged_at.is_(None)))
        )
    for sync_id in on_disk - keep:
        remove_sync_files(runtime, sync_id)
    removed = len(on_disk - keep)
    for name in CRMS:
        for path in (data_dir / name).rglob("*") if (data_dir / name).is_dir() else ():
            if path.is_file() and path.stat().st_mtime < cutoff.timestamp():
                path.unlink(missing_ok=True)
                removed += 1
    return removed
