"""The periodic jobs, for RQ's built-in cron (`rq cron connector.cron`): the `cron` process.

Exactly one cron process should run; a second one only enqueues jobs that are safe to repeat.
"""

from __future__ import annotations

from rq import cron

from connector.config import Settings
from connector.pipeline.reconcile import reconcile


def reconcile_job() -> int:
    return len(reconcile())


# This module is the cron process's configuration file, so reading the queue name here is its job.
cron.register(reconcile_job, queue_name=Settings.from_env().queue_name, interval=60, job_timeout=300)
