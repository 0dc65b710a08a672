"""Salesforce's API: `SalesforceApi`, simple-salesforce's client behind the door every request takes.

`SalesforceApi.call` keeps the org's daily API usage from the `Sforce-Limit-Info` header of every
answer and refuses to spend the reserve kept for the org's other integrations (a pause until the
next UTC day, not a failure), refreshes an expired session once through client credentials,
retries 5xx answers and broken connections with backoff (connector/crm/calls.py), and turns every
other refusal into a ConnectorError named after Salesforce's errorCode. What is read and written
through it: records.py and flags.py.

An OAuth-installed org (`Account.tokens`) lives at the connection's own instance URL and is called
with the session its TokenSource holds, asked before every request; INVALID_SESSION_ID (a 401)
refreshes it once through the source (one refresh per connection across every worker) and the
request is sent again with a client built on the new session — REST, queries and the Bulk API 2.0
uploads and downloads alike, since all of them go through `call`. The env org keeps
SALESFORCE_ACCESS_TOKEN or client credentials, as before.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError
from simple_salesforce.util import Usage, call_salesforce

from connector.config import Settings
from connector.crm.base import ENV_ACCOUNT, Account
from connector.crm.calls import (
    MAX_UNAVAILABLE_RETRIES,
    REQUEST_TIMEOUT,
    Failure,
    no_answer,
    redact,
    unavailable_wait,
)
from connector.crm.jobs import seconds_until_utc_midnight
from connector.crm.salesforce.client import fetch_client_credentials_token, make_salesforce
from connector.crm.salesforce.settings import SalesforceSettings
from connector.errors import ConfigError, ConnectorError, TransientError
from connector.retry import Tries, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

CONCURRENT_LIMIT_RETRY_AFTER = 60.0
DEFAULT_RESERVE_RATIO = 0.10
DOWNLOAD_CHUNK_BYTES = 1 << 20

API_USAGE = re.compile(r"(?:^|[^-])api-usage=(\d+)/(\d+)")
CONNECTION_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv; charset=UTF-8"


class SalesforceRequestError(ConnectorError):
    """Salesforce refused a request; `code` is its errorCode lower-cased, `status` the HTTP status."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(error_code.lower(), message)
        self.status = status
        self.error_code = error_code


def _failure_of(exc: Exception) -> Failure:
    """Salesforce's [{"errorCode", "message"}] body (or what there is of it), or no answer at all."""
    if not isinstance(exc, SalesforceError):
        return no_answer(exc)
    content = exc.content
    first = content[0] if isinstance(content, list) and content else content
    if isinstance(first, dict):
        code = str(first.get("errorCode") or first.get("error") or f"HTTP_{exc.status}")
        message = str(first.get("message") or first.get("error_description") or code)
        return Failure(exc.status, code, message, body=first)
    text = content.decode(errors="replace") if isinstance(content, bytes) else str(content or "")
    return Failure(exc.status, f"HTTP_{exc.status}", f"HTTP {exc.status}: {text.strip()[:200]}")


