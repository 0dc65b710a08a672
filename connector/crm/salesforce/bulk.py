"""Salesforce's bulk paths: a segment read through a Bulk API 2.0 query job, flags written through
Bulk API 2.0 ingest (update) jobs, one per object, and records created by an ingest insert job
(campaign members: actions.py).

Both are asynchronous jobs polled with backoff; a poll never waits longer than half a step lease
(past that, TransientError and the step runs again later). The job's id is kept in a small marker
file, so the rerun resumes the same job instead of starting another: a query job by its SOQL, an
ingest job by its file's content (a retried batch writes the same file).

Files are streamed to and from disk: each page of query results (Sforce-Locator paging) is downloaded
in chunks and read row by row with the csv module before the next page is fetched; the ingest CSV is
written from the lazy update iterator and uploaded from disk. Memory stays flat however many rows.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import operator
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from connector.crm.base import WriteFailure
from connector.crm.jobs import JobMarker, PollingApi, poll_until
from connector.errors import ConnectorError

QUERY_PAGE_RECORDS = 50_000
QUERY_REUSE_SECONDS = 3600.0  # a marker older than this names results too stale to read again
FINISHED_STATES = ("JobComplete", "Failed", "Aborted")
RUNNING_STATES = ("UploadComplete", "InProgress")
HASH_BLOCK_BYTES = 1 << 20
CSV_FORMAT = {"contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"}
# Per-record refusals Salesforce means as temporary (WriteFailure.transient): a row another
# transaction holds. Its record locks "are held very briefly", and for a few locking errors its
# advice is retry logic in the integration ("Record-Level Locking", Designing Record Access for
# Enterprise Scale).
TRANSIENT_CODES = frozenset({"UNABLE_TO_LOCK_ROW"})


class BulkApi(PollingApi, Protocol):
    """What the bulk paths use of SalesforceApi (api.py): JSON requests, CSV files up and down."""

    def rest(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def upload(self, path: str, source: Path) -> None: ...

    def download(
        self, path: str, target: Path, params: dict[str, Any] | None = None
    ) -> Mapping[str, str]: ...


# ---- jobs --------------------------------------------------------------------------------------


def _job_info(api: BulkApi, kind: str, job_id: str) -> dict[str, Any] | None:
    """The job's info; None when Salesforce no longer knows it (deleted after 7 days)."""
    try:
        return api.rest("GET", f"jobs/{kind}/{job_id}")
    except ConnectorError as exc:
        if exc.code == "not_found":
            return None
        raise


def _await_job(api: BulkApi, kind: str, job_id: str, marker: JobMarker) -> dict[str, Any]:
    info = poll_until(
        api,
        lambda: api.rest("GET", f"jobs/{kind}/{job_id}"),
        lambda answer: answer.get("state") in FINISHED_STATES,
        code=f"salesforce_bulk_{kind}_running",
        what=f"Salesforce Bulk API {kind} job {job_id}",
    )
    if info["state"] != "JobComplete":
        marker.clear()
        reason = info.get("errorMessage") or "no reason given"
        raise ConnectorError(
            f"salesforce_bulk_{kind}_failed",
            f"Salesforce Bulk API {kind} job {job_id} ended {info['state']}: {reason}",
        )
    return info


def _read_csv(path: Path) -> Iterator[dict[str, str]]:
    """The file's rows as {header: cell} (an ingest job's few failed rows)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        yield from csv.DictReader(handle)


def _read_columns(path: Path, columns: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """The cells of `columns` (case-blind header names) of each row, in that order: tuples picked
    by index, where a dict per row cost 1.9 s of the worker's CPU for a 1,000,000-row result."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [name.lower() for name in next(reader, None) or []]
        missing = [name for name in columns if name.lower() not in header]
        if missing:
            raise ConnectorError(
                "salesforce_unexpected_result",
                f"Salesforce's query result has no column {', '.join(missing)}",
            )
        pick = operator.itemgetter(*(header.index(name.lower()) for name in columns))
        if len(columns) == 1:
            yield from ((pick(row),) for row in reader)
        else:
            yield from map(pick, reader)


# ---- query -------------------------------------------------------------------------------------


