"""HTTP client for the ApexVerify batch API (see apexverify-api.md).

Every call takes a slot from the shared rate limiter (shared fairly between connections when the
client knows whose sync it calls for: connector.ratelimit.FairShareLimiter), then retries what is
worth retrying:
429 (waiting as long as Retry-After says, and pausing the shared limiter so every process backs
off), 5xx, connection errors and timeouts, with capped exponential backoff and jitter. When the
attempts run out the call raises `TransientError`, so the sync pauses instead of failing.
Everything else the API can answer maps to a return value or to a permanent `ApexVerifyError`.

Upload (POST /v1/batch) is the one call that is not idempotent: if the request reached the server
and the answer was lost (read timeout, connection dropped mid-request), the batch may exist and a
resend would create a second one. Upload is therefore resent only when the server cannot have
created a batch (the connection was never made, a 429) or said it failed (5xx); in the lost-answer
case it raises `TransientError` at once and the caller decides. The other calls are safe to
repeat: PUT and PATCH are idempotent, GETs read, and a second launch answers
`verification_already_ongoing` rather than charging twice.
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import os
import random
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import redis
import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from connector.apexverify.outcomes import ApexVerifyError, BatchDetails, BatchStatus, LaunchOutcome
from connector.config import Settings
from connector.errors import TransientError
from connector.outbound import PinnedSession
from connector.ratelimit import FairShareLimiter, RateLimiter
from connector.retry import Tries, backoff, retry_after_seconds, retrying

log = logging.getLogger("connector.apexverify")

T = TypeVar("T")

CallHook = Callable[[str, int | None], None]

_DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_UPLOAD_CHUNK_BYTES = 64 * 1024
# A JSON export this small may be an error answer sent with 200 instead of results.
_SMALL_EXPORT_BYTES = 64 * 1024

_ERROR_STATUSES = {
    "parse_error": "parse_error",
    "error": "apexverify_error",
    "internal_error": "apexverify_internal_error",
}
_BATCH_STATUSES = frozenset(BatchStatus)
_BATCH_UUID = re.compile(r"[A-Za-z0-9-]{1,64}")
_LAUNCH_OUTCOMES = frozenset(LaunchOutcome)


@dataclass(frozen=True)
class _Call:
    endpoint: str  # name reported to on_call: upload, configure, parse, details, launch, status, export
    method: str
    path_template: str  # logged instead of the real path, so log lines group by call
    path: str
    resend_safe: bool = True


class _RetryableFailure(Exception):
    def __init__(self, code: str, message: str, wait: float, *, may_resend: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.wait = wait
        self.may_resend = may_resend


class ApexVerifyClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        limiter: RateLimiter | FairShareLimiter | None = None,
        timeout: float = 60.0,
        max_attempts: int = 5,
        backoff_cap: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.limiter = limiter
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        # Pinned to the base URL: the API key never follows a redirect or goes to another host.
        self.session = session or PinnedSession(
            self.base_url, service="ApexVerify", setting="APEXVERIFY_BASE_URL"
        )
        self.on_call: CallHook | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        redis_connection: redis.Redis | None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        connection_id: int | None = None,
    ) -> ApexVerifyClient:
        """The client of the deployment's ApexVerify account; with `connection_id` (the sync's
        connection), its calls take that connection's fair share of the per-minute limit."""
        limiter: RateLimiter | FairShareLimiter | None = None
        per_minute = settings.apexverify_rate_limit_per_minute
        if redis_connection is not None and connection_id is not None:
            limiter = FairShareLimiter(
                redis_connection, "apexverify", per_minute, 60, share_of=str(connection_id)
            )
        elif redis_connection is not None:
            limiter = RateLimiter(redis_connection, "apexverify", per_minute, 60)
        return cls(
            settings.apexverify_base_url,
            settings.apexverify_api_key,
            limiter=limiter,
            timeout=settings.apexverify_timeout_seconds,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        key_state = "set" if self._api_key else "unset"
        return f"ApexVerifyClient(base_url={self.base_url!r}, api_key=<{key_state}>)"

    # --- the API calls -------------------------------------------------------------------------

    def upload(
        self, path: Path, *, name: str, type: str, target_country: str, description: str | None = None
    ) -> str:
        """Upload a .txt of one value per line; returns the new batch's uuid."""
        fields = {"name": name, "type": type, "target_country": target_country}
        if description is not None:
            fields["description"] = description
        call = _Call("upload", "POST", "/v1/batch", "/v1/batch", resend_safe=False)

        def request_args() -> dict[str, Any]:
            body = _MultipartBody(fields, "file", path)
            return {"data": body, "headers": {"Content-Type": body.content_type}}

        body = self._send(call, lambda r: _read_answer(r, frozenset({"ok"})), request_args)
        batch_uuid = body.get("batch_uuid")
        if not isinstance(batch_uuid, str) or not batch_uuid:
            raise ApexVerifyError("apexverify_error", "upload answered ok without a batch_uuid")
        return batch_uuid

    def configure(self, batch_uuid: str, parameters: Mapping[str, Any]) -> None:
        """Set the batch's verification parameters (PUT); `type` and `target_country` are required."""
        missing = [name for name in ("type", "target_country") if not parameters.get(name)]
        if missing:
            raise ApexVerifyError("invalid_request", f"parameters lack required {', '.join(missing)}")
        call = self._batch_call("configure", "PUT", batch_uuid)
        payload = dict(parameters)
        self._send(call, lambda r: _read_answer(r, frozenset({"ok"})), lambda: {"json": payload})

    def parse(self, batch_uuid: str) -> None:
        """Trigger (re-)parsing of the uploaded file (PATCH)."""
        call = self._batch_call("parse", "PATCH", batch_uuid)
        self._send(call, lambda r: _read_answer(r, frozenset({"ok"})))

    def details(self, batch_uuid: str) -> BatchDetails:
        call = self._batch_call("details", "GET", batch_uuid, suffix="/details")
        body = self._send(call, lambda r: _read_answer(r, _BATCH_STATUSES))
        return BatchDetails(
            status=_batch_status(body),
            found_content=_dict_or_none(body.get("found_content")),
            found_cost=_dict_or_none(body.get("found_cost")),
            stats=_dict_or_none(body.get("stats")),
        )

    def launch(self, batch_uuid: str) -> LaunchOutcome:
        """Start verification; an already running or finished batch is an outcome, not an error."""
        call = self._batch_call("launch", "POST", batch_uuid)
        # The launch outcomes are read whatever the HTTP code (a 409 "already ongoing" included).
        body = self._send(call, lambda r: _read_answer(r, _LAUNCH_OUTCOMES))
        outcome = body.get("status")
        if outcome not in _LAUNCH_OUTCOMES:
            raise ApexVerifyError("apexverify_error", f"launch answered an unknown status {outcome!r}")
        return LaunchOutcome(outcome)

    def status(self, batch_uuid: str) -> BatchStatus:
        call = self._batch_call("status", "GET", batch_uuid)
        return _batch_status(self._send(call, lambda r: _read_answer(r, _BATCH_STATUSES)))

    def download_json_export(self, batch_uuid: str, dest: Path) -> Path:
        """Stream the JSON export (details and statistics included) to `dest`."""
        params = {"format": "json", "include_details": "true", "include_statistics": "true"}
        return self._download(batch_uuid, dest, params, expect_json=True)

    def download_xlsx_export(self, batch_uuid: str, dest: Path) -> Path:
        return self._download(batch_uuid, dest, {"format": "xlsx"}, expect_json=False)

    # --- plumbing ------------------------------------------------------------------------------

    def _batch_call(self, endpoint: str, method: str, batch_uuid: str, suffix: str = "") -> _Call:
        # The uuid goes into the URL path: anything but a uuid's characters could change the route.
        if not _BATCH_UUID.fullmatch(batch_uuid or ""):
            raise ApexVerifyError("invalid_request", f"not a batch uuid: {batch_uuid!r}")
        return _Call(endpoint, method, f"/v1/batch/{{uuid}}{suffix}", f"/v1/batch/{batch_uuid}{suffix}")

    def _download(self, batch_uuid: str, dest: Path, params: dict[str, str], *, expect_json: bool) -> Path:
        call = self._batch_call("export", "GET", batch_uuid, suffix="/export")

        def save(response: requests.Response) -> Path:
            return _save_export(response, dest, expect_json=expect_json)

        return self._send(call, save, lambda: {"params": params})

    def _send(
        self,
        call: _Call,
        consume: Callable[[requests.Response], T],
        request_args: Callable[[], dict[str, Any]] = dict,
    ) -> T:
        """Run `call` with retries; `consume` turns a final (non-retryable) answer into a result."""
        return retrying(
            lambda attempt: self._attempt(call, attempt, consume, request_args),
            self._retry,
            retry_on=_RetryableFailure,
            sleep=self._sleep,
            before=self.limiter.acquire if self.limiter is not None else None,
        )

    def _retry(self, failure: _RetryableFailure, tries: Tries) -> float:
        """The wait before the next attempt; TransientError once attempts are spent or a resend is unsafe."""
        if failure.may_resend and tries.failed < self.max_attempts:
            return failure.wait
        message = f"{failure.message} (attempt {tries.failed} of {self.max_attempts})"
        raise TransientError(failure.code, message, retry_after=failure.wait)

    def _attempt(
        self,
        call: _Call,
        attempt: int,
        consume: Callable[[requests.Response], T],
        request_args: Callable[[], dict[str, Any]],
    ) -> T:
        started = time.monotonic()
        http_status: int | None = None
        args = request_args()
        headers = {"User-Agent": "apexverify-crm-connector", **args.pop("headers", {})}
        if self._api_key:
            headers["X-Api-Key"] = self._api_key
        try:
            with self.session.request(
                call.method,
                self.base_url + call.path,
                headers=headers,
                timeout=self.timeout,
                stream=True,
                **args,
            ) as response:
                http_status = response.status_code
                self._raise_if_retryable(call, response, attempt)
                return consume(response)
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            may_resend = call.resend_safe or _failed_before_sending(exc)
            message = f"{call.method} {call.path_template} failed: {_describe(exc)}"
            if not may_resend:
                message += "; not resent because the server may have acted on it"
            raise _RetryableFailure(
                "apexverify_unavailable", message, self._backoff(attempt), may_resend=may_resend
            ) from None
        finally:
            body = args.get("data")
            if body is not None and hasattr(body, "close"):
                body.close()
            self._record(call, attempt, http_status, started)

    def _raise_if_retryable(self, call: _Call, response: requests.Response, attempt: int) -> None:
        status = response.status_code
        if status == 429:
            wait = _retry_after_seconds(response)
            wait = self._backoff(attempt) if wait is None else wait
            if self.limiter is not None:
                self.limiter.pause(wait)
            raise _RetryableFailure(
                "apexverify_rate_limited",
                f"{call.method} {call.path_template} rate limited; retry after {wait:.1f} s",
                wait,
                # Sleeping in a worker for longer than the cap is worse than rescheduling the step.
                may_resend=wait <= self.backoff_cap,
            )
        if status >= 500:
            raise _RetryableFailure(
                "apexverify_unavailable",
                f"{call.method} {call.path_template} answered HTTP {status}",
                self._backoff(attempt),
            )

    def _backoff(self, attempt: int) -> float:
        """1, 2, 4, ... seconds capped at backoff_cap, with jitter so workers do not retry in step."""
        ceiling = backoff(attempt, self.backoff_cap)
        return random.uniform(ceiling / 2, ceiling)

    def _record(self, call: _Call, attempt: int, http_status: int | None, started: float) -> None:
        elapsed_ms = round((time.monotonic() - started) * 1000)
        log.debug(
            "apexverify %s %s -> %s (attempt %d, %d ms)",
            call.method,
            call.path_template,
            http_status if http_status is not None else "no answer",
            attempt,
            elapsed_ms,
            extra={
                "apexverify_endpoint": call.endpoint,
                "http_method": call.method,
                "path_template": call.path_template,
                "http_status": http_status,
                "attempt": attempt,
                "elapsed_ms": elapsed_ms,
            },
        )
        if self.on_call is not None:
            try:
                self.on_call(call.endpoint, http_status)
            except Exception:
                # Metrics must never fail a call that succeeded.
                log.exception("apexverify on_call hook failed")


# --- reading answers ---------------------------------------------------------------------------


def _read_answer(response: requests.Response, accepted: frozenset[str]) -> dict[str, Any]:
    """Map a final answer to its body, or raise the permanent error it stands for.

    The JSON `status` is read whatever the HTTP code: a 200 can carry {"status": "error"} or
    {"status": "parse_error"}, and a 4xx can carry an accepted status such as a launch outcome.
    """
    code = response.status_code
    if code in (401, 403):
        raise ApexVerifyError("apexverify_unauthorized", f"ApexVerify refused the API key (HTTP {code})")
    if code == 402:
        raise ApexVerifyError("insufficient_credits", "not enough ApexVerify credits to launch this batch")
    if code == 404:
        raise ApexVerifyError("batch_not_found", "ApexVerify does not know this batch (HTTP 404)")
    body = _json_body(response)
    status = body.get("status") if body is not None else None
    if not isinstance(status, str):
        status = None
    if body is not None and status in accepted:  # (a status is only read from a body)
        return body
    # A 4xx pairs the generic status "error" with the reason in "message": that is a refused
    # request, not a server failure; the specific statuses keep their meaning.
    if status in _ERROR_STATUSES and (code < 400 or status != "error"):
        raise ApexVerifyError(_ERROR_STATUSES[status], f"ApexVerify answered status {status!r} (HTTP {code})")
    if code >= 400:
        raise ApexVerifyError("invalid_request", f"HTTP {code}: {_server_message(response, body)}")
    if body is None:
        raise ApexVerifyError("apexverify_error", f"ApexVerify answered HTTP {code} with a non-JSON body")
    if status is not None:
        raise ApexVerifyError("apexverify_error", f"ApexVerify answered an unexpected status {status!r}")
    return body


def _json_body(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _server_message(response: requests.Response, body: dict[str, Any] | None) -> str:
    if body:
        for key in ("message", "detail", "error"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)[:500]
    return response.text[:500] or response.reason or "no message"


def _batch_status(body: dict[str, Any]) -> BatchStatus:
    status = body.get("status")
    if status not in _BATCH_STATUSES:
        raise ApexVerifyError("apexverify_error", f"ApexVerify answered an unknown batch status {status!r}")
    return BatchStatus(status)


def _dict_or_none(value: Any) -> dict | None:
    return value if isinstance(value, dict) else None


def _retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    seconds = retry_after_seconds(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _failed_before_sending(exc: requests.RequestException) -> bool:
    """True when no byte of the request can have reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    # urllib3's NewConnectionError (refused, DNS failure) is a ConnectTimeoutError too.
    return isinstance(reason, MaxRetryError) and isinstance(reason.reason, ConnectTimeoutError)


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "read timeout"
    if _failed_before_sending(exc):
        return "could not connect"
    return f"connection error ({type(exc).__name__})"


# --- exports -----------------------------------------------------------------------------------


def _save_export(response: requests.Response, dest: Path, *, expect_json: bool) -> Path:
    content_type = response.headers.get("Content-Type", "")
    if response.status_code != 200 or (not expect_json and "json" in content_type):
        _read_answer(response, frozenset())
        raise ApexVerifyError(
            "apexverify_error", f"export answered HTTP {response.status_code} without a file"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A temp file in the same directory, renamed at the end: readers never see a partial export.
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_content(chunk_size=_DOWNLOAD_CHUNK_BYTES):
                out.write(chunk)
        if expect_json:
            _raise_if_error_answer(temp)
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return dest


def _raise_if_error_answer(export: Path) -> None:
    """A JSON export is keyed by emails and phones; a small object with a "status" is an answer."""
    if export.stat().st_size > _SMALL_EXPORT_BYTES:
        return
    try:
        body = json.loads(export.read_bytes())
    except ValueError:
        raise ApexVerifyError("apexverify_error", "the JSON export is not valid JSON") from None
    status = body.get("status") if isinstance(body, dict) else None
    if isinstance(status, str):
        code = _ERROR_STATUSES.get(status, "apexverify_error")
        raise ApexVerifyError(code, f"export answered status {status!r} instead of results")


# --- multipart upload --------------------------------------------------------------------------


class _MultipartBody:
    """A multipart/form-data body whose file part is read from disk while it is sent.

    requests' own `files=` encoding builds the whole body in memory; this object has a length
    (so the request carries Content-Length, not chunked encoding) and a `read` that urllib3 calls
    block by block.
    """

    def __init__(self, fields: Mapping[str, str], file_field: str, path: Path) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(_form_field(boundary, name, value) for name, value in fields.items())
        head += (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quote(file_field)}"; filename="{_quote(path.name)}"\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        self._length = len(head) + path.stat().st_size + len(tail)
        self._parts: list[IO[bytes]] = [io.BytesIO(head), path.open("rb"), io.BytesIO(tail)]

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_UPLOAD_CHUNK_BYTES):
            yield chunk

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(part.read() for part in self._parts)
        while self._parts:
            chunk = self._parts[0].read(size)
            if chunk:
                return chunk
            self._parts.pop(0).close()
        return b""

    def close(self) -> None:
        for part in self._parts:
            part.close()
        self._parts = []


def _form_field(boundary: str, name: str, value: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n{value}\r\n'
    ).encode()


def _quote(name: str) -> str:
    # Quotes and line breaks would end the header; percent-encode them as browsers do.
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
