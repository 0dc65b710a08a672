"""HubSpot's API: `HubSpotApi`, the client's APIs behind the one door every request goes through.

`HubSpotApi.call` takes a slot from the portal's shared rate limiter first and turns HubSpot's
failures into the connector's: a 429 pauses every process and is retried (a DAILY one waits for
the next UTC day), a 5xx or a broken connection is retried with backoff (connector/crm/calls.py),
a 401 fails the sync (after one token refresh for an OAuth portal, below). What is read and written
through it: records.py and flags.py.

An OAuth-installed portal (`Account.tokens`) is called with the token its TokenSource holds, asked
before every request (cheap: the source keeps it, and refreshes it shortly before it expires); a 401
(EXPIRED_AUTHENTICATION, or a token revoked meanwhile) refreshes it once and the request is sent
again. The generated client reads `Configuration.access_token` on every request, so a new token is
put on each API's configuration rather than building the client again. The env portal keeps
HUBSPOT_ACCESS_TOKEN, as before.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin

import hubspot.crm.contacts as hs_contacts
import hubspot.crm.exports as hs_exports
import hubspot.crm.imports as hs_imports
import hubspot.crm.lists as hs_lists
import hubspot.crm.properties as hs_properties
import redis
import urllib3

from connector.config import Settings
from connector.crm.base import ENV_ACCOUNT, Account
from connector.crm.calls import REQUEST_TIMEOUT, Failure, no_answer, redact, unavailable_wait
from connector.crm.hubspot.client import make_hubspot_client
from connector.crm.hubspot.settings import HubSpotSettings
from connector.crm.jobs import seconds_until_utc_midnight
from connector.errors import ConfigError, ConnectorError, TransientError
from connector.metrics import call_outcome, count
from connector.outbound import redirect_refused
from connector.ratelimit import RateLimiter
from connector.retry import Tries, backoff, retry_after_seconds, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTACTS = "contacts"
WINDOW_SECONDS = 10.0
# Our limiter stamps a request when it is sent, HubSpot when it arrives: the margin keeps a
# request that spent less time in transit than the window's oldest one from arriving too early.
WINDOW_MARGIN_SECONDS = 0.5
MAX_RATE_LIMIT_RETRIES = 5
BATCH_LIMIT = 100  # records per batch read/update call

API_ERRORS: tuple[type[Exception], ...] = (
    hs_contacts.ApiException,
    hs_lists.ApiException,
    hs_properties.ApiException,
    hs_exports.ApiException,
    hs_imports.ApiException,
)
# urllib3 wraps socket failures (refused, reset, timed out) in its own HTTPError subclasses.
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError)


class HubSpotRequestError(ConnectorError):
    """HubSpot refused a request (4xx other than 401/403/429); callers may handle `status`."""

    def __init__(self, status: int, category: str, message: str) -> None:
        super().__init__("hubspot_request_refused", f"HubSpot answered {status} {category}: {message}")
        self.status = status
        self.category = category
        self.hubspot_message = message


def _failure_of(exc: Exception) -> Failure:
    """HubSpot's {"message", "category"} body of a refused request, or a request without an answer."""
    if not isinstance(exc, API_ERRORS):
        return no_answer(exc)
    status = int(getattr(exc, "status", 0) or 0)
    try:
        body = json.loads(getattr(exc, "body", None) or b"")
    except (ValueError, TypeError):
        body = {}
    body = body if isinstance(body, dict) else {}
    headers = getattr(exc, "headers", None) or {}
    return Failure(
        status,
        str(body.get("category") or body.get("errorType") or "UNKNOWN"),
        str(body.get("message") or f"HTTP {status}"),
        retry_after=retry_after_seconds(headers.get("Retry-After")),  # an HTTP date: our own wait
        location=headers.get("Location"),
        body=body,
    )


@dataclass
class CallCounters:
    calls: int = 0
    rate_limited: int = 0  # 429 answers
    retries: int = 0


