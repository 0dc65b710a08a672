"""Alerts: raised once per sync (or loss of a connection's access) and kind, delivered until taken.

Why through the database: an alert is raised in the transaction that changes the sync's state
(`raise_alert`), as an `alerts` row unique on (kind, subject), so a step that runs again after a
crash, or a restarted worker, never raises it twice, and one that committed its change always
has its alert. Delivery happens later, outside any step: a job enqueued after the commit
(`enqueue_delivery`) and the cron tick (`alerts_tick`) send each row whose `next_attempt_at` is
due, claimed with SELECT … FOR UPDATE SKIP LOCKED so two processes never send it together. A
target that does not take it is tried again with backoff (per target: one that took it is not
sent it again) and given up after a day. A sync never waits for, nor fails because of, an alert.

What an alert says is composed here from the kind, codes and counts: a sync's error message can
quote a CRM's answer, so it is only included scrubbed of anything like an email address, a phone
number, a credential in a URL or a configured secret. The channels themselves are
connector.alert_targets.
"""

from __future__ import annotations

import logging
import random
import re
import time
from datetime import datetime, timedelta
from typing import Any

from rq import Queue
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from connector.alert_targets import AlertNotSent, configured_targets, send_alert
from connector.config import Settings
from connector.db import dialect_insert, uses_postgresql
from connector.models import Alert, Connection, Sync, SyncStatus, utcnow
from connector.retry import backoff
from connector.runtime import Runtime, get_runtime
from connector.states import RUNNABLE_STATES

log = logging.getLogger(__name__)

SYNC_FAILED = "sync_failed"
AWAITING_APPROVAL = "awaiting_approval"
SYNC_PAUSED_LONG = "sync_paused_long"
WRITE_FAILURES_HIGH = "write_failures_high"
CONNECTION_NEEDS_REAUTH = "connection_needs_reauth"
KINDS = (SYNC_FAILED, AWAITING_APPROVAL, SYNC_PAUSED_LONG, WRITE_FAILURES_HIGH, CONNECTION_NEEDS_REAUTH)
TEST_KIND = "test"

# The job that sends due alerts (`deliver_alerts_job`), enqueued by name like the step jobs.
DELIVERY_JOB = "connector.pipeline.alerts.deliver_alerts_job"
# Retries: 30 s, 1 min, 2 min, ... at most an hour apart; a target not reached in a day is given up.
FIRST_RETRY_SECONDS = 30.0
MAX_RETRY_SECONDS = 3600.0
GIVE_UP_AFTER = timedelta(hours=24)
DELIVERY_BUDGET_SECONDS = 20.0
# The ops page's links (connector.web.ops: `ops.sync_page`, `ops.connections.connection_page`).
SYNC_PAGE = "/admin/ops/syncs/{id}"
CONNECTION_PAGE = "/admin/ops/connections/{id}"
OPS_HOME = "/admin/"
MAX_QUOTED_CHARS = 300

_EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+")
_PHONE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_URL_CREDENTIAL = re.compile(r"(?i)([\w-]*(?:token|key|secret|password|signature|sig|code))=[^&\s]+")


# --- Raising -------------------------------------------------------------------------------------


def raise_alert(
    session: Session,
    kind: str,
    *,
    settings: Settings,
    sync: Sync | None = None,
    connection: Connection | None = None,
) -> bool:
    """Record the alert in the caller's transaction, once per kind and subject; True when new.

    Nothing is recorded when no target is configured. The caller enqueues its delivery after the
    commit (`enqueue_delivery`); the cron tick sends it anyway.
    """
    targets = configured_targets(settings)
    if not targets:
        return False
    if sync is not None:
        subject, payload = f"sync:{sync.id}", sync_payload(settings, kind, sync)
    elif connection is not None:
        subject, payload = connection_subject(connection), connection_payload(settings, kind, connection)
    else:
        raise ValueError("an alert is about a sync or a connection")
    now = utcnow()
    statement = (
        dialect_insert(session, Alert)
        .values(
            kind=kind,
            subject=subject,
            sync_id=sync.id if sync is not None else None,
            connection_id=connection.id if connection is not None else None,
            payload=payload,
            deliveries={name: {"state": "pending", "attempts": 0, "error": None} for name in targets},
            created_at=now,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=["kind", "subject"])
        .returning(Alert.__table__.c.id)  # no row when it was raised before (rowcount is -1 here)
    )
    return session.execute(statement).first() is not None


def alert_quietly(session: Session, runtime: Runtime, kind: str, **about: Any) -> bool:
    """`raise_alert` for a state change: a failure to raise is logged, never raised into the step.

    On PostgreSQL the insert runs in a savepoint, so its failure leaves the caller's transaction
    (the state change the alert is about) intact.
    """
    try:
        if uses_postgresql(session):
            with session.begin_nested():
                return raise_alert(session, kind, settings=runtime.settings, **about)
        return raise_alert(session, kind, settings=runtime.settings, **about)
    except Exception as error:
        subject = {name: getattr(value, "id", None) for name, value in about.items()}
        log.error("alert_not_raised", extra={"kind": kind, **subject, "error": type(error).__name__})
        return False


