"""Bulk API 2.0 jobs as the Salesforce sandbox keeps them: their CSV format, their state, the job
info Salesforce answers with, and an ingest job's result files.

Moving a job on (running its query, applying its rows) needs the whole sandbox state and is done by
connector/sandbox/salesforce_bulk.py; this module knows nothing of that state, so the state can hold
jobs without depending on the endpoints.
"""

from __future__ import annotations

import csv
import io
import itertools
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from connector.sandbox.salesforce_schema import json_datetime, utc_now
from connector.sandbox.salesforce_soql import BoundQuery

DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
ROWS_PER_CHUNK = 1000


@dataclass
class CsvFormat:
    column_delimiter: str = "COMMA"
    line_ending: str = "LF"

    def reader(self, lines: Iterator[str]) -> Iterator[list[str]]:
        return csv.reader(lines, delimiter=DELIMITERS[self.column_delimiter])

    def writer(self, buffer: io.StringIO) -> Any:
        return csv.writer(
            buffer,
            delimiter=DELIMITERS[self.column_delimiter],
            lineterminator=LINE_ENDINGS[self.line_ending],
            quoting=csv.QUOTE_ALL,
        )


@dataclass
class Job:
    job_id: str
    version: str
    csv_format: CsvFormat
    created: datetime = field(default_factory=utc_now)
    state: str = "Open"
    error_message: str | None = None
    started: float | None = None  # monotonic time processing was asked for
    modified: datetime = field(default_factory=utc_now)

    def move(self, state: str) -> None:
        self.state, self.modified = state, utc_now()

    def due(self, now: float, delay: float) -> bool:
        """True when the job's delay is over and it should be processed; InProgress half-way there."""
        if self.state not in ("UploadComplete", "InProgress") or self.started is None:
            return False
        elapsed = now - self.started
        if elapsed < delay and elapsed >= delay / 2 and self.state != "InProgress":
            self.move("InProgress")
        return elapsed >= delay

    def base_info(self) -> dict[str, Any]:
        info = {
            "id": self.job_id,
            "createdById": "005Dn0000000001IAA",
            "createdDate": json_datetime(self.created),
            "systemModstamp": json_datetime(self.modified),
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.version),
            "lineEnding": self.csv_format.line_ending,
            "columnDelimiter": self.csv_format.column_delimiter,
        }
        if self.error_message:
            info["errorMessage"] = self.error_message
        return info


@dataclass
class IngestJob(Job):
    object_name: str = ""
    operation: str = "update"  # or insert (campaign members)
    upload: Path | None = None
    header: list[str] = field(default_factory=list)
    # Per processed row: (sf__Id, error) — error None for a success.
    outcomes: list[tuple[str, str | None]] = field(default_factory=list)
    failed: int = 0

    def info(self) -> dict[str, Any]:
        info = {
            "operation": self.operation,
            "object": self.object_name,
            **self.base_info(),
            "jobType": "V2Ingest",
        }
        info["contentUrl"] = f"services/data/v{self.version}/jobs/ingest/{self.job_id}/batches"
        info.update(
            numberRecordsProcessed=len(self.outcomes),
            numberRecordsFailed=self.failed,
            retries=0,
            totalProcessingTime=0,
            apiActiveProcessingTime=0,
            apexProcessingTime=0,
        )
        return info

    def results(self, kind: str) -> Iterator[str]:
        """One of the result files, streamed: the uploaded rows joined with their outcomes."""
        prefix = {"successfulResults": ["sf__Id", "sf__Created"], "failedResults": ["sf__Id", "sf__Error"]}
        buffer = io.StringIO()
        writer = self.csv_format.writer(buffer)
        if self.upload is None:
            writer.writerow(prefix.get(kind, []))
            yield drain(buffer)
            return
        with self.upload.open(newline="", encoding="utf-8") as lines:
            rows = self.csv_format.reader(lines)
            writer.writerow([*prefix.get(kind, []), *next(rows, [])])
            for count, (row, outcome) in enumerate(itertools.zip_longest(rows, list(self.outcomes))):
                if row is not None:
                    self._write_result(writer, kind, row, outcome)
                if count % ROWS_PER_CHUNK == 0:
                    yield drain(buffer)
        yield drain(buffer)

    def _write_result(
        self, writer: Any, kind: str, row: list[str], outcome: tuple[str, str | None] | None
    ) -> None:
        if kind == "unprocessedrecords":
            if outcome is None:
                writer.writerow(row)
            return
        if outcome is None:
            return
        record_id, error = outcome
        if kind == "successfulResults" and error is None:
            writer.writerow([record_id, "true" if self.operation == "insert" else "false", *row])
        elif kind == "failedResults" and error is not None:
            writer.writerow([record_id, error, *row])


@dataclass
class QueryJob(Job):
    operation: str = "query"
    query: BoundQuery | None = None
    serials: array[int] | None = None
    state: str = "UploadComplete"

    def info(self) -> dict[str, Any]:
        assert self.query is not None
        info = {"operation": self.operation, "object": self.query.object_name, **self.base_info()}
        info.update(
            jobType="V2Query",
            numberRecordsProcessed=0 if self.serials is None else len(self.serials),
            retries=0,
            totalProcessingTime=0,
        )
        return info


def drain(buffer: io.StringIO) -> str:
    """What `buffer` holds, emptying it."""
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
