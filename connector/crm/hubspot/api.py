"""HubSpot contacts: read a list's contacts, read contacts by id, write verdict flags back.

Every request goes through `HubSpotApi.call`, which takes a slot from the portal's shared rate
limiter first and turns HubSpot's failures into the connector's: a 429 pauses every process and
is retried (a DAILY one waits for the next UTC day), a 5xx or a broken connection is retried with
backoff, a 401 fails the sync. Small lists and write-backs use the REST batch endpoints (100
records a call); large ones use the Exports and Imports APIs (connector/crm/hubspot_bulk.py), so
API calls do not grow with the segment.

Property names (DESIGN.md "What is written back") can be renamed per connection with
`field_names`, a mapping from the default name to the portal's name.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
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
from connector.crm.base import FlagUpdate, SourceRecord, Verdict, WriteFailure, cells_per_verdict
from connector.crm.hubspot.bulk import export_list_rows, import_flag_rows
from connector.crm.hubspot.client import make_hubspot_client
from connector.crm.jobs import seconds_until_utc_midnight, utc_iso_millis
from connector.errors import ConfigError, ConnectorError, TransientError
from connector.metrics import call_outcome, count
from connector.outbound import redirect_refused
from connector.ratelimit import RateLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTACTS = "contacts"
WINDOW_SECONDS = 10.0
# Our limiter stamps a request when it is sent, HubSpot when it arrives: the margin keeps a
# request that spent less time in transit than the window's oldest one from arriving too early.
WINDOW_MARGIN_SECONDS = 0.5
MAX_RATE_LIMIT_RETRIES = 5
MAX_UNAVAILABLE_RETRIES = 4
BACKOFF_CAP_SECONDS = 8.0
UNAVAILABLE_RETRY_AFTER = 30.0
REQUEST_TIMEOUT = (10.0, 120.0)  # (connect, read) seconds: a hung socket must not hold a worker

BATCH_LIMIT = 100  # records per batch read/update call
MEMBERSHIPS_PAGE = 250
DEFAULT_BULK_THRESHOLD = 10_000
BULK_BATCH_ROWS = 250_000  # one import file: well under HubSpot's 1,048,576 rows and 512 MB

API_ERRORS: tuple[type[Exception], ...] = (
    hs_contacts.ApiException,
    hs_lists.ApiException,
    hs_properties.ApiException,
    hs_exports.ApiException,
    hs_imports.ApiException,
)
# urllib3 wraps socket failures (refused, reset, timed out) in its own HTTPError subclasses.
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError)

VALUE_PROPERTIES = {"email": "email", "phone": "phone"}
GROUP_NAME = "apexverify"
GROUP_LABEL = "ApexVerify"
STATUS_OPTIONS = ("valid", "wrong", "unknown", "invalid_format")


# ---- the API wrapper ---------------------------------------------------------------------------


class HubSpotRequestError(ConnectorError):
    """HubSpot refused a request (4xx other than 401/403/429); callers may handle `status`."""

    def __init__(self, status: int, category: str, message: str) -> None:
        super().__init__("hubspot_request_refused", f"HubSpot answered {status} {category}: {message}")
        self.status = status
        self.category = category
        self.hubspot_message = message


@dataclass(frozen=True)
class _Failure:
    status: int
    body: dict[str, Any]
    retry_after: float | None
    location: str | None = None  # a redirect's target

    @property
    def message(self) -> str:
        return str(self.body.get("message") or f"HTTP {self.status}")

    @property
    def category(self) -> str:
        return str(self.body.get("category") or self.body.get("errorType") or "UNKNOWN")


def _failure_from_exception(exc: Exception) -> _Failure:
    status = int(getattr(exc, "status", 0) or 0)
    raw = getattr(exc, "body", None) or b""
    try:
        body = json.loads(raw)
    except (ValueError, TypeError):
        body = {}
    headers = getattr(exc, "headers", None) or {}
    retry_after = _retry_after(headers.get("Retry-After"))
    return _Failure(status, body if isinstance(body, dict) else {}, retry_after, headers.get("Location"))


def _retry_after(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own wait


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
    ) -> None:
        if not settings.hubspot_access_token:
            raise ConfigError("hubspot_not_configured", "HUBSPOT_ACCESS_TOKEN is not set")
        self.settings = settings
        self.sleep = sleep
        self.redis = redis_connection
        self._token = settings.hubspot_access_token
        self.limiter = RateLimiter(
            redis_connection,
            f"hubspot:{settings.hubspot_portal_id or 'default'}",
            settings.hubspot_rate_limit_per_10s,
            WINDOW_SECONDS + WINDOW_MARGIN_SECONDS,
            sleep=sleep,
        )
        # This instance's share of PROCESS_COUNTERS.
        self.calls = 0
        self.rate_limited = 0
        self.retries = 0
        crm = make_hubspot_client(settings.hubspot_base_url, settings.hubspot_access_token).crm
        # Built once: each generated API object owns its own connection pool.
        self.contacts = crm.contacts.batch_api
        self.lists = crm.lists.lists_api
        self.memberships = crm.lists.memberships_api
        self.properties = crm.properties.core_api
        self.property_groups = crm.properties.groups_api
        self.exports = crm.exports.public_exports_api
        self.imports = crm.imports.core_api
        self.import_errors = crm.imports.public_imports_api

    def call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client operation under the rate limit, retrying what HubSpot says is temporary."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        rate_limited = unavailable = 0
        while True:
            self.limiter.acquire()
            self._count("calls")
            try:
                answer = operation(*args, **kwargs)
                count(self.redis, "api_calls", service="hubspot", outcome="ok")
                return answer
            except API_ERRORS as exc:
                failure = _failure_from_exception(exc)
            except CONNECTION_ERRORS as exc:
                failure = _Failure(0, {"message": f"connection failed ({type(exc).__name__})"}, None)
            count(self.redis, "api_calls", service="hubspot", outcome=call_outcome(failure.status or None))
            if failure.status == 429:
                rate_limited += 1
                self._absorb_rate_limit(failure, rate_limited)
            elif failure.status == 0 or failure.status >= 500:
                unavailable += 1
                self._back_off(failure, unavailable)
            else:
                raise self._refusal(failure) from None
            self._count("retries")

    def _absorb_rate_limit(self, failure: _Failure, attempt: int) -> None:
        self._count("rate_limited")
        policy = str(failure.body.get("policyName") or "TEN_SECONDLY_ROLLING")
        if policy == "DAILY":
            raise TransientError(
                "hubspot_daily_limit",
                "HubSpot's daily API limit for this portal is used up; resuming after it resets",
                retry_after=seconds_until_utc_midnight(),
            )
        if attempt > MAX_RATE_LIMIT_RETRIES:
            raise TransientError(
                "hubspot_rate_limited",
                f"HubSpot kept answering 429 ({policy}) after {MAX_RATE_LIMIT_RETRIES} pauses",
                retry_after=WINDOW_SECONDS,
            )
        wait = failure.retry_after
        if wait is None:
            wait = 1.0 if policy == "SECONDLY" else min(WINDOW_SECONDS, 2.0 ** (attempt - 1))
        log.warning("hubspot_rate_limited", extra={"policy": policy, "pause_seconds": wait})
        # Every process sharing the portal's limiter waits, not only this one.
        self.limiter.pause(wait)

    def _back_off(self, failure: _Failure, attempt: int) -> None:
        if attempt > MAX_UNAVAILABLE_RETRIES:
            raise TransientError(
                "hubspot_unavailable",
                self._redact(f"HubSpot is unavailable ({failure.status or 'no answer'}): {failure.message}"),
                retry_after=UNAVAILABLE_RETRY_AFTER,
            )
        wait = min(BACKOFF_CAP_SECONDS, 2.0 ** (attempt - 1))
        log.warning("hubspot_unavailable_retrying", extra={"status": failure.status, "wait_seconds": wait})
        self.sleep(wait)

    def _refusal(self, failure: _Failure) -> ConnectorError:
        message = self._redact(failure.message)
        if failure.status == 401:
            return ConnectorError("hubspot_unauthorized", f"HubSpot refused the access token: {message}")
        if failure.status == 403:
            return ConnectorError("hubspot_forbidden", f"The HubSpot app lacks a scope: {message}")
        if 300 <= failure.status < 400:  # not followed: the client is built with NO_REDIRECTS
            base = self.settings.hubspot_base_url + "/"
            location = urljoin(base, failure.location) if failure.location else None
            return redirect_refused("HubSpot", failure.status, location, "HUBSPOT_BASE_URL")
        return HubSpotRequestError(failure.status, failure.category, message)

    def _count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        setattr(PROCESS_COUNTERS, name, getattr(PROCESS_COUNTERS, name) + 1)

    def bearer_header(self) -> dict[str, str]:
        """The Authorization header the client sends, for a request made outside it (an export file)."""
        return {"Authorization": f"Bearer {self._token}"}

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


# ---- field names and values ----------------------------------------------------------------


@dataclass(frozen=True)
class FlagField:
    name: str  # the portal's property name
    attribute: str  # the Verdict attribute it carries
    type_: str  # email | phone

    @property
    def kind(self) -> str:
        return {"status": "status", "verified_at": "verified_at"}.get(self.attribute, "bool")


DEFAULT_FLAG_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "email": (
        ("apexverify_valid", "valid"),
        ("apexverify_wrong", "wrong"),
        ("apexverify_is_role", "is_role"),
        ("apexverify_is_disposable", "is_disposable"),
        ("apexverify_status", "status"),
        ("apexverify_verified_at", "verified_at"),
    ),
    "phone": (
        ("apexverify_phone_valid", "valid"),
        ("apexverify_phone_wrong", "wrong"),
        ("apexverify_phone_status", "status"),
        ("apexverify_phone_verified_at", "verified_at"),
    ),
}
ALL_DEFAULT_NAMES = {name for fields in DEFAULT_FLAG_FIELDS.values() for name, _ in fields}


def _check_type(type_: str) -> None:
    if type_ not in DEFAULT_FLAG_FIELDS:
        raise ConfigError("invalid_type", f"HubSpot syncs verify email or phone, not {type_!r}")


def flag_fields(type_: str, field_names: dict[str, str] | None = None) -> list[FlagField]:
    """The properties a sync of `type_` writes, renamed by `field_names` (default name -> name)."""
    _check_type(type_)
    renames = field_names or {}
    unknown = sorted(set(renames) - ALL_DEFAULT_NAMES)
    if unknown:
        raise ConfigError("invalid_field_names", f"field_names renames unknown properties: {unknown}")
    return [
        FlagField(renames.get(name, name), attribute, type_) for name, attribute in DEFAULT_FLAG_FIELDS[type_]
    ]


def verified_at_property(type_: str, field_names: dict[str, str] | None = None) -> str:
    return next(f.name for f in flag_fields(type_, field_names) if f.attribute == "verified_at")


def parse_hubspot_datetime(raw: str | None) -> datetime | None:
    """A HubSpot datetime value (ISO 8601 or epoch milliseconds) as an aware datetime."""
    if not raw or not raw.strip():
        return None
    raw = raw.strip()
    if raw.isdigit():
        return datetime.fromtimestamp(int(raw) / 1000, UTC)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def epoch_millis(moment: datetime) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return str(int(moment.timestamp() * 1000))


def flag_value(field: FlagField, verdict: Verdict, *, for_import: bool) -> str:
    """The value HubSpot takes: booleans as true/false, datetimes as ISO 8601 (REST) or epoch ms (import).

    An unknown boolean (None) is "": it clears the property over REST; an import leaves it as is.
    """
    value = getattr(verdict, field.attribute)
    if value is None:
        return ""
    if field.kind == "bool":
        return "true" if value else "false"
    if field.kind == "verified_at":
        return epoch_millis(value) if for_import else utc_iso_millis(value)
    return str(value)


def _blank_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() != "" else None


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# ---- reading contacts ------------------------------------------------------------------------


class HubSpotRecordReader:
    """Contacts by record id, 100 per batch read; ids HubSpot does not know are left out."""

    def __init__(self, api: HubSpotApi, *, field_names: dict[str, str] | None = None) -> None:
        self.api = api
        self.field_names = field_names

    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        _check_type(type_)
        value_property = VALUE_PROPERTIES[type_]
        verified_property = verified_at_property(type_, self.field_names)
        for chunk in _chunks(dict.fromkeys(str(i) for i in record_ids), BATCH_LIMIT):
            found = self._read_batch(chunk, [value_property, verified_property])
            for record_id in chunk:  # in the order asked, whatever order HubSpot answers in
                properties = found.get(record_id)
                if properties is not None:
                    yield SourceRecord(
                        record_id=record_id,
                        value=_blank_to_none(properties.get(value_property)),
                        verified_at=parse_hubspot_datetime(properties.get(verified_property)),
                    )

    def _read_batch(self, record_ids: list[str], properties: list[str]) -> dict[str, dict[str, str | None]]:
        body = hs_contacts.BatchReadInputSimplePublicObjectId(
            inputs=[hs_contacts.SimplePublicObjectId(id=record_id) for record_id in record_ids],
            properties=properties,
            properties_with_history=[],
        )
        answer = self.api.call(self.api.contacts.read, body)
        # A 207 lists unknown ids under `errors`: they are simply not in `results`.
        return {result.id: result.properties or {} for result in answer.results}


class HubSpotListSource:
    """The contacts of a HubSpot list: REST pages when small, one Exports API file when large.

    The export file is downloaded into `work_dir`, the sync's own directory, so a worker killed
    while reading it leaves it where the sync's purge removes it.
    """

    def __init__(
        self,
        api: HubSpotApi,
        list_id: str,
        type_: str,
        *,
        work_dir: Path,
        bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
        field_names: dict[str, str] | None = None,
    ) -> None:
        _check_type(type_)
        self.api = api
        self.list_id = str(list_id)
        self.type = type_
        self.work_dir = Path(work_dir)
        self.bulk_threshold = bulk_threshold
        self.field_names = field_names
        self.reader = HubSpotRecordReader(api, field_names=field_names)

    def iter_records(self) -> Iterator[SourceRecord]:
        size = self.list_size()
        if size is not None and size <= self.bulk_threshold:
            yield from self._iter_pages()
        else:
            yield from self._iter_export()

    def list_size(self) -> int | None:
        try:
            answer = self.api.call(self.api.lists.get_by_id, self.list_id)
        except HubSpotRequestError as exc:
            if exc.status == 404:
                raise ConnectorError(
                    "hubspot_list_not_found", f"HubSpot list {self.list_id} does not exist"
                ) from None
            raise
        return answer.list.size

    def _iter_pages(self) -> Iterator[SourceRecord]:
        # Ids are read in full batches of 100 across membership pages of 250: fewer calls.
        for record_ids in _chunks(self._member_ids(), BATCH_LIMIT):
            yield from self.reader.read_records(record_ids, self.type)

    def _member_ids(self) -> Iterator[str]:
        after: str | None = None
        while True:
            paging = {"after": after} if after else {}
            page = self.api.call(
                self.api.memberships.get_page, self.list_id, limit=MEMBERSHIPS_PAGE, **paging
            )
            yield from (str(member.record_id) for member in page.results or [])
            after = page.paging.next.after if page.paging and page.paging.next else None
            if not after:
                return

    def _iter_export(self) -> Iterator[SourceRecord]:
        value_property = VALUE_PROPERTIES[self.type]
        verified_property = verified_at_property(self.type, self.field_names)
        rows = export_list_rows(
            self.api,
            self.list_id,
            [value_property, verified_property],
            work_dir=self.work_dir,
        )
        for row in rows:
            yield SourceRecord(
                record_id=row["hs_object_id"],
                value=_blank_to_none(row.get(value_property)),
                verified_at=parse_hubspot_datetime(row.get(verified_property)),
            )


# ---- writing flags -------------------------------------------------------------------------


def _property_definition(field: FlagField) -> hs_properties.PropertyCreate:
    label = f"ApexVerify {field.type_} {field.attribute.replace('_', ' ')}"
    common = {"name": field.name, "label": label, "group_name": GROUP_NAME}
    if field.kind == "bool":
        options = [
            hs_properties.OptionInput(label="Yes", value="true", display_order=0, hidden=False),
            hs_properties.OptionInput(label="No", value="false", display_order=1, hidden=False),
        ]
        return hs_properties.PropertyCreate(
            type="bool", field_type="booleancheckbox", options=options, **common
        )
    if field.kind == "status":
        options = [
            hs_properties.OptionInput(label=status, value=status, display_order=i, hidden=False)
            for i, status in enumerate(STATUS_OPTIONS)
        ]
        return hs_properties.PropertyCreate(
            type="enumeration", field_type="select", options=options, **common
        )
    return hs_properties.PropertyCreate(type="datetime", field_type="date", **common)


EXPECTED_TYPES = {"bool": "bool", "status": "enumeration", "verified_at": "datetime"}


class HubSpotFlagWriter:
    """Verdict flags onto contacts: batch updates of 100, or one import per batch when the sync is large."""

    def __init__(
        self,
        api: HubSpotApi,
        type_: str,
        *,
        expected_updates: int = 0,
        bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
        field_names: dict[str, str] | None = None,
        work_dir: Path,
    ) -> None:
        self.api = api
        self.type = type_
        self.fields = flag_fields(type_, field_names)
        self.bulk = expected_updates > bulk_threshold
        self.batch_size = BULK_BATCH_ROWS if self.bulk else BATCH_LIMIT
        self.work_dir = Path(work_dir)

    # -- prepare

    def prepare(self) -> None:
        """Create the `apexverify` group and each missing property; one GET when all exist."""
        existing = {p.name: p for p in self.api.call(self.api.properties.get_all, CONTACTS).results}
        for field in self.fields:
            found = existing.get(field.name)
            if found is not None and found.type != EXPECTED_TYPES[field.kind]:
                log.warning(
                    "hubspot_property_type_differs",
                    extra={
                        "property": field.name,
                        "type": found.type,
                        "expected": EXPECTED_TYPES[field.kind],
                    },
                )
        missing = [field for field in self.fields if field.name not in existing]
        if not missing:
            return
        self._create_group()
        for field in missing:
            self._create_if_absent(self.api.properties.create, _property_definition(field))

    def _create_group(self) -> None:
        group = hs_properties.PropertyGroupCreate(name=GROUP_NAME, label=GROUP_LABEL, display_order=-1)
        self._create_if_absent(self.api.property_groups.create, group)

    def _create_if_absent(self, create: Callable[..., Any], definition: Any) -> None:
        try:
            self.api.call(create, CONTACTS, definition)
        except HubSpotRequestError as exc:
            if exc.status != 409:  # 409: another worker created it meanwhile
                raise

    # -- write

    def write(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        if self.bulk:
            cells = cells_per_verdict(
                lambda verdict: [flag_value(f, verdict, for_import=True) for f in self.fields]
            )
            rows = ((update.record_id, cells(update.verdict)) for update in updates)
            return import_flag_rows(self.api, [f.name for f in self.fields], rows, work_dir=self.work_dir)
        failures: list[WriteFailure] = []
        for chunk in _chunks(updates, BATCH_LIMIT):
            # HubSpot refuses a batch naming a record twice; the later verdict wins.
            inputs = {
                update.record_id: {
                    f.name: flag_value(f, update.verdict, for_import=False) for f in self.fields
                }
                for update in chunk
            }
            failures.extend(self._update_batch(inputs))
        return failures

    def _update_batch(self, inputs: dict[str, dict[str, str]]) -> list[WriteFailure]:
        body = hs_contacts.BatchInputSimplePublicObjectBatchInput(
            inputs=[
                hs_contacts.SimplePublicObjectBatchInput(id=record_id, properties=properties)
                for record_id, properties in inputs.items()
            ]
        )
        try:
            answer = self.api.call(self.api.contacts.update, body)
        except HubSpotRequestError as exc:
            return self._refused_batch(inputs, exc)
        return _batch_failures(answer, list(inputs))

    def _refused_batch(
        self, inputs: dict[str, dict[str, str]], exc: HubSpotRequestError
    ) -> list[WriteFailure]:
        """A whole batch refused (400): halve it until the records HubSpot refuses are alone."""
        if len(inputs) == 1:
            record_id = next(iter(inputs))
            return [WriteFailure(record_id, exc.category, exc.hubspot_message)]
        if exc.status != 400:
            raise exc
        items = list(inputs.items())
        middle = len(items) // 2
        return self._update_batch(dict(items[:middle])) + self._update_batch(dict(items[middle:]))


def _batch_failures(answer: Any, record_ids: list[str]) -> list[WriteFailure]:
    """Every input HubSpot did not return as updated, with the error naming it (207 partial answers)."""
    written = {result.id for result in answer.results or []}
    errors = getattr(answer, "errors", None) or []
    error_by_id: dict[str, Any] = {}  # HubSpot's BatchError objects
    for error in errors:
        for record_id in (error.context or {}).get("ids", []):
            error_by_id.setdefault(str(record_id), error)
    failures = []
    for record_id in record_ids:
        if record_id in written:
            continue
        error = error_by_id.get(record_id) or (errors[0] if errors else None)
        if error is None:
            failures.append(WriteFailure(record_id, "NOT_CONFIRMED", "HubSpot did not confirm this update"))
        else:
            failures.append(WriteFailure(record_id, error.category, error.message))
    return failures
