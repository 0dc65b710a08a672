"""Salesforce contacts and leads: read a campaign or SOQL segment, read records by id, write flags back.

Every request goes through `SalesforceApi.call`, the one door: it keeps the org's daily API usage
from the `Sforce-Limit-Info` header of every answer and refuses to spend the reserve kept for the
org's other integrations (a pause until the next UTC day, not a failure), refreshes an expired
session once through client credentials, retries 5xx answers and broken connections with backoff,
and turns every other refusal into a ConnectorError named after Salesforce's errorCode.

Small segments and write-backs use REST (SOQL with cursor paging, sObject Collections of 200);
large ones use Bulk API 2.0 query and ingest jobs (connector/crm/salesforce_bulk.py), so API calls
do not grow with the segment.

Field names (DESIGN.md "What is written back") can be renamed per connection with `field_names`,
a mapping from the default name to the org's name.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
from more_itertools import chunked
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError
from simple_salesforce.util import Usage, call_salesforce

from connector.config import Settings
from connector.crm.base import FlagUpdate, SourceRecord, Verdict, WriteFailure, cells_per_verdict
from connector.crm.jobs import seconds_until_utc_midnight, utc_iso_millis
from connector.crm.salesforce.bulk import IngestRow, query_rows, write_flag_rows
from connector.crm.salesforce.client import fetch_client_credentials_token, make_salesforce
from connector.errors import ConfigError, ConnectorError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_TIMEOUT = (10.0, 120.0)  # (connect, read) seconds: a hung socket must not hold a worker
MAX_UNAVAILABLE_RETRIES = 4
BACKOFF_CAP_SECONDS = 8.0
UNAVAILABLE_RETRY_AFTER = 30.0
CONCURRENT_LIMIT_RETRY_AFTER = 60.0
DEFAULT_RESERVE_RATIO = 0.10
DEFAULT_BULK_THRESHOLD = 10_000
COLLECTION_LIMIT = 200  # records per sObject Collections call
READ_CHUNK = 200  # ids per `Id IN (...)` query: the query string stays far below URL limits
# One ingest job file per object: rows are ~90 bytes, so 500,000 stay well under Bulk API 2.0's 100 MB.
BULK_BATCH_ROWS = 500_000
DOWNLOAD_CHUNK_BYTES = 1 << 20

API_USAGE = re.compile(r"(?:^|[^-])api-usage=(\d+)/(\d+)")
RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
OBJECT_BY_PREFIX = {"003": "Contact", "00Q": "Lead"}
OBJECTS = ("Contact", "Lead")
CONNECTION_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv; charset=UTF-8"


# ---- the API wrapper ---------------------------------------------------------------------------


class SalesforceRequestError(ConnectorError):
    """Salesforce refused a request; `code` is its errorCode lower-cased, `status` the HTTP status."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(error_code.lower(), message)
        self.status = status
        self.error_code = error_code


@dataclass(frozen=True)
class _Failure:
    status: int  # 0: no answer (connection failed)
    error_code: str
    message: str


def _failure_from(exc: SalesforceError) -> _Failure:
    """Salesforce's [{"errorCode", "message"}] body, or what there is of it."""
    content = exc.content
    first = content[0] if isinstance(content, list) and content else content
    if isinstance(first, dict):
        code = str(first.get("errorCode") or first.get("error") or f"HTTP_{exc.status}")
        message = str(first.get("message") or first.get("error_description") or code)
        return _Failure(exc.status, code, message)
    text = content.decode(errors="replace") if isinstance(content, bytes) else str(content or "")
    return _Failure(exc.status, f"HTTP_{exc.status}", f"HTTP {exc.status}: {text.strip()[:200]}")


