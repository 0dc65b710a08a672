"""What every CRM client does with its requests: time limits, failures, back-off, secrets, batches.

Each CRM's API wrapper (its package's api.py) runs its requests through `connector.retry` and
turns what went wrong into a `Failure`. A failure without an answer (refused, reset, timed
out) or with a 5xx is retried with the same back-off for every CRM (`unavailable_wait`): 1, 2, 4,
8 seconds, then a TransientError that pauses the sync for 30 seconds. Everything else a CRM
answers is the wrapper's own to classify (a 429, an expired session, a refusal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

from connector.errors import TransientError
from connector.retry import Tries, backoff

T = TypeVar("T")

REQUEST_TIMEOUT = (10.0, 120.0)  # (connect, read) seconds: a hung socket must not hold a worker
MAX_UNAVAILABLE_RETRIES = 4
BACKOFF_CAP_SECONDS = 8.0
UNAVAILABLE_RETRY_AFTER = 30.0
REDACTED = "***"


@dataclass(frozen=True)
class Failure:
    """A request the CRM did not answer with success."""

    status: int  # the HTTP status; 0: no answer (the connection failed)
    code: str  # the CRM's name for the error (an error category or code)
    message: str
    retry_after: float | None = None  # the answer's Retry-After, in seconds
    location: str | None = None  # a redirect's target
    body: Mapping[str, Any] = field(default_factory=dict)  # the error as the CRM sent it

    @property
    def unavailable(self) -> bool:
        return self.status == 0 or self.status >= 500


def no_answer(exc: Exception) -> Failure:
    """A request that got no answer (the connection was refused, reset or timed out)."""
    return Failure(0, "CONNECTION_FAILED", f"connection failed ({type(exc).__name__})")


def unavailable_wait(tries: Tries, *, code: str, message: str) -> float:
    """The wait before retrying a CRM that gave no answer or a 5xx; past the last retry, a
    TransientError (`code`, `message`) that pauses the sync instead."""
    attempt = tries.again("unavailable", MAX_UNAVAILABLE_RETRIES)
    if attempt is None:
        raise TransientError(code, message, retry_after=UNAVAILABLE_RETRY_AFTER)
    return backoff(attempt, BACKOFF_CAP_SECONDS)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (token, client secret) replaced: a CRM may echo one in an error."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter), drawn lazily: one list per batch call."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
