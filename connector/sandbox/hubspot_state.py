"""Everything one portal of the HubSpot sandbox remembers, in memory behind one lock (the server is
threaded). The sandbox keeps one SandboxState per portal (connector/sandbox/hubspot_accounts.py)."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime
from typing import Any

from connector.sandbox.faults import FaultPlan
from connector.sandbox.hubspot_contacts import ContactStore
from connector.sandbox.hubspot_jobs import ExportTask, ImportJob
from connector.sandbox.hubspot_properties import PropertyCatalog, iso_now

RATE_WINDOW_SECONDS = 10.0
# record_errors: the request is accepted, but some of its records are refused (see hubspot_control).
FAULT_KINDS = ("http_500", "http_502", "http_429", "record_errors")


@dataclass
class SandboxConfig:
    rate_limit_per_10s: int = 100
    daily_limit: int = 10_000_000
    export_delay: float = 1.0
    import_delay: float = 1.0
    validate_requests: bool = True
    validate_responses: bool = False
    export_zip: bool = False
    portal_id: int = 62515
    # Where export files are served: None, this sandbox; else another origin (scheme://host:port)
    # standing in for HubSpot's file host, as HubSpot's pre-signed links point off api.hubapi.com.
    export_file_origin: str | None = None
    # None: any non-empty bearer token is accepted. Not changeable through /_sandbox/config.
    access_token: str | None = field(default=None, repr=False)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply `changes` from /_sandbox/config; ValueError names what is wrong."""
        types = {f.name: f.type for f in fields(self) if f.name != "access_token"}
        for name, value in changes.items():
            if name not in types:
                raise ValueError(f"unknown setting {name!r}; known: {sorted(types)}")
            accepted: dict[str, type | tuple[type, ...]] = {
                "int": int,
                "float": (int, float),
                "bool": bool,
                "str | None": (str, type(None)),
            }
            expected = accepted[str(types[name])]
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise ValueError(f"{name} must be {types[name]}, got {value!r}")
        for name, value in changes.items():
            setattr(self, name, value)

    def public(self) -> dict[str, Any]:
        settings = asdict(self)
        settings.pop("access_token")
        return settings


class RateLimiter:
    """HubSpot's per-portal limits: a rolling 10 s window and a daily count (UTC days)."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque()
        self._day: date | None = None
        self._day_count = 0

    def admit(self, now: float, today: date, per_10s: int, daily: int) -> str | None:
        """Count the request and return None, or return the policy that refuses it."""
        self._expire(now, today)
        if self._day_count >= daily:
            return "DAILY"
        if len(self._recent) >= per_10s:
            return "TEN_SECONDLY_ROLLING"
        self._recent.append(now)
        self._day_count += 1
        return None

    def headers(self, now: float, today: date, per_10s: int, daily: int) -> dict[str, str]:
        self._expire(now, today)
        secondly = math.ceil(per_10s / RATE_WINDOW_SECONDS)
        last_second = sum(1 for stamp in reversed(self._recent) if stamp > now - 1.0)
        return {
            "X-HubSpot-RateLimit-Daily": str(daily),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, daily - self._day_count)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(RATE_WINDOW_SECONDS * 1000)),
            "X-HubSpot-RateLimit-Max": str(per_10s),
            "X-HubSpot-RateLimit-Remaining": str(max(0, per_10s - len(self._recent))),
            "X-HubSpot-RateLimit-Secondly": str(secondly),
            "X-HubSpot-RateLimit-Secondly-Remaining": str(max(0, secondly - last_second)),
        }

    def _expire(self, now: float, today: date) -> None:
        while self._recent and self._recent[0] <= now - RATE_WINDOW_SECONDS:
            self._recent.popleft()
        if today != self._day:
            self._day, self._day_count = today, 0


# HubSpot's list processing types; memberships are changed through the API on the first two only.
PROCESSING_TYPES = ("MANUAL", "SNAPSHOT", "DYNAMIC")


@dataclass
class ContactList:
    list_id: str
    name: str
    members: Sequence[str]  # ascending record ids
    created_at: str
    processing_type: str = "MANUAL"
    # When each member added through the API joined (the others joined when the list was made).
    joined: dict[str, str] = field(default_factory=dict)
    version: int = 1

    @property
    def static(self) -> bool:
        return self.processing_type in ("MANUAL", "SNAPSHOT")

    def has_member(self, record_id: str) -> bool:
        if not record_id.isdigit():
            return False
        position = bisect.bisect_left(self.members, int(record_id), key=int)
        return position < len(self.members) and self.members[position] == record_id

    def add_member(self, record_id: str, now: str) -> bool:
        """Add one record (HubSpot keeps memberships ordered by record id); False: already a member."""
        if self.has_member(record_id):
            return False
        members = self.members if isinstance(self.members, list) else list(self.members)
        bisect.insort(members, record_id, key=int)
        self.members = members
        self.joined[record_id] = now
        return True

    def remove_member(self, record_id: str) -> bool:
        """Drop one record (archived, merged away); False: it was not a member."""
        if not self.has_member(record_id):
            return False
        members = self.members if isinstance(self.members, list) else list(self.members)
        members.pop(bisect.bisect_left(members, int(record_id), key=int))
        self.members = members
        self.joined.pop(record_id, None)
        return True

    def joined_at(self, record_id: str) -> str:
        return self.joined.get(record_id, self.created_at)

    def to_json(self) -> dict[str, Any]:
        """PublicObjectList of the lists spec."""
        return {
            "listId": self.list_id,
            "listVersion": self.version,
            "name": self.name,
            "objectTypeId": "0-1",
            "processingStatus": "COMPLETE",
            "processingType": self.processing_type,
            "size": len(self.members),
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "filtersUpdatedAt": self.created_at,
        }

    def to_search_json(self) -> dict[str, Any]:
        """PublicObjectListSearchResult: HubSpot reports the size in additionalProperties."""
        body = self.to_json()
        del body["size"]
        body["additionalProperties"] = {"hs_list_size": str(len(self.members))}
        return body


class EmailOptOuts:
    """Who is unsubscribed from all email (the portal-wide "unsubscribe all"), by lower-cased address,
    and how many unsubscribe-all requests named each address (tests check nothing was sent twice)."""

    def __init__(self) -> None:
        self.since: dict[str, str] = {}  # address -> when it was unsubscribed
        self.requests: Counter[str] = Counter()

    def unsubscribe(self, address: str, now: str) -> bool:
        """Record one request; True when it changed the address's status."""
        key = address.strip().lower()
        self.requests[key] += 1
        if key in self.since:
            return False
        self.since[key] = now
        return True

    def unsubscribed_at(self, address: str) -> str | None:
        return self.since.get(address.strip().lower())

    def to_json(self) -> dict[str, Any]:
        return {"unsubscribed": sorted(self.since), "requests": dict(sorted(self.requests.items()))}


