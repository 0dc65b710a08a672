"""Rate limits shared by every process through Redis.

A sliding-window log: each request adds a member to a sorted set scored by time; a request
that finds the window already full takes its member back and waits until the oldest member
leaves the window. Plain MULTI/EXEC (no Lua), so the in-process fallback broker works too.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable

import redis


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
        waited = 0.0
        while True:
            wait = self.try_acquire()
            if wait == 0.0:
                return waited
            if max_wait is not None and waited + wait > max_wait:
                return -1.0
            self._sleep(wait)
            waited += wait

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
