"""When to ask ApexVerify whether a launched batch is done.

The API reports no progress, only "ongoing" or "done". The documented schedule (a poll at
launch, then 5 s, doubling, capped at 60 s) sees a batch that finished just after a poll a whole
gap later: up to 40 s late for a 40-second verification. Knowing roughly how long a batch will
take lets us do better with no more calls: the first poll comes at 80% of the expected time and
later ones every 15% of the time elapsed (5 s to 60 s), so completion is seen at most
max(15%, 5 s) late. The k-th poll never comes before the documented schedule's k-th poll, so we
never make more calls than it, however wrong the estimate; both targets hold for estimates from
15% short to 40% long. The estimate comes from when earlier batches were seen done, so it errs
long rather than short. With no history (a new account) the documented schedule is used as it is.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connector.config import Settings
from connector.models import Sync, SyncBatch, utcnow

FIRST_POLL_OF_ESTIMATE = 0.8
GAP_OF_ELAPSED = 0.15
HISTORY_BATCHES = 20


def documented_gap(settings: Settings, attempt: int) -> float:
    """The documented backoff after poll number `attempt` (0-based): 5 s, doubling, capped at 60 s."""
    return min(settings.poll_initial_seconds * 2 ** min(attempt, 30), settings.poll_max_seconds)


def documented_poll_time(settings: Settings, calls_made: int) -> float:
    """Seconds after launch of the documented schedule's poll number `calls_made` (0-based)."""
    return sum(documented_gap(settings, attempt) for attempt in range(calls_made))


def next_poll_time(
    settings: Settings, calls_made: int, last_poll: float, estimate: float | None
) -> float:
    """Seconds after launch for the next status poll, given the polls made so far."""
    floor = documented_poll_time(settings, calls_made)
    if estimate is None:
        return floor
    if calls_made == 0:
        return max(FIRST_POLL_OF_ESTIMATE * estimate, floor)
    gap = min(max(GAP_OF_ELAPSED * last_poll, settings.poll_initial_seconds), settings.poll_max_seconds)
    return max(last_poll + gap, floor)


def verification_poll_delay(session: Session, settings: Settings, sync: Sync) -> float:
    """Seconds from now until the sync's next status poll; `sync.poll_attempt` polls were made."""
    pending = [b for b in sync.batches if b.launched_at is not None and b.done_at is None]
    if not pending:
        return 0.0
    launched = min(b.launched_at for b in pending if b.launched_at is not None)
    elapsed = (utcnow() - launched).total_seconds()
    rows = sum(b.rows for b in pending)
    estimate = estimate_verification_seconds(session, sync.type, rows)
    moment = next_poll_time(settings, sync.poll_attempt, elapsed, estimate)
    return max(moment - elapsed, 0.0)


def estimate_verification_seconds(session: Session, type_: str, rows: int) -> float | None:
    """Rows times the seconds per row of the account's recent batches of this type, if any."""
    took = func.extract("epoch", SyncBatch.done_at - SyncBatch.launched_at)
    if session.get_bind().dialect.name == "sqlite":
        took = (func.julianday(SyncBatch.done_at) - func.julianday(SyncBatch.launched_at)) * 86400
    recent = (
        select(took.label("seconds"), SyncBatch.rows)
        .join(Sync, Sync.id == SyncBatch.sync_id)
        .where(
            Sync.type == type_,
            SyncBatch.done_at.is_not(None),
            SyncBatch.launched_at.is_not(None),
            SyncBatch.abandoned_at.is_(None),
            SyncBatch.rows > 0,
        )
        .order_by(SyncBatch.done_at.desc())
        .limit(HISTORY_BATCHES)
        .subquery()
    )
    seconds, history_rows = session.execute(
        select(func.sum(recent.c.seconds), func.sum(recent.c.rows))
    ).one()
    if not history_rows or seconds is None:
        return None
    return float(seconds) / float(history_rows) * rows

