"""The `worker` process: an RQ worker that is quiet while idle and says one line per job that did work.

RQ's worker logs four INFO lines for every job (dequeued, completed, "Job OK", result TTL), and
the cron process enqueues a sweep every few seconds, so an idle deployment wrote hundreds of
lines an hour that said nothing. RQ's own loggers stay at WARNING (connector.logs), where they
still report failed jobs, and this worker logs each finished job itself as one structured
`job_done` line: INFO when the job did something, DEBUG when it returned nothing to report
(a cron sweep that found no work returns 0; a step always reports its transition).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker

from connector.runtime import Runtime

log = logging.getLogger(__name__)


class ConnectorWorker(SimpleWorker):
    """Runs jobs in this process (so the database pool and rate limiters are reused between them)."""

    def perform_job(self, job: Job, queue: Queue) -> bool:
        started = time.monotonic()
        succeeded = super().perform_job(job, queue)
        if succeeded:
            log_job_done(job, job.return_value(), time.monotonic() - started)
        return succeeded


def log_job_done(job: Job, result: Any, seconds: float) -> None:
    """Our jobs return a count or a short status, never contact data, so the result is safe to log."""
    fields = {"job": job.func_name, "job_id": job.id, "result": result, "seconds": round(seconds, 3)}
    if "sync_id" in job.meta:
        fields["sync_id"] = job.meta["sync_id"]
    log.log(logging.INFO if result else logging.DEBUG, "job_done", extra=fields)


def run_worker(runtime: Runtime, *, burst: bool = False) -> None:
    """Work the queue (with RQ's scheduler for delayed steps) until stopped, or until empty in burst mode."""
    worker = ConnectorWorker([runtime.queue()], connection=runtime.redis)
    log.info("worker_started", extra={"worker": worker.name, "queue": runtime.settings.queue_name})
    # No logging_level: RQ would set its loggers to it and undo connector.logs' WARNING.
    worker.work(burst=burst, with_scheduler=True)
