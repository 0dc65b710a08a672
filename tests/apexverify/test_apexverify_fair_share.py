"""ApexVerify's one per-minute limit shared fairly between connections (connector.ratelimit.FairShareLimiter).

Real Redis (TEST_REDIS_URL), keys of each test's own. The counting tests use a 60 s window, so no
slot leaves it while they run and every figure is exact; the threaded test measures shares over a
few short windows and asserts ratios, not times.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from connector.apexverify import ApexVerifyClient
from connector.config import Settings
from connector.ratelimit import FairShareLimiter, RateLimiter
from tests.conftest import REDIS_TEST_URL


@pytest.fixture
def connection() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("needs a real Redis at TEST_REDIS_URL")
    yield client


@pytest.fixture
def key(connection: redis.Redis) -> Iterator[str]:
    name = f"test-fair-{uuid.uuid4().hex[:10]}"
    yield name
    for found in connection.scan_iter(f"connector:ratelimit:{name}*"):
        connection.delete(found)


def limiters(
    connection: redis.Redis, key: str, limit: int, period: float, *names: str, reserve: int | None = None
) -> list[FairShareLimiter]:
    return [FairShareLimiter(connection, key, limit, period, share_of=n, reserve=reserve) for n in names]


def take_all(limiter: FairShareLimiter) -> int:
    """Slots taken before the first refusal."""
    taken = 0
    while limiter.try_acquire() == 0.0:
        taken += 1
    return taken


def test_a_connection_alone_gets_the_window_less_the_reserve(connection: redis.Redis, key: str) -> None:
    (alone,) = limiters(connection, key, 180, 60, "1")

    assert alone.reserve == 30
    assert take_all(alone) == 150
    assert 59 < alone.try_acquire() <= 60  # its oldest slot leaves the window in a minute


def test_a_connection_that_starts_calling_finds_the_reserve_free_and_halves_the_others_share(
    connection: redis.Redis, key: str
) -> None:
    a, b = limiters(connection, key, 12, 60, "A", "B", reserve=2)

    assert take_all(a) == 10  # A alone: 12 less the reserve
    assert take_all(b) == 2  # B at once: the reserve (the window of 12 is then full)
    # Two at work: each one's share is (12 - 2) / 2 = 5; A holds 10, so A waits for 6 of them to go.
    assert (a.share(2), b.share(2)) == (5, 5)
    assert a.try_acquire() > 0 and b.try_acquire() > 0
    assert connection.zcard(a.key) == 12  # refused calls took no slot anywhere
    assert connection.zcard(a.own_key) == 10 and connection.zcard(b.own_key) == 2


def test_a_full_shared_window_refuses_without_taking_a_slot_of_the_connection(
    connection: redis.Redis, key: str
) -> None:
    (a,) = limiters(connection, key, 6, 60, "A", reserve=0)
    other = RateLimiter(connection, key, 6, 60)  # a client that knows no connection (shares the window)
    for _ in range(6):
        assert other.try_acquire() == 0.0

    assert a.try_acquire() > 0
    assert connection.zcard(a.own_key) == 0


def test_a_pause_holds_every_connection_back(connection: redis.Redis, key: str) -> None:
    a, b = limiters(connection, key, 10, 60, "A", "B")

    a.pause(5)

    assert 4 < a.try_acquire() <= 5 and 4 < b.try_acquire() <= 5


def test_shares_measured_over_short_windows(connection: redis.Redis, key: str) -> None:
    """Three threads of connection A call as fast as the limiter lets them, one of B the same;
    then C starts calling too. Counted: the calls each connection made per phase, from one window
    after the phase began (the first window still holds what was taken under the former shares)."""
    limit, period = 24, 0.5
    a, b, c = limiters(connection, key, limit, period, "A", "B", "C")
    calls: Counter[tuple[str, str]] = Counter()
    phase = ["settling"]
    stop = threading.Event()

    def hammer(limiter: FairShareLimiter) -> None:
        while not stop.is_set():
            limiter.acquire()
            calls[(phase[0], limiter.share_of)] += 1

    threads = [threading.Thread(target=hammer, args=(x,)) for x in (a, a, a, b)]
    for thread in threads:
        thread.start()
    time.sleep(period)
    phase[0] = "two"
    time.sleep(4 * period)
    phase[0] = "settling"
    third = threading.Thread(target=hammer, args=(c,))
    third.start()
    time.sleep(period)
    phase[0] = "three"
    time.sleep(4 * period)
    stop.set()
    for thread in [*threads, third]:
        thread.join(timeout=5)

    two = {n: calls[("two", n)] for n in "AB"}
    three = {n: calls[("three", n)] for n in "ABC"}
    print(f"\ncalls, A (3 threads) and B (1 thread), 4 windows of {limit}: {two}")
    print(f"calls once C calls too, 4 windows: {three}")
    # Shares of (24 - 4) / n each: equal whatever the number of threads behind a connection.
    assert 0.7 < two["B"] / two["A"] < 1.4
    assert min(three.values()) / max(three.values()) > 0.6
    # Never more than the window: 4 windows of 24, plus the one the phase started in.
    assert sum(two.values()) <= 5 * limit and sum(three.values()) <= 5 * limit


def test_from_settings_shares_the_limit_between_connections_when_it_knows_the_connection() -> None:
    settings = Settings(apexverify_base_url="http://apexverify.invalid", apexverify_rate_limit_per_minute=42)
    connection = redis.Redis.from_url(REDIS_TEST_URL)

    fair = ApexVerifyClient.from_settings(settings, connection, connection_id=7).limiter
    plain = ApexVerifyClient.from_settings(settings, connection).limiter

    assert isinstance(fair, FairShareLimiter) and isinstance(plain, RateLimiter)
    assert fair.key == plain.key == "connector:ratelimit:apexverify"  # one window for the deployment
    assert (fair.limit, fair.period, fair.share_of, fair.reserve) == (42, 60, "7", 7)
    assert fair.own_key == "connector:ratelimit:apexverify:connection:7"
