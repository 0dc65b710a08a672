"""The verification poll schedule: as late as max(15%, 5 s) at most, never more calls than documented."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.config import Settings
from connector.models import Sync, SyncBatch, SyncStatus, utcnow
from connector.pipeline.polling import (
    documented_poll_time,
    estimate_verification_seconds,
    next_poll_time,
    verification_poll_delay,
)
from connector.pipeline.syncs import add_sync, ensure_connection
from connector.runtime import Runtime

SETTINGS = Settings()


def detect(done_after: float, estimate: float | None) -> tuple[int, float]:
    """(status calls, lateness) for a batch done `done_after` s after launch."""
    calls, moment = 0, 0.0
    while True:
        moment = next_poll_time(SETTINGS, calls, moment, estimate)
        calls += 1
        if moment >= done_after:
            return calls, moment - done_after


def documented(done_after: float) -> tuple[int, float]:
    return detect(done_after, None)


def test_without_history_the_documented_schedule_is_kept() -> None:
    assert [documented_poll_time(SETTINGS, k) for k in range(7)] == [0, 5, 15, 35, 75, 135, 195]
    assert documented(36) == (5, 39)  # seen a whole gap late: what the estimate is for


@given(
    done_after=st.floats(min_value=1, max_value=3600),
    accuracy=st.floats(min_value=0.85, max_value=1.4),  # learned from detection times: rarely short
)
def test_a_fair_estimate_sees_completion_within_15_percent_or_5_s(done_after: float, accuracy: float) -> None:
    calls, late = detect(done_after, accuracy * done_after)
    assert late <= max(0.15 * done_after, 5.0) + 1e-6
    assert calls <= documented(done_after)[0]


@given(
    done_after=st.floats(min_value=0, max_value=3600),
    estimate=st.floats(min_value=0, max_value=36000),
)
def test_any_estimate_makes_no_more_calls_than_the_documented_schedule(
    done_after: float, estimate: float
) -> None:
    assert detect(done_after, estimate)[0] <= documented(done_after)[0]


def _batch(
    runtime: Runtime, rows: int, launched_ago: float, took: float | None, seen_ongoing: float | None = None
) -> Sync:
    """A batch launched `launched_ago` s ago, last seen verifying at `seen_ongoing` s (default: just
    before it was seen done, `took` s after launch)."""
    now = utcnow()
    with runtime.session() as session:
        connection = ensure_connection(session, "file", "local")
        sync = add_sync(
            session, note="test", connection_id=connection.id, crm="file", type="email",
            target_country="US", source={}, trigger="cli", name="t",
        )  # fmt: skip
        launched = now - timedelta(seconds=launched_ago)
        done = launched + timedelta(seconds=took) if took is not None else None
        seen = launched + timedelta(seconds=seen_ongoing if seen_ongoing is not None else took or 0)
        sync.status = SyncStatus.COMPLETED if done else SyncStatus.VERIFYING
        session.add(
            SyncBatch(
                sync=sync,
                seq=1,
                rows=rows,
                file_path="x",
                launched_at=launched,
                seen_ongoing_at=seen,
                done_at=done,
            )
        )
    return sync


def test_the_estimate_is_learned_from_earlier_batches_per_row(runtime: Runtime) -> None:
    with runtime.session() as session:
        assert estimate_verification_seconds(session, SETTINGS, "email", 1000) is None
    _batch(runtime, rows=1000, launched_ago=3600, took=100)
    _batch(runtime, rows=3000, launched_ago=1800, took=300)
    with runtime.session() as session:
        assert abs(estimate_verification_seconds(session, SETTINGS, "email", 2000) - 200) < 0.01
        assert estimate_verification_seconds(session, SETTINGS, "phone", 2000) is None


def test_the_first_poll_of_a_launched_batch_waits_for_most_of_the_expected_time(runtime: Runtime) -> None:
    _batch(runtime, rows=500, launched_ago=3600, took=100)
    launched = _batch(runtime, rows=500, launched_ago=0, took=None)
    with runtime.session() as session:
        sync = session.get_one(Sync, launched.id)
        first = verification_poll_delay(session, runtime.settings, sync)
    assert 79 <= first <= 80  # 0.8 x 100 s, not at once and then 5, 15, 35, 75 s as documented


def _first_poll_delay(runtime: Runtime, sync: Sync) -> float:
    with runtime.session() as session:
        return verification_poll_delay(session, runtime.settings, session.get_one(Sync, sync.id))


def test_a_batch_seen_done_only_after_an_outage_does_not_put_off_the_next_first_poll(
    runtime: Runtime,
) -> None:
    # Seen verifying at launch, then ApexVerify was away for 10 minutes: it finished at any time in
    # between. Counting the 600 s put the next 30-row batch's first poll 6 minutes out.
    _batch(runtime, rows=40, launched_ago=3600, took=600, seen_ongoing=0)
    assert _first_poll_delay(runtime, _batch(runtime, rows=30, launched_ago=0, took=None)) < 1


def test_small_batches_do_not_set_the_schedule_of_a_large_one(runtime: Runtime) -> None:
    _batch(runtime, rows=40, launched_ago=3600, took=20)  # 0.5 s a row, mostly fixed latency
    with runtime.session() as session:
        assert estimate_verification_seconds(session, SETTINGS, "email", 1_000_000) is None  # not 500,000 s
        assert estimate_verification_seconds(session, SETTINGS, "email", 60) == pytest.approx(30)


def test_a_completion_counts_mid_gap_unless_the_gap_was_held_up_past_any_planned_gap(
    runtime: Runtime,
) -> None:
    _batch(runtime, rows=1000, launched_ago=7200, took=100, seen_ongoing=90)  # gap of 10 s: 95 s
    _batch(runtime, rows=1000, launched_ago=3600, took=300, seen_ongoing=120)  # 180 s, over 60 s: 120 s
    with runtime.session() as session:
        assert estimate_verification_seconds(session, SETTINGS, "email", 1000) == pytest.approx(
            (95 + 120) / 2
        )


def test_batches_of_one_sync_are_expected_to_verify_side_by_side(runtime: Runtime) -> None:
    _batch(runtime, rows=500, launched_ago=3600, took=100)
    launched = _batch(runtime, rows=500, launched_ago=0, took=None)
    with runtime.session() as session:
        sync = session.get_one(Sync, launched.id)
        session.add(
            SyncBatch(sync=sync, seq=2, rows=500, file_path="y", launched_at=sync.batches[0].launched_at)
        )
    assert 79 <= _first_poll_delay(runtime, launched) <= 80  # one batch's time, not two
