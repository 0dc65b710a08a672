"""ApexVerify sandbox: a local fake of the batch verification API of `apexverify-api.md`.

Run it with `connector sandbox apexverify --port 8101`. It keeps everything in memory and moves a
batch through its statuses by timestamps, not threads: a PATCH makes the batch `parsing_content`
for `parse_delay` seconds, a launch makes it `verification_ongoing` for `verify_delay` seconds.
Verdicts are deterministic (see `apexverify_verdicts`).

Choices the documentation leaves open:
- documented JSON statuses (`parse_error`, `not_ready_for_verification`, ...) come with HTTP 200;
  bad input answers 400, a bad key 401, insufficient credits 402, an unknown batch (or another
  key's) 404, changing a launched batch 409, the rate limit 429 — all with a JSON
  `{"status": "error", "message": ...}` body;
- an uploaded batch that was never parsed reports `parsing_content`;
- PUT replaces the parameters: an omitted optional parameter returns to its default;
- found_content: `valid_*` counts the rows that will be verified and charged (including kept
  duplicates and kept malformed rows when their removal is switched off), `wrong_*` the rows
  removed as malformed, `duplicate_*` the rows removed as duplicates — they add up to the rows;
- a cache hit refunds half of its row's credit: the `*_cache_*_return` fields are credits, and
  `net = total - account_return - global_return`; the account cache is checked first;
- credits are one balance shared by every API key; batches are private to their key;
- `max_global_cache_backoff` is accepted but not modelled: the global cache is a fixed ~10%.

Test knobs under `/_sandbox/` (no key needed): `GET state`, `POST config`, `POST|GET|DELETE faults`,
`POST reset` — see `_register_knobs`. A queued fault hits the next /v1 call of its endpoint (after
authentication and the rate limit, which it does not bypass). `parse_error` faults wait for an
upload or a PATCH; `internal_error` faults wait for a call on an existing batch and break that
batch — after the PATCH or launch did its work (the launch's charge stands), or before the
other calls answer, so a status call that takes the fault already reports `internal_error`.
A re-PATCH of an unlaunched batch clears `internal_error`.
"""

from __future__ import annotations

import hmac
import io
import itertools
import json
import math
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from uuid import uuid4

import click
from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from openpyxl import Workbook
from werkzeug.exceptions import HTTPException

from connector.sandbox.apexverify_verdicts import (
    EMAIL_RESULT_FIELDS,
    PHONE_RESULT_FIELDS,
    is_country_code,
    is_global_cache_hit,
    is_well_formed,
    verdict,
)
from connector.sandbox.server import serve_forever

PARSING, READY, ONGOING, DONE, INTERNAL_ERROR = (
    "parsing_content",
    "ready_for_verification",
    "verification_ongoing",
    "verification_done",
    "internal_error",
)
XLSX_MIMETYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
RATE_WINDOW_SECONDS = 60.0
ENDPOINTS = ("upload", "configure", "parse", "details", "launch", "status", "export")
FAULT_KINDS = ("http_500", "http_503", "http_429", "timeout", "json_error", "parse_error", "internal_error")
BOM = b"\xef\xbb\xbf"
SECONDS_PER_DAY = 86_400
EXPORT_CHUNK_CHARS = 64 * 1024

# name → (allowed Python types, inclusive range or None, default); type and target_country are extra.
OPTIONAL_PARAMETERS: dict[str, tuple[type, tuple[int, int] | None, object]] = {
    "target_audience": (int, (1, 23), None),
    "target_market_industry": (int, (1, 115), None),
    "target_objective": (int, (1, 16), None),
    "use_account_cache": (bool, None, True),
    "max_account_cache_backoff": (int, (1, 180), 30),
    "use_global_cache": (bool, None, True),
    "max_global_cache_backoff": (int, (1, 180), 30),
    "remove_duplicate": (bool, None, True),
    "remove_wrong_email_format": (bool, None, True),
    "remove_wrong_phone_format": (bool, None, True),
}
NULLABLE_PARAMETERS = {"target_audience", "target_market_industry", "target_objective"}


