"""Salesforce contacts and leads read: a campaign's members or a SOQL segment, or records by id.

Up to `bulk_threshold` rows a segment is read over REST (SOQL with cursor paging); more are read
with one Bulk API 2.0 query job (bulk.py), so API calls do not grow with the segment. Each record
comes with its email or phone and the verified-at field the connector wrote last (flags.py
names it); Salesforce field names are not case-sensitive, so rows are read with lower-case keys.

What became of records a write-back could not reach (`SalesforceRecordReader.fates`) is asked of
Salesforce too, never guessed from the refusal alone:

- CANNOT_UPDATE_CONVERTED_LEAD: the lead was converted, and from then on Salesforce lets it be
  referenced only through its ConvertedAccountId and ConvertedContactId (help article 000384333).
  So the lead's ConvertedContactId is read, then that contact's current email or phone: the lead
  is CONVERTED_TO that contact. A lead converted to no contact, or not converted after all, stays a
  write failure; one no longer found, or whose contact is no longer found, is DELETED.
- ENTITY_IS_DELETED (in the recycle bin; INVALID_ID_FIELD before API 10.0), INVALID_CROSS_REFERENCE_KEY
  (an update's id that names no record) and NOT_FOUND (sObject Rows): the record may be gone. It is
  DELETED only when a query no longer finds it; found, it stays a write failure. MALFORMED_ID is
  not among them: a malformed id never named a record, so nothing was deleted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from connector.crm.base import CONVERTED_TO, DELETED, RecordFate, SourceRecord, WriteFailure
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
CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"
GONE_CODES = frozenset({"ENTITY_IS_DELETED", "INVALID_ID_FIELD", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND"})


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
    """Contacts and leads by id, 200 per `Id IN (...)` query; ids Salesforce does not know are left out.
    Also what became of records a write could not reach (`fates`)."""

    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        value_field, verified_field = read_fields(type_, self.field_names)
        for record_id, object_name, row in self._lookup(record_ids, [value_field, verified_field]):
            if row is not None:
                yield SourceRecord(
                    record_id=record_id,
                    value=blank_to_none(row.get(value_field.lower())),
                    object_type=object_name,
                    verified_at=parse_utc_datetime(row.get(verified_field.lower())),
                )

    def fates(self, failures: list[WriteFailure], type_: str) -> list[RecordFate]:
        """Converted leads followed to their contacts, gone records confirmed gone (module docstring);
        every other refusal, and every record found as it was, is left out."""
        converted = [failure.record_id for failure in failures if failure.code == CONVERTED_LEAD]
        gone = [failure.record_id for failure in failures if failure.code in GONE_CODES]
        absent = [record_id for record_id, _, row in self._lookup(gone, []) if row is None]
        return self._conversions(converted, VALUE_FIELDS[type_]) + [RecordFate(i, DELETED) for i in absent]

    def _conversions(self, lead_ids: list[str], value_field: str) -> list[RecordFate]:
        leads = [
            (lead_id, row)
            for lead_id, object_name, row in self._lookup(lead_ids, ["IsConverted", "ConvertedContactId"])
            if object_name == "Lead"
        ]
        successor_of = {lead_id: _converted_to(row) for lead_id, row in leads}
        wanted = [contact_id for contact_id in successor_of.values() if contact_id]
        contacts = {record_id: row for record_id, _, row in self._lookup(wanted, [value_field])}
        fates = []
        for lead_id, row in leads:
            contact_id = successor_of[lead_id]
            contact = contacts.get(contact_id) if contact_id else None
            if row is None:
                fates.append(RecordFate(lead_id, DELETED))
            elif contact_id is None:
                continue  # not converted after all, or converted to no contact: it stays a failure
            elif contact is None:
                fates.append(RecordFate(lead_id, DELETED))  # the contact it became is gone too
            else:
                value = blank_to_none(contact.get(value_field.lower()))
                fates.append(RecordFate(lead_id, CONVERTED_TO, contact_id, "Contact", value))
        return fates

    def _lookup(
        self, record_ids: Iterable[str], fields: list[str]
    ) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
        """Each distinct well-formed contact or lead id asked, in order, with its object and its row of
        `fields` (None when a query does not find it): 200 ids per `Id IN (...)` query, each as its 15
        characters, so the query stays far below the REST API's 16,384-byte URI limit."""
        by_object: dict[str, dict[str, str]] = {}
        for record_id in dict.fromkeys(str(i).strip() for i in record_ids):
            object_name, short = ID_PREFIXES.get(record_id[:3]), id15(record_id)
            if object_name and short:  # anything else names no record: it goes into no query
                by_object.setdefault(object_name, {})[record_id] = short
        selected = ", ".join(["Id", *fields])
        for object_name, ids in by_object.items():
            for chunk in chunks(ids.items(), READ_CHUNK):
                soql = f"SELECT {selected} FROM {object_name} WHERE Id IN ({soql_ids(s for _, s in chunk)})"
                found = {str(row["id"])[:15]: row for row in rest_rows(self.api, soql)}
                for record_id, short in chunk:  # each under the id it was asked by
                    yield record_id, object_name, found.get(short)


def _converted_to(lead: Mapping[str, Any] | None) -> str | None:
    """The contact a lead row says it was converted to; None when it is not converted, or to no contact."""
    if lead is None or lead.get("isconverted") is not True:
        return None
    return blank_to_none(lead.get("convertedcontactid"))


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
