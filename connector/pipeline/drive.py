"""Running one sync's job chain inside this process (`connector verify`, `connector demo`).

The jobs are the same RQ jobs a `worker` process runs; driving them here means the CLI works
without a separate worker, and an in-process broker works when no Redis is around. A CLI run
touches nothing but its own sync, even on a Redis and database a deployment shares:

- its jobs go to a queue of its own (`private_queue`), so no deployment worker runs them and
  this process runs no one else's — a sync left behind by a killed run waits for
  `connector verify --resume` instead of being completed (and charged) by the next run;
- its reconciler looks at its own sync only;
- due polls are moved to the queue on every tick by RQ's burst-mode scheduler pass (its lock is
  per queue, so always ours), and the worker skips RQ's command channel: redis-py's pub/sub
  teardown could block each burst for a minute (rq/rq#1613), which made a real Redis slower
  than the in-process broker.

It stops early, leaving the sync resumable: after `max_wait` seconds of pauses in a row (an
outage, a wrong base URL), or on SIGINT/SIGTERM under `stop_on_signals`. Either raises
`DriveStopped` wherever the step is, even mid-request, which is as safe as a killed worker:
every step commits what it did before moving on and may run again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import redis
from rq.job import Job
from rq.worker import SimpleWorker
from sqlalchemy import update

from connector.models import Sync, SyncStatus
from connector.pipeline.reconcile import reconcile
from connector.runtime import Runtime, set_runtime
from connector.states import RUNNABLE_STATES

EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
_STOP_SIGNALS = {
    signal.SIGINT: ("interrupted", EXIT_INTERRUPTED),
    signal.SIGTERM: ("terminated", EXIT_TERMINATED),
}
# Sent by the max-wait timer to this process's main thread, to end a step stuck in retries.
_DEADLINE_SIGNAL = signal.SIGUSR1


class DriveStopped(SystemExit):
    """The drive ended with the sync unsettled: `reason` is interrupted, terminated or max_wait.

    A SystemExit, so RQ's worker loop lets it through and, uncaught, it exits with `exit_code`
    without a traceback. `sync` is the sync as it was left (set by `drive_until_settled`).
    """

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(exit_code)
        self.reason = reason
        self.exit_code = exit_code
        self.sync: Sync | None = None


class _SyncWorker(SimpleWorker):
    """An RQ worker on this process's private queue; the command, not RQ, owns SIGINT and SIGTERM."""

    def _install_signal_handlers(self) -> None:
        return None  # RQ's would swallow the first Ctrl-C mid-job and raise StopRequested later

    def subscribe(self) -> None:
        return None  # no `rq` commands reach a CLI run, and the pub/sub teardown can block 60 s

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        if isinstance(exc_info[1], DriveStopped):
            raise exc_info[1]  # through RQ's catch-all: a stop is not a failed job
        return super().handle_exception(job, *exc_info)


@contextmanager
def private_queue(runtime: Runtime) -> Iterator[Runtime]:
    """The runtime with a queue of its own, deleted with what waits in it on the way out.

    Its syncs' jobs reach no other worker, and a worker on it runs no one else's.
    """
    name = f"{runtime.settings.queue_name}-cli-{uuid.uuid4().hex[:10]}"
    own = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, queue_name=name))
    try:
        yield own
    finally:
        _forget_queue(own)


def drive_until_settled(
    runtime: Runtime,
    sync_id: int,
    *,
    on_tick: Callable[[Sync], None] | None = None,
    tick_seconds: float = 0.25,
    reconcile_every: float = 10.0,
    max_wait: float | None = None,
) -> Sync:
    """Work the queue until the sync completes, fails, is cancelled or waits for approval.

    Raises DriveStopped after `max_wait` seconds of pauses in a row, or on a signal under
    `stop_on_signals`; the sync's lease is released first so that it can be resumed at once.
    """
    set_runtime(runtime)
    worker = _SyncWorker([runtime.queue()], connection=runtime.redis)
    paused_since: float | None = None
    last_reconcile = time.monotonic()
    try:
        while True:
            with _deadline(_remaining(paused_since, max_wait)):
                worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
            sync = load_sync(runtime, sync_id)
            if on_tick is not None:
                on_tick(sync)
            if SyncStatus(sync.status) not in RUNNABLE_STATES:  # settled: no step job will move it on
                return sync
            paused_since = (paused_since or time.monotonic()) if sync.pause_reason else None
            remaining = _remaining(paused_since, max_wait)
            if remaining is not None and remaining <= 0:
                raise DriveStopped("max_wait", 1)
            if time.monotonic() - last_reconcile > reconcile_every:
                reconcile(runtime, sync_ids=[sync_id])
                last_reconcile = time.monotonic()
            time.sleep(tick_seconds)
    except DriveStopped as stop:
        stop.sync = release_sync(runtime, sync_id)
        raise


def load_sync(runtime: Runtime, sync_id: int) -> Sync:
    """The sync as committed now, detached from its session."""
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        session.expunge(sync)
    return sync


def release_sync(runtime: Runtime, sync_id: int) -> Sync:
    """Drop the lease of a step this process was running when it stopped, so a resume need not wait."""
    with runtime.session() as session:
        session.execute(update(Sync).where(Sync.id == sync_id).values(lease_until=None))
    return load_sync(runtime, sync_id)


def _remaining(paused_since: float | None, max_wait: float | None) -> float | None:
    if paused_since is None or max_wait is None:
        return None
    return max_wait - (time.monotonic() - paused_since)


def _forget_queue(runtime: Runtime) -> None:
    """Delete a private queue, its registries and their jobs: nobody will look at them again."""
    queue = runtime.queue()
    registries = [
        queue.scheduled_job_registry,
        queue.started_job_registry,
        queue.deferred_job_registry,
        queue.finished_job_registry,
        queue.failed_job_registry,
        queue.canceled_job_registry,
    ]
    try:
        job_ids = {job_id for registry in registries for job_id in registry.get_job_ids(cleanup=False)}
        for job in Job.fetch_many(sorted(job_ids), connection=runtime.redis):
            if job is not None:
                job.delete()
        runtime.redis.delete(*(registry.key for registry in registries))
        queue.delete(delete_jobs=True)
    except redis.exceptions.RedisError:
        pass  # Redis went away: nothing is left to tidy, or it waits there as any stale key would


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise DriveStopped in the main thread.

    A second signal within a second is the same stop delivered twice (`timeout`, or a supervisor,
    signals the process and then its group) and is ignored; a later one exits at once.
    """
    first_at: list[float] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        if first_at:
            if time.monotonic() - first_at[0] >= 1.0:
                os._exit(128 + signum)
            return
        first_at.append(time.monotonic())
        reason, code = _STOP_SIGNALS[signal.Signals(signum)]
        raise DriveStopped(reason, code)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise DriveStopped("max_wait") in the main thread once `seconds` pass, even inside a step.

    A timer thread signals the main thread (SIGALRM is RQ's job timeout), so a blocking read or a
    client's retry sleep is interrupted too. Outside the main thread only the loop's check applies.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = threading.Event()
    armed.set()

    def expire(_signum: int, _frame: FrameType | None) -> None:
        if armed.is_set():
            raise DriveStopped("max_wait", 1)

    previous = signal.signal(_DEADLINE_SIGNAL, expire)
    timer = threading.Timer(max(seconds, 0.0), signal.pthread_kill, (threading.get_ident(), _DEADLINE_SIGNAL))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        armed.clear()
        timer.cancel()
        timer.join()
        signal.signal(_DEADLINE_SIGNAL, previous)
