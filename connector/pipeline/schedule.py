"""Scheduled segment syncs: the cron process asks every 20 s which segments are due.

Each due time gets one idempotency key (segment id + due minute), so a duplicated tick or a
second cron process finds the sync already there. A segment whose previous sync is still
running is deferred: the next tick tries again, and if a newer due time has come by then the
older one is folded into it rather than run late. So is a segment whose list another trigger
(a webhook, an operator) is syncing: the sync it is answered with is not the scheduled one.

Segments whose connection was disconnected are skipped until it is installed again (a due time
missed meanwhile then starts at the next tick).

Each segment is tried on its own: a schedule that fails to compute (one stored before such
schedules were refused, e.g. 30 February) or a database error for one segment is logged and the
tick goes on with the others.
"""

from __future__ import annotations

import logging
from datetime import datetime

from croniter import croniter
from sqlalchemy import select

from connector.models import Connection, Segment, Sync, utcnow
from connector.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)


def latest_due_time(schedule: str, now: datetime) -> datetime:
    return croniter(schedule, now).get_prev(datetime)


def due_key(segment_id: int, due: datetime) -> str:
    return f"segment:{segment_id}:{due:%Y-%m-%dT%H:%M}"


def enqueue_due_segment_syncs(runtime: Runtime | None = None, now: datetime | None = None) -> list[int]:
    """Start the syncs of every segment whose schedule came due; returns the new sync ids."""
    runtime = runtime or get_runtime()
    now = now or utcnow()
    started = []
    with runtime.session() as session:
        segments = session.execute(
            select(Segment.id, Segment.schedule, Segment.created_at)
            .join(Connection, Connection.id == Segment.connection_id)
            .where(Segment.schedule.is_not(None), Segment.deleted_at.is_(None))
            .where(Connection.status != "disconnected")
            .order_by(Segment.id)
        ).all()
    for segment_id, schedule, created_at in segments:
        try:
            assert schedule is not None  # the query took scheduled segments only
            sync_id = _start_if_due(runtime, segment_id, schedule, created_at, now)
        except Exception as error:  # one segment's trouble must not stop the others' schedules
            log.warning(
                "scheduled_sync_failed", extra={"segment_id": segment_id, "error": type(error).__name__}
            )
            continue
        if sync_id is not None:
            started.append(sync_id)
    return started


def _start_if_due(
    runtime: Runtime, segment_id: int, schedule: str, created_at: datetime, now: datetime
) -> int | None:
    """The id of the sync started for the segment's latest due time, or None (not due, done, deferred)."""
    from connector.pipeline.segments import sync_segment

    due = latest_due_time(schedule, now)
    if due < created_at:
        return None  # not due since the segment was created
    key = due_key(segment_id, due)
    with runtime.session() as session:
        if session.scalar(select(Sync.id).where(Sync.idempotency_key == key)) is not None:
            return None
    # sync_segment answers with the segment's (or its source's) unsettled sync when there is one:
    # a sync not carrying this due time's key means the segment is busy.
    sync = sync_segment(runtime, segment_id, "schedule", idempotency_key=key)
    if sync.idempotency_key == key:
        return sync.id
    # DEBUG: every tick (20 s) repeats it for as long as the segment's earlier sync runs.
    log.debug("scheduled_sync_deferred", extra={"segment_id": segment_id, "due": due.isoformat()})
    return None
