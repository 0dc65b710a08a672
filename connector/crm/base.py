"""The small protocol every contact source and flag writer keeps.

A source yields the records of a segment, streamed; a writer puts verdict flags back onto
records and reports, per record, whether the CRM took them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class SourceRecord:
    record_id: str
    value: str | None
    object_type: str | None = None
    # When the CRM says this record was last verified by us (skips it when recent).
    verified_at: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    status: str  # valid | wrong | unknown | invalid_format
    valid: bool
    wrong: bool
    unknown: bool
    is_role: bool | None
    is_disposable: bool | None
    verified_at: datetime


def cells_per_verdict(format_cells: Callable[[Verdict], list[str]]) -> Callable[[Verdict], list[str]]:
    """`format_cells`, remembered: a million contacts share a few thousand verdicts at most, so the
    bulk writers format each distinct verdict once instead of once per contact."""
    return functools.lru_cache(maxsize=4096)(format_cells)


@dataclass(frozen=True)
class IncomingContact:
    """A contact a webhook delivery names, on its way to the coalescing buffer."""

    record_id: str
    value: str | None = None
    object_type: str = ""
    # When the CRM says the value was observed (an event's own time); None: when it reached us.
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class FlagUpdate:
    record_id: str
    object_type: str | None
    verdict: Verdict


@dataclass(frozen=True)
class WriteFailure:
    record_id: str
    code: str
    message: str


class SegmentSource(Protocol):
    def iter_records(self) -> Iterator[SourceRecord]:
        """Every record of the segment, streamed (memory must not grow with the segment)."""
        ...


class RecordReader(Protocol):
    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        """The current value (email or phone) of these records; unknown ids are left out."""
        ...


class FlagWriter(Protocol):
    # The most updates one call of `write` takes (a REST batch, or one bulk import/ingest job).
    batch_size: int

    def prepare(self) -> None:
        """Check or create what the write needs (fields, properties) before any credit is spent."""
        ...

    def write(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        """Write the flags (consuming `updates` once, lazily); return the records the CRM refused."""
        ...
