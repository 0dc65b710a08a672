"""A sync's distinct values, the verdicts it already knows, and the `.txt` batch files of the rest.

Set-based: one INSERT ... SELECT turns the sync's pending contacts into its value rows, each
already carrying what is known without ApexVerify (a local format error, a fresh cached verdict)
or the batch it goes to (a running count over the values still to judge, divided by
`APEXVERIFY_MAX_BATCH_ROWS`). A batch file is then one `COPY (SELECT ...) TO STDOUT` written to
disk as it arrives. Before, the values were inserted, updated for format errors and the cache,
and updated again per batch, and the files were written from ORM rows: at 300,000 contacts the
insert and the batch update took 2.8 s and 2.9 s of PostgreSQL, the files 10 % of the worker's
CPU. Now 1,000,000 values take one 4.4 s statement (EXPLAIN ANALYZE, 2-core machine) and their
files 0.6 s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, and_, case, false, func, literal, null, select, true, update
from sqlalchemy.orm import Session

from connector.db import copy_query_to, raise_work_mem, uses_postgresql
from connector.models import ContactOutcome, Sync, SyncBatch, SyncContact, SyncValue, VerifiedValue, utcnow
from connector.pipeline.verdicts import INVALID_FORMAT
from connector.runtime import Runtime

# What COPY writes for a value is the value itself: CSV with a quote character no value can hold
# (normalisation keeps control characters, commas and whitespace out of every value sent).
_PLAIN_CSV = "FORMAT csv, QUOTE E'\\x01'"


def sync_dir(runtime: Runtime, sync_id: int) -> Path:
    path = runtime.data_dir() / "syncs" / str(sync_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_sync_files(runtime: Runtime, sync_id: int) -> None:
    shutil.rmtree(runtime.settings.data_dir / "syncs" / str(sync_id), ignore_errors=True)


def collect_values(session: Session, sync: Sync, fresh_after: datetime, max_rows: int) -> None:
    """One value row per distinct pending value: a format error or a fresh cached verdict filled
    in, every other value given its batch (0, 1, … of `max_rows` values each)."""
    contacts = SyncContact.__table__
    distinct = (
        select(
            contacts.c.value,
            func.max(case((contacts.c.reason == "invalid_format", 1), else_=0)).label("invalid"),
        )
        .where(
            contacts.c.sync_id == sync.id,
            contacts.c.outcome == ContactOutcome.PENDING,
            contacts.c.value.is_not(None),
        )
        .group_by(contacts.c.value)
        .subquery("distinct_values")
    )
    cached = VerifiedValue.__table__
    found = and_(
        cached.c.type == sync.type, cached.c.value == distinct.c.value, cached.c.verified_at >= fresh_after
    )
    invalid = distinct.c.invalid == 1
    known = cached.c.value.is_not(None)
    unjudged = and_(~invalid, ~known)
    # Each unjudged value numbered by a running count in the order the rows come: no sort.
    position = func.count().filter(unjudged).over(rows=(None, 0))
    rows = select(
        literal(sync.id).label("sync_id"),
        distinct.c.value,
        case((unjudged, (position - 1) // max_rows)).label("batch_seq"),
        *(_verdict(name, invalid, known, cached.c[name]) for name in INVALID_FORMAT),
        case((invalid, literal(utcnow(), SyncValue.verified_at.type)), (known, cached.c.verified_at)).label(
            "verified_at"
        ),
        case((invalid, false()), (known, true()), else_=false()).label("from_cache"),
    ).select_from(distinct.outerjoin(cached, found))
    names = ["sync_id", "value", "batch_seq", *INVALID_FORMAT, "verified_at", "from_cache"]
    raise_work_mem(session)
    session.execute(SyncValue.__table__.insert().from_select(names, rows))


def _verdict(name: str, invalid: Any, known: Any, cached: Any) -> Any:
    local = INVALID_FORMAT[name]
    written = literal(local, Boolean) if isinstance(local, bool) else literal(local)
    return case((invalid, written), (known, cached), else_=null()).label(name)


def write_batch_files(
    session: Session, runtime: Runtime, sync: Sync, *, from_batch_seq: int | None = None
) -> list[SyncBatch]:
    """Write the batches' files and rows; returns the batches created.

    Normally the batches `collect_values` numbered; with `from_batch_seq`, the values of that
    (abandoned) batch, which get new batches numbered after the sync's last one.
    """
    first_seq = session.execute(  # an aggregate: always one row
        select(func.coalesce(func.max(SyncBatch.seq) + 1, 0)).where(SyncBatch.sync_id == sync.id)
    ).scalar_one()
    if from_batch_seq is not None:
        _renumber(session, sync.id, from_batch_seq, first_seq, runtime.settings.apexverify_max_batch_rows)
    sizes = [
        (int(seq or 0), rows)
        for seq, rows in session.execute(
            select(SyncValue.batch_seq, func.count())
            .where(SyncValue.sync_id == sync.id, SyncValue.batch_seq >= first_seq)
            .group_by(SyncValue.batch_seq)
            .order_by(SyncValue.batch_seq)
        )
    ]
    directory = sync_dir(runtime, sync.id)
    batches = []
    for seq, rows in sizes:
        path = directory / f"batch-{seq}.txt"
        _write_file(session, sync.id, seq, path)
        batch = SyncBatch(sync_id=sync.id, seq=seq, rows=rows, file_path=str(path.resolve()))
        session.add(batch)
        batches.append(batch)
    return batches


def _renumber(session: Session, sync_id: int, old_seq: int, first_seq: int, max_rows: int) -> None:
    """Move an abandoned batch's values into new batches numbered from `first_seq`."""
    ranked = (
        select(SyncValue.id, func.row_number().over(order_by=SyncValue.id).label("position"))
        .where(SyncValue.sync_id == sync_id, SyncValue.batch_seq == old_seq)
        .subquery()
    )
    session.execute(
        update(SyncValue)
        .where(SyncValue.id == ranked.c.id)
        .values(batch_seq=first_seq + (ranked.c.position - 1) // max_rows)
    )


def _write_file(session: Session, sync_id: int, seq: int, path: Path) -> None:
    """The batch's values, one per line, made durable under the final name (a crash leaves a .tmp)."""
    partial = path.with_suffix(".txt.tmp")
    values = select(SyncValue.value).where(SyncValue.sync_id == sync_id, SyncValue.batch_seq == seq)
    with partial.open("wb") as handle:
        for block in _value_lines(session, values):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _value_lines(session: Session, values: Any) -> Iterator[bytes]:
    if uses_postgresql(session):
        yield from copy_query_to(session, values, _PLAIN_CSV)
        return
    for (value,) in session.connection().execution_options(yield_per=10_000).execute(values):
        yield (value + "\n").encode()
