"""Salesforce contacts and leads read: a campaign's members or a SOQL segment, or records by id.

Up to `bulk_threshold` rows a segment is read over REST (SOQL with cursor paging); more are read
with one Bulk API 2.0 query job (bulk.py), so API calls do not grow with the segment. Each record
comes with its email or phone and the verified-at field the connector wrote last (flags.py
names it); Salesforce field names are not case-sensitive, so rows are read with lower-case keys.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from connector.crm.base import SourceRecord
from connector.crm.calls import chunks
from connector.crm.jobs import DEFAULT_BULK_THRESHOLD
from connector.crm.records import RecordReading, blank_to_none, parse_utc_datetime
from connector.crm.salesforce.api import SalesforceApi
from connector.crm.salesforce.bulk import query_rows
from connector.crm.salesforce.flags import NAMES
from connector.crm.salesforce.webhook import ID_PREFIXES, OBJECTS
from connector.errors import ConfigError, ConnectorError

READ_CHUNK = 200  # ids per `Id IN (...)` query: the query string stays far below URL limits
RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
ID_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
VALUE_FIELDS = {"email": "Email", "phone": "Phone"}


def read_fields(type_: str, field_names: dict[str, str] | None = None) -> tuple[str, str]:
    """(value field, verified-at field) a segment of `type_` reads."""
    verified = NAMES.verified_at(type_, field_names)
    return VALUE_FIELDS[type_], verified


def soql_ids(record_ids: Iterable[str]) -> str:
    return ", ".join(f"'{record_id}'" for record_id in record_ids)


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


class SalesforceRecordReader(RecordReading[SalesforceApi]):
    """Contacts and leads by id, 200 per `Id IN (...)` query; ids Salesforce does not know are left out."""

    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        value_field, verified_field = read_fields(type_, self.field_names)
        # Only well-formed ids go into SOQL (as 15 characters): anything else names no record anyway.
        by_object: dict[str, dict[str, str]] = {}
        for record_id in dict.fromkeys(str(i).strip() for i in record_ids):
            object_name, short = ID_PREFIXES.get(record_id[:3]), id15(record_id)
            if object_name and short:
                by_object.setdefault(object_name, {})[record_id] = short
        for object_name, ids in by_object.items():
            for chunk in chunks(ids.items(), READ_CHUNK):
                soql = (
                    f"SELECT Id, {value_field}, {verified_field} FROM {object_name} "
                    f"WHERE Id IN ({soql_ids(short for _, short in chunk)})"
                )
                found = {str(row["id"])[:15]: row for row in rest_rows(self.api, soql)}
                for record_id, short in chunk:  # in the order asked, each under the id it was asked by
                    row = found.get(short)
                    if row is not None:
                        yield SourceRecord(
                            record_id=record_id,
                            value=blank_to_none(row.get(value_field.lower())),
                            object_type=object_name,
                            verified_at=parse_utc_datetime(row.get(verified_field.lower())),
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
        rows = self._rest_rows() if size <= self.bulk_threshold else self._bulk_rows()
        for cells in rows:
            record = self._record(cells)
            if record is not None:
                yield record

    def size(self) -> int:
        """How many rows the segment's query selects (one COUNT() query)."""
        return int(self.api.query(f"SELECT COUNT() FROM {self._from_where()}").get("totalSize") or 0)

    def soql(self) -> str:
        return f"SELECT {', '.join(self._columns())} FROM {self._from_where()}"

    def _columns(self) -> list[str]:
        """What the query selects, in the order `_layout` reads the cells."""
        if self.kind == "salesforce_soql":
            return ["Id", self.value_field, self.verified_field]
        return ["ContactId", "LeadId"] + [
            f"{name}.{field}" for name in self._objects() for field in (self.value_field, self.verified_field)
        ]

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

    def _rest_rows(self) -> Iterator[tuple[Any, ...]]:
        names = [column.lower() for column in self._columns()]
        return (tuple(row.get(name) for name in names) for row in rest_rows(self.api, self.soql()))

    def _bulk_rows(self) -> Iterator[tuple[str, ...]]:
        options = {"page_records": self.bulk_page_records} if self.bulk_page_records else {}
        return query_rows(self.api, self.soql(), self._columns(), work_dir=self.work_dir, **options)

    def _record(self, cells: tuple[Any, ...]) -> SourceRecord | None:
        for object_name, id_at, value_at, verified_at in self._layout:
            record_id = blank_to_none(cells[id_at])
            if record_id:
                return SourceRecord(
                    record_id=str(record_id),
                    value=blank_to_none(cells[value_at]),
                    object_type=object_name,
                    verified_at=parse_utc_datetime(cells[verified_at]),
                )
        return None

    @functools.cached_property
    def _layout(self) -> list[tuple[str | None, int, int, int]]:
        """Per object a row can be, in the order tried: its name and where `_columns` put its id,
        value and verified-at cells."""
        at = {column: position for position, column in enumerate(self._columns())}
        if self.kind == "salesforce_soql":
            return [(self.object, at["Id"], at[self.value_field], at[self.verified_field])]
        return [
            (name, at[f"{name}Id"], at[f"{name}.{self.value_field}"], at[f"{name}.{self.verified_field}"])
            for name in self._objects()
        ]