def query_rows(
    api: BulkApi, soql: str, columns: Sequence[str], *, work_dir: Path, page_records: int = QUERY_PAGE_RECORDS
) -> Iterator[tuple[str, ...]]:
    """Every row of `soql` as the cells of `columns`, in that order: names as in its SELECT,
    case-blind (relationship columns as "Contact.Email"); null is ""."""
    work_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(soql.encode()).hexdigest()[:12]
    marker = JobMarker(work_dir / f"query-{key}.json", max_age=QUERY_REUSE_SECONDS)
    job_id = _resumable_query(api, marker) or _start_query(api, soql, marker)
    _await_job(api, "query", job_id, marker)
    yield from _result_pages(api, job_id, columns, work_dir, page_records)
    marker.clear()


def _resumable_query(api: BulkApi, marker: JobMarker) -> str | None:
    job_id = marker.load()
    if job_id is None:
        return None
    info = _job_info(api, "query", job_id)
    if info is not None and info.get("state") in ("JobComplete", *RUNNING_STATES):
        return job_id
    marker.clear()
    return None


def _start_query(api: BulkApi, soql: str, marker: JobMarker) -> str:
    info = api.rest("POST", "jobs/query", json={"operation": "query", "query": soql, **CSV_FORMAT})
    marker.save(str(info["id"]))
    return str(info["id"])


def _result_pages(
    api: BulkApi, job_id: str, columns: Sequence[str], work_dir: Path, page_records: int
) -> Iterator[tuple[str, ...]]:
    """One page on disk at a time: downloaded, read row by row, deleted, then the next (Sforce-Locator)."""
    locator: str | None = None
    for page in itertools.count():
        params: dict[str, Any] = {"maxRecords": page_records}
        if locator:
            params["locator"] = locator
        path = work_dir / f"query-{job_id}-{page}-{uuid.uuid4().hex[:8]}.csv"
        try:
            headers = api.download(f"jobs/query/{job_id}/results", path, params)
            yield from _read_columns(path, columns)
        finally:
            path.unlink(missing_ok=True)
        locator = headers.get("Sforce-Locator")
        if not locator or locator == "null":
            return


# ---- ingest ------------------------------------------------------------------------------------


class IngestRow(NamedTuple):
    object_name: str
    record_id: str
    values: list[str]