class SalesforceApi:
    """simple-salesforce's client for the configured org, and `call`, the door every request goes through."""

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        daily_reserve_ratio: float = DEFAULT_RESERVE_RATIO,
    ) -> None:
        if not settings.salesforce_instance_url:
            raise ConfigError("salesforce_not_configured", "SALESFORCE_INSTANCE_URL is not set")
        self.can_refresh = bool(settings.salesforce_client_id and settings.salesforce_client_secret)
        if not settings.salesforce_access_token and not self.can_refresh:
            raise ConfigError(
                "salesforce_not_configured",
                "set SALESFORCE_ACCESS_TOKEN or SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET",
            )
        self.settings = settings
        self.sleep = sleep
        self.daily_reserve_ratio = daily_reserve_ratio
        self.instance_url = settings.salesforce_instance_url.rstrip("/")
        # The latest `Sforce-Limit-Info: api-usage=N/M` Salesforce sent; None until the first answer.
        self.api_usage: Usage | None = None
        self.calls = 0
        self.refreshes = 0
        self._token = settings.salesforce_access_token
        self._sf: Salesforce | None = None

    # -- the door

    def call(self, operation: Callable[[Salesforce], T]) -> T:
        """Run `operation` on the client within the daily reserve, retrying what is temporary."""
        refreshed = False
        unavailable = 0
        while True:
            self._check_daily_reserve()
            try:
                self.calls += 1
                return operation(self._client())
            except SalesforceAuthenticationFailed as exc:
                # A subclass of SalesforceError (status 401): the token endpoint refused our credentials.
                raise self._unauthorized(f"the client credentials were refused ({exc.code})") from None
            except SalesforceError as exc:
                failure = _failure_from(exc)
            except CONNECTION_ERRORS as exc:
                failure = _Failure(0, "CONNECTION_FAILED", f"connection failed ({type(exc).__name__})")
            if failure.status == 401:
                if refreshed or not self.can_refresh:
                    raise self._unauthorized(f"Salesforce answered {failure.error_code}") from None
                self._drop_session()
                refreshed = True
            elif failure.error_code == "REQUEST_LIMIT_EXCEEDED":
                raise self._limit_exceeded(failure) from None
            elif failure.status == 0 or failure.status >= 500:
                unavailable += 1
                self._back_off(failure, unavailable)
            else:
                raise SalesforceRequestError(
                    failure.status, failure.error_code, self._redact(failure.message)
                ) from None

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

    def _limit_exceeded(self, failure: _Failure) -> TransientError:
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

    def _back_off(self, failure: _Failure, attempt: int) -> None:
        if attempt > MAX_UNAVAILABLE_RETRIES:
            raise TransientError(
                "salesforce_unavailable",
                f"Salesforce is unavailable ({self._redact(failure.message)}) "
                f"after {MAX_UNAVAILABLE_RETRIES} retries",
                retry_after=UNAVAILABLE_RETRY_AFTER,
            )
        wait = min(BACKOFF_CAP_SECONDS, 2.0 ** (attempt - 1))
        log.warning(
            "salesforce_retrying",
            extra={
                "status": failure.status,
                "error_code": failure.error_code,
                "attempt": attempt,
                "wait": wait,
            },
        )
        self.sleep(wait)

    def _unauthorized(self, reason: str) -> ConnectorError:
        how = (
            "fetching a new one with client credentials failed"
            if self.can_refresh
            else "no client credentials"
        )
        return ConnectorError(
            "salesforce_unauthorized",
            f"Salesforce refused the session ({self._redact(reason)}; {how}): check the credentials",
        )

    # -- the session

    def _client(self) -> Salesforce:
        if self._sf is None:
            if self._token is None:
                self._token = fetch_client_credentials_token(
                    self.instance_url,
                    self.settings.salesforce_client_id or "",
                    self.settings.salesforce_client_secret or "",
                ).access_token
                self.refreshes += 1
            # Built with a session id only: simple-salesforce never refreshes by itself; `call` does, once.
            self._sf = make_salesforce(
                self.instance_url, session_id=self._token, version=self.settings.salesforce_api_version
            )
            self._sf.session.hooks["response"].append(self._observe)
        return self._sf

    def _drop_session(self) -> None:
        """Forget the refused session id; the next attempt fetches a new one with client credentials."""
        if self._sf is not None:
            self._sf.session.close()
        self._sf = None
        self._token = None

    def _observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        found = API_USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if found:
            self.api_usage = Usage(used=int(found.group(1)), total=int(found.group(2)))

    def _redact(self, text: str) -> str:
        for secret in (
            self._token,
            self.settings.salesforce_access_token,
            self.settings.salesforce_client_secret,
        ):
            if secret:
                text = text.replace(secret, "***")
        return text

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