def connection_subject(connection: Connection) -> str:
    """One loss of access: the moment the connection's row last changed (it went needs_reauth)."""
    return f"connection:{connection.id}:{connection.updated_at.isoformat()}"


def sync_payload(settings: Settings, kind: str, sync: Sync) -> dict[str, Any]:
    return {
        "kind": kind,
        "sync_id": sync.id,
        "status": str(sync.status),
        "error_code": _error_code(kind, sync),
        "message": _sync_message(settings, kind, sync),
        "url": _link(settings, SYNC_PAGE.format(id=sync.id)),
    }


def connection_payload(settings: Settings, kind: str, connection: Connection) -> dict[str, Any]:
    return {
        "kind": kind,
        "connection_id": connection.id,
        "status": connection.status,
        "error_code": CONNECTION_NEEDS_REAUTH,
        "message": (
            f"Connection {connection.id} ({connection.crm} {connection.external_id}) lost access: the CRM "
            "refused its refresh token. Its syncs are paused until it is installed again from the ops page."
        ),
        "url": _link(settings, CONNECTION_PAGE.format(id=connection.id)),
    }


def _error_code(kind: str, sync: Sync) -> str | None:
    if kind == SYNC_FAILED:
        return sync.error_code
    if kind == SYNC_PAUSED_LONG:
        return _pause_code(sync)
    return None


def _pause_code(sync: Sync) -> str | None:
    return (sync.pause_reason or "").split(":", 1)[0] or None


def _sync_message(settings: Settings, kind: str, sync: Sync) -> str:
    counts, cost = sync.counts or {}, sync.cost or {}
    if kind == SYNC_FAILED:
        quoted = scrub(settings, sync.error_message or "")
        return (
            f"Sync {sync.id} failed at step {sync.failed_step}: {sync.error_code}"
            + (f" ({quoted})" if quoted else "")
            + ". Retry it from the ops page once the cause is fixed."
        )
    if kind == AWAITING_APPROVAL:
        return (
            f"Sync {sync.id} is waiting for approval: estimated net cost {float(cost.get('net', 0.0)):g} "
            "credits. Approve or cancel it on the ops page."
        )
    if kind == WRITE_FAILURES_HIGH:
        failed, total = write_failure_share(counts)
        return (
            f"Sync {sync.id} completed, but the CRM refused {failed} of {total} contact writes "
            f"({100 * failed / max(total, 1):.1f} %, over the {settings.alert_write_failure_percent:g} % "
            "threshold). The write failures are listed on the sync's page."
        )
    if kind == SYNC_PAUSED_LONG:
        return (
            f"Sync {sync.id} has been paused for over {settings.alert_pause_minutes} minutes "
            f"({_pause_code(sync)}); it resumes by itself once the cause clears."
        )
    return f"Sync {sync.id}: {kind}."


def scrub(settings: Settings, text: str) -> str:
    """`text` without email- or phone-like strings, credentials in URLs or configured secrets, cut short."""
    for secret in settings.secrets():
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _EMAIL.sub("[email]", text)
    text = _URL_CREDENTIAL.sub(lambda found: f"{found.group(1)}=***", text)
    text = _PHONE.sub("[number]", text)
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 1] + "…"


def _link(settings: Settings, path: str) -> str:
    return (settings.public_base_url or "").rstrip("/") + path


def write_failure_share(counts: dict[str, Any]) -> tuple[int, int]:
    """(writes refused, writes tried) of a sync's counts."""
    failed = int(counts.get("write_failed") or 0)
    return failed, failed + int(counts.get("verified") or 0)


def write_failures_high(settings: Settings, counts: dict[str, Any]) -> bool:
    failed, total = write_failure_share(counts)
    return total > 0 and 100 * failed / total > settings.alert_write_failure_percent


def alert_on_arrival(session: Session, runtime: Runtime, sync: Sync) -> bool:
    """The alert a sync's new state calls for, if any (awaiting approval, completed with many
    refused writes); True when one was raised."""
    if sync.status == SyncStatus.AWAITING_APPROVAL:
        return alert_quietly(session, runtime, AWAITING_APPROVAL, sync=sync)
    if sync.status == SyncStatus.COMPLETED and write_failures_high(runtime.settings, sync.counts or {}):
        return alert_quietly(session, runtime, WRITE_FAILURES_HIGH, sync=sync)
    return False


def raise_paused_long_alerts(runtime: Runtime, now: datetime | None = None) -> int:
    """sync_paused_long for every runnable sync paused since over ALERT_PAUSE_MINUTES ago."""
    if not configured_targets(runtime.settings):
        return 0
    cutoff = (now or utcnow()) - timedelta(minutes=runtime.settings.alert_pause_minutes)
    alerted = exists().where(Alert.kind == SYNC_PAUSED_LONG, Alert.sync_id == Sync.id)
    with runtime.session() as session:
        paused = session.scalars(
            select(Sync).where(
                Sync.status.in_(RUNNABLE_STATES),
                Sync.paused_since.is_not(None),
                Sync.paused_since < cutoff,
                ~alerted,
            )
        ).all()
        raised = sum(alert_quietly(session, runtime, SYNC_PAUSED_LONG, sync=sync) for sync in paused)
    if raised:
        enqueue_delivery(runtime)
    return raised


