"""HubSpot's bulk paths: a list read through the Exports API, flags written through the Imports API.

Both are asynchronous jobs polled with backoff. A poll never waits longer than half a step lease:
past that it raises TransientError and the step runs again later; the job's id is kept in a small
marker file, so the next run resumes polling the same export or import instead of starting
another one (an import is keyed by its file's content, which a retried batch writes identically).

Files are streamed to and from disk: the export CSV (or the ZIP HubSpot sends for large ones) is
downloaded in chunks and read row by row; the import CSV is written from the lazy update iterator.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar
from urllib.parse import urljoin

import hubspot.crm.imports as hs_imports
import urllib3

from connector.crm.base import WriteFailure
from connector.crm.calls import REQUEST_TIMEOUT
from connector.crm.hubspot.settings import HubSpotSettings
from connector.crm.jobs import JobMarker, PollingApi, poll_until
from connector.errors import ConnectorError, TransientError
from connector.outbound import redirect_refused, same_origin

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTACT_TYPE_ID = "0-1"
RECORD_ID_COLUMN = "Record ID"
EXPORT_ID_HEADERS = (RECORD_ID_COLUMN, "hs_object_id")
EXPORT_REUSE_SECONDS = 3600.0  # a marker older than this names an export too stale to resume
EXPORT_DONE_STATES = ("COMPLETE", "CANCELED")
IMPORT_DONE_STATES = ("DONE", "FAILED", "CANCELED", "REVERTED")
DOWNLOAD_CHUNK_BYTES = 1 << 20
IMPORT_ERRORS_PAGE = 500
MAX_FAILURE_MESSAGE = 1000


class BulkApi(PollingApi, Protocol):
    """What the bulk paths use of HubSpotApi (api.py): its door, the client's APIs, the token."""

    own: HubSpotSettings
    properties: Any
    exports: Any
    imports: Any
    import_errors: Any

    def call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def bearer_header(self) -> dict[str, str]: ...

    def renew_token(self) -> bool: ...


# ---- exports ---------------------------------------------------------------------------------


def export_list_rows(
    api: BulkApi, list_id: str, properties: list[str], *, work_dir: Path
) -> Iterator[dict[str, str]]:
    """Every member of the list as {"hs_object_id": id, property: value...}, from one export file."""
    work_dir.mkdir(parents=True, exist_ok=True)
    labels = _existing_properties(api, properties)
    key = hashlib.sha1(",".join(labels).encode()).hexdigest()[:10]
    marker = JobMarker(work_dir / f"export-list-{list_id}-{key}.json", max_age=EXPORT_REUSE_SECONDS)
    task_id = marker.load() or _start_export(api, list_id, list(labels), marker)
    url = _await_export(api, task_id, marker)
    path = work_dir / f"export-list-{list_id}-{task_id}.download"
    try:
        _download(api, url, path)
        yield from _read_export(path, labels)
        marker.clear()
    finally:
        path.unlink(missing_ok=True)


def _existing_properties(api: BulkApi, names: list[str]) -> dict[str, str]:
    """{name: label} of the wanted properties that exist (HubSpot refuses to export unknown ones)."""
    known = {p.name: p.label for p in api.call(api.properties.get_all, "contacts").results}
    missing = [name for name in names if name not in known]
    if missing:
        log.info("hubspot_export_skips_missing_properties", extra={"properties": missing})
    return {name: known[name] for name in names if name in known}


def _start_export(api: BulkApi, list_id: str, properties: list[str], marker: JobMarker) -> str:
    request = {
        "exportType": "LIST",
        "listId": list_id,
        "objectType": "CONTACT",
        "objectProperties": properties,
        "format": "CSV",
        "exportName": f"apexverify-list-{list_id}",
        "language": "EN",
        # Internal names and values: headers match property names, enumerations their stored value.
        "exportInternalValuesOptions": ["NAMES", "VALUES"],
        "associatedObjectType": [],
        "includeLabeledAssociations": False,
        "includePrimaryDisplayPropertyForAssociatedObjects": False,
        "overrideAssociatedObjectsPerDefinitionPerRowLimit": False,
    }
    # A plain dict: the client's PublicExportListRequest model lags the spec's required fields.
    task = api.call(api.exports.start, request)
    marker.save(task.id)
    return str(task.id)


def _await_export(api: BulkApi, task_id: str, marker: JobMarker) -> str:
    status = poll_until(
        api,
        lambda: api.call(api.exports.get_status, task_id),
        lambda answer: answer.status in EXPORT_DONE_STATES,
        code="hubspot_export_running",
        what=f"HubSpot export {task_id}",
    )
    if status.status != "COMPLETE":
        marker.clear()
        raise ConnectorError("hubspot_export_canceled", f"HubSpot export {task_id} was canceled")
    if not status.result:
        raise TransientError("hubspot_export_running", f"HubSpot export {task_id} has no file yet")
    return str(status.result)