# ---- fields and values -------------------------------------------------------------------------


@dataclass(frozen=True)
class FlagField:
    name: str  # the org's field name
    attribute: str  # the Verdict attribute it carries


DEFAULT_FLAG_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "email": (
        ("ApexVerify_Valid__c", "valid"),
        ("ApexVerify_Wrong__c", "wrong"),
        ("ApexVerify_Is_Role__c", "is_role"),
        ("ApexVerify_Is_Disposable__c", "is_disposable"),
        ("ApexVerify_Status__c", "status"),
        ("ApexVerify_Verified_At__c", "verified_at"),
    ),
    "phone": (
        ("ApexVerify_Phone_Valid__c", "valid"),
        ("ApexVerify_Phone_Wrong__c", "wrong"),
        ("ApexVerify_Phone_Status__c", "status"),
        ("ApexVerify_Phone_Verified_At__c", "verified_at"),
    ),
}
ALL_DEFAULT_NAMES = {name for fields in DEFAULT_FLAG_FIELDS.values() for name, _ in fields}
VALUE_FIELDS = {"email": "Email", "phone": "Phone"}


def flag_fields(type_: str, field_names: dict[str, str] | None = None) -> list[FlagField]:
    """The fields a sync of `type_` writes, renamed by `field_names` (default name -> the org's name)."""
    if type_ not in DEFAULT_FLAG_FIELDS:
        raise ConfigError("invalid_type", f"Salesforce syncs verify email or phone, not {type_!r}")
    renames = field_names or {}
    unknown = sorted(set(renames) - ALL_DEFAULT_NAMES)
    if unknown:
        raise ConfigError("invalid_field_names", f"field_names renames unknown Salesforce fields: {unknown}")
    return [FlagField(renames.get(name, name), attribute) for name, attribute in DEFAULT_FLAG_FIELDS[type_]]


def read_fields(type_: str, field_names: dict[str, str] | None = None) -> tuple[str, str]:
    """(value field, verified-at field) a segment of `type_` reads."""
    verified = next(f.name for f in flag_fields(type_, field_names) if f.attribute == "verified_at")
    return VALUE_FIELDS[type_], verified


def parse_salesforce_datetime(raw: Any) -> datetime | None:
    """A Salesforce datetime (REST `...000+0000`, Bulk CSV `...000Z`) as an aware datetime."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def json_value(field: FlagField, verdict: Verdict) -> Any:
    """REST: booleans as JSON booleans (null for unknown, which unchecks the box), datetimes ISO 8601 Z."""
    value = getattr(verdict, field.attribute)
    return utc_iso_millis(value) if isinstance(value, datetime) else value


def csv_value(field: FlagField, verdict: Verdict) -> str:
    """Bulk CSV: true/false, ISO 8601 Z; an unknown boolean is #N/A (an empty cell keeps the old value)."""
    value = getattr(verdict, field.attribute)
    if value is None:
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    return utc_iso_millis(value) if isinstance(value, datetime) else str(value)


def object_of(record_id: str, object_type: str | None = None) -> str | None:
    """Contact or Lead: the update's own type when it names one, else the id's key prefix."""
    if object_type in OBJECTS:
        return object_type
    return OBJECT_BY_PREFIX.get(record_id[:3])


def _blank_to_none(value: Any) -> str | None:
    return str(value) if value is not None and str(value).strip() != "" else None


def _soql_ids(record_ids: Iterable[str]) -> str:
    return ", ".join(f"'{record_id}'" for record_id in record_ids)


