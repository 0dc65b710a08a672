"""Bulk API 2.0 in the Salesforce sandbox: ingest jobs (update; insert of campaign members) and query
jobs, CSV in and out.

Ingest: POST jobs/ingest -> Open; PUT .../batches with the CSV (streamed to disk; once per job);
PATCH {"state": "UploadComplete"}; `bulk_delay` seconds later (InProgress half-way) the rows are
applied one by one, as sObject updates (or Collections creates) are, and the job is JobComplete.
successfulResults, failedResults and unprocessedrecords are streamed back from the uploaded file.

Query: POST jobs/query -> UploadComplete; `bulk_delay` seconds later the query runs and the job
is JobComplete; GET .../results pages through the rows with `maxRecords` and the opaque
`locator` (Sforce-Locator: next page, "null" after the last; Sforce-NumberOfRecords).

Jobs move on when any API request arrives (no background thread), so a test that waits out the
delay sees the same thing a poller would.
"""

from __future__ import annotations

import base64
import io
import time
from array import array
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from connector.sandbox.salesforce_api import bound_query
from connector.sandbox.salesforce_jobs import (
    DELIMITERS,
    LINE_ENDINGS,
    ROWS_PER_CHUNK,
    CsvFormat,
    IngestJob,
    QueryJob,
    drain,
)
from connector.sandbox.salesforce_members import MEMBER, Taken, apply_member_insert, plan_member_insert
from connector.sandbox.salesforce_schema import coerce_csv
from connector.sandbox.salesforce_soql import BoundQuery
from connector.sandbox.salesforce_state import SalesforceError, SandboxState, not_found, sandbox_state
from connector.sandbox.salesforce_writes import apply, plan_update

bulk = Blueprint("salesforce_bulk", __name__, url_prefix="/services/data/v<version>/jobs")

RESULT_KINDS = {"successfulResults", "failedResults", "unprocessedrecords"}
UPLOAD_CHUNK = 1 << 16
DEFAULT_MAX_RECORDS = 100_000
CSV_TYPE = "text/csv; charset=UTF-8"
FINISHED = ("JobComplete", "Failed", "Aborted")
ONE_UPLOAD = (
    "Found multiple contents for job: <{job_id}>, please 'Close' / 'Abort' / 'Delete' the current Job then "
    "create a new Job and make sure you only do 'PUT' once on a given Job."
)


def _requested_format(body: dict[str, Any]) -> CsvFormat:
    """The CSV format a job-creating request asks for; 400 INVALIDJOB when Salesforce would refuse it."""
    found = CsvFormat(str(body.get("columnDelimiter") or "COMMA"), str(body.get("lineEnding") or "LF"))
    if found.column_delimiter not in DELIMITERS or found.line_ending not in LINE_ENDINGS:
        raise SalesforceError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
    if (body.get("contentType") or "CSV") != "CSV":
        raise SalesforceError(400, "INVALIDJOB", "The only supported contentType is CSV")
    return found


def advance_jobs(state: SandboxState) -> None:
    """Move on every job whose delay is over (called under the state's lock on each API request)."""
    now = time.monotonic()
    for ingest in state.ingest_jobs.values():
        if ingest.due(now, state.config.bulk_delay):
            _process_ingest(state, ingest)
    for query in state.query_jobs.values():
        if query.due(now, state.config.bulk_delay):
            assert query.query is not None
            query.serials = query.query.run(state.store, include_deleted=query.operation == "queryAll")
            query.move("JobComplete")


def _process_ingest(state: SandboxState, job: IngestJob) -> None:
    assert job.upload is not None
    with job.upload.open(newline="", encoding="utf-8") as lines:
        rows = job.csv_format.reader(lines)
        job.header = next(rows, [])
        columns = _ingest_columns(state, job)
        if columns is None:
            return
        taken: Taken = set()
        for row in rows:
            _process_row(state, job, columns, row, taken)
    job.move("JobComplete")


def _ingest_columns(state: SandboxState, job: IngestJob) -> list[str] | None:
    """Canonical field names of the header; None (job Failed) when one is unknown or Id is missing."""
    schema = state.schema.object(job.object_name)
    assert schema is not None
    columns = []
    for name in job.header:
        found = schema.field(name.strip())
        if found is None:
            job.error_message = f"InvalidBatch : Field name not found : {name}"
            job.move("Failed")
            return None
        columns.append(found.name)
    if "Id" not in columns and job.operation == "update":
        job.error_message = "InvalidBatch : Field name not found : Id"
        job.move("Failed")
        return None
    return columns


