"""Personal data is kept only as long as it is useful.

A sync's batch files and downloaded exports are deleted as soon as it completes (the verdicts
are in the database by then). DATA_RETENTION_DAYS after a sync ends (completed, cancelled or
failed and left alone), the cron process also deletes its contact and value rows; the sync row
keeps its counts, cost and history.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select, update

from connector.models import CoalescedContact, Sync, SyncContact, SyncStatus, SyncValue, utcnow
from connector.pipeline.batchfiles import remove_sync_files
from connector.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)
ENDED = (SyncStatus.COMPLETED, SyncStatus.CANCELLED, SyncStatus.FAILED)


def purge_expired_data(runtime: Runtime | None = None) -> list[int]:
    """Delete the stored values and files of syncs that ended more than DATA_RETENTION_DAYS ago."""
    runtime = runtime or get_runtime()
    cutoff = utcnow() - timedelta(days=runtime.settings.data_retention_days)
    with runtime.session() as session:
        expired = session.scalars(
            select(Sync.id).where(
                Sync.status.in_([str(s) for s in ENDED]),
                Sync.updated_at < cutoff,
                Sync.data_purged_at.is_(None),
            )
        ).all()
    for sync_id in expired:
        purge_sync_data(runtime, sync_id)
    if expired:
        log.info("sync_data_purged", extra={"sync_ids": list(expired)})
    return list(expired)


def purge_sync_data(runtime: Runtime, sync_id: int) -> None:
    remove_sync_files(runtime, sync_id)
    with runtime.session() as session:
        for model in (SyncContact, SyncValue, CoalescedContact):
            session.execute(delete(model).where(model.sync_id == sync_id))
        session.execute(update(Sync).where(Sync.id == sync_id).values(data_purged_at=utcnow()))