ID_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def id15(record_id: str) -> str | None:
    """The case-sensitive 15-character form of an id; None when it is malformed or its suffix is wrong.

    The 3 suffix characters of an 18-character id encode, per 5-character chunk, which characters
    are upper-case: Salesforce refuses a whole query naming an id whose suffix does not match.
    """
    if not RECORD_ID.match(record_id):
        return None
    base = record_id[:15]
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, char in enumerate(base[start : start + 5]) if char.isupper())
        suffix += ID_SUFFIX_ALPHABET[bits]
    return base if len(record_id) == 15 or record_id[15:].upper() == suffix else None


# ---- reading records ---------------------------------------------------------------------------


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A REST record as Bulk CSV shows it, {"contact.email": ...}; keys lower-cased, as field names are
    not case-sensitive."""
    flat: dict[str, Any] = {}
    for name, value in record.items():
        if name == "attributes":
            continue
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}".lower()] = value
    return flat


def rest_rows(api: SalesforceApi, soql: str) -> Iterator[dict[str, Any]]:
    """Every row of a SOQL query, one REST page at a time (following nextRecordsUrl)."""
    page = api.query(soql)
    while True:
        for record in page.get("records", []):
            yield _flatten(record)
        if page.get("done", True) or not page.get("nextRecordsUrl"):
            return
        page = api.query_more(page["nextRecordsUrl"])


def _lower_keys(row: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in row.items()}


class SalesforceRecordReader:
    """Contacts and leads by id, 200 per `Id IN (...)` query; ids Salesforce does not know are left out."""

    def __init__(self, api: SalesforceApi, *, field_names: dict[str, str] | None = None) -> None:
        self.api = api
        self.field_names = field_names

    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        value_field, verified_field = read_fields(type_, self.field_names)
        # Only well-formed ids go into SOQL (as 15 characters): anything else names no record anyway.
        by_object: dict[str, dict[str, str]] = {}
        for record_id in dict.fromkeys(str(i).strip() for i in record_ids):
            object_name, short = OBJECT_BY_PREFIX.get(record_id[:3]), id15(record_id)
            if object_name and short:
                by_object.setdefault(object_name, {})[record_id] = short
        for object_name, ids in by_object.items():
            for chunk in chunked(ids.items(), READ_CHUNK):
                soql = (
                    f"SELECT Id, {value_field}, {verified_field} FROM {object_name} "
                    f"WHERE Id IN ({_soql_ids(short for _, short in chunk)})"
                )
                found = {str(row["id"])[:15]: row for row in rest_rows(self.api, soql)}
                for record_id, short in chunk:  # in the order asked, each under the id it was asked by
                    row = found.get(short)
                    if row is not None:
                        yield SourceRecord(
                            record_id=record_id,
                            value=_blank_to_none(row.get(value_field.lower())),
                            object_type=object_name,
                            verified_at=parse_salesforce_datetime(row.get(verified_field.lower())),
                        )


class SalesforceSegmentSource:
    """A campaign's contacts and leads, or the records a SOQL WHERE clause selects.

    `source` is the sync's source: {"kind": "salesforce_campaign", "ref": campaign id, "object":
    "Contact" | "Lead" | None} or {"kind": "salesforce_soql", "ref": WHERE clause, "object": "Contact" |
    "Lead"}. Up to `bulk_threshold` rows are read over REST, more with one Bulk API 2.0 query job.
    """

    def __init__(
        self,
        api: SalesforceApi,
        source: Mapping[str, Any],
        type_: str,
        *,
        bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
        field_names: dict[str, str] | None = None,
        work_dir: Path | None = None,
        bulk_page_records: int | None = None,
    ) -> None:
        self.api = api
        self.kind = source.get("kind")
        self.ref = str(source.get("ref") or "").strip()
        self.object = source.get("object")
        self.type = type_
        self.value_field, self.verified_field = read_fields(type_, field_names)
        self.bulk_threshold = bulk_threshold
        self.work_dir = Path(work_dir) if work_dir else Path(api.settings.data_dir) / "salesforce"
        self.bulk_page_records = bulk_page_records
        self._check_source()

    def _check_source(self) -> None:
        if self.kind not in ("salesforce_campaign", "salesforce_soql"):
            raise ConfigError("invalid_source", f"not a Salesforce segment: {self.kind!r}")
        if self.object not in (*OBJECTS, None) or (self.kind == "salesforce_soql" and self.object is None):
            raise ConfigError("invalid_object", "object must be Contact or Lead for Salesforce segments")
        if not self.ref:
            raise ConfigError("invalid_ref", "the segment names no campaign or WHERE clause")
        if self.kind == "salesforce_campaign" and id15(self.ref) is None:
            raise ConfigError("invalid_ref", f"{self.ref!r} is not a Salesforce campaign id")

    def iter_records(self) -> Iterator[SourceRecord]:
        size = self.size()
        if size == 0 and self.kind == "salesforce_campaign":
            self._check_campaign_exists()
        rows = (
            rest_rows(self.api, self.soql())
            if size <= self.bulk_threshold
            else (_lower_keys(row) for row in self._bulk_rows())
        )
        for row in rows:
            record = self._record(row)
            if record is not None:
                yield record

    def size(self) -> int:
        """How many rows the segment's query selects (one COUNT() query)."""
        return int(self.api.query(f"SELECT COUNT() FROM {self._from_where()}").get("totalSize") or 0)

    def soql(self) -> str:
        if self.kind == "salesforce_soql":
            columns = ["Id", self.value_field, self.verified_field]
        else:
            columns = ["ContactId", "LeadId"] + [
                f"{name}.{field}"
                for name in self._objects()
                for field in (self.value_field, self.verified_field)
            ]
        return f"SELECT {', '.join(columns)} FROM {self._from_where()}"

    def _objects(self) -> tuple[str, ...]:
        return (self.object,) if self.object else OBJECTS

    def _from_where(self) -> str:
        if self.kind == "salesforce_soql":
            return f"{self.object} WHERE {self.ref}"
        # A member that is a converted lead carries both ids: it is the contact now.
        only = {"Contact": " AND ContactId != NULL", "Lead": " AND LeadId != NULL AND ContactId = NULL"}
        return f"CampaignMember WHERE CampaignId = '{self.ref}'{only.get(self.object or '', '')}"

    def _check_campaign_exists(self) -> None:
        if not self.api.query(f"SELECT Id FROM Campaign WHERE Id = '{self.ref}'").get("records"):
            raise ConnectorError(
                "salesforce_campaign_not_found", f"Salesforce campaign {self.ref} does not exist"
            )

    def _bulk_rows(self) -> Iterator[dict[str, str]]:
        options = {"page_records": self.bulk_page_records} if self.bulk_page_records else {}
        return query_rows(self.api, self.soql(), work_dir=self.work_dir, **options)

    def _record(self, row: Mapping[str, Any]) -> SourceRecord | None:
        value, verified = self.value_field.lower(), self.verified_field.lower()
        if self.kind == "salesforce_soql":
            return SourceRecord(
                record_id=str(row["id"]),
                value=_blank_to_none(row.get(value)),
                object_type=self.object,
                verified_at=parse_salesforce_datetime(row.get(verified)),
            )
        for object_name in self._objects():
            record_id = _blank_to_none(row.get(f"{object_name.lower()}id"))
            if record_id:
                prefix = f"{object_name.lower()}."
                return SourceRecord(
                    record_id=record_id,
                    value=_blank_to_none(row.get(prefix + value)),
                    object_type=object_name,
                    verified_at=parse_salesforce_datetime(row.get(prefix + verified)),
                )
        return None