def _download(api: BulkApi, url: str, path: Path) -> None:
    """The export file, streamed to disk.

    HubSpot's link is pre-signed and on another host than the API: it is fetched without the token
    (following redirects, as nothing secret travels). A link on HUBSPOT_BASE_URL itself gets the
    token, like every call there, and then a redirect is refused, not followed; a 401 there renews
    an OAuth portal's token once, as every call does.
    """
    with_token = same_origin(url, api.own.base_url)
    partial = path.with_suffix(".part")
    http = urllib3.PoolManager(
        retries=urllib3.Retry(
            total=3,
            backoff_factor=1.0,
            status_forcelist=(500, 502, 503, 504),
            redirect=False if with_token else None,
        ),
        timeout=urllib3.Timeout(connect=10.0, read=120.0),
    )
    try:
        response = http.request("GET", url, headers=_download_headers(api, with_token), preload_content=False)
        if with_token and response.status == 401 and api.renew_token():
            response.release_conn()
            response = http.request("GET", url, headers=api.bearer_header(), preload_content=False)
        try:
            _refuse_failed_download(api, response, with_token)
            with partial.open("wb") as handle:
                for chunk in response.stream(DOWNLOAD_CHUNK_BYTES):
                    handle.write(chunk)
        finally:
            response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise TransientError(
            "hubspot_export_download_failed", f"downloading the export file failed ({type(exc).__name__})"
        ) from None
    finally:
        http.clear()
    partial.replace(path)


def _download_headers(api: BulkApi, with_token: bool) -> dict[str, str] | None:
    return api.bearer_header() if with_token else None


def _refuse_failed_download(api: BulkApi, response: urllib3.BaseHTTPResponse, with_token: bool) -> None:
    if with_token and response.get_redirect_location():
        location = urljoin(api.own.base_url + "/", response.get_redirect_location() or "")
        raise redirect_refused("HubSpot", response.status, location, "HUBSPOT_BASE_URL")
    if response.status != 200:
        raise TransientError(
            "hubspot_export_download_failed", f"the export file answered HTTP {response.status}"
        )


@contextlib.contextmanager
def _open_export(path: Path) -> Iterator[TextIO]:
    """The export's CSV text, whether HubSpot sent it plain or zipped."""
    with path.open("rb") as probe:
        zipped = probe.read(4) == b"PK\x03\x04"
    if not zipped:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield handle
        return
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        member = next((n for n in names if n.lower().endswith(".csv")), names[0] if names else None)
        if member is None:
            raise ConnectorError("hubspot_export_unreadable", "the export archive holds no file")
        with archive.open(member) as raw:
            yield io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _column(header: list[str], candidates: Iterable[str]) -> int | None:
    cleaned = [h.strip() for h in header]
    for candidate in candidates:
        if candidate in cleaned:
            return cleaned.index(candidate)
    return None


