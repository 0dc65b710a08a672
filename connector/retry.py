"""Retrying a call to a service the connector depends on: the one loop every client runs.

The ApexVerify client and each CRM's API wrapper (with connector/crm/calls.py's back-off) call
`retrying`: it runs an attempt until one returns. When an attempt raises an error the client
retries (`retry_on`), the client's `decide` says what that failure means: it raises to end the
call (a refusal, or a TransientError once the retries that kind of failure allows are spent) or
returns how long to wait before the next attempt. None waits nothing here: something else holds
the next attempt back (a rate limiter every process has paused), or it may go at once (a
refreshed session).

`Tries` counts one call's failures, in all and by reason, since each reason (rate limited,
unavailable) has a budget of its own; `backoff` is the growing wait they share.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def backoff(attempt: int, cap: float) -> float:
    """1, 2, 4, ... seconds for retries 1, 2, 3, ..., never more than `cap`."""
    return min(cap, 2.0 ** (attempt - 1))


def retry_after_seconds(raw: str | None) -> float | None:
    """A Retry-After header that gives seconds, as seconds; None when absent or not a number (a date)."""
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


class Tries:
    """The failed attempts of one call so far: `failed` in all, and by reason."""

    def __init__(self) -> None:
        self.failed = 0
        self._by_reason: Counter[str] = Counter()

    def again(self, reason: str, limit: int) -> int | None:
        """Count a retry for `reason`: its number (1 for the first), or None past `limit` retries."""
        self._by_reason[reason] += 1
        number = self._by_reason[reason]
        return number if number <= limit else None

    def count(self, reason: str) -> int:
        """The retries counted for `reason` so far."""
        return self._by_reason[reason]


def retrying(
    attempt: Callable[[int], T],
    decide: Callable[[E, Tries], float | None],
    *,
    retry_on: type[E] | tuple[type[E], ...],
    sleep: Callable[[float], None],
    before: Callable[[], object] | None = None,
) -> T:
    """`attempt(number)` (1 for the first) until it returns, after `before()` each time (a rate
    limiter's slot, a daily quota's check); a `retry_on` error goes to `decide`, which raises or
    gives the wait before the next attempt."""
    tries = Tries()
    while True:
        if before is not None:
            before()
        try:
            return attempt(tries.failed + 1)
        except retry_on as exc:
            failure = exc
        tries.failed += 1
        wait = decide(failure, tries)
        if wait is not None:
            sleep(wait)