# ---- writing flags -----------------------------------------------------------------------------


class SalesforceFlagWriter:
    """Verdict flags onto contacts and leads: sObject Collections of 200, or Bulk API 2.0 ingest jobs."""

    def __init__(
        self,
        api: SalesforceApi,
        type_: str,
        *,
        objects: Iterable[str] = OBJECTS,
        expected_updates: int = 0,
        bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
        field_names: dict[str, str] | None = None,
        work_dir: Path,
    ) -> None:
        self.api = api
        self.type = type_
        self.fields = flag_fields(type_, field_names)
        self.objects = tuple(objects)
        unknown = [name for name in self.objects if name not in OBJECTS]
        if unknown:
            raise ConfigError("invalid_object", f"flags are written to Contact and Lead, not {unknown}")
        self.bulk = expected_updates > bulk_threshold
        self.batch_size = BULK_BATCH_ROWS if self.bulk else COLLECTION_LIMIT
        self.work_dir = Path(work_dir)

    # -- prepare

    def prepare(self) -> None:
        """Describe each object written; fail naming every field that is missing or not updateable."""
        problems = []
        for object_name in self.objects:
            described = self.api.rest("GET", f"sobjects/{object_name}/describe") or {}
            updateable = {
                str(field["name"]).lower() for field in described.get("fields", []) if field.get("updateable")
            }
            lacking = [field.name for field in self.fields if field.name.lower() not in updateable]
            if lacking:
                problems.append(f"{object_name}: missing or not updateable: {', '.join(lacking)}")
        if problems:
            raise ConnectorError(
                "salesforce_fields_missing",
                "; ".join(problems) + " (create them as DESIGN.md's 'What is written back' lists, "
                "updateable by the connector's user)",
            )

    # -- write

    def write(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        return self._write_bulk(updates) if self.bulk else self._write_rest(updates)

    def _write_rest(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        failures: list[WriteFailure] = []
        for chunk in chunked(updates, COLLECTION_LIMIT):
            records, refused = self._collection_records(chunk)
            failures.extend(refused)
            if records:
                failures.extend(self._update_collection(records))
        return failures

    def _collection_records(self, chunk: list[FlagUpdate]) -> tuple[list[dict[str, Any]], list[WriteFailure]]:
        by_id: dict[str, dict[str, Any]] = {}
        refused = []
        for update in chunk:
            object_name = object_of(update.record_id, update.object_type)
            if object_name is None:
                refused.append(_not_a_person(update.record_id))
                continue
            # A record named twice in one call is refused by Salesforce; the later verdict wins.
            by_id[update.record_id] = {
                "attributes": {"type": object_name},
                "Id": update.record_id,
                **{field.name: json_value(field, update.verdict) for field in self.fields},
            }
        # Salesforce processes a mixed list in runs of one type, at most 10 runs a call: one run per type.
        records = sorted(by_id.values(), key=lambda record: record["attributes"]["type"])
        return records, refused

    def _update_collection(self, records: list[dict[str, Any]]) -> list[WriteFailure]:
        results = self.api.rest("PATCH", "composite/sobjects", json={"allOrNone": False, "records": records})
        failures = []
        # SaveResults come back in the order the records were sent.
        for record, result in zip(records, results or [], strict=False):
            if result.get("success"):
                continue
            errors = result.get("errors") or [{"statusCode": "UNKNOWN_ERROR", "message": "not saved"}]
            failures.append(
                WriteFailure(
                    record["Id"],
                    str(errors[0].get("statusCode") or "UNKNOWN_ERROR"),
                    "; ".join(str(error.get("message") or "") for error in errors),
                )
            )
        missing = records[len(results or []) :]
        failures.extend(
            WriteFailure(r["Id"], "NOT_CONFIRMED", "Salesforce did not confirm this update") for r in missing
        )
        return failures

    def _write_bulk(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        refused: list[WriteFailure] = []
        cells = cells_per_verdict(lambda verdict: [csv_value(field, verdict) for field in self.fields])

        def rows() -> Iterator[IngestRow]:
            for update in updates:
                object_name = object_of(update.record_id, update.object_type)
                if object_name is None:
                    refused.append(_not_a_person(update.record_id))
                    continue
                yield IngestRow(object_name, update.record_id, cells(update.verdict))

        failures = write_flag_rows(
            self.api, [field.name for field in self.fields], rows(), work_dir=self.work_dir
        )
        return refused + failures


def _not_a_person(record_id: str) -> WriteFailure:
    return WriteFailure(record_id, "MALFORMED_ID", f"{record_id} is not a Contact (003) or Lead (00Q) id")