# Every HubSpotApi of this process adds to these (each sync step builds its own HubSpotApi).
PROCESS_COUNTERS = CallCounters()


class HubSpotApi:
    """The `hubspot.HubSpot` client's APIs, and `call`, the one door every request goes through."""

    def __init__(
        self,
        settings: Settings,
        redis_connection: redis.Redis,
        *,
        sleep: Callable[[float], None] = time.sleep,
        account: Account = ENV_ACCOUNT,
    ) -> None:
        own = settings.section(HubSpotSettings)
        self.tokens = account.tokens  # None: the env portal's HUBSPOT_ACCESS_TOKEN
        if self.tokens is None and not own.access_token:
            raise ConfigError("hubspot_not_configured", "HUBSPOT_ACCESS_TOKEN is not set")
        self.settings = settings
        self.own = own  # the HubSpot variables of the environment
        self.account = account
        self.sleep = sleep
        self.redis = redis_connection
        # The token the APIs send; an OAuth portal's is set before the first request (`_use_token`).
        self._token = own.access_token if self.tokens is None else None
        self._earlier_tokens: list[str] = []  # refused ones, still redacted from messages
        # One limiter per portal: each portal has HubSpot's 100 requests per 10 s of its own.
        self.limiter = RateLimiter(
            redis_connection,
            f"hubspot:{account.external_id or own.portal_id or 'default'}",
            own.rate_limit_per_10s,
            WINDOW_SECONDS + WINDOW_MARGIN_SECONDS,
            sleep=sleep,
        )
        # This instance's share of PROCESS_COUNTERS.
        self.calls = 0
        self.rate_limited = 0
        self.retries = 0
        self.token_refreshes = 0  # after a 401, by this instance
        crm = make_hubspot_client(own.base_url, self._token).crm
        # Built once: each generated API object owns its own connection pool.
        self.contacts = crm.contacts.batch_api
        self.lists = crm.lists.lists_api
        self.memberships = crm.lists.memberships_api
        self.properties = crm.properties.core_api
        self.property_groups = crm.properties.groups_api
        self.exports = crm.exports.public_exports_api
        self.imports = crm.imports.core_api
        self.import_errors = crm.imports.public_imports_api
        self._apis = (
            self.contacts, self.lists, self.memberships, self.properties,
            self.property_groups, self.exports, self.imports, self.import_errors,
        )  # fmt: skip

    def call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client operation under the rate limit, retrying what HubSpot says is temporary."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)

        def attempt(_number: int) -> T:
            self._use_token()
            return operation(*args, **kwargs)

        answer = retrying(
            attempt,
            self._retry,
            retry_on=(*API_ERRORS, *CONNECTION_ERRORS),
            sleep=self.sleep,
            before=self._take_slot,
        )
        count(self.redis, "api_calls", service="hubspot", outcome="ok")
        return answer

    def call_path(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        """A JSON request to an endpoint the client library has no API for (Communication Preferences
        v4, the Lists API's record memberships batch read), sent by the client's own transport
        through `call`: the same rate limiter, token, retries and errors. Answers the decoded JSON."""
        transport = self.lists.api_client  # any generated API's: they share the configuration's host

        def send(**options: Any) -> Any:
            return transport.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                response_types_map={200: "object", 207: "object"},
                auth_settings=["oauth2"],
                _return_http_data_only=True,
                _preload_content=True,
                **options,
            )

        return self.call(send)

    def _take_slot(self) -> None:
        self.limiter.acquire()
        self._count("calls")

    def _retry(self, exc: Exception, tries: Tries) -> float | None:
        """The wait before trying again (None: the paused limiter holds the next call back), or raise."""
        failure = _failure_of(exc)
        count(self.redis, "api_calls", service="hubspot", outcome=call_outcome(failure.status or None))
        if failure.status == 401 and self.tokens is not None and tries.again("token", 1) is not None:
            self.renew_token()
            wait = None
        elif failure.status == 429:
            self._absorb_rate_limit(failure, tries.again("rate_limited", MAX_RATE_LIMIT_RETRIES))
            wait = None
        elif failure.unavailable:
            wait = self._unavailable_wait(failure, tries)
        else:
            raise self._refusal(failure)
        self._count("retries")
        return wait

    def _absorb_rate_limit(self, failure: Failure, attempt: int | None) -> None:
        self._count("rate_limited")
        policy = str(failure.body.get("policyName") or "TEN_SECONDLY_ROLLING")
        if policy == "DAILY":
            raise TransientError(
                "hubspot_daily_limit",
                "HubSpot's daily API limit for this portal is used up; resuming after it resets",
                retry_after=seconds_until_utc_midnight(),
            )
        if attempt is None:
            raise TransientError(
                "hubspot_rate_limited",
                f"HubSpot kept answering 429 ({policy}) after {MAX_RATE_LIMIT_RETRIES} pauses",
                retry_after=WINDOW_SECONDS,
            )
        wait = failure.retry_after
        if wait is None:
            wait = 1.0 if policy == "SECONDLY" else backoff(attempt, WINDOW_SECONDS)
        log.warning("hubspot_rate_limited", extra={"policy": policy, "pause_seconds": wait})
        # Every process sharing the portal's limiter waits, not only this one.
        self.limiter.pause(wait)

    def _unavailable_wait(self, failure: Failure, tries: Tries) -> float:
        answered = failure.status or "no answer"
        message = self._redact(f"HubSpot is unavailable ({answered}): {failure.message}")
        wait = unavailable_wait(tries, code="hubspot_unavailable", message=message)
        log.warning("hubspot_unavailable_retrying", extra={"status": failure.status, "wait_seconds": wait})
        return wait

    def _refusal(self, failure: Failure) -> ConnectorError:
        message = self._redact(failure.message)
        if failure.status == 401:
            again = " again after a refresh" if self.tokens is not None else ""
            return ConnectorError(
                "hubspot_unauthorized", f"HubSpot refused the access token{again}: {message}"
            )
        if failure.status == 403:
            return ConnectorError("hubspot_forbidden", f"The HubSpot app lacks a scope: {message}")
        if 300 <= failure.status < 400:  # not followed: the client is built with NO_REDIRECTS
            base = self.own.base_url + "/"
            location = urljoin(base, failure.location) if failure.location else None
            return redirect_refused("HubSpot", failure.status, location, "HUBSPOT_BASE_URL")
        return HubSpotRequestError(failure.status, failure.code, message)

    def _count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        setattr(PROCESS_COUNTERS, name, getattr(PROCESS_COUNTERS, name) + 1)

    # -- the token

    def _use_token(self) -> str:
        """The token to send now: an OAuth portal's current one, put on every API when it changed."""
        if self.tokens is not None:
            token = self.tokens.access_token()
            if token != self._token:
                for api in self._apis:
                    api.api_client.configuration.access_token = token
                self._token = token
        assert self._token is not None
        return self._token

    def renew_token(self) -> bool:
        """After HubSpot refused the token sent: a new one (or the one another worker just got), put on
        every API. False for the env portal, whose token cannot be renewed."""
        if self.tokens is None or self._token is None:
            return False
        refused = self._token
        self._earlier_tokens.append(refused)
        self.tokens.refresh(refused)  # raises TransientError when the connection needs a new install
        self.token_refreshes += 1
        log.info("hubspot_token_renewed_after_401", extra={"connection_id": self.account.connection_id})
        self._use_token()
        return True

    def bearer_header(self) -> dict[str, str]:
        """The Authorization header the client sends, for a request made outside it (an export file)."""
        return {"Authorization": f"Bearer {self._use_token()}"}

    def _redact(self, text: str) -> str:
        return redact(text, [self._token, *self._earlier_tokens])