def _process_row(
    state: SandboxState, job: IngestJob, columns: list[str], row: list[str], taken: Taken
) -> None:
    if len(row) != len(columns):
        job.outcomes.append(("", "INVALID_FIELD:Row has a different number of columns than the header:--"))
        job.failed += 1
        return
    cells = dict(zip(columns, row, strict=True))
    if job.operation == "insert":
        plan = plan_member_insert(state, cells, coerce_csv, taken)
        if plan.ok:
            apply_member_insert(state, plan)
    else:
        plan = plan_update(state, job.object_name, cells.pop("Id").strip(), cells, coerce_csv)
        if plan.ok:
            apply(state, plan)
    if plan.ok:
        job.outcomes.append((plan.record_id or "", None))
        return
    job.outcomes.append((plan.record_id or "", " ".join(error.to_bulk() for error in plan.errors)))
    job.failed += 1


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    return body


# ---- ingest ----


@bulk.post("/ingest")
def create_ingest_job(version: str) -> ResponseReturnValue:
    body = _json_object()
    state = sandbox_state()
    with state.lock:
        schema = state.schema.object(str(body.get("object") or ""))
        if schema is None:
            raise SalesforceError(
                400, "INVALIDENTITY", f"Entity '{body.get('object')}' is not supported by the Bulk API."
            )
        operation = body.get("operation")
        if operation != "update" and (operation, schema.name) != ("insert", MEMBER):
            raise SalesforceError(
                400, "INVALIDJOB", f"The sandbox supports update, and insert of {MEMBER}, only"
            )
        job = IngestJob(
            state.new_id("Job"),
            version,
            _requested_format(body),
            object_name=schema.name,
            operation=str(operation),
        )
        state.ingest_jobs[job.job_id] = job
        return jsonify(job.info())


