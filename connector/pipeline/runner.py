"""The durable job chain: one RQ job runs one step of one sync, then schedules the next.

A job carries only the sync id and its own job id. The sync row names the one job allowed to
run its next step (`job_id`), and that job must take the row's lease first, so a duplicated,
stale or re-enqueued job does nothing. Every outcome is committed before the next job is
enqueued; if the process dies in between, the reconciler notices the missing job.

Jobs are scheduled by connector.pipeline.jobs, which enqueues `run_sync_step` by its dotted name
(`STEP_JOB`): code that starts or resumes a sync does not import this module or the steps.

Claiming the lease also takes the connection's share of the workers (connector.pipeline.fair_share):
a step over it hands the sync to a new job a moment later instead of running, so one connection's
syncs cannot occupy every worker while another connection's wait.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from connector.crm.tokens import NEEDS_REAUTH
from connector.db import affected_rows
from connector.errors import ConnectorError, TransientError
from connector.metrics import observe_step
from connector.models import Connection, Sync, SyncStatus, utcnow
from connector.pipeline.alerts import (
    CONNECTION_NEEDS_REAUTH,
    SYNC_FAILED,
    alert_on_arrival,
    alert_quietly,
    enqueue_delivery,
)
from connector.pipeline.batchfiles import remove_sync_files
from connector.pipeline.counts import refresh_counts
from connector.pipeline.fair_share import LOCAL_CRM, defer_delay, has_room, live_workers
from connector.pipeline.jobs import enqueue_step, new_job_id, schedule_step
from connector.pipeline.polling import documented_gap, verification_poll_delay
from connector.pipeline.state import Advance, StepAborted, StepContext, StepResult, Wait, transition
from connector.pipeline.steps import STEPS
from connector.runtime import Runtime, get_runtime
from connector.states import COUNTING_STATES, RUNNABLE_STATES

log = logging.getLogger(__name__)


def run_sync_step(sync_id: int, job_id: str) -> str | None:
    """RQ entry point: run the current step of sync `sync_id` if this job still owns it.

    Returns None when the step was deferred (its connection had its share of the workers): the
    worker then logs the job at DEBUG only, as a deferral may come back every few seconds.
    """
    runtime = get_runtime()
    claim = _claim(runtime, sync_id, job_id)
    if claim == _DEFERRED:
        return None
    if claim != _CLAIMED:
        log.info("step_job_superseded", extra={"sync_id": sync_id, "job_id": job_id})
        return "superseded"
    context = StepContext(runtime, sync_id, job_id)
    with runtime.session() as session:
        status = SyncStatus(session.get_one(Sync, sync_id).status)
    step = STEPS.get(status)
    if step is None:
        _release(runtime, sync_id, job_id)
        return f"nothing to run in {status}"
    try:
        return _apply(runtime, sync_id, job_id, status, step(context))
    except StepAborted:
        log.info("step_aborted", extra={"sync_id": sync_id, "status": status})
        return "aborted"
    except TransientError as error:
        _pause(runtime, sync_id, job_id, error)
        return f"paused: {error.code}"
    except ConnectorError as error:
        fail_sync(runtime, sync_id, job_id, status, error.code, error.message)
        return f"failed: {error.code}"
    except DBAPIError as error:
        # The database went away mid-step: the step is idempotent, so try it again later.
        _pause(
            runtime,
            sync_id,
            job_id,
            TransientError("database_unavailable", type(error).__name__, retry_after=5),
        )
        return "paused: database_unavailable"
    except Exception as error:
        # Recorded on the sync for operators, then re-raised so RQ keeps the traceback too.
        fail_sync(runtime, sync_id, job_id, status, "unexpected_error", f"{type(error).__name__}: {error}")
        raise


_CLAIMED, _DEFERRED, _SUPERSEDED = "claimed", "deferred", "superseded"


def _claim(runtime: Runtime, sync_id: int, job_id: str) -> str:
    """Take the sync's lease if this job owns it and its connection has room for one more step.

    Without room, the sync is handed to a new job a few seconds later in the same transaction
    (so exactly one job owns it) and this one ends at once.
    """
    now = utcnow()
    lease = now + timedelta(seconds=runtime.settings.step_lease_seconds)
    workers = live_workers(runtime)  # read before the transaction: no Redis round trip inside it
    ours = (
        Sync.id == sync_id,
        Sync.job_id == job_id,
        or_(Sync.lease_until.is_(None), Sync.lease_until < now),
    )
    deferred_to = None
    with runtime.session() as session:
        found = session.execute(select(Sync.connection_id, Sync.crm).where(*ours)).one_or_none()
        if found is None:
            return _SUPERSEDED
        if found.crm != LOCAL_CRM and not has_room(session, found.connection_id, workers, now):
            deferred_to = new_job_id(sync_id)
            values: dict[str, object] = {"job_id": deferred_to}
        else:
            values = {"lease_until": lease}
        if not affected_rows(session.execute(update(Sync).where(*ours).values(**values))):
            return _SUPERSEDED
    if deferred_to is None:
        return _CLAIMED
    delay = defer_delay()
    enqueue_step(runtime, sync_id, deferred_to, delay)
    log.debug(
        "step_deferred",
        extra={"sync_id": sync_id, "connection_id": found.connection_id, "retry_in_seconds": round(delay, 1)},
    )
    return _DEFERRED


def _release(runtime: Runtime, sync_id: int, job_id: str) -> None:
    with runtime.session() as session:
        session.execute(
            update(Sync)
            .where(Sync.id == sync_id, Sync.job_id == job_id)
            .values(lease_until=None, job_id=None)
        )


def _owned(session: Session, sync_id: int, job_id: str) -> Sync | None:
    sync = session.get(Sync, sync_id, with_for_update=True, populate_existing=True)
    return sync if sync is not None and sync.job_id == job_id else None


def _apply(runtime: Runtime, sync_id: int, job_id: str, status: SyncStatus, result: StepResult) -> str:
    delay = 0.0
    alerted = False
    with runtime.session() as session:
        sync = _owned(session, sync_id, job_id)
        if sync is None or sync.status != status:
            return "superseded"
        sync.pause_reason = None
        sync.paused_until = None
        sync.pause_count = 0
        sync.paused_since = None
        if isinstance(result, Wait):
            sync.poll_attempt += 1
            delay = _poll_delay(runtime, session, sync)
        else:
            sync.poll_attempt = 0
            entered = sync.updated_at
            transition(session, sync, result.to, result.note)
            if status in COUNTING_STATES:
                refresh_counts(session, sync)
            alerted = alert_on_arrival(session, runtime, sync)  # in this transaction: once, restart-safe
            observe_step(runtime.redis, str(status), (sync.updated_at - entered).total_seconds())
            if result.to == SyncStatus.VERIFYING:
                delay = verification_poll_delay(session, runtime.settings, sync)
        sync.lease_until = None
        sync.job_id = None
        runnable = isinstance(result, Wait) or (isinstance(result, Advance) and result.to in RUNNABLE_STATES)
    if alerted:
        enqueue_delivery(runtime)
    if runnable:
        schedule_step(runtime, sync_id, delay)
    elif getattr(result, "to", None) == SyncStatus.COMPLETED:
        remove_sync_files(runtime, sync_id)  # the verdicts are in the database; the files held PII
    return f"{status} -> {getattr(result, 'to', status)}"


def _poll_delay(runtime: Runtime, session: Session, sync: Sync) -> float:
    """Verification polls follow the batch's expected time; other waits (parsing) the documented backoff."""
    if sync.status == SyncStatus.VERIFYING:
        return verification_poll_delay(session, runtime.settings, sync)
    return documented_gap(runtime.settings, sync.poll_attempt - 1)