def _read_export(path: Path, labels: dict[str, str]) -> Iterator[dict[str, str]]:
    with _open_export(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        id_column = _column(header, EXPORT_ID_HEADERS) or 0
        # Headers are internal names (NAMES was asked for); labels are the fallback.
        columns = {name: _column(header, (name, label)) for name, label in labels.items()}
        for row in reader:
            if not row or id_column >= len(row) or not row[id_column].strip():
                continue
            record = {"hs_object_id": row[id_column].strip()}
            for name, index in columns.items():
                if index is not None and index < len(row):
                    record[name] = row[index]
            yield record


# ---- imports ---------------------------------------------------------------------------------


def import_flag_rows(
    api: BulkApi, columns: list[str], rows: Iterable[tuple[str, list[str]]], *, work_dir: Path
) -> list[WriteFailure]:
    """Write (record id, values for `columns`) rows with one UPDATE import; returns the refused records."""
    work_dir.mkdir(parents=True, exist_ok=True)
    csv_path = _write_import_file(work_dir, columns, rows)
    if csv_path is None:
        return []
    marker = JobMarker(csv_path.with_suffix(".json"))
    import_id = marker.load() or _start_import(api, csv_path, columns, marker)
    state = poll_until(
        api,
        lambda: api.call(api.imports.get_by_id, import_id),
        lambda answer: answer.state in IMPORT_DONE_STATES,
        code="hubspot_import_running",
        what=f"HubSpot import {import_id}",
    ).state
    if state != "DONE":
        marker.clear()
        raise ConnectorError(
            "hubspot_import_failed",
            f"HubSpot import {import_id} ended {state}: no flag of the batch is confirmed",
        )
    failures = _import_failures(api, import_id, csv_path)
    marker.clear()
    csv_path.unlink(missing_ok=True)
    return failures


def _write_import_file(
    work_dir: Path, columns: list[str], rows: Iterable[tuple[str, list[str]]]
) -> Path | None:
    """The update-only CSV (Record ID + one column per property), named by its content; None when empty."""
    partial = work_dir / "hubspot-import.partial"
    digest = hashlib.sha256()
    count = 0
    with partial.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow([RECORD_ID_COLUMN, *columns])
        for record_id, values in rows:
            writer.writerow([record_id, *values])
            count += 1
    if count == 0:
        partial.unlink()
        return None
    with partial.open("rb") as handle:
        for block in iter(lambda: handle.read(DOWNLOAD_CHUNK_BYTES), b""):
            digest.update(block)
    final = work_dir / f"hubspot-import-{digest.hexdigest()[:16]}.csv"
    partial.replace(final)
    return final


def _start_import(api: BulkApi, csv_path: Path, columns: list[str], marker: JobMarker) -> str:
    id_mapping = {
        "columnObjectTypeId": CONTACT_TYPE_ID,
        "columnName": RECORD_ID_COLUMN,
        "propertyName": "hs_object_id",
        "columnType": "HUBSPOT_OBJECT_ID",
    }
    mappings = [id_mapping] + [
        {"columnObjectTypeId": CONTACT_TYPE_ID, "columnName": name, "propertyName": name} for name in columns
    ]
    request = {
        "name": f"apexverify-flags-{csv_path.stem}",
        "importOperations": {CONTACT_TYPE_ID: "UPDATE"},
        "dateFormat": "YEAR_MONTH_DAY",
        "files": [
            {
                "fileName": csv_path.name,
                "fileFormat": "CSV",
                "fileImportPage": {"hasHeader": True, "columnMappings": mappings},
            }
        ],
    }
    import_id = api.call(_post_import, api, csv_path, json.dumps(request))
    marker.save(import_id)
    return import_id


def _post_import(
    api: BulkApi, csv_path: Path, request: str, _request_timeout: tuple[float, float] = REQUEST_TIMEOUT
) -> str:
    """POST /crm/v3/imports with the file streamed from disk: the generated client reads the whole
    file into memory and encodes it again into the request (a 500,000-row file took the worker's
    peak RSS from 144 to 176 MB). Refusals raise the client's ApiException, so `api.call` retries,
    renews a token and maps errors exactly as for its own operations."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="importRequest"\r\n\r\n{request}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{csv_path.name}"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = {
        **api.bearer_header(),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + csv_path.stat().st_size + len(tail)),
    }
    connect, read = _request_timeout  # as `api.call` passes it to every client operation
    with urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=connect, read=read)) as http:
        response = http.request(
            "POST", f"{api.own.base_url}/crm/v3/imports", body=_parts(head, csv_path, tail), headers=headers
        )
    if response.status >= 300:
        refusal = hs_imports.ApiException(status=response.status, reason=response.reason)
        refusal.body, refusal.headers = response.data, response.headers
        raise refusal
    return str(json.loads(response.data)["id"])


def _parts(head: bytes, csv_path: Path, tail: bytes) -> Iterator[bytes]:
    yield head
    with csv_path.open("rb") as handle:
        yield from iter(lambda: handle.read(DOWNLOAD_CHUNK_BYTES), b"")
    yield tail


def _iter_import_errors(api: BulkApi, import_id: str) -> Iterator[Any]:
    after: str | None = None
    while True:
        paging = {"after": after} if after else {}
        page = api.call(
            api.import_errors.get_errors,
            import_id,
            limit=IMPORT_ERRORS_PAGE,
            include_error_message="true",  # lower case, as HubSpot documents its query booleans
            include_row_data="true",
            **paging,
        )
        yield from page.results or []
        after = page.paging.next.after if page.paging and page.paging.next else None
        if not after:
            return


def _import_failures(api: BulkApi, import_id: str, csv_path: Path) -> list[WriteFailure]:
    """One WriteFailure per refused record, its errors' messages joined."""
    failures: dict[str, WriteFailure] = {}
    by_line: dict[int, list[tuple[str, str]]] = {}
    for error in _iter_import_errors(api, import_id):
        code = str(error.error_type or "IMPORT_ERROR")
        message = str(error.error_message or code)
        source = error.source_data
        if source is not None and source.row_data:
            _add_failure(failures, source.row_data[0].strip(), code, message)
        elif source is not None and source.line_number:
            by_line.setdefault(int(source.line_number), []).append((code, message))
        else:
            log.warning("hubspot_import_error_without_row", extra={"import_id": import_id, "code": code})
    for line, record_id in _record_ids_at_lines(csv_path, set(by_line)):
        for code, message in by_line[line]:
            _add_failure(failures, record_id, code, message)
    return list(failures.values())


def _add_failure(failures: dict[str, WriteFailure], record_id: str, code: str, message: str) -> None:
    earlier = failures.get(record_id)
    if earlier is not None:
        code, message = earlier.code, f"{earlier.message}; {message}"[:MAX_FAILURE_MESSAGE]
    failures[record_id] = WriteFailure(record_id, code, message)


def _record_ids_at_lines(csv_path: Path, lines: set[int]) -> Iterator[tuple[int, str]]:
    """(line, record id) for errors HubSpot reported by line number only (line 1 is the header)."""
    if not lines:
        return
    with csv_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if reader.line_num in lines and row:
                yield reader.line_num, row[0]
