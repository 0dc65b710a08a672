"""The periodic jobs, for RQ's built-in cron (`rq cron connector.cron`): the `cron` process.

Exactly one cron process should run; a second one only enqueues jobs that are safe to repeat.
"""

from __future__ import annotations

from rq import cron

from connector.config import Settings
from connector.pipeline.alerts import alerts_tick
from connector.pipeline.coalesce import flush_due_buffers
from connector.pipeline.reconcile import reconcile
from connector.pipeline.retention import purge_expired_data
from connector.pipeline.schedule import enqueue_due_segment_syncs


def reconcile_job() -> int:
    return len(reconcile())


def flush_buffers_job() -> int:
    return len(flush_due_buffers())


def schedule_job() -> int:
    return len(enqueue_due_segment_syncs())


def purge_job() -> int:
    return len(purge_expired_data())


def alerts_job() -> int:
    return alerts_tick()


# This module is the cron process's configuration file, so reading the queue name here is its job.
QUEUE = Settings.from_env().queue_name
cron.register(reconcile_job, queue_name=QUEUE, interval=60, job_timeout=300)
# Well inside COALESCE_WINDOW_SECONDS, so a buffer is flushed soon after its window closes.
cron.register(flush_buffers_job, queue_name=QUEUE, interval=10, job_timeout=300)
# Several ticks a minute, so no minute of a per-minute schedule is skipped when a tick runs late.
cron.register(schedule_job, queue_name=QUEUE, interval=20, job_timeout=300)
# Alerts whose delivery is due (a retry, or one whose job was lost) and syncs paused too long.
cron.register(alerts_job, queue_name=QUEUE, interval=30, job_timeout=600)
cron.register(purge_job, queue_name=QUEUE, interval=3600, job_timeout=1800)
