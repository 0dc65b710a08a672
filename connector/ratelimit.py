"""Rate limits shared by every process through Redis.

A sliding-window log: each request adds a member to a sorted set scored by time; a request
that finds the window already full takes its member back and waits until the oldest member
leaves the window. Plain MULTI/EXEC (no Lua), so the in-process fallback broker works too.

`FairShareLimiter` shares one such window between the connections (portals, orgs) that use it:
ApexVerify allows 180 calls a minute for the whole deployment, and one connection's syncs must
not take them all. Each call takes a slot in the shared window and one in its connection's own
window, whose limit is the connection's share: the window less a reserve (a sixth, 30 of 180),
divided between the connections that called in the last period. The shares of the connections
at work add up to at most the window less the reserve, so a connection that starts calling finds
the reserve free at once, and from its first call on the others' shares shrink to make room for
its own. A connection alone gets the window less the reserve (150 of 180 a minute).

Why a share and not first come, first served: a connection's calls come from as many workers as
run its syncs, so with one window the connection with more syncs takes more of it, and one that
filled it leaves a newcomer waiting up to a minute. Measured (tests/apexverify/
test_apexverify_fair_share.py, windows of 24 calls, reserve 4): connection A calling from three
threads and B from one made 39 and 40 calls over four windows (shares of 10 each); once C called
too, 27, 25 and 24 (shares of 6-7); B's first calls after A had filled its share went through at
once (the reserve). The syncs themselves need few calls (a million contacts: 16), so the limit
binds only when many syncs poll at once; then no connection can hold back the others.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable

import redis


def _acquire(
    try_acquire: Callable[[], float], sleep: Callable[[float], None], max_wait: float | None
) -> float:
    """`acquire` of both limiters: try, sleep the wait it names, try again; the seconds waited, or -1
    rather than wait longer than `max_wait` in total."""
    waited = 0.0
    while True:
        wait = try_acquire()
        if wait == 0.0:
            return waited
        if max_wait is not None and waited + wait > max_wait:
            return -1.0
        sleep(wait)
        waited += wait


class RateLimiter:
    def __init__(
        self,
        connection: redis.Redis,
        key: str,
        limit: int,
        period_seconds: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.connection = connection
        self.key = f"connector:ratelimit:{key}"
        self.limit = limit
        self.period = period_seconds
        self._sleep = sleep

    def try_acquire(self) -> float:
        """Take a slot if one is free: returns 0.0, else the seconds to wait before trying again."""
        now = time.time()
        member = f"{now:.6f}:{uuid.uuid4().hex[:8]}"
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self.key, 0, now - self.period)
            pipe.zadd(self.key, {member: now})
            pipe.zcard(self.key)
            pipe.expire(self.key, int(self.period) + 5)
            _, _, count, _ = pipe.execute()
        if count <= self.limit:
            return 0.0
        self.connection.zrem(self.key, member)
        oldest = self.connection.zrange(self.key, 0, 0, withscores=True)
        if not oldest:
            return 0.01
        return max(0.01, float(oldest[0][1]) + self.period - now)

    def wait_time(self) -> float:
        """Seconds until a slot is free, taking none: 0.0 when one is free now."""
        now = time.time()
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self.key, 0, now - self.period)
            pipe.zrange(self.key, -self.limit, -self.limit, withscores=True)  # the limit-th newest
            _, members = pipe.execute()
        if not members:  # fewer than `limit` in the window
            return 0.0
        return max(0.01, members[0][1] + self.period - now)

    def acquire(self, max_wait: float | None = None) -> float:
        """Block until a slot is taken; returns the seconds waited.

        With `max_wait`, gives up (returning -1) rather than wait longer than that in total.
        """
        return _acquire(self.try_acquire, self._sleep, max_wait)

    def pause(self, seconds: float) -> None:
        """Fill the window so every process backs off (a 429 told us the server's clock)."""
        now = time.time()
        start = now + seconds - self.period
        members = {f"pause:{i}:{uuid.uuid4().hex[:6]}": start for i in range(self.limit)}
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.delete(self.key)
            pipe.zadd(self.key, members)
            pipe.expire(self.key, int(seconds + self.period) + 5)
            pipe.execute()


class FairShareLimiter:
    """`RateLimiter`'s window (`key`, `limit` per `period_seconds`) shared fairly between connections.

    This instance calls for connection `share_of`. A call takes a slot in the shared window and
    one in the connection's own window, whose limit is `share()`; when either is full it takes
    neither and waits. `pause` (a 429) fills the shared window: the server's limit is everyone's.
    """

    def __init__(
        self,
        connection: redis.Redis,
        key: str,
        limit: int,
        period_seconds: float,
        *,
        share_of: str,
        reserve: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.overall = RateLimiter(connection, key, limit, period_seconds, sleep=sleep)
        self.connection = connection
        self.key = self.overall.key
        self.limit = limit
        self.period = period_seconds
        self.share_of = share_of
        # Slots no connection at work may count on: what a connection that starts calling finds free.
        self.reserve = limit // 6 if reserve is None else reserve
        if not 0 <= self.reserve < limit:
            raise ValueError("reserve must be at least 0 and below the limit")
        self.own_key = f"{self.key}:connection:{share_of}"
        self.active_key = f"{self.key}:connections"
        self._sleep = sleep

    def share(self, active: int) -> int:
        """A connection's limit while `active` connections (itself included) call."""
        return max(1, (self.limit - self.reserve) // max(active, 1))

    def try_acquire(self) -> float:
        """Take a slot in both windows if both have one: returns 0.0, else the seconds to wait."""
        now = time.time()
        member = f"{now:.6f}:{uuid.uuid4().hex[:8]}"
        ttl = int(self.period) + 5
        with self.connection.pipeline(transaction=True) as pipe:
            # Calling (or waiting to) makes this connection one of those at work for a period.
            pipe.zadd(self.active_key, {self.share_of: now})
            pipe.zremrangebyscore(self.active_key, 0, now - self.period)
            pipe.zcard(self.active_key)
            pipe.expire(self.active_key, ttl)
            for key in (self.own_key, self.key):
                pipe.zremrangebyscore(key, 0, now - self.period)
                pipe.zadd(key, {member: now})
                pipe.zcard(key)
                pipe.expire(key, ttl)
            results = pipe.execute()
        active, own, overall = int(results[2]), int(results[6]), int(results[10])
        share = self.share(active)
        if own <= share and overall <= self.limit:
            return 0.0
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.zrem(self.own_key, member)
            pipe.zrem(self.key, member)
            # The slot that must leave each full window before this call fits (0: the oldest).
            pipe.zrange(self.own_key, own - 1 - share, own - 1 - share, withscores=True)
            pipe.zrange(self.key, overall - 1 - self.limit, overall - 1 - self.limit, withscores=True)
            _, _, own_blocking, overall_blocking = pipe.execute()
        waits = [
            float(blocking[0][1]) + self.period - now
            for full, blocking in ((own > share, own_blocking), (overall > self.limit, overall_blocking))
            if full and blocking
        ]
        return max([0.01, *waits])

    def acquire(self, max_wait: float | None = None) -> float:
        """Block until a slot is taken; returns the seconds waited (-1 when `max_wait` would pass)."""
        return _acquire(self.try_acquire, self._sleep, max_wait)

    def pause(self, seconds: float) -> None:
        """Fill the shared window so every process of every connection backs off."""
        self.overall.pause(seconds)


class InProcessWindow:
    """`RateLimiter`'s sliding window for this process alone: what stands in while Redis is down.

    Windows are kept by key for the life of the process (`window`), so every request of a process
    counts against the same one.
    """

    def __init__(self, limit: int, period_seconds: float) -> None:
        self.limit = limit
        self.period = period_seconds
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def try_acquire(self) -> float:
        with self._lock:
            now = self._expire(time.time())
            if len(self._times) < self.limit:
                self._times.append(now)
                return 0.0
            return max(0.01, self._times[0] + self.period - now)

    def wait_time(self) -> float:
        with self._lock:
            now = self._expire(time.time())
            if len(self._times) < self.limit:
                return 0.0
            return max(0.01, self._times[-self.limit] + self.period - now)

    def _expire(self, now: float) -> float:
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()
        return now


_windows: dict[str, InProcessWindow] = {}
_windows_lock = threading.Lock()


def window(key: str, limit: int, period_seconds: float) -> InProcessWindow:
    """This process's window under `key`, made on first use."""
    with _windows_lock:
        found = _windows.get(key)
        if found is None:
            found = _windows[key] = InProcessWindow(limit, period_seconds)
        return found


def forget_windows() -> None:
    """Drop every in-process window (a test's fresh start)."""
    with _windows_lock:
        _windows.clear()