def _pause(runtime: Runtime, sync_id: int, job_id: str, error: TransientError) -> None:
    with runtime.session() as session:
        sync = _owned(session, sync_id, job_id)
        if sync is None:
            return
        delay = pause_delay(runtime, error, sync.pause_count)
        if sync.pause_count == 0 or sync.paused_since is None:
            sync.paused_since = utcnow()  # the sync_paused_long alert counts from here
        alerted = _alert_lost_access(session, runtime, sync, error)
        sync.pause_count += 1
        sync.pause_reason = f"{error.code}: {error.message}"
        sync.paused_until = utcnow() + timedelta(seconds=delay)
        sync.lease_until = None
        sync.job_id = None
    log.warning(
        "step_paused", extra={"sync_id": sync_id, "code": error.code, "retry_in_seconds": round(delay, 1)}
    )
    if alerted:
        enqueue_delivery(runtime)
    schedule_step(runtime, sync_id, delay)


def _alert_lost_access(session: Session, runtime: Runtime, sync: Sync, error: TransientError) -> bool:
    """connection_needs_reauth, once per loss of the connection's access (see alerts.connection_subject)."""
    if error.code != NEEDS_REAUTH or sync.connection_id is None:
        return False
    connection = session.get(Connection, sync.connection_id)
    if connection is None or connection.status != "needs_reauth":
        return False
    return alert_quietly(session, runtime, CONNECTION_NEEDS_REAUTH, connection=connection)


def pause_delay(runtime: Runtime, error: TransientError, pauses_in_a_row: int) -> float:
    """How long a paused sync waits: what the error asks for, and longer the longer an outage lasts.

    A sync never fails for being paused; during a long outage it tries again every
    `pause_max_seconds` at most, so it resumes soon after the service is back without
    hammering it meanwhile. Jitter keeps syncs paused together from retrying together.
    """
    backoff = min(2.0 ** min(pauses_in_a_row, 30), runtime.settings.pause_max_seconds)
    return max(error.retry_after, random.uniform(0.75, 1.0) * backoff, 1.0)


def fail_sync(
    runtime: Runtime, sync_id: int, job_id: str | None, step: SyncStatus, code: str, message: str
) -> None:
    with runtime.session() as session:
        sync = session.get(Sync, sync_id, with_for_update=True, populate_existing=True)
        if sync is None or (job_id is not None and sync.job_id != job_id):
            return
        sync.failed_step = step
        sync.error_code = code
        sync.error_message = message
        sync.lease_until = None
        sync.job_id = None
        sync.paused_since = None
        transition(session, sync, SyncStatus.FAILED, f"{code}: {message}")
        alerted = alert_quietly(session, runtime, SYNC_FAILED, sync=sync)
    log.error("sync_failed", extra={"sync_id": sync_id, "step": str(step), "code": code, "error": message})
    if alerted:
        enqueue_delivery(runtime)
