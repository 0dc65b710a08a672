"""The HubSpot sandbox's asynchronous jobs: list exports (CSV files) and contact imports.

Both run on the clock, not on threads: a job is due `delay` seconds (sandbox config) after it was
requested and is PENDING/STARTED for the first half of that, PROCESSING for the second. The
state advances imports at the start of every API request, so an import's rows are applied by the
first request after it is due; an export is COMPLETE from the first status poll after it is due.

Export files follow HubSpot's CSV: a "Record ID" column first, then one column per requested
property, headed by the property's label, or its internal name when the request's
`exportInternalValuesOptions` holds NAMES; enumeration values are written as their option labels
unless it holds VALUES. The file is plain CSV, or, when the sandbox's `export_zip` is on (HubSpot
zips large exports), a ZIP archive holding the CSV. Either is streamed, never built whole.

Imports: the sandbox takes UPDATE imports of contacts (`importOperations` {"0-1": "UPDATE"}), one
CSV file, one column mapped as the record id (columnType HUBSPOT_OBJECT_ID or propertyName
hs_object_id). Empty cells leave a property as it is (HubSpot imports never blank a value); a
value the property refuses is skipped and reported, the row's other values are still written.
A row naming a contact that is not live (unknown, archived, merged away) is refused
INVALID_OBJECT_ID; one naming a contact of the portal's permanent refusals (POST
/_sandbox/refusals) is refused INVALID_CUSTOM_PROPERTY_VALIDATION, nothing of it written.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from connector.sandbox.hubspot_contacts import ContactStore
from connector.sandbox.hubspot_errors import validation_error
from connector.sandbox.hubspot_properties import PropertyCatalog, iso_now

CONTACT_TYPE_ID = "0-1"
# Why a contact of the portal's permanent refusals (POST /_sandbox/refusals) is not written.
REFUSAL_MESSAGE = "the value does not pass the portal's validation rules for this record"

# Property check codes (hubspot_properties) as the import error types of the imports spec.
IMPORT_ERROR_TYPES = {
    "INVALID_OPTION": "INVALID_ENUMERATION_OPTION",
    "INVALID_DATE": "COULD_NOT_PARSE_DATE",
    "INVALID_DATETIME": "COULD_NOT_PARSE_DATE",
    "INVALID_FLOAT": "COULD_NOT_PARSE_NUMBER",
}


def _phase(elapsed: float, delay: float, first: str) -> str | None:
    """`first` or PROCESSING while a job is not due, None once it is."""
    if elapsed >= delay:
        return None
    return first if elapsed < delay / 2 else "PROCESSING"


# ---- exports ------------------------------------------------------------------------------


@dataclass
class ExportTask:
    task_id: str
    name: str
    list_id: str
    property_names: list[str]
    headers: list[str]
    member_ids: Sequence[str]  # the list's members when the export was requested
    option_labels: bool  # write enumeration values as their labels
    zipped: bool
    download_token: str
    requested_at: float = field(default_factory=time.time)
    requested_iso: str = field(default_factory=iso_now)
    completed_iso: str | None = None

    @property
    def file_name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name) or "export"
        return f"{safe}.zip" if self.zipped else f"{safe}.csv"

    def status(self, now: float, delay: float) -> str:
        if self.completed_iso is None:
            phase = _phase(now - self.requested_at, delay, "PENDING")
            if phase is not None:
                return phase
            self.completed_iso = iso_now()
        return "COMPLETE"


def export_headers(catalog: PropertyCatalog, property_names: list[str], internal_names: bool) -> list[str]:
    labels = [name if internal_names else catalog.properties[name].label for name in property_names]
    return ["Record ID", *labels]


def export_row(
    catalog: PropertyCatalog, task: ExportTask, contact_id: str, props: dict[str, str]
) -> list[str]:
    row = [contact_id]
    for name in task.property_names:
        value = props.get(name, "")
        prop = catalog.properties.get(name)
        if task.option_labels and prop is not None and prop.options and value:
            value = ";".join(prop.option_label(v) for v in value.split(";"))
        row.append(value)
    return row


def csv_stream(header: list[str], row_batches: Iterable[list[list[str]]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for rows in row_batches:
        writer.writerows(rows)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode()


class _Sink:
    """A write-only file for zipfile that hands out what was written since the last take()."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:  # zipfile leaves a file it was given open: never called
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def zip_stream(member_name: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    sink = _Sink()
    # An unseekable sink makes zipfile write data descriptors, so nothing needs rewriting later.
    with (
        zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open(member_name, "w", force_zip64=True) as member,
    ):
        for chunk in chunks:
            member.write(chunk)
            yield sink.take()
    yield sink.take()


# ---- imports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportPlan:
    name: str
    file_name: str
    has_header: bool
    column_count: int
    id_column: int
    property_columns: list[tuple[int, str]]  # (column index, property name)


def plan_import(request: dict[str, Any], uploaded_name: str, catalog: PropertyCatalog) -> ImportPlan:
    """Check an `importRequest` the way HubSpot does before it accepts the import."""
    operations = request.get("importOperations", {CONTACT_TYPE_ID: "UPSERT"})
    if operations != {CONTACT_TYPE_ID: "UPDATE"}:
        raise validation_error(
            f"importOperations {operations!r} not supported by the sandbox: it takes "
            f'{{"{CONTACT_TYPE_ID}": "UPDATE"}} imports of contacts only'
        )
    files = request.get("files")
    if not isinstance(files, list) or len(files) != 1 or not isinstance(files[0], dict):
        raise validation_error("importRequest.files must describe exactly one file")
    spec = files[0]
    if spec.get("fileName") != uploaded_name:
        raise validation_error(
            f"fileName {spec.get('fileName')!r} does not match the uploaded file {uploaded_name!r}"
        )
    if spec.get("fileFormat", "CSV") != "CSV":
        raise validation_error(f"fileFormat {spec.get('fileFormat')!r} not supported by the sandbox: use CSV")
    page = spec.get("fileImportPage") or {}
    mappings = page.get("columnMappings")
    if not isinstance(mappings, list) or not mappings:
        raise validation_error("fileImportPage.columnMappings must list the file's columns")
    id_columns, property_columns = _map_columns(mappings, catalog)
    if len(id_columns) != 1:
        raise validation_error(
            "an UPDATE import needs exactly one Record ID column "
            "(columnType HUBSPOT_OBJECT_ID or propertyName hs_object_id)"
        )
    return ImportPlan(
        name=str(request.get("name", "")),
        file_name=uploaded_name,
        has_header=bool(page.get("hasHeader", True)),
        column_count=len(mappings),
        id_column=id_columns[0],
        property_columns=property_columns,
    )


def _map_columns(mappings: list[Any], catalog: PropertyCatalog) -> tuple[list[int], list[tuple[int, str]]]:
    id_columns: list[int] = []
    property_columns: list[tuple[int, str]] = []
    for index, mapping in enumerate(mappings):
        if not isinstance(mapping, dict):
            raise validation_error(f"columnMappings[{index}] must be an object")
        object_type = mapping.get("columnObjectTypeId", CONTACT_TYPE_ID)
        if object_type != CONTACT_TYPE_ID:
            raise validation_error(
                f"columnMappings[{index}]: object type {object_type!r} not supported (contacts: 0-1)"
            )
        name = mapping.get("propertyName")
        if mapping.get("columnType") == "HUBSPOT_OBJECT_ID" or name == "hs_object_id":
            id_columns.append(index)
        elif name is not None:
            prop = catalog.get(name)
            if prop is None or prop.read_only:
                raise validation_error(
                    f"columnMappings[{index}]: property {name!r} does not exist or is read-only"
                )
            property_columns.append((index, name))
    return id_columns, property_columns


@dataclass
class ImportJob:
    import_id: str
    file_id: str
    plan: ImportPlan
    request_json: dict[str, Any]
    content: bytes
    state: str = "STARTED"
    created_at: float = field(default_factory=time.time)
    created_iso: str = field(default_factory=iso_now)
    updated_iso: str = field(default_factory=iso_now)
    counters: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    # An injected record_errors fault: every n-th data row's contact is gone by the time it is applied.
    refuse_every: int = 0

    @property
    def finished(self) -> bool:
        return self.state in ("DONE", "FAILED")

    def advance(
        self,
        now: float,
        delay: float,
        contacts: ContactStore,
        catalog: PropertyCatalog,
        refused: Set[str] = frozenset(),
    ) -> None:
        if self.finished:
            return
        phase = _phase(now - self.created_at, delay, "STARTED")
        if phase is not None:
            if phase != self.state:
                self.state, self.updated_iso = phase, iso_now()
            return
        _RowApplier(self, contacts, catalog, refused).run()
        self.content = b""  # applied: the file is no longer needed
        self.updated_iso = iso_now()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.import_id,
            "state": self.state,
            "importName": self.plan.name,
            "importSource": "API",
            "importRequestJson": self.request_json,
            "createdAt": self.created_iso,
            "updatedAt": self.updated_iso,
            "optOutImport": False,
            "mappedObjectTypeIds": [CONTACT_TYPE_ID],
            "metadata": {"counters": self.counters, "fileIds": [self.file_id], "objectLists": []},
        }


