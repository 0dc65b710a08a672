"""A plain file of values as a segment: one value per line, or a CSV with an id column.

Used by `connector verify FILE`; there is no CRM to write back to, so the writer only
accepts the verdicts (they are exported by the CLI from the database).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from connector.crm.base import FlagUpdate, SourceRecord, WriteFailure
from connector.errors import InputError


class FileSegmentSource:
    def __init__(self, path: Path, type_: str) -> None:
        self.path = path
        self.type = type_

    def iter_records(self) -> Iterator[SourceRecord]:
        if not self.path.is_file():
            raise InputError("source_file_missing", f"input file {self.path} does not exist")
        with self.path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
            first = handle.readline()
            header = [c.strip().lower() for c in next(csv.reader([first]))] if first else []
            if self.type in header:
                yield from self._iter_csv(handle, header)
                return
            handle.seek(0)
            for number, line in enumerate(handle, start=1):
                yield SourceRecord(record_id=f"line:{number}", value=line.rstrip("\r\n"))

    def _iter_csv(self, handle: Iterator[str], header: list[str]) -> Iterator[SourceRecord]:
        value_column = header.index(self.type)
        id_column = header.index("id") if "id" in header else None
        for number, row in enumerate(csv.reader(handle), start=2):
            if not row:
                continue
            record_id = row[id_column] if id_column is not None and id_column < len(row) else f"line:{number}"
            value = row[value_column] if value_column < len(row) else None
            yield SourceRecord(record_id=record_id, value=value)


class NullFlagWriter:
    """The file source has nowhere to write: every verdict counts as delivered."""

    batch_size = 5000

    def prepare(self) -> None:
        return None

    def write(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        for _ in updates:
            pass
        return []
