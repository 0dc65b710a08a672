"""Scheduling a sync's next step: name the one job allowed to run it, then enqueue that job.

The job is enqueued by the dotted name of its function (`STEP_JOB`), so whatever starts or
resumes a sync (syncs, coalesce, the reconciler, the CLI) imports neither the runner nor the
steps; the worker imports them when it runs the job. connector.pipeline.runner holds the job
function and the rest of the chain.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import select, update

from connector.models import Sync
from connector.runtime import Runtime

# The job chain's logger: step_not_enqueued is logged under the runner's name, as it always was.
log = logging.getLogger("connector.pipeline.runner")

# The RQ job that runs a sync's current step (connector.pipeline.runner.run_sync_step).
STEP_JOB = "connector.pipeline.runner.run_sync_step"


def new_job_id(sync_id: int) -> str:
    return f"sync-{sync_id}-{uuid.uuid4().hex[:12]}"


def schedule_step(runtime: Runtime, sync_id: int, delay: float = 0.0) -> str:
    """Make a new job the sync's only runner and enqueue it (after the commit that names it)."""
    job_id = new_job_id(sync_id)
    with runtime.session() as session:
        replaced = session.scalar(select(Sync.job_id).where(Sync.id == sync_id).with_for_update())
        session.execute(update(Sync).where(Sync.id == sync_id).values(job_id=job_id, lease_until=None))
    enqueue_step(runtime, sync_id, job_id, delay)
    if replaced is not None:
        _discard_waiting_job(runtime, replaced)
    return job_id


def _discard_waiting_job(runtime: Runtime, job_id: str) -> None:
    """A superseded job would only wake up to do nothing; drop it if it is still waiting."""
    try:
        job = Job.fetch(job_id, connection=runtime.redis)
        if job.get_status(refresh=False) in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            job.delete()
    except (NoSuchJobError, redis.exceptions.RedisError):
        pass


def enqueue_step(runtime: Runtime, sync_id: int, job_id: str, delay: float = 0.0) -> None:
    """Enqueue, or leave it to the reconciler when Redis is away: the sync row already says what to run."""
    try:
        _enqueue(runtime, sync_id, job_id, delay)
    except redis.exceptions.RedisError as error:
        log.warning("step_not_enqueued", extra={"sync_id": sync_id, "error": type(error).__name__})


def _enqueue(runtime: Runtime, sync_id: int, job_id: str, delay: float) -> None:
    queue = runtime.queue()
    options = {
        "job_id": job_id,
        "job_timeout": max(runtime.settings.step_lease_seconds * 12, 3600),
        "result_ttl": 600,
        "failure_ttl": 7 * 24 * 3600,
        "description": f"sync {sync_id} step",
        "meta": {"sync_id": sync_id},  # for the worker's job_done log line
    }
    if delay > 0:
        queue.enqueue_in(timedelta(seconds=delay), STEP_JOB, sync_id, job_id, **options)
    else:
        queue.enqueue(STEP_JOB, sync_id, job_id, **options)