@bulk.get("/ingest")
def list_ingest_jobs(version: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        return jsonify(
            {
                "done": True,
                "records": [job.info() for job in state.ingest_jobs.values()],
                "nextRecordsUrl": None,
            }
        )


def _ingest_job(state: SandboxState, job_id: str) -> IngestJob:
    job = state.ingest_jobs.get(job_id)
    if job is None:
        raise not_found()
    return job


@bulk.put("/ingest/<job_id>/batches")
def upload_ingest_data(version: str, job_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        job = _ingest_job(state, job_id)
        if job.state != "Open":
            raise SalesforceError(409, "INVALIDJOBSTATE", f"Job {job_id} is not Open (state: {job.state})")
        if job.upload is not None:
            raise SalesforceError(400, "BULK_API_ERROR", ONE_UPLOAD.format(job_id=job_id))
        path = job.upload = state.upload_path(job_id)
    # Read the body in chunks straight to disk: uploads can be 100 MB.
    with path.open("wb") as upload:
        while chunk := request.stream.read(UPLOAD_CHUNK):
            upload.write(chunk)
    return "", 201


@bulk.patch("/ingest/<job_id>")
def change_ingest_job(version: str, job_id: str) -> ResponseReturnValue:
    wanted = _json_object().get("state")
    state = sandbox_state()
    with state.lock:
        job = _ingest_job(state, job_id)
        if wanted == "UploadComplete" and job.state == "Open":
            job.started = time.monotonic()
            job.move("UploadComplete")
            if job.upload is None:
                job.error_message = "InvalidBatch : No data was uploaded for this job"
                job.move("Failed")
        elif wanted == "Aborted" and job.state not in FINISHED:
            job.move("Aborted")
        else:
            raise SalesforceError(400, "INVALIDJOBSTATE", f"Cannot change a {job.state} job to {wanted}")
        return jsonify(job.info())


@bulk.get("/ingest/<job_id>")
def get_ingest_job(version: str, job_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        return jsonify(_ingest_job(state, job_id).info())


@bulk.get("/ingest/<job_id>/<kind>")
def ingest_results(version: str, job_id: str, kind: str) -> ResponseReturnValue:
    if kind not in RESULT_KINDS:
        raise not_found()
    state = sandbox_state()
    with state.lock:
        job = _ingest_job(state, job_id)
    return Response(job.results(kind), content_type=CSV_TYPE)


@bulk.delete("/ingest/<job_id>")
def delete_ingest_job(version: str, job_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        job = _ingest_job(state, job_id)
        if job.state not in (*FINISHED, "UploadComplete"):
            raise SalesforceError(400, "INVALIDJOBSTATE", f"Cannot delete a job in state {job.state}")
        del state.ingest_jobs[job_id]
        if job.upload is not None:
            job.upload.unlink(missing_ok=True)
    return "", 204


# ---- query ----


@bulk.post("/query")
def create_query_job(version: str) -> ResponseReturnValue:
    body = _json_object()
    operation = body.get("operation")
    if operation not in ("query", "queryAll"):
        raise SalesforceError(400, "INVALIDJOB", "operation must be query or queryAll")
    state = sandbox_state()
    with state.lock:
        query = bound_query(state, body.get("query"))
        if query.is_count:
            raise SalesforceError(400, "INVALIDJOB", "Aggregate queries are not supported by Bulk API 2.0")
        job = QueryJob(
            state.new_id("Job"), version, _requested_format(body), operation=operation, query=query
        )
        job.started = time.monotonic()
        state.query_jobs[job.job_id] = job
        return jsonify(job.info())


@bulk.get("/query")
def list_query_jobs(version: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        return jsonify(
            {
                "done": True,
                "records": [job.info() for job in state.query_jobs.values()],
                "nextRecordsUrl": None,
            }
        )


def _query_job(state: SandboxState, job_id: str) -> QueryJob:
    job = state.query_jobs.get(job_id)
    if job is None:
        raise not_found()
    return job


@bulk.get("/query/<job_id>")
def get_query_job(version: str, job_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        return jsonify(_query_job(state, job_id).info())


@bulk.patch("/query/<job_id>")
def abort_query_job(version: str, job_id: str) -> ResponseReturnValue:
    wanted = _json_object().get("state")
    state = sandbox_state()
    with state.lock:
        job = _query_job(state, job_id)
        if wanted != "Aborted" or job.state in FINISHED:
            raise SalesforceError(400, "INVALIDJOBSTATE", f"Cannot change a {job.state} job to {wanted}")
        job.move("Aborted")
        return jsonify(job.info())


@bulk.delete("/query/<job_id>")
def delete_query_job(version: str, job_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        _query_job(state, job_id)
        del state.query_jobs[job_id]
    return "", 204


@bulk.get("/query/<job_id>/results")
def query_results(version: str, job_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        job = _query_job(state, job_id)
        if job.state != "JobComplete" or job.serials is None or job.query is None:
            raise SalesforceError(
                400, "INVALIDJOBSTATE", f"Job {job_id} is not JobComplete (state: {job.state})"
            )
        serials, query = job.serials, job.query
    start = _locator_offset(request.args.get("locator"), len(serials))
    size = request.args.get("maxRecords", DEFAULT_MAX_RECORDS, type=int) or DEFAULT_MAX_RECORDS
    if size < 1:
        raise SalesforceError(400, "INVALIDJOB", "maxRecords must be a positive number")
    end = min(start + size, len(serials))
    rows = _query_rows(state, query, serials[start:end], job.csv_format)
    response = Response(rows, content_type=CSV_TYPE)
    response.headers["Sforce-Locator"] = _locator(end) if end < len(serials) else "null"
    response.headers["Sforce-NumberOfRecords"] = str(end - start)
    return response


def _locator(offset: int) -> str:
    # Salesforce's locators are opaque; like theirs, ours happen to be the base64 of an offset.
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def _locator_offset(locator: str | None, total: int) -> int:
    if not locator:
        return 0
    try:
        offset = int(base64.b64decode(locator + "=" * (-len(locator) % 4)).decode())
    except ValueError:
        offset = -1
    if not 0 <= offset <= total:
        raise SalesforceError(400, "INVALIDLOCATOR", f"Invalid locator: {locator}")
    return offset


def _query_rows(
    state: SandboxState, query: BoundQuery, serials: array[int], csv_format: CsvFormat
) -> Iterator[str]:
    """The page as CSV, built a chunk at a time (the lock is taken per chunk, not for the whole page)."""
    buffer = io.StringIO()
    writer = csv_format.writer(buffer)
    writer.writerow(query.csv_header())
    for start in range(0, len(serials), ROWS_PER_CHUNK):
        with state.lock:
            for serial in serials[start : start + ROWS_PER_CHUNK]:
                writer.writerow(query.csv_row(state.store.view(serial, query.needed)))
        yield drain(buffer)
    yield drain(buffer)
