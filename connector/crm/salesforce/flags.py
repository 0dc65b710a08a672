"""Verdict flags written back onto Salesforce contacts and leads, as custom fields.

Which flags a sync writes is connector/crm/flags.py's; here are their default field names (a
connection may rename them with `field_names`, default name -> the org's name; the fields are
created by the org's admin, DESIGN.md "What is written back"), how REST and Bulk CSV take their
values, and the writer: sObject Collections of 200 records, or, above `bulk_threshold`, one Bulk
API 2.0 ingest job per object (bulk.py), so API calls do not grow with the sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from connector.crm.base import FlagUpdate, Verdict, WriteFailure, cells_per_verdict
from connector.crm.calls import chunks
from connector.crm.flags import FlagField, FlagNames, FlagWriting
from connector.crm.jobs import DEFAULT_BULK_THRESHOLD, utc_iso_millis
from connector.crm.salesforce.api import SalesforceApi
from connector.crm.salesforce.bulk import TRANSIENT_CODES, IngestRow, write_flag_rows
from connector.crm.salesforce.webhook import ID_PREFIXES, OBJECTS
from connector.errors import ConfigError, ConnectorError

NAMES = FlagNames(
    "Salesforce",
    "Salesforce fields",
    {
        "email": {
            "valid": "ApexVerify_Valid__c",
            "wrong": "ApexVerify_Wrong__c",
            "is_role": "ApexVerify_Is_Role__c",
            "is_disposable": "ApexVerify_Is_Disposable__c",
            "status": "ApexVerify_Status__c",
            "verified_at": "ApexVerify_Verified_At__c",
        },
        "phone": {
            "valid": "ApexVerify_Phone_Valid__c",
            "wrong": "ApexVerify_Phone_Wrong__c",
            "status": "ApexVerify_Phone_Status__c",
            "verified_at": "ApexVerify_Phone_Verified_At__c",
        },
    },
)
COLLECTION_LIMIT = 200  # records per sObject Collections call
# One ingest job file per object: rows are ~90 bytes, so 500,000 stay well under Bulk API 2.0's 100 MB.
BULK_BATCH_ROWS = 500_000


def json_value(field: FlagField, verdict: Verdict) -> Any:
    """REST: booleans as JSON booleans (null for unknown, which unchecks the box), datetimes ISO 8601 Z."""
    value = field.value(verdict)
    return utc_iso_millis(value) if field.kind == "verified_at" else value


def csv_value(field: FlagField, verdict: Verdict) -> str:
    """Bulk CSV: true/false, ISO 8601 Z; an unknown boolean is #N/A (an empty cell keeps the old value)."""
    return field.text(verdict, unknown="#N/A")


def object_of(record_id: str, object_type: str | None = None) -> str | None:
    """Contact or Lead: the update's own type when it names one, else the id's key prefix."""
    if object_type in OBJECTS:
        return object_type
    return ID_PREFIXES.get(record_id[:3])


class SalesforceFlagWriter(FlagWriting[SalesforceApi]):
    """Verdict flags onto contacts and leads: sObject Collections of 200, or Bulk API 2.0 ingest jobs."""

    names = NAMES
    rest_batch = COLLECTION_LIMIT
    bulk_batch = BULK_BATCH_ROWS

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
        super().__init__(
            api,
            type_,
            expected_updates=expected_updates,
            bulk_threshold=bulk_threshold,
            field_names=field_names,
            work_dir=work_dir,
        )
        self.objects = tuple(objects)
        unknown = [name for name in self.objects if name not in OBJECTS]
        if unknown:
            raise ConfigError("invalid_object", f"flags are written to Contact and Lead, not {unknown}")

    # -- prepare

    def prepare(self) -> None:
        """Describe each object written; fail naming every field that is missing or not updateable."""
        problems = []
        for object_name in self.objects:
            updateable = updateable_fields(self.api, object_name)
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
        for chunk in chunks(updates, COLLECTION_LIMIT):
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
                refused.append(not_a_person(update.record_id))
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
        return save_collection(self.api, "PATCH", records, [record["Id"] for record in records])

    def _write_bulk(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        refused: list[WriteFailure] = []
        cells = cells_per_verdict(lambda verdict: [csv_value(field, verdict) for field in self.fields])

        def rows() -> Iterator[IngestRow]:
            for update in updates:
                object_name = object_of(update.record_id, update.object_type)
                if object_name is None:
                    refused.append(not_a_person(update.record_id))
                    continue
                yield IngestRow(object_name, update.record_id, cells(update.verdict))

        failures = write_flag_rows(
            self.api, [field.name for field in self.fields], rows(), work_dir=self.work_dir
        )
        return refused + failures


def save_collection(
    api: SalesforceApi, method: str, records: list[dict[str, Any]], record_ids: list[str]
) -> list[WriteFailure]:
    """Send one sObject Collections call (PATCH: update, POST: create; allOrNone false) and return the
    records Salesforce refused, each under its entry of `record_ids` (one per record, in order).
    A refusal Salesforce means as temporary (a locked row) is marked transient, and so is an update
    it did not confirm: sent again, it sets the same values."""
    results = api.rest(method, "composite/sobjects", json={"allOrNone": False, "records": records})
    failures = []
    # SaveResults come back in the order the records were sent.
    for record_id, result in zip(record_ids, results or [], strict=False):
        if result.get("success"):
            continue
        errors = result.get("errors") or [{"statusCode": "UNKNOWN_ERROR", "message": "not saved"}]
        code = str(errors[0].get("statusCode") or "UNKNOWN_ERROR")
        failures.append(
            WriteFailure(
                record_id,
                code,
                "; ".join(str(error.get("message") or "") for error in errors),
                transient=code in TRANSIENT_CODES,
            )
        )
    missing = record_ids[len(results or []) :]
    failures.extend(
        WriteFailure(
            record_id, "NOT_CONFIRMED", "Salesforce did not confirm this write", transient=method == "PATCH"
        )
        for record_id in missing
    )
    return failures


def updateable_fields(api: SalesforceApi, object_name: str) -> set[str]:
    """The lower-cased names of the fields of `object_name` the connector's user may update (describe)."""
    described = api.rest("GET", f"sobjects/{object_name}/describe") or {}
    return {str(field["name"]).lower() for field in described.get("fields", []) if field.get("updateable")}


def not_a_person(record_id: str) -> WriteFailure:
    return WriteFailure(record_id, "MALFORMED_ID", f"{record_id} is not a Contact (003) or Lead (00Q) id")
