"""HubSpot contacts read: a list's members, or contacts by id, and what became of contacts gone.

Small lists are read over REST (membership pages of 250, batch reads of 100 contacts); a list
larger than `bulk_threshold` is read from one Exports API file (bulk.py), so API calls do not grow
with the segment. Each record comes with its email or phone and the verified-at property the
connector wrote last (flags.py names it).

`fates`: a contact a write-back could not find may have been merged or archived meanwhile. HubSpot
documents (developer changelog "Updated merge functionality for contacts and companies") that a
merge makes a new record with a new id and that both merged ids point to it: a read by the old id
answers the new record, whose `hs_merged_object_ids` (";"-joined) lists the ids merged into it. An
archived (deleted) contact is not found: a batch read answers 207 with an OBJECT_NOT_FOUND error
naming it. HubSpot documents no such alias for writes, so writes are refused and read here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hubspot.crm.contacts as hs_contacts

from connector.crm.base import DELETED, MERGED_INTO, RecordFate, SourceRecord, WriteFailure
from connector.crm.calls import chunks
from connector.crm.hubspot.api import BATCH_LIMIT, HubSpotApi, HubSpotRequestError
from connector.crm.hubspot.bulk import export_list_rows
from connector.crm.hubspot.flags import NAMES
from connector.crm.jobs import DEFAULT_BULK_THRESHOLD
from connector.crm.records import RecordReading, blank_to_none, parse_utc_datetime
from connector.errors import ConnectorError

log = logging.getLogger(__name__)

MEMBERSHIPS_PAGE = 250
VALUE_PROPERTIES = {"email": "email", "phone": "phone"}
MERGED_IDS = "hs_merged_object_ids"
# Refusals that say the contact may be gone: a batch update's unknown id, an import row's unknown
# Record ID, an update HubSpot neither confirmed nor refused. Any other stays a write failure.
MAYBE_GONE = frozenset({"OBJECT_NOT_FOUND", "INVALID_OBJECT_ID", "NOT_CONFIRMED"})
# HubSpot joins a multi-valued property's values with ";" (commas tolerated).
ID_SEPARATORS = re.compile(r"[;,\s]+")


def parse_hubspot_datetime(raw: str | None) -> datetime | None:
    """A HubSpot datetime value (ISO 8601 or epoch milliseconds) as an aware datetime."""
    if raw and raw.strip().isdigit():
        return datetime.fromtimestamp(int(raw.strip()) / 1000, UTC)
    return parse_utc_datetime(raw)


def _read_properties(type_: str, field_names: dict[str, str] | None) -> tuple[str, str]:
    """(value property, verified-at property) of a sync of `type_`."""
    NAMES.check_type(type_)
    return VALUE_PROPERTIES[type_], NAMES.verified_at(type_, field_names)


class HubSpotRecordReader(RecordReading[HubSpotApi]):
    """Contacts by record id, 100 per batch read; ids HubSpot does not know are left out."""

    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        value_property, verified_property = _read_properties(type_, self.field_names)
        for chunk in chunks(dict.fromkeys(str(i) for i in record_ids), BATCH_LIMIT):
            found = self._read_batch(chunk, [value_property, verified_property])
            for record_id in chunk:  # in the order asked, whatever order HubSpot answers in
                properties = found.get(record_id)
                if properties is not None:
                    yield SourceRecord(
                        record_id=record_id,
                        value=blank_to_none(properties.get(value_property)),
                        verified_at=parse_hubspot_datetime(properties.get(verified_property)),
                    )

    def _read_batch(self, record_ids: list[str], properties: list[str]) -> dict[str, dict[str, str | None]]:
        answer = self._batch_read(record_ids, properties)
        # A 207 lists unknown ids under `errors`: they are simply not in `results`.
        return {result.id: result.properties or {} for result in answer.results}

    def _batch_read(self, record_ids: list[str], properties: list[str]) -> Any:
        body = hs_contacts.BatchReadInputSimplePublicObjectId(
            inputs=[hs_contacts.SimplePublicObjectId(id=record_id) for record_id in record_ids],
            properties=properties,
            properties_with_history=[],
        )
        return self.api.call(self.api.contacts.read, body)

    def fates(self, failures: list[WriteFailure], type_: str) -> list[RecordFate]:
        """Merged and archived contacts among the refused ones, read back 100 a call (see above)."""
        value_property, _ = _read_properties(type_, self.field_names)
        asked = dict.fromkeys(f.record_id for f in failures if f.code in MAYBE_GONE)
        found: list[RecordFate] = []
        for chunk in chunks(asked, BATCH_LIMIT):
            try:
                answer = self._batch_read(chunk, [value_property, MERGED_IDS])
            except HubSpotRequestError as exc:  # e.g. ids HubSpot cannot parse: they stay failures
                log.warning("hubspot_fates_unread", extra={"records": len(chunk), "code": exc.category})
                continue
            found.extend(_fates_of(chunk, answer, value_property))
        return found


def _fates_of(asked: list[str], answer: Any, value_property: str) -> Iterator[RecordFate]:
    """What a batch read says of each asked id: merged into a record that lists it, or not found.
    An id answered as itself, or accounted for no other way, is left out (it stays a failure)."""
    successors: dict[str, Any] = {}
    for result in answer.results or []:
        merged_ids = ID_SEPARATORS.split((result.properties or {}).get(MERGED_IDS) or "")
        for merged_id in merged_ids:
            if merged_id and merged_id != result.id:
                successors.setdefault(merged_id, result)
    returned = {result.id for result in answer.results or []}
    not_found = {
        str(record_id)
        for error in getattr(answer, "errors", None) or []
        if error.category == "OBJECT_NOT_FOUND"
        for record_id in (error.context or {}).get("ids", [])
    }
    for record_id in asked:
        successor = successors.get(record_id)
        if record_id in returned:
            continue
        if successor is not None:
            yield RecordFate(
                record_id,
                MERGED_INTO,
                successor_id=str(successor.id),
                successor_value=(successor.properties or {}).get(value_property),
            )
        elif record_id in not_found:
            yield RecordFate(record_id, DELETED)


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
        NAMES.check_type(type_)
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
        for record_ids in chunks(self._member_ids(), BATCH_LIMIT):
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
        value_property, verified_property = _read_properties(self.type, self.field_names)
        rows = export_list_rows(
            self.api,
            self.list_id,
            [value_property, verified_property],
            work_dir=self.work_dir,
        )
        for row in rows:
            yield SourceRecord(
                record_id=row["hs_object_id"],
                value=blank_to_none(row.get(value_property)),
                verified_at=parse_hubspot_datetime(row.get(verified_property)),
            )
