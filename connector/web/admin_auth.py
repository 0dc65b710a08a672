"""The admin token check shared by the admin API and the ops page's sign-in, and its failed-attempt throttle.

Why it is shaped this way:
- The throttle is asked before the token is compared. Once an address has used up its failures,
  even the right token gets 429 until the window moves on, so a throttled guesser learns nothing
  from the answers and cannot keep guessing at full speed.
- The address is the client's: behind `TRUSTED_PROXY_COUNT` proxies, the one they saw (werkzeug's
  ProxyFix, installed by `create_app`); with none, X-Forwarded-For is ignored, so a forged header
  cannot buy a fresh budget.
- Besides each address's budget, all addresses together have one of 20 times that, so many
  addresses (a botnet) cannot guess freely either. While it is spent, operators wait too: a minute
  of lock-out is the price of a bounded number of guesses.
- The counts live in Redis, shared by every web process. When Redis fails they are kept in this
  process's memory instead (`ratelimit.window`): losing Redis never turns the throttle off.
- A token shorter than 16 characters turns the admin off (503): no throttle makes one that short
  safe to expose.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar

import redis
from flask import request

from connector.config import Settings
from connector.errors import ConfigError, ConnectorError
from connector.ratelimit import RateLimiter, window
from connector.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_TOKEN_LENGTH = 16
FAILED_AUTH_PER_MINUTE = 20  # from one client address
FAILED_AUTH_PER_MINUTE_ALL = 20 * FAILED_AUTH_PER_MINUTE  # from all addresses together
WINDOW_SECONDS = 60
REDIS_RETRY_SECONDS = 30.0


class TooManyAttempts(ConnectorError):
    http_status = 429

    def __init__(self, retry_after: float) -> None:
        super().__init__("too_many_attempts", f"too many failed sign-ins; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


def configured_admin_token(settings: Settings) -> str:
    """The admin token; ConfigError (503) when it is unset or too short to be exposed."""
    token = settings.admin_token
    if not token:
        raise ConfigError("admin_disabled", "ADMIN_TOKEN is not set: the admin is off")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            "admin_token_too_short",
            f"ADMIN_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters: the admin is off until it is "
            "replaced by a longer one (e.g. the output of `openssl rand -hex 32`)",
        )
    return token


def token_accepted(runtime: Runtime, given: str) -> bool:
    """Whether `given` is the admin token; counts a failure when it is not.

    Raises ConfigError while the admin is off and TooManyAttempts while this client (or everyone)
    has no failures left, whatever `given` is.
    """
    expected = configured_admin_token(runtime.settings)
    address = client_address()
    wait = _with_budgets(runtime, address, lambda budgets: max(b.wait_time() for b in budgets))
    if wait:
        raise TooManyAttempts(wait)
    if given and hmac.compare_digest(given.encode(), expected.encode()):
        return True
    _with_budgets(runtime, address, lambda budgets: [b.try_acquire() for b in budgets])
    return False


def client_address() -> str:
    """The client's address: the TCP peer, or what the trusted proxies saw (ProxyFix sets it)."""
    return request.remote_addr or "unknown"


class Budget(Protocol):
    def wait_time(self) -> float: ...

    def try_acquire(self) -> float: ...


# (key, failures allowed per window): this address's, and all addresses' together.
def _budget_keys(address: str) -> list[tuple[str, int]]:
    return [(f"admin-auth:{address}", FAILED_AUTH_PER_MINUTE), ("admin-auth-all", FAILED_AUTH_PER_MINUTE_ALL)]


def _with_budgets(runtime: Runtime, address: str, action: Callable[[list[Budget]], T]) -> T:
    """`action` on the budgets in the shared Redis; on this process's own when Redis fails.

    After a failure the shared Redis is left alone for REDIS_RETRY_SECONDS: a client's own retries
    and timeouts would otherwise hold up every sign-in while Redis is down.
    """
    keys = _budget_keys(address)
    if time.monotonic() >= _redis_down_until.get(runtime.redis, 0.0):
        try:
            return action([RateLimiter(runtime.redis, key, limit, WINDOW_SECONDS) for key, limit in keys])
        except redis.exceptions.RedisError as error:
            with _redis_down_lock:
                _redis_down_until[runtime.redis] = time.monotonic() + REDIS_RETRY_SECONDS
            log.warning("admin_auth_throttle_in_process", extra={"reason": type(error).__name__})
    return action([window(key, limit, WINDOW_SECONDS) for key, limit in keys])


_redis_down_until: weakref.WeakKeyDictionary[redis.Redis, float] = weakref.WeakKeyDictionary()
_redis_down_lock = threading.Lock()
