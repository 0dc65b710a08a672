"""Scheduled segment syncs: the cron process asks every 20 s which segments are due.

Each due time gets one idempotency key (segment id + due minute), so a duplicated tick or a
second cron process finds the sync already there. A segment whose previous sync is still
running is deferred: the next tick tries again, and if a newer due time has come by then the
older one is folded into it rather than run late.
"""

from __future__ import annotations

import logging
from datetime import datetime

from croniter import croniter
from sqlalchemy import select

from connector.models import RUNNABLE_STATES, Segment, Sync, SyncStatus, utcnow
from connector.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)


def latest_due_time(schedule: str, now: datetime) -> datetime:
    return croniter(schedule, now).get_prev(datetime)


def due_key(segment_id: int, due: datetime) -> str:
    return f"segment:{segment_id}:{due:%Y-%m-%dT%H:%M}"


def enqueue_due_segment_syncs(runtime: Runtime | None = None, now: datetime | None = None) -> list[int]:
    """Start the syncs of every segment whose schedule came due; returns the new sync ids."""
    from connector.pipeline.segments import sync_segment

    runtime = runtime or get_runtime()
    now = now or utcnow()
    started = []
    with runtime.session() as session:
        segments = session.execute(
            select(Segment.id, Segment.schedule, Segment.created_at).where(
                Segment.schedule.is_not(None), Segment.deleted_at.is_(None)
            )
        ).all()
    for segment_id, schedule, created_at in segments:
        due = latest_due_time(schedule, now)
        if due < created_at:
            continue  # not due since the segment was created
        key = due_key(segment_id, due)
        with runtime.session() as session:
            if session.scalar(select(Sync.id).where(Sync.idempotency_key == key)) is not None:
                continue
            if _running(session, segment_id):
                log.info("scheduled_sync_deferred", extra={"segment_id": segment_id, "due": due.isoformat()})
                continue
        sync = sync_segment(runtime, segment_id, "schedule", idempotency_key=key)
        started.append(sync.id)
    return started


def _running(session, segment_id: int) -> bool:  # type: ignore[no-untyped-def]
    active = [str(s) for s in RUNNABLE_STATES | {SyncStatus.AWAITING_APPROVAL}]
    return (
        session.scalar(select(Sync.id).where(Sync.segment_id == segment_id, Sync.status.in_(active)).limit(1))
        is not None
    )