def _env_api_key() -> str | None:
    return os.environ.get("APEXVERIFY_API_KEY") or None


@dataclass
class ApexVerifySandboxOptions:
    api_key: str | None = field(default_factory=_env_api_key, repr=False)  # None: any non-empty key
    parse_delay: float = 1.0
    verify_delay: float = 2.0
    credits: float = 1_000_000
    rate_limit_per_minute: int = 180
    error_rate: float = 0.0
    seed: int = 0
    timeout_fault_seconds: float = 30.0  # how long a `timeout` fault holds its answer back


class SandboxError(Exception):
    """An HTTP error answer raised from inside the state; rendered as `{"status": "error", ...}`."""

    def __init__(self, http_status: int, message: str, *, headers: dict | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.body = {"status": "error", "message": message}
        self.headers = headers or {}


def iso_z(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Batches and their parse results


@dataclass
class ParseResult:
    """What one PATCH computed; immutable once made, so readers may use it outside the lock."""

    kind: str
    target_country: str
    rows: list[str]  # the rows that will be verified, in upload order
    wrong: int
    duplicates: int
    account_hits: int
    global_hits: int
    _stats: dict[str, int] | None = field(default=None, repr=False, compare=False)

    @property
    def total_cost(self) -> int:
        return len(self.rows)

    @property
    def account_return(self) -> float:
        return 0.5 * self.account_hits

    @property
    def global_return(self) -> float:
        return 0.5 * self.global_hits

    @property
    def net_cost(self) -> float:
        return float(self.total_cost - self.account_return - self.global_return)

    def found_content(self) -> dict[str, int]:
        k = self.kind
        return {f"valid_{k}": len(self.rows), f"wrong_{k}": self.wrong, f"duplicate_{k}": self.duplicates}

    def found_cost(self) -> dict[str, float]:
        k = self.kind
        return {
            f"total_{k}_cost": self.total_cost,
            f"net_{k}_cost": self.net_cost,
            f"{k}_cache_account_return": self.account_return,
            f"{k}_cache_global_return": self.global_return,
        }

    def stats(self) -> dict[str, int]:
        # Computed on first use, outside the lock: a verdict per row is slow for a large batch, and
        # two threads racing here just compute the same numbers twice.
        if self._stats is None:
            outcomes: Counter[str] = Counter()
            for value in self.rows:
                result = verdict(self.kind, value, self.target_country)
                outcomes.update(name for name in ("valid", "wrong", "unknown") if result[name])
            self._stats = {
                "total_verification": len(self.rows),
                "total_verification_valid": outcomes["valid"],
                "total_verification_wrong": outcomes["wrong"],
                "total_verification_unknown": outcomes["unknown"],
                "total_verification_duplicate": self.duplicates,
                "total_verification_account_cache": self.account_hits,
                "total_verification_global_cache": self.global_hits,
            }
        return self._stats

    def unique_rows(self) -> Iterator[str]:
        """Kept rows without repeats: an export is keyed by value."""
        seen: set[str] = set()
        for value in self.rows:
            if value not in seen:
                seen.add(value)
                yield value


@dataclass
class Batch:
    uuid: str
    api_key: str
    name: str
    description: str | None
    lines: list[str]
    parameters: dict[str, object]
    created_at: float
    updated_at: float
    parse: ParseResult | None = None
    parse_ready_at: float | None = None
    parse_count: int = 0
    launched_at: float | None = None
    done_at: float | None = None
    launch_count: int = 0
    charged: float = 0.0
    internal_error: bool = False

    def status(self, now: float) -> str:
        if self.internal_error:
            return INTERNAL_ERROR
        if self.done_at is not None:
            return DONE if now >= self.done_at else ONGOING
        if self.parse_ready_at is None or now < self.parse_ready_at:
            return PARSING
        return READY

    def last_change(self, now: float) -> float:
        # Status changes happen by the clock, so they count as updates once their time has come.
        moments = [self.updated_at, self.parse_ready_at or 0.0, self.done_at or 0.0]
        return max(m for m in moments if m <= now)

    def base_details(self, now: float) -> dict[str, object]:
        return {
            "batch_uuid": self.uuid,
            "name": self.name,
            "description": self.description,
            "status": self.status(now),
            "created_at": iso_z(self.created_at),
            "updated_at": iso_z(self.last_change(now)),
            "parameters": dict(self.parameters),
        }


# ---------------------------------------------------------------------------------------------
# Validation of requests


def default_parameters(kind: str, target_country: str) -> dict[str, object]:
    defaults = {name: default for name, (_, _, default) in OPTIONAL_PARAMETERS.items()}
    return {"type": kind, "target_country": target_country, **defaults}


def validate_parameters(body: object) -> dict[str, object]:
    """The full parameter set of a PUT body, or SandboxError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise SandboxError(400, "body must be a JSON object")
    unknown = sorted(set(body) - set(OPTIONAL_PARAMETERS) - {"type", "target_country"})
    if unknown:
        raise SandboxError(400, f"unknown parameter: {unknown[0]}")
    parameters = default_parameters(
        validate_type(body.get("type")), validate_country(body.get("target_country"))
    )
    for name, (kind, bounds, _) in OPTIONAL_PARAMETERS.items():
        if name not in body or (body[name] is None and name in NULLABLE_PARAMETERS):
            continue
        value = body[name]
        # bool is a subclass of int: `true` must not pass as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SandboxError(400, f"{name} must be {'a boolean' if kind is bool else 'an integer'}")
        # Only int parameters have bounds, and `value` passed as one above.
        if bounds and not (isinstance(value, int) and bounds[0] <= value <= bounds[1]):
            raise SandboxError(400, f"{name} must be between {bounds[0]} and {bounds[1]}")
        parameters[name] = value
    return parameters


def validate_type(value: object) -> str:
    if value not in ("email", "phone"):
        raise SandboxError(400, "type must be 'email' or 'phone'")
    return str(value)


def validate_country(value: object) -> str:
    code = value.upper() if isinstance(value, str) and len(value) == 2 and value.isascii() else None
    if not is_country_code(code):
        raise SandboxError(400, "target_country must be an ISO 3166-1 alpha-2 code")
    return str(code)


def validate_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise SandboxError(400, "name is required (1-255 characters)")
    return value


def validate_description(value: object) -> str | None:
    if value is not None and len(str(value)) > 2048:
        raise SandboxError(400, "description must be at most 2048 characters")
    return value if value is None else str(value)


def read_lines(data: bytes) -> list[str] | None:
    """The non-blank lines of an upload, or None when the file must be refused as parse_error."""
    if data.startswith(BOM) or b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line] or None


def parse_flag(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise SandboxError(400, f"{name} must be true or false")


def select_rows(lines: list[str], parameters: dict[str, object]) -> tuple[list[str], int, int]:
    """(rows kept for verification, rows removed as malformed, rows removed as duplicates)."""
    kind, country = str(parameters["type"]), str(parameters["target_country"])
    remove_wrong = parameters[f"remove_wrong_{kind}_format"]
    kept: list[str] = []
    seen: set[str] = set()
    wrong = duplicates = 0
    for value in lines:
        if remove_wrong and not is_well_formed(kind, value, country):
            wrong += 1
        elif parameters["remove_duplicate"] and value in seen:
            duplicates += 1
        else:
            kept.append(value)
            seen.add(value)
    return kept, wrong, duplicates


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class Fault:
    endpoint: str
    kind: str
    remaining: int

    def matches(self, endpoint: str) -> bool:
        if self.endpoint not in (endpoint, "any"):
            return False
        if self.kind == "parse_error":
            return endpoint in ("upload", "parse")
        if self.kind == "internal_error":
            return endpoint != "upload"  # it needs an existing batch
        return True


class ApexVerifyState:
    """Every batch, balance and counter of one sandbox; all access goes through `lock`."""

    def __init__(self, options: ApexVerifySandboxOptions) -> None:
        self.options = options
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.config = replace(self.options)
        self.credits = float(self.options.credits)
        self.batches: dict[str, Batch] = {}
        # api key → value → when its verification finished (the account cache).
        self.history: dict[str, dict[str, float]] = defaultdict(dict)
        self.windows: dict[str, deque[float]] = defaultdict(deque)
        self.faults: list[Fault] = []
        self.rng = random.Random(self.options.seed)
        self.requests: Counter[str] = Counter()
        self.launches = self.charges = self.rate_limited = 0

    def reset(self) -> None:
        with self.lock:
            self._clear()

    # -- gatekeeping of /v1 calls --

    def admit(self, route: str, endpoint: str, api_key: str | None) -> str | None:
        """Count, authenticate and rate-limit one call; returns the kind of fault it must suffer."""
        with self.lock:
            self.requests[route] += 1
            self._authenticate(api_key)
            self._take_rate_slot(str(api_key))
            if self.config.error_rate > 0 and self.rng.random() < self.config.error_rate:
                raise SandboxError(503, "service unavailable")
            fault = next((f for f in self.faults if f.matches(endpoint)), None)
            if fault is None:
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.faults.remove(fault)
            if fault.kind == "http_429":
                self.rate_limited += 1
            return fault.kind

    def _authenticate(self, api_key: str | None) -> None:
        if not api_key:
            raise SandboxError(401, "missing X-Api-Key header")
        expected = self.config.api_key
        if expected is not None and not hmac.compare_digest(api_key.encode(), expected.encode()):
            raise SandboxError(401, "invalid API key")

    def _take_rate_slot(self, api_key: str) -> None:
        now = time.time()
        window = self.windows[api_key]
        while window and window[0] <= now - RATE_WINDOW_SECONDS:
            window.popleft()
        if len(window) >= self.config.rate_limit_per_minute:
            self.rate_limited += 1
            retry_after = max(1, math.ceil(window[0] + RATE_WINDOW_SECONDS - now))
            raise SandboxError(429, "rate limit exceeded", headers={"Retry-After": str(retry_after)})
        window.append(now)

    # -- the API --

    def upload(self, api_key: str, name: str, description: str | None, kind: str, country: str,
               lines: list[str]) -> Batch:  # fmt: skip
        now = time.time()
        batch = Batch(
            uuid=str(uuid4()),
            api_key=api_key,
            name=name,
            description=description,
            lines=lines,
            parameters=default_parameters(kind, country),
            created_at=now,
            updated_at=now,
        )
        with self.lock:
            self.batches[batch.uuid] = batch
        return batch

    def configure(self, api_key: str, batch_uuid: str, parameters: dict[str, object]) -> None:
        with self.lock:
            batch = self._batch(api_key, batch_uuid)
            if batch.launched_at is not None:
                raise SandboxError(409, "parameters are locked once verification is launched")
            batch.parameters = parameters
            batch.updated_at = time.time()

    def parse(self, api_key: str, batch_uuid: str) -> None:
        with self.lock:
            batch = self._unlaunched_batch(api_key, batch_uuid)
            lines, parameters = batch.lines, dict(batch.parameters)
        # The row checks are the slow part of a large batch: done without holding the lock.
        rows, wrong, duplicates = select_rows(lines, parameters)
        with self.lock:
            batch = self._unlaunched_batch(api_key, batch_uuid)
            now = time.time()
            account_hits, global_hits = self._count_cache_hits(api_key, rows, parameters, now)
            batch.parse = ParseResult(
                kind=str(parameters["type"]),
                target_country=str(parameters["target_country"]),
                rows=rows,
                wrong=wrong,
                duplicates=duplicates,
                account_hits=account_hits,
                global_hits=global_hits,
            )
            batch.parse_ready_at = now + self.config.parse_delay
            batch.parse_count += 1
            batch.internal_error = False
            batch.updated_at = now

    def _count_cache_hits(
        self, api_key: str, rows: list[str], parameters: dict, now: float
    ) -> tuple[int, int]:
        history = self.history[api_key]
        oldest = now - int(parameters["max_account_cache_backoff"]) * SECONDS_PER_DAY
        account = global_ = 0
        for value in rows:
            verified_at = history.get(value)
            if parameters["use_account_cache"] and verified_at is not None and oldest <= verified_at <= now:
                account += 1
            elif parameters["use_global_cache"] and is_global_cache_hit(value):
                global_ += 1
        return account, global_

    def details(self, api_key: str, batch_uuid: str) -> dict[str, object]:
        with self.lock:
            batch = self._batch(api_key, batch_uuid)
            body = batch.base_details(time.time())
            parse = batch.parse
        if body["status"] in (READY, ONGOING, DONE) and parse is not None:
            body["found_content"] = parse.found_content()
            body["found_cost"] = parse.found_cost()
        if body["status"] == DONE and parse is not None:
            body["stats"] = parse.stats()
        return body

    def launch(self, api_key: str, batch_uuid: str) -> str:
        """The launch answer's status; charges the batch's net cost the first time only."""
        with self.lock:
            batch = self._batch(api_key, batch_uuid)
            now = time.time()
            status = batch.status(now)
            if status == ONGOING:
                return "verification_already_ongoing"
            if status == DONE:
                return "verification_already_done"
            if status != READY or batch.parse is None:
                return "not_ready_for_verification"
            cost = batch.parse.net_cost
            if cost > self.credits:
                raise SandboxError(402, "insufficient credits")
            self.credits -= cost
            self.charges += cost > 0
            self.launches += 1
            batch.charged, batch.launch_count = cost, batch.launch_count + 1
            batch.launched_at, batch.done_at = now, now + self.config.verify_delay
            batch.updated_at = now
            history = self.history[api_key]
            for value in batch.parse.rows:
                history[value] = batch.done_at
            return "ok"

    def status(self, api_key: str, batch_uuid: str) -> str:
        with self.lock:
            return self._batch(api_key, batch_uuid).status(time.time())

    def finished_batch(self, api_key: str, batch_uuid: str) -> tuple[Batch, ParseResult]:
        with self.lock:
            batch = self._batch(api_key, batch_uuid)
            if batch.status(time.time()) != DONE or batch.parse is None:
                raise SandboxError(409, "verification is not done")
            return batch, batch.parse

    def repair(self, batch_uuid: str) -> bool:
        with self.lock:
            batch = self.batches.get(batch_uuid)
            if batch is None or not batch.internal_error:
                return False
            batch.internal_error = False
            batch.updated_at = time.time()
            return True

    def mark_internal_error(self, api_key: str, batch_uuid: str) -> None:
        with self.lock:
            batch = self.batches.get(batch_uuid)
            if batch is not None and batch.api_key == api_key:
                batch.internal_error = True
                batch.updated_at = time.time()

    def _batch(self, api_key: str, batch_uuid: str) -> Batch:
        batch = self.batches.get(batch_uuid)
        if batch is None or batch.api_key != api_key:  # another key's batch does not exist for you
            raise SandboxError(404, "batch not found")
        return batch

    def _unlaunched_batch(self, api_key: str, batch_uuid: str) -> Batch:
        batch = self._batch(api_key, batch_uuid)
        if batch.launched_at is not None:
            raise SandboxError(409, "batch already launched")
        return batch

    # -- inspection and knobs --

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            now = time.time()
            return {
                "credits": self.credits,
                "batches": [
                    {
                        "batch_uuid": b.uuid,
                        "api_key_suffix": b.api_key[-4:],
                        "name": b.name,
                        "type": b.parameters["type"],
                        "status": b.status(now),
                        "rows": len(b.lines),
                        "launch_count": b.launch_count,
                        "charged": b.charged,
                        "parse_count": b.parse_count,
                    }
                    for b in self.batches.values()
                ],
                "launches": self.launches,
                "charges": self.charges,
                "requests": dict(self.requests),
                "rate_limited": self.rate_limited,
            }

    def config_view(self) -> dict[str, object]:
        view = {k: v for k, v in asdict(self.config).items() if k not in ("api_key", "credits", "seed")}
        return {**view, "credits": self.credits}

    def update_config(self, body: object) -> dict[str, object]:
        if not isinstance(body, dict):
            raise SandboxError(400, "body must be a JSON object")
        changes = validate_config_changes(body)
        with self.lock:
            for name, value in changes.items():
                if name == "credits":
                    self.credits = value
                elif name == "add_credits":
                    self.credits += value
                else:
                    setattr(self.config, name, value)
            return self.config_view()

    def add_fault(self, body: object) -> list[dict[str, object]]:
        if not isinstance(body, dict):
            raise SandboxError(400, "body must be a JSON object")
        endpoint, kind, count = body.get("endpoint", "any"), body.get("kind"), body.get("count", 1)
        if endpoint not in (*ENDPOINTS, "any"):
            raise SandboxError(400, f"endpoint must be one of {', '.join((*ENDPOINTS, 'any'))}")
        if kind not in FAULT_KINDS:
            raise SandboxError(400, f"kind must be one of {', '.join(FAULT_KINDS)}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SandboxError(400, "count must be a positive integer")
        with self.lock:
            self.faults.append(Fault(endpoint, kind, count))
            return self.fault_view()

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def fault_view(self) -> list[dict[str, object]]:
        return [asdict(f) for f in self.faults]


def validate_config_changes(body: dict) -> dict[str, float | int]:
    rules = {
        "parse_delay": (0.0, math.inf),
        "verify_delay": (0.0, math.inf),
        "timeout_fault_seconds": (0.0, math.inf),
        "error_rate": (0.0, 1.0),
        "credits": (0.0, math.inf),
        "add_credits": (-math.inf, math.inf),
        "rate_limit_per_minute": (1, math.inf),
    }
    unknown = sorted(set(body) - set(rules))
    if unknown:
        raise SandboxError(400, f"unknown setting: {unknown[0]}")
    for name, value in body.items():
        low, high = rules[name]
        number_type = int if name == "rate_limit_per_minute" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_type) or not low <= value <= high:
            raise SandboxError(400, f"{name} must be a number between {low} and {high}")
    return {
        name: (value if name == "rate_limit_per_minute" else float(value)) for name, value in body.items()
    }


# ---------------------------------------------------------------------------------------------
# Exports


def export_json(parse: ParseResult, include_details: bool, include_statistics: bool) -> Iterator[str]:
    """The JSON export, produced piece by piece so a huge batch never sits in memory as one string."""
    pieces: Iterator[str] = (
        f"{json.dumps(value)}:{json.dumps(_export_result(parse, value, include_details))}"
        for value in parse.unique_rows()
    )
    if include_statistics:
        pieces = itertools.chain(pieces, [f'"statistics":{json.dumps(parse.stats())}'])
    buffer, size = ["{"], 1
    for index, piece in enumerate(pieces):
        text = piece if index == 0 else "," + piece
        buffer.append(text)
        size += len(text)
        if size >= EXPORT_CHUNK_CHARS:  # one socket write per chunk, not per record
            yield "".join(buffer)
            buffer, size = [], 0
    buffer.append("}")
    yield "".join(buffer)


def _export_result(parse: ParseResult, value: str, include_details: bool) -> dict[str, object]:
    result = verdict(parse.kind, value, parse.target_country)
    if include_details:
        return result
    return {name: result[name] for name in ("valid", "wrong", "unknown")}


def export_xlsx(batch: Batch, parse: ParseResult) -> bytes:
    workbook = Workbook(write_only=True)
    summary = workbook.create_sheet("Summary")
    summary.append(["field", "value"])
    for name, value in (
        ("batch_uuid", batch.uuid),
        ("name", batch.name),
        ("type", parse.kind),
        ("target_country", parse.target_country),
        *parse.found_content().items(),
        *parse.found_cost().items(),
        *parse.stats().items(),
    ):
        summary.append([name, value])
    results = workbook.create_sheet("Results")
    fields = EMAIL_RESULT_FIELDS if parse.kind == "email" else PHONE_RESULT_FIELDS
    results.append(list(fields))
    for value in parse.unique_rows():
        result = verdict(parse.kind, value, parse.target_country)
        results.append([result[name] for name in fields])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# The Flask app

# Faults of these endpoints hit the batch after the call did its work (a PATCH that starts parsing
# and then fails); on the others the call itself already sees the broken batch.
MARK_INTERNAL_ERROR_AFTER = ("parse", "launch")


def route_template(rule: str) -> str:
    """A Flask rule in the documentation's spelling: /v1/batch/<uuid> becomes /v1/batch/{uuid}."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def create_app(options: ApexVerifySandboxOptions | None = None) -> Flask:
    state = ApexVerifyState(options or ApexVerifySandboxOptions())
    app = Flask(__name__)
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's own
    app.json.sort_keys = False  # keep the documented field order
    app.extensions["apexverify_state"] = state
    _register_gate(app, state)
    _register_api(app, state)
    _register_knobs(app, state)
    _register_error_handlers(app)
    return app


def _api_key() -> str:
    return request.headers.get("X-Api-Key", "")


def _register_gate(app: Flask, state: ApexVerifyState) -> None:
    @app.before_request
    def admit_api_call() -> Response | None:
        if request.url_rule is None or not request.path.startswith("/v1/"):
            return None
        endpoint = str(request.endpoint)
        fault = state.admit(f"{request.method} {route_template(request.url_rule.rule)}", endpoint, _api_key())
        if fault is None:
            return None
        if fault in ("http_500", "http_503"):
            raise SandboxError(int(fault[-3:]), "injected fault")
        if fault == "http_429":
            raise SandboxError(429, "rate limit exceeded", headers={"Retry-After": "1"})
        if fault == "json_error":
            return jsonify(status="error")
        if fault == "parse_error":
            return jsonify(status="parse_error")
        if fault == "timeout":
            time.sleep(state.config.timeout_fault_seconds)  # the client gives up; we answer normally
        elif fault == "internal_error" and endpoint in MARK_INTERNAL_ERROR_AFTER:
            g.mark_internal_error = True
        elif fault == "internal_error":
            state.mark_internal_error(_api_key(), str((request.view_args or {}).get("uuid")))
        return None

    @app.after_request
    def apply_late_internal_error(response: Response) -> Response:
        if g.get("mark_internal_error") and response.status_code < 400:
            state.mark_internal_error(_api_key(), str((request.view_args or {}).get("uuid")))
        return response


def _register_api(app: Flask, state: ApexVerifyState) -> None:
    @app.post("/v1/batch")
    def upload() -> Response:
        upload_file = request.files.get("file")
        if upload_file is None:
            raise SandboxError(400, "file is required")
        name = validate_name(request.form.get("name"))
        kind = validate_type(request.form.get("type"))
        country = validate_country(request.form.get("target_country"))
        description = validate_description(request.form.get("description"))
        lines = read_lines(upload_file.read())
        if lines is None:
            return jsonify(status="parse_error")
        batch = state.upload(_api_key(), name, description, kind, country, lines)
        return jsonify(status="ok", batch_uuid=batch.uuid, created_at=iso_z(batch.created_at))

    @app.put("/v1/batch/<uuid>")
    def configure(uuid: str) -> Response:
        parameters = validate_parameters(request.get_json(silent=True))
        state.configure(_api_key(), uuid, parameters)
        return jsonify(message="Success")

    @app.patch("/v1/batch/<uuid>")
    def parse(uuid: str) -> Response:
        state.parse(_api_key(), uuid)
        return jsonify(status="ok")

    @app.get("/v1/batch/<uuid>/details")
    def details(uuid: str) -> Response:
        return jsonify(state.details(_api_key(), uuid))

    @app.post("/v1/batch/<uuid>")
    def launch(uuid: str) -> Response:
        return jsonify(status=state.launch(_api_key(), uuid))

    @app.get("/v1/batch/<uuid>")
    def status(uuid: str) -> Response:
        return jsonify(batch_uuid=uuid, status=state.status(_api_key(), uuid))

    @app.get("/v1/batch/<uuid>/export")
    def export(uuid: str) -> Response:
        export_format = request.args.get("format")
        if export_format not in ("json", "xlsx"):
            raise SandboxError(400, "format must be 'json' or 'xlsx'")
        include_details = parse_flag("include_details", request.args.get("include_details"), True)
        include_statistics = parse_flag("include_statistics", request.args.get("include_statistics"), True)
        batch, parse_result = state.finished_batch(_api_key(), uuid)
        if export_format == "xlsx":
            return Response(
                export_xlsx(batch, parse_result),
                mimetype=XLSX_MIMETYPE,
                headers={"Content-Disposition": f'attachment; filename="{uuid}.xlsx"'},
            )
        return Response(
            export_json(parse_result, include_details, include_statistics), mimetype="application/json"
        )


def _register_knobs(app: Flask, state: ApexVerifyState) -> None:
    @app.get("/_sandbox/state")
    def sandbox_state() -> Response:
        return jsonify(state.snapshot())

    @app.post("/_sandbox/config")
    def sandbox_config() -> Response:
        """Any of parse_delay, verify_delay, error_rate, rate_limit_per_minute, timeout_fault_seconds,
        credits (sets the balance), add_credits (tops it up); answers the resulting config."""
        return jsonify(state.update_config(request.get_json(silent=True)))

    @app.get("/_sandbox/faults")
    def sandbox_faults() -> Response:
        with state.lock:
            return jsonify(faults=state.fault_view())

    @app.post("/_sandbox/faults")
    def sandbox_add_fault() -> Response:
        """{"endpoint": <one of ENDPOINTS or "any">, "kind": <one of FAULT_KINDS>, "count": n}."""
        return jsonify(faults=state.add_fault(request.get_json(silent=True)))

    @app.delete("/_sandbox/faults")
    def sandbox_clear_faults() -> Response:
        state.clear_faults()
        return jsonify(faults=[])

    @app.post("/_sandbox/batches/<batch_uuid>/repair")
    def sandbox_repair(batch_uuid: str) -> Response:
        """What ApexVerify support does for a batch stuck in internal_error: clears the error."""
        return jsonify(repaired=state.repair(batch_uuid))

    @app.post("/_sandbox/reset")
    def sandbox_reset() -> Response:
        state.reset()
        return jsonify(status="ok")


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(SandboxError)
    def sandbox_error(error: SandboxError) -> tuple[Response, int, dict]:
        return jsonify(error.body), error.http_status, error.headers

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return jsonify(status="error", message=error.description), error.code or 500


# ---------------------------------------------------------------------------------------------
# `connector sandbox apexverify`


@click.command(name="apexverify")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8101, show_default=True, type=int)
@click.option(
    "--api-key", default=None, help="The one accepted key [default: $APEXVERIFY_API_KEY, else any]."
)
@click.option("--parse-delay", default=1.0, show_default=True, type=float, help="Seconds in parsing_content.")
@click.option(
    "--verify-delay", default=2.0, show_default=True, type=float, help="Seconds from launch to done."
)
@click.option(
    "--credits", default=1_000_000.0, show_default=True, type=float, help="Starting credit balance."
)
@click.option("--rate-limit", default=180, show_default=True, type=int, help="Requests per minute per key.")
@click.option(
    "--error-rate", default=0.0, show_default=True, type=float, help="Fraction of calls failing 503."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the error-rate dice.")
def command(
    host: str,
    port: int,
    api_key: str | None,
    parse_delay: float,
    verify_delay: float,
    credits: float,
    rate_limit: int,
    error_rate: float,
    seed: int,
) -> None:
    """Run a local fake of the ApexVerify batch verification API."""
    options = ApexVerifySandboxOptions(
        parse_delay=parse_delay,
        verify_delay=verify_delay,
        credits=credits,
        rate_limit_per_minute=rate_limit,
        error_rate=error_rate,
        seed=seed,
    )
    if api_key:
        options.api_key = api_key
    click.echo(f"ApexVerify sandbox on http://{host}:{port} ({'one key' if options.api_key else 'any key'})")
    serve_forever(create_app(options), host, port)
