"""Writing a sync's values into `.txt` batch files, split at APEXVERIFY_MAX_BATCH_ROWS."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from connector.models import Sync, SyncBatch, SyncValue
from connector.runtime import Runtime


def sync_dir(runtime: Runtime, sync_id: int) -> Path:
    path = runtime.data_dir() / "syncs" / str(sync_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_sync_files(runtime: Runtime, sync_id: int) -> None:
    shutil.rmtree(runtime.settings.data_dir / "syncs" / str(sync_id), ignore_errors=True)


def write_batch_files(
    session: Session, runtime: Runtime, sync: Sync, *, from_batch_seq: int | None = None
) -> list[SyncBatch]:
    """Stream the values still to verify into files; returns the batches created.

    Normally that is every value without a verdict; with `from_batch_seq`, the values of that
    (abandoned) batch, which get new batches numbered after the sync's last one.
    """
    max_rows = runtime.settings.apexverify_max_batch_rows
    chosen = SyncValue.status.is_(None) if from_batch_seq is None else SyncValue.batch_seq == from_batch_seq
    first_seq = session.execute(  # an aggregate: always one row
        select(func.coalesce(func.max(SyncBatch.seq) + 1, 0)).where(SyncBatch.sync_id == sync.id)
    ).scalar_one()
    parts = _write_parts(session, sync.id, chosen, sync_dir(runtime, sync.id), max_rows, first_seq)
    batches = []
    for seq, part in enumerate(parts, start=first_seq):
        session.execute(
            update(SyncValue)
            .where(
                SyncValue.sync_id == sync.id,
                chosen,
                SyncValue.id >= part.first_id,
                SyncValue.id <= part.last_id,
            )
            .values(batch_seq=seq)
        )
        batch = SyncBatch(sync_id=sync.id, seq=seq, rows=part.rows, file_path=str(part.path.resolve()))
        session.add(batch)
        batches.append(batch)
    return batches


@dataclass
class _Part:
    path: Path
    first_id: int
    last_id: int = 0
    rows: int = 0


def _write_parts(
    session: Session, sync_id: int, chosen: Any, directory: Path, max_rows: int, first_seq: int
) -> list[_Part]:
    values = session.execute(
        select(SyncValue.id, SyncValue.value)
        .where(SyncValue.sync_id == sync_id, chosen)
        .order_by(SyncValue.id)
        .execution_options(yield_per=10_000)
    )
    parts: list[_Part] = []
    handle: IO[str] | None = None
    for value_id, value in values:
        if handle is None or parts[-1].rows >= max_rows:
            _finish(handle, parts)
            parts.append(_Part(path=directory / f"batch-{first_seq + len(parts)}.txt", first_id=value_id))
            handle = parts[-1].path.with_suffix(".txt.tmp").open("w", encoding="utf-8", newline="\n")
        handle.write(value + "\n")
        parts[-1].rows += 1
        parts[-1].last_id = value_id
    _finish(handle, parts)
    return parts


def _finish(handle: IO[str] | None, parts: list[_Part]) -> None:
    """Make a part durable under its final name (a crash leaves only a .tmp behind)."""
    if handle is None:
        return
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(handle.name, parts[-1].path)