class _RowApplier:
    """Writes an import's rows to the contacts and records HubSpot-shaped errors per bad row or cell."""

    def __init__(
        self, job: ImportJob, contacts: ContactStore, catalog: PropertyCatalog, refused: Set[str]
    ) -> None:
        self.job, self.plan, self.contacts, self.catalog = job, job.plan, contacts, catalog
        self.refused = refused
        self.updated: set[str] = set()
        self.values_written = 0
        self.rows = 0
        self.now = iso_now()

    def run(self) -> None:
        reader = csv.reader(io.TextIOWrapper(io.BytesIO(self.job.content), encoding="utf-8-sig", newline=""))
        try:
            if self.plan.has_header:
                next(reader, None)
            for line_number, row in enumerate(reader, start=2 if self.plan.has_header else 1):
                self.rows += 1
                self._apply(line_number, row)
        except (UnicodeDecodeError, csv.Error):
            self.job.state = "FAILED"
        else:
            self.job.state = "DONE"
        self.job.counters = {
            "TOTAL_ROWS": self.rows,
            "MAPPED_COLUMNS": len(self.plan.property_columns) + 1,
            "UPDATED_OBJECTS": len(self.updated),
            "UNIQUE_OBJECTS_WRITTEN": len(self.updated),
            "PROPERTY_VALUES_EMITTED": self.values_written,
            "ERRORS": len(self.job.errors),
        }

    def _apply(self, line_number: int, row: list[str]) -> None:
        if len(row) != self.plan.column_count:
            message = f"expected {self.plan.column_count} columns, found {len(row)}"
            self._error(line_number, row, "INCORRECT_NUMBER_OF_COLUMNS", message)
            return
        record_id = row[self.plan.id_column].strip()
        if not record_id:
            self._error(
                line_number,
                row,
                "UPDATE_ONLY_IMPORT",
                "no Record ID: an UPDATE import cannot create records",
                column=self.plan.id_column,
            )
            return
        refused = self.job.refuse_every and self.rows % self.job.refuse_every == 0
        if refused or not self.contacts.exists(record_id):
            self._error(
                line_number,
                row,
                "INVALID_OBJECT_ID",
                f"Record ID {record_id} does not exist",
                column=self.plan.id_column,
                value=record_id,
            )
            return
        if record_id in self.refused:
            self._error(
                line_number,
                row,
                "INVALID_CUSTOM_PROPERTY_VALIDATION",
                f"Record ID {record_id}: {REFUSAL_MESSAGE}",
                column=self.plan.id_column,
                value=record_id,
            )
            return
        values = {name: row[index] for index, name in self.plan.property_columns if row[index] != ""}
        accepted, problems = self.catalog.check_values(values)
        columns = {name: index for index, name in self.plan.property_columns}
        for problem in problems:
            error_type = IMPORT_ERROR_TYPES.get(problem.code, "FAILED_VALIDATION")
            self._error(
                line_number,
                row,
                error_type,
                problem.message,
                column=columns[problem.name],
                value=problem.value,
            )
        if accepted:
            self.contacts.update(record_id, accepted, self.now)
            self.updated.add(record_id)
            self.values_written += len(accepted)

    def _error(
        self,
        line_number: int,
        row: list[str],
        error_type: str,
        message: str,
        column: int | None = None,
        value: str | None = None,
    ) -> None:
        error: dict[str, Any] = {
            "id": str(len(self.job.errors) + 1),
            "createdAt": int(time.time() * 1000),
            "errorType": error_type,
            "errorMessage": message,
            "objectType": "CONTACT",
            "objectTypeId": CONTACT_TYPE_ID,
            "sourceData": {
                "rowData": row,
                "lineNumber": line_number,
                "fileId": int(self.job.file_id),
                "additionalRowData": [],
                "containsEncryptedProperties": False,
            },
        }
        if column is not None:
            error["knownColumnNumber"] = column
        if value is not None:
            error["invalidValue"] = value
        self.job.errors.append(error)
