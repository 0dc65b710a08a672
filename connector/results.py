"""A sync's verdicts as downloadable files (CLI output, admin results), streamed from the database."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from openpyxl import Workbook
from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.models import SyncValue

COLUMNS = (
    "value",
    "status",
    "valid",
    "wrong",
    "unknown",
    "is_role",
    "is_disposable",
    "from_cache",
    "verified_at",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def iter_verdicts(session: Session, sync_id: int) -> Iterator[dict[str, Any]]:
    rows = session.execute(
        select(*(getattr(SyncValue, c) for c in COLUMNS))
        .where(SyncValue.sync_id == sync_id)
        .order_by(SyncValue.id)
        .execution_options(yield_per=5000)
    )
    for row in rows:
        item = dict(zip(COLUMNS, row, strict=True))
        item["verified_at"] = item["verified_at"].isoformat() if item["verified_at"] else None
        yield item


def neutralize_cell(value: Any) -> Any:
    """Keep spreadsheet apps from running a cell as a formula (E.164 numbers stay as they are)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        if value.startswith("+") and value[1:].isdigit():
            return value
        return "'" + value
    return value


def write_csv(rows: Iterator[dict[str, Any]], handle: IO[str]) -> int:
    writer = csv.DictWriter(handle, fieldnames=COLUMNS)
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({k: neutralize_cell(v) for k, v in row.items()})
        count += 1
    return count


def json_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """A JSON object keyed by value, like the ApexVerify export, one row at a time."""
    yield "{"
    for index, row in enumerate(rows):
        rest = {k: v for k, v in row.items() if k != "value"}
        yield ("," if index else "") + "\n  " + json.dumps(row["value"]) + ": " + json.dumps(rest)
    yield "\n}\n"


def write_json(rows: Iterator[dict[str, Any]], handle: IO[str]) -> int:
    count = 0
    for chunk in json_chunks(rows):
        handle.write(chunk)
        count += 1
    return max(count - 2, 0)


def write_xlsx(rows: Iterator[dict[str, Any]], handle: IO[bytes]) -> None:
    """One sheet of verdicts into `handle`; every cell neutralised against formula injection.

    Write-only openpyxl keeps rows on disk and `handle` is a file, so a million-row sheet is not
    held in memory.
    """
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Verdicts")
    sheet.append(list(COLUMNS))
    for row in rows:
        sheet.append([neutralize_cell(row[c]) for c in COLUMNS])
    workbook.save(handle)