def write_flag_rows(
    api: BulkApi, columns: list[str], rows: Iterable[IngestRow], *, work_dir: Path
) -> list[WriteFailure]:
    """Update every row's record (Id + `columns`) with one ingest job per object; returns the refused ones."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # Every object's job starts before any is awaited: Salesforce runs them side by side, so a page
    # of Contacts and Leads waits one poll interval, not one per object (10 s of a 1,000,000-member
    # campaign's write-back).
    started = [
        (csv_path, *_started_ingest(api, object_name, csv_path))
        for object_name, csv_path in _write_ingest_files(work_dir, columns, rows).items()
    ]
    failures: list[WriteFailure] = []
    for csv_path, job_id, marker in started:
        failures.extend(_finish_ingest(api, job_id, marker, csv_path, work_dir))
    return failures


def _write_ingest_files(work_dir: Path, columns: list[str], rows: Iterable[IngestRow]) -> dict[str, Path]:
    """One CSV per object, named by its content (so a retried batch finds its job's marker)."""
    partials: dict[str, Path] = {}
    with contextlib.ExitStack() as files:
        writers: dict[str, Any] = {}
        for row in rows:
            writer = writers.get(row.object_name)
            if writer is None:
                # Unique while being written: another batch of the sync may be writing its own.
                partial_name = f"ingest-{row.object_name}-{uuid.uuid4().hex[:8]}.partial"
                path = partials[row.object_name] = work_dir / partial_name
                handle = files.enter_context(path.open("w", encoding="utf-8", newline=""))
                writer = writers[row.object_name] = csv.writer(handle, lineterminator="\n")
                writer.writerow(["Id", *columns])
            writer.writerow([row.record_id, *row.values])
    finals = {}
    for object_name, partial in partials.items():
        final = work_dir / f"ingest-{object_name}-{_digest(partial)}.csv"
        partial.replace(final)
        finals[object_name] = final
    return finals


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def insert_rows(
    api: BulkApi, object_name: str, columns: list[str], rows: Iterable[list[str]], *, work_dir: Path
) -> list[dict[str, str]]:
    """Create one `object_name` record per row (cells of `columns`) with one ingest insert job; returns
    the failed rows as Salesforce gives them back: sf__Error and the cells as uploaded."""
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = work_dir / f"insert-{object_name}-{uuid.uuid4().hex[:8]}.partial"
    with partial.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    # Named by its content: a retried batch writes the same file and resumes its job, not a second one.
    csv_path = work_dir / f"insert-{object_name}-{_digest(partial)}.csv"
    partial.replace(csv_path)
    job_id, marker = _started_ingest(api, object_name, csv_path, operation="insert")
    info = _await_job(api, "ingest", job_id, marker)
    failed = _failed_rows(api, job_id, work_dir) if int(info.get("numberRecordsFailed") or 0) else []
    marker.clear()
    csv_path.unlink(missing_ok=True)
    return failed


def _started_ingest(
    api: BulkApi, object_name: str, csv_path: Path, *, operation: str = "update"
) -> tuple[str, JobMarker]:
    """The ingest job of this file: the one its marker names if it can be resumed, else a new one."""
    marker = JobMarker(csv_path.with_suffix(".json"))
    job_id = _resumable_ingest(api, marker) or _start_ingest(api, object_name, operation, csv_path, marker)
    return job_id, marker


def _finish_ingest(
    api: BulkApi, job_id: str, marker: JobMarker, csv_path: Path, work_dir: Path
) -> list[WriteFailure]:
    info = _await_job(api, "ingest", job_id, marker)
    failures = _failed_results(api, job_id, work_dir) if int(info.get("numberRecordsFailed") or 0) else []
    marker.clear()
    csv_path.unlink(missing_ok=True)
    return failures


def _resumable_ingest(api: BulkApi, marker: JobMarker) -> str | None:
    job_id = marker.load()
    if job_id is None:
        return None
    info = _job_info(api, "ingest", job_id)
    state = info.get("state") if info else None
    if state in ("JobComplete", *RUNNING_STATES):
        return job_id
    if state == "Open":
        # Cut short before UploadComplete: whether the file arrived is unknown, so start over.
        api.rest("PATCH", f"jobs/ingest/{job_id}", json={"state": "Aborted"})
    marker.clear()
    return None


def _start_ingest(api: BulkApi, object_name: str, operation: str, csv_path: Path, marker: JobMarker) -> str:
    job = {"object": object_name, "operation": operation, **CSV_FORMAT}
    info = api.rest("POST", "jobs/ingest", json=job)
    job_id = str(info["id"])
    marker.save(job_id)
    api.upload(f"jobs/ingest/{job_id}/batches", csv_path)
    api.rest("PATCH", f"jobs/ingest/{job_id}", json={"state": "UploadComplete"})
    return job_id


def _failed_results(api: BulkApi, job_id: str, work_dir: Path) -> list[WriteFailure]:
    failures = []
    for row in _failed_rows(api, job_id, work_dir):
        code, message = parse_bulk_error(row.get("sf__Error") or "")
        # sf__Id is empty when the row's own Id was unusable: the uploaded Id names the record then.
        record_id = row.get("sf__Id") or row.get("Id") or ""
        failures.append(WriteFailure(record_id, code, message, transient=code in TRANSIENT_CODES))
    return failures


def _failed_rows(api: BulkApi, job_id: str, work_dir: Path) -> list[dict[str, str]]:
    """The job's failedResults (a few rows: each record Salesforce refused)."""
    path = work_dir / f"ingest-{job_id}-failed-{uuid.uuid4().hex[:8]}.csv"
    try:
        api.download(f"jobs/ingest/{job_id}/failedResults", path)
        return list(_read_csv(path))
    finally:
        path.unlink(missing_ok=True)


def parse_bulk_error(cell: str) -> tuple[str, str]:
    """(code, message) of an sf__Error cell: `CODE:message:FIELDS --`, the field list possibly empty."""
    code, _, rest = cell.strip().partition(":")
    if rest.endswith("--"):
        head, separator, _fields = rest[:-2].rpartition(":")
        rest = head if separator else rest[:-2]
    code = code.strip() or "UNKNOWN_ERROR"
    return code, rest.strip() or code
