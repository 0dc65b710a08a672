"""The reconciler: the database says which syncs should be moving; make sure a job moves them.

A step job can vanish: its worker was SIGKILLed, Redis restarted empty, or the process died
between committing a step and enqueueing the next. Every minute the cron process looks for
runnable syncs whose job is gone (or stuck with an expired lease) and enqueues a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta

from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from connector.models import Sync, utcnow
from connector.pipeline.jobs import schedule_step
from connector.runtime import Runtime, get_runtime
from connector.states import RUNNABLE_VALUES

log = logging.getLogger(__name__)

_WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED}


def reconcile(
    runtime: Runtime | None = None,
    *,
    overdue_after_seconds: float = 30.0,
    sync_ids: Collection[int] | None = None,
) -> list[int]:
    """Re-enqueue every runnable sync (of `sync_ids` only, if given) that has no live job; returns their ids.

    Safe to run at any moment and from several processes: a job that turns out to be
    redundant finds another job id on the sync and does nothing. A scheduled job counts as
    gone once it is `overdue_after_seconds` late: the scheduler that should have moved it
    died with its worker, and its lock keeps the other workers' schedulers off for minutes.
    """
    runtime = runtime or get_runtime()
    now = utcnow()
    query = select(Sync.id, Sync.job_id, Sync.lease_until).where(Sync.status.in_(RUNNABLE_VALUES))
    if sync_ids is not None:  # a CLI run reconciles its own sync, never one a killed run left behind
        query = query.where(Sync.id.in_(list(sync_ids)))
    with runtime.session() as session:
        candidates = session.execute(query).all()
    revived = []
    for sync_id, job_id, lease_until in candidates:
        if lease_until is not None and lease_until > now:
            continue  # a worker is running its step right now
        if _job_waiting(runtime, job_id, now - timedelta(seconds=overdue_after_seconds)):
            continue
        schedule_step(runtime, sync_id)
        revived.append(sync_id)
    if revived:
        log.warning("reconciler_requeued_syncs", extra={"sync_ids": revived})
    return revived


def _job_waiting(runtime: Runtime, job_id: str | None, overdue_before: datetime) -> bool:
    """Queued, or scheduled and not overdue. A started job counts only through its lease (checked above)."""
    if job_id is None:
        return False
    try:
        job = Job.fetch(job_id, connection=runtime.redis)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=False)
    if status == JobStatus.SCHEDULED:
        registry = ScheduledJobRegistry(job.origin, connection=runtime.redis)
        try:
            due = registry.get_scheduled_time(job)
        except NoSuchJobError:
            return False
        return due >= overdue_before
    return status in _WAITING