class SandboxState:
    def __init__(self, config: SandboxConfig) -> None:
        self.lock = threading.Lock()
        self._initial_config = replace(config)
        self.reset()

    def sibling(self, portal_id: int) -> SandboxState:
        """Another portal, empty, with the settings this one started with (the env token is this one's)."""
        return SandboxState(replace(self._initial_config, portal_id=portal_id, access_token=None))

    def reset(self) -> None:
        self.config = replace(self._initial_config)
        self.contacts = ContactStore()
        self.catalog = PropertyCatalog()
        self.lists: dict[str, ContactList] = {}
        self.opt_outs = EmailOptOuts()
        # Contacts every write refuses for good (POST /_sandbox/refusals), as a portal's validation
        # rule refuses a record whatever is retried.
        self.refused_ids: set[str] = set()
        self.exports: dict[str, ExportTask] = {}
        self.imports: dict[str, ImportJob] = {}
        self.request_counts: Counter[str] = Counter()
        self.total_requests = 0
        self.rate_limited = 0
        self.rate_limiter = RateLimiter()
        self.faults = FaultPlan(FAULT_KINDS)
        # One entry per export file download: {"host": Host header, "authorization": bool}.
        self.export_downloads: list[dict[str, Any]] = []
        self._next_list_id = 1
        self._next_task_id = 1
        self._next_import_id = 1

    @property
    def rate_group(self) -> str:
        return f"publicapi:private-app:{self.config.portal_id}"

    def admit(self) -> str | None:
        return self.rate_limiter.admit(
            time.monotonic(),
            datetime.now(UTC).date(),
            self.config.rate_limit_per_10s,
            self.config.daily_limit,
        )

    def rate_headers(self) -> dict[str, str]:
        return self.rate_limiter.headers(
            time.monotonic(),
            datetime.now(UTC).date(),
            self.config.rate_limit_per_10s,
            self.config.daily_limit,
        )

    def add_list(
        self,
        name: str,
        members: Sequence[str],
        list_id: str | None = None,
        processing_type: str = "MANUAL",
    ) -> ContactList:
        if processing_type not in PROCESSING_TYPES:
            raise ValueError(f"processingType must be one of {PROCESSING_TYPES}, got {processing_type!r}")
        if list_id is None:
            while str(self._next_list_id) in self.lists:
                self._next_list_id += 1
            list_id = str(self._next_list_id)
        if list_id in self.lists:
            raise ValueError(f"list {list_id} already exists")
        created = ContactList(list_id, name, members, iso_now(), processing_type)
        self.lists[list_id] = created
        return created

    def merge_contacts(self, primary_id: str, secondary_id: str) -> str:
        """Merge two live contacts into a new record, which joins every list either was in."""
        now = iso_now()
        new_id = self.contacts.merge(primary_id, secondary_id, now)
        for found in self.lists.values():
            was_member = [found.remove_member(old) for old in (primary_id, secondary_id)]
            if any(was_member):
                found.add_member(new_id, now)
                found.version += 1
        return new_id

    def archive_contact(self, contact_id: str) -> bool:
        """Archive a live contact (it leaves its lists); False when there is none by that id."""
        if not self.contacts.archive(contact_id, iso_now()):
            return False
        for found in self.lists.values():
            if found.remove_member(contact_id):
                found.version += 1
        return True

    def new_task_id(self) -> str:
        task_id, self._next_task_id = str(self._next_task_id), self._next_task_id + 1
        return task_id

    def new_import_id(self) -> str:
        import_id, self._next_import_id = str(self._next_import_id), self._next_import_id + 1
        return import_id

    def advance_jobs(self) -> None:
        now = time.time()
        for job in self.imports.values():
            job.advance(now, self.config.import_delay, self.contacts, self.catalog, self.refused_ids)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": dict(self.request_counts),
            "total_requests": self.total_requests,
            "rate_limited": self.rate_limited,
            "contacts": len(self.contacts),
            "lists": len(self.lists),
            "unsubscribed_all": len(self.opt_outs.since),
            "refused_contacts": sorted(self.refused_ids, key=int),
            "properties": self.catalog.custom_names(),
            "exports": len(self.exports),
            "export_downloads": list(self.export_downloads),
            "imports": {job.import_id: job.state for job in self.imports.values()},
            "faults": self.faults.pending(),
            "config": self.config.public(),
        }