class SalesforceApi:
    """simple-salesforce's client for the configured org, and `call`, the door every request goes through."""

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        daily_reserve_ratio: float = DEFAULT_RESERVE_RATIO,
        account: Account = ENV_ACCOUNT,
    ) -> None:
        own = settings.section(SalesforceSettings)
        self.tokens = account.tokens  # None: the env org's session or client credentials
        if self.tokens is not None:
            if not account.instance_url:
                raise ConfigError(
                    "salesforce_not_configured",
                    f"connection {account.connection_id} has no instance URL: install it again",
                )
            instance_url = account.instance_url
            self.can_refresh = True
        else:
            if not own.instance_url:
                raise ConfigError("salesforce_not_configured", "SALESFORCE_INSTANCE_URL is not set")
            instance_url = own.instance_url
            self.can_refresh = bool(own.client_id and own.client_secret)
            if not own.access_token and not self.can_refresh:
                raise ConfigError(
                    "salesforce_not_configured",
                    "set SALESFORCE_ACCESS_TOKEN or SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET",
                )
        self.settings = settings
        self.own = own  # the Salesforce variables of the environment
        self.account = account
        self.sleep = sleep
        self.daily_reserve_ratio = daily_reserve_ratio
        self.instance_url = instance_url.rstrip("/")
        # The latest `Sforce-Limit-Info: api-usage=N/M` Salesforce sent; None until the first answer.
        self.api_usage: Usage | None = None
        self.calls = 0
        self.refreshes = 0
        self._token = own.access_token if self.tokens is None else None
        self._earlier_tokens: list[str] = []  # refused sessions, still redacted from messages
        self._sf: Salesforce | None = None

    # -- the door

    def call(self, operation: Callable[[Salesforce], T]) -> T:
        """Run `operation` on the client within the daily reserve, retrying what is temporary."""

        def attempt(_number: int) -> T:
            self.calls += 1
            return operation(self._client())

        return retrying(
            attempt,
            self._retry,
            retry_on=(SalesforceError, *CONNECTION_ERRORS),
            sleep=self.sleep,
            before=self._check_daily_reserve,
        )

    def _retry(self, exc: Exception, tries: Tries) -> float | None:
        """The wait before trying again (None: at once, with a new session), or raise."""
        if isinstance(exc, SalesforceAuthenticationFailed):
            # A subclass of SalesforceError (status 401): the token endpoint refused our credentials.
            raise self._unauthorized(f"the client credentials were refused ({exc.code})")
        failure = _failure_of(exc)
        if failure.status == 401:
            if not self.can_refresh or tries.again("session", 1) is None:
                raise self._unauthorized(f"Salesforce answered {failure.code}")
            self._renew_session()
            return None
        if failure.code == "REQUEST_LIMIT_EXCEEDED":
            raise self._limit_exceeded(failure)
        if failure.unavailable:
            return self._unavailable_wait(failure, tries)
        raise SalesforceRequestError(failure.status, failure.code, self._redact(failure.message))

    def _check_daily_reserve(self) -> None:
        if self.api_usage is None:
            return
        used, total = self.api_usage
        reserve = math.ceil(total * self.daily_reserve_ratio)
        if used + 1 > total - reserve:
            raise TransientError(
                "salesforce_daily_limit",
                f"Salesforce API usage is {used} of the org's {total} daily requests; the last {reserve} "
                "are kept for the org's other integrations, so this sync resumes after the daily reset",
                retry_after=seconds_until_utc_midnight(),
            )

    def _limit_exceeded(self, failure: Failure) -> TransientError:
        # The same errorCode also reports too many concurrent long-running requests: those clear in seconds.
        if "concurrent" in failure.message.lower():
            return TransientError(
                "salesforce_concurrent_limit",
                f"Salesforce refused the request: {failure.message}",
                retry_after=CONCURRENT_LIMIT_RETRY_AFTER,
            )
        return TransientError(
            "salesforce_daily_limit",
            f"Salesforce's daily API limit is used up ({failure.message}); resuming after it resets",
            retry_after=seconds_until_utc_midnight(),
        )

    def _unavailable_wait(self, failure: Failure, tries: Tries) -> float:
        message = (
            f"Salesforce is unavailable ({self._redact(failure.message)}) "
            f"after {MAX_UNAVAILABLE_RETRIES} retries"
        )
        wait = unavailable_wait(tries, code="salesforce_unavailable", message=message)
        log.warning(
            "salesforce_retrying",
            extra={
                "status": failure.status,
                "error_code": failure.code,
                "attempt": tries.count("unavailable"),
                "wait": wait,
            },
        )
        return wait

    def _unauthorized(self, reason: str) -> ConnectorError:
        if self.tokens is not None:
            how = "a refreshed session was refused too"
        elif self.can_refresh:
            how = "fetching a new one with client credentials failed"
        else:
            how = "no client credentials"
        return ConnectorError(
            "salesforce_unauthorized",
            f"Salesforce refused the session ({self._redact(reason)}; {how}): check the credentials",
        )

    # -- the session

    def _client(self) -> Salesforce:
        if self.tokens is not None:
            token = self.tokens.access_token()  # the connection's session, as the database holds it
            if token != self._token:
                self._drop_session()
                self._token = token
        if self._sf is None:
            if self._token is None:
                self._token = fetch_client_credentials_token(
                    self.instance_url,
                    self.own.client_id or "",
                    self.own.client_secret or "",
                ).access_token
                self.refreshes += 1
            # Built with a session id only: simple-salesforce never refreshes by itself; `call` does, once.
            self._sf = make_salesforce(
                self.instance_url, session_id=self._token, version=self.own.api_version
            )
            self._sf.session.hooks["response"].append(self._observe)
        return self._sf

    def _renew_session(self) -> None:
        """After Salesforce refused the session: the next attempt uses a new one. An OAuth org's comes
        from its TokenSource (refreshed once across workers; TransientError when the connection needs a
        new install); the env org's is fetched again with client credentials."""
        refused = self._token
        if refused:
            self._earlier_tokens.append(refused)
        self._drop_session()
        if self.tokens is not None:
            self.tokens.refresh(refused or "")
            self.refreshes += 1
            log.info("salesforce_session_renewed", extra={"connection_id": self.account.connection_id})

    def _drop_session(self) -> None:
        """Forget the current session id; the next attempt takes or fetches another."""
        if self._sf is not None:
            self._sf.session.close()
        self._sf = None
        self._token = None

    def _observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        found = API_USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if found:
            self.api_usage = Usage(used=int(found.group(1)), total=int(found.group(2)))

    def _redact(self, text: str) -> str:
        return redact(
            text, [self._token, *self._earlier_tokens, self.own.access_token, self.own.client_secret]
        )

    # -- requests, each one through `call`

    def query(self, soql: str) -> dict[str, Any]:
        return self.call(lambda sf: sf.query(soql, timeout=REQUEST_TIMEOUT))

    def query_more(self, next_records_url: str) -> dict[str, Any]:
        return self.call(
            lambda sf: sf.query_more(next_records_url, identifier_is_url=True, timeout=REQUEST_TIMEOUT)
        )

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        """A JSON request to /services/data/vXX.X/<path>; None for an empty answer."""
        return self.call(lambda sf: sf.restful(path, method=method, timeout=REQUEST_TIMEOUT, **kwargs))

    def upload(self, path: str, source: Path) -> None:
        """PUT a CSV file to /services/data/vXX.X/<path>, streamed from disk."""

        def send(sf: Salesforce) -> None:
            with source.open("rb") as body:
                call_salesforce(
                    sf.base_url + path, "PUT", sf.session, _headers(sf, CSV_TYPE, JSON_TYPE),
                    data=body, timeout=REQUEST_TIMEOUT,
                )  # fmt: skip

        self.call(send)

    def download(self, path: str, target: Path, params: dict[str, Any] | None = None) -> Mapping[str, str]:
        """GET /services/data/vXX.X/<path> streamed into `target`; returns the answer's headers."""

        def fetch(sf: Salesforce) -> Mapping[str, str]:
            response = call_salesforce(
                sf.base_url + path, "GET", sf.session, _headers(sf, JSON_TYPE, CSV_TYPE),
                params=params, stream=True, timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
            with response, target.open("wb") as handle:
                for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                    handle.write(chunk)
            return response.headers

        return self.call(fetch)


def _headers(sf: Salesforce, content_type: str, accept: str) -> dict[str, str]:
    return {**sf.headers, "Content-Type": content_type, "Accept": accept}
