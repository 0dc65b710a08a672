"""Everything one org of the Salesforce sandbox remembers, in memory behind one lock (the server is
threaded). The sandbox holds several orgs (salesforce_orgs.py); `sandbox_state()` is the one a
request addresses, chosen before it runs (salesforce.py).
"""

from __future__ import annotations

import tempfile
import threading
from array import array
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import g

from connector.sandbox.faults import FaultPlan
from connector.sandbox.salesforce_ids import KEY_PREFIXES, make_id
from connector.sandbox.salesforce_jobs import IngestJob, QueryJob
from connector.sandbox.salesforce_records import RecordStore
from connector.sandbox.salesforce_schema import Schema
from connector.sandbox.salesforce_soql import BoundQuery

FAULT_KINDS = ("http_500", "http_503", "request_limit", "concurrent_limit")
MAX_OPEN_CURSORS = 100  # oldest query cursors are dropped beyond this, as Salesforce expires them


class SalesforceError(Exception):
    """An API error answered as Salesforce does: status and [{"message", "errorCode"}]."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> list[dict[str, str]]:
        return [{"message": self.message, "errorCode": self.code}]


def not_found() -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")


@dataclass
class SandboxConfig:
    # None: any non-empty value is accepted. Not changeable through /_sandbox/config.
    access_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    org_id: str = make_id(KEY_PREFIXES["Organization"], 1)
    daily_api_limit: int = 100_000
    bulk_delay: float = 1.0
    # Fields whose every written value is kept per record (GET /_sandbox/writes); off by default,
    # as a million-record write-back would keep a million lists.
    track_writes: tuple[str, ...] = ()
    # Put in front of every nextRecordsUrl: a test's stand-in for a compromised or hostile org whose
    # answers point elsewhere ("@evil.example", "https://evil.example"). Empty: Salesforce's paths.
    next_records_url_prefix: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "daily_api_limit": self.daily_api_limit,
            "bulk_delay": self.bulk_delay,
            "track_writes": list(self.track_writes),
            "next_records_url_prefix": self.next_records_url_prefix,
        }


class TokenBook:
    """The default org's own sessions: the configured one (or any), those the client-credentials grant
    issued, none expired. OAuth web-server flow tokens are kept apart (salesforce_tokens.py)."""

    def __init__(self, configured: str | None) -> None:
        self.configured = configured
        self.issued: set[str] = set()
        self.seen: set[str] = set()  # accepted because any token is (nothing configured)
        self.expired: set[str] = set()

    def accepts(self, token: str) -> bool:
        if not token or token in self.expired:
            return False
        if token in self.issued or token == self.configured:
            return True
        if self.configured is None:
            self.seen.add(token)
            return True
        return False

    def expire_current(self) -> int:
        """Expire every token good so far (a session timeout); OAuth can issue new ones."""
        current = self.issued | self.seen | ({self.configured} if self.configured else set())
        self.expired |= current
        self.issued.clear()
        self.seen.clear()
        return len(current)


@dataclass
class QueryCursor:
    query: BoundQuery
    serials: array[int]
    version: str
    endpoint: str  # query | queryAll
    batch_size: int


class SandboxState:
    def __init__(self, config: SandboxConfig, id_base: int = 0) -> None:
        self.lock = threading.Lock()
        self._initial = config
        self.id_base = id_base  # this org's records, jobs and cursors take serials after it
        self.user_id = make_id(KEY_PREFIXES["User"], id_base + 1)  # the user OAuth sessions act as
        self._uploads: tempfile.TemporaryDirectory[str] | None = None
        self.reset()

    def reset(self) -> None:
        self.config = SandboxConfig(**vars(self._initial))
        self.schema = Schema()
        self.store = RecordStore(first_serial=self.id_base + 1)
        self.tokens = TokenBook(self.config.access_token)
        self.faults = FaultPlan(FAULT_KINDS)
        self.request_counts: Counter[str] = Counter()
        self.api_usage = 0
        self.limited = 0
        self.cursors: OrderedDict[str, QueryCursor] = OrderedDict()
        self.ingest_jobs: dict[str, IngestJob] = {}
        self.query_jobs: dict[str, QueryJob] = {}
        self._serials = Counter[str]()
        # Campaign members created through the API, per (campaign id, contact or lead id), and the
        # inserts refused because the record already was a member: a retried action shows in both.
        self.members_created: Counter[tuple[str, str]] = Counter()
        self.duplicate_members_refused = 0
        # {field: {serial: [every value written, in order]}} for the fields in config.track_writes.
        self.write_log: dict[str, dict[int, list[Any]]] = {}
        if self._uploads is not None:
            self._uploads.cleanup()
        # Ingest uploads go to disk, not memory; the directory goes when the state does.
        self._uploads = tempfile.TemporaryDirectory(prefix="salesforce-sandbox-")

    def new_id(self, kind: str) -> str:
        """A fresh id for a job, cursor or other non-record thing (`kind` names its key prefix)."""
        self._serials[kind] += 1
        return make_id(KEY_PREFIXES[kind], self.id_base + self._serials[kind])

    def upload_path(self, job_id: str) -> Path:
        assert self._uploads is not None
        return Path(self._uploads.name) / f"{job_id}.csv"

    def note_write(self, serial: int, values: dict[str, Any]) -> None:
        """Remember the values a record update wrote to the tracked fields (REST and Bulk alike)."""
        for name in self.config.track_writes:
            if name in values:
                self.write_log.setdefault(name, {}).setdefault(serial, []).append(values[name])

    # ---- API allocation ----

    def admit(self) -> bool:
        """Count one API request against the daily allocation; False when it is used up."""
        if self.api_usage >= self.config.daily_api_limit:
            self.limited += 1
            return False
        self.api_usage += 1
        return True

    def limit_info(self) -> str:
        return f"api-usage={self.api_usage}/{self.config.daily_api_limit}"

    # ---- query cursors ----

    def open_cursor(self, cursor: QueryCursor) -> str:
        cursor_id = self.new_id("QueryLocator")
        self.cursors[cursor_id] = cursor
        while len(self.cursors) > MAX_OPEN_CURSORS:
            self.cursors.popitem(last=False)
        return cursor_id

    def summary(self) -> dict[str, Any]:
        return {
            "requests": dict(self.request_counts),
            "api_usage": self.api_usage,
            "api_limit": self.config.daily_api_limit,
            "request_limited": self.limited,
            "records": self.store.summary(),
            "deleted": len(self.store.deleted),
            "validation_rule": len(self.store.validation_rule),
            "missing_fields": self.schema.missing,
            "readonly_fields": self.schema.readonly,
            "ingest_jobs": {job.job_id: job.state for job in self.ingest_jobs.values()},
            "query_jobs": {job.job_id: job.state for job in self.query_jobs.values()},
            "open_cursors": len(self.cursors),
            "campaign_members_created": self._members_created(),
            "duplicate_members_refused": self.duplicate_members_refused,
            "faults": self.faults.pending(),
            "config": self.config.public(),
        }

    def _members_created(self) -> dict[str, dict[str, int]]:
        by_campaign: dict[str, dict[str, int]] = {}
        for (campaign_id, person_id), count in self.members_created.items():
            by_campaign.setdefault(campaign_id, {})[person_id] = count
        return by_campaign


def sandbox_state() -> SandboxState:
    """The state of the org the current request addresses (its session's, or ?account= for controls)."""
    state: SandboxState = g.salesforce_org
    return state
