"""When to ask ApexVerify whether a launched batch is done.

The API reports no progress, only "ongoing" or "done". The documented schedule (a poll at
launch, then 5 s, doubling, capped at 60 s) sees a batch that finished just after a poll a whole
gap later: up to 40 s late for a 40-second verification. Knowing roughly how long a batch will
take lets us do better with no more calls: the first poll comes at 80% of the expected time and
later ones every 15% of the time elapsed (5 s to 60 s), so completion is seen at most
max(15%, 5 s) late. The k-th poll never comes before the documented schedule's k-th poll, so we
never make more calls than it, however wrong the estimate; both targets hold for estimates from
15% short to 40% long.

A long estimate is the dangerous one: it puts the first poll off, and nothing brings it back
(a history of 40-row test files would put a million-row batch's first poll days out, and a
batch seen done only after a 10-minute outage pushed the next one's out by minutes). A short one
merely falls back towards the documented schedule. So the estimate errs short: it learns only from
batches of similar size (within 2x), and a sync's batches are assumed to verify side by side. A
batch counts for the middle of the gap between the poll that last saw it verifying and the one that
saw it done, unless that gap is wider than any gap either schedule plans (poll_max_seconds):
something held the poll up, so only the start of the gap is known. With no such history the
documented schedule is used as it is.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.config import Settings
from connector.models import Sync, SyncBatch, utcnow

FIRST_POLL_OF_ESTIMATE = 0.8
GAP_OF_ELAPSED = 0.15
HISTORY_BATCHES = 20
SIMILAR_SIZE = 2.0
# Room over poll_max_seconds for scheduler and queue latency before a gap counts as held up.
PLANNED_GAP_SLACK = 1.5


def documented_gap(settings: Settings, attempt: int) -> float:
    """The documented backoff after poll number `attempt` (0-based): 5 s, doubling, capped at 60 s."""
    return min(settings.poll_initial_seconds * 2 ** min(attempt, 30), settings.poll_max_seconds)


def documented_poll_time(settings: Settings, calls_made: int) -> float:
    """Seconds after launch of the documented schedule's poll number `calls_made` (0-based)."""
    return sum(documented_gap(settings, attempt) for attempt in range(calls_made))


def next_poll_time(settings: Settings, calls_made: int, last_poll: float, estimate: float | None) -> float:
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
    estimate = estimate_verification_seconds(session, settings, sync.type, max(b.rows for b in pending))
    moment = next_poll_time(settings, sync.poll_attempt, elapsed, estimate)
    return max(moment - elapsed, 0.0)


def estimate_verification_seconds(
    session: Session, settings: Settings, type_: str, rows: int
) -> float | None:
    """Seconds a batch of `rows` rows should take, from recent batches of this type and similar size."""
    if rows <= 0:
        return None
    recent = session.execute(
        select(SyncBatch.launched_at, SyncBatch.seen_ongoing_at, SyncBatch.done_at, SyncBatch.rows)
        .join(Sync, Sync.id == SyncBatch.sync_id)
        .where(
            Sync.type == type_,
            SyncBatch.done_at.is_not(None),
            SyncBatch.seen_ongoing_at.is_not(None),
            SyncBatch.abandoned_at.is_(None),
            SyncBatch.rows.between(rows / SIMILAR_SIZE, rows * SIMILAR_SIZE),
        )
        .order_by(SyncBatch.done_at.desc())
        .limit(HISTORY_BATCHES)
    ).all()
    if not recent:
        return None
    widest = PLANNED_GAP_SLACK * settings.poll_max_seconds
    seconds = 0.0
    for launched, seen, done, _ in recent:
        # Never None here: the query took batches seen verifying and then done, so launched ones.
        assert launched is not None and seen is not None and done is not None
        seconds += _verification_seconds(launched, seen, done, widest)
    return seconds / sum(history_rows for *_, history_rows in recent) * rows


def _verification_seconds(launched: datetime, seen_ongoing: datetime, done: datetime, widest: float) -> float:
    """When the batch finished: mid-gap between the last two polls, or the gap's start if it was held up."""
    still_verifying = (seen_ongoing - launched).total_seconds()
    seen_done = (done - launched).total_seconds()
    if seen_done - still_verifying <= widest:
        return (still_verifying + seen_done) / 2
    return still_verifying