# --- Delivering ----------------------------------------------------------------------------------


def enqueue_delivery(runtime: Runtime) -> None:
    """Send the alerts just committed soon, from a worker; the cron tick does it when this cannot."""
    try:
        Queue(runtime.settings.queue_name, connection=runtime.redis).enqueue(
            DELIVERY_JOB, job_timeout=600, result_ttl=600, failure_ttl=24 * 3600, description="deliver alerts"
        )
    except Exception as error:  # Redis away: the row is there, and the cron tick will send it
        log.warning("alert_delivery_not_enqueued", extra={"error": type(error).__name__})


def deliver_alerts_job() -> int:
    """RQ entry point: send every due alert; the number of deliveries made."""
    return deliver_due_alerts(get_runtime())


def alerts_tick() -> int:
    """The cron tick: raise sync_paused_long where due, then send every due alert."""
    runtime = get_runtime()
    return raise_paused_long_alerts(runtime) + deliver_due_alerts(runtime)


def deliver_due_alerts(
    runtime: Runtime, *, limit: int = 100, budget_seconds: float = DELIVERY_BUDGET_SECONDS
) -> int:
    """Try each alert whose next attempt is due, one row (claimed, locked) at a time; the number of
    deliveries that went through.

    A job spends at most `budget_seconds` picking new rows: it runs on a worker that also
    runs sync steps, and targets that time out (ALERT_TIMEOUT_SECONDS each) must not keep that
    worker from them. What is left is due still, for the next tick."""
    now = utcnow()
    started = time.monotonic()
    sent = 0
    for _ in range(limit):
        if time.monotonic() - started > budget_seconds:
            break
        with runtime.session() as session:
            alert = session.scalars(
                select(Alert)
                .where(Alert.next_attempt_at <= now)
                .order_by(Alert.next_attempt_at, Alert.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if alert is None:
                break
            sent += _deliver(runtime.settings, alert)
    return sent


def _deliver(settings: Settings, alert: Alert) -> int:
    """Send `alert` to each target that has not taken it yet; record what happened and when to retry."""
    deliveries = {name: dict(state) for name, state in (alert.deliveries or {}).items()}
    configured = configured_targets(settings)
    now = utcnow()
    sent = 0
    for target, state in deliveries.items():
        if state.get("state") != "pending":
            continue
        state["attempts"] = int(state.get("attempts") or 0) + 1
        try:
            if target not in configured:
                raise AlertNotSent("alert_target_removed", f"{target} is no longer configured")
            send_alert(settings, target, alert.payload)
        except AlertNotSent as error:
            given_up = error.code == "alert_target_removed" or now - alert.created_at > GIVE_UP_AFTER
            state.update(state="failed" if given_up else "pending", error=f"{error.code}: {error.message}")
            _log_delivery(alert, target, state, error.code)
            continue
        state.update(state="sent", error=None, sent_at=now.isoformat())
        sent += 1
        _log_delivery(alert, target, state, None)
    alert.deliveries = deliveries
    pending = [state["attempts"] for state in deliveries.values() if state.get("state") == "pending"]
    alert.next_attempt_at = now + timedelta(seconds=retry_delay(max(pending))) if pending else None
    if not pending:
        alert.delivered_at = now
    return sent


def retry_delay(attempts: int) -> float:
    """30 s after the first failed try, doubling to an hour, with jitter so targets are not stampeded."""
    wait = FIRST_RETRY_SECONDS * backoff(attempts, MAX_RETRY_SECONDS / FIRST_RETRY_SECONDS)
    return random.uniform(0.75, 1.0) * wait


def _log_delivery(alert: Alert, target: str, state: dict[str, Any], code: str | None) -> None:
    fields = {"kind": alert.kind, "alert_id": alert.id, "target": target, "attempts": state["attempts"]}
    if code is None:
        log.info("alert_sent", extra=fields)
    else:
        log.warning("alert_not_sent", extra={**fields, "code": code, "outcome": state["state"]})


# --- The ops page's test button ------------------------------------------------------------------


def send_test_alert(settings: Settings) -> dict[str, str | None]:
    """Send a sample alert to every configured target now: {target: None when sent, else why not}."""
    payload = {
        "kind": TEST_KIND,
        "sync_id": None,
        "status": "test",
        "error_code": None,
        "message": "A test alert from the ops page: this target receives the connector's alerts.",
        "url": _link(settings, OPS_HOME),
    }
    results: dict[str, str | None] = {}
    for target in configured_targets(settings):
        try:
            send_alert(settings, target, payload)
            results[target] = None
        except AlertNotSent as error:
            results[target] = error.message
        log.info("alert_test_sent", extra={"target": target, "sent": results[target] is None})
    return results
