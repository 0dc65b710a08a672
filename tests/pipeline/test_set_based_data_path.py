"""The set-based data path against the real database: value rows and batch files made by whole-sync
statements, and rows read back as COPY's text, exactly as the values and record ids were."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Boolean, DateTime, String, delete, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from connector.db import analyze, text_rows, uses_postgresql
from connector.models import (
    ContactOutcome,
    RecordVerification,
    Sync,
    SyncBatch,
    SyncContact,
    SyncValue,
    VerifiedValue,
    utcnow,
)
from connector.pipeline.batchfiles import collect_values, write_batch_files
from connector.pipeline.intake import crm_connection
from connector.pipeline.record_history import record_hash_key, remember_written_values
from connector.pipeline.state import StepContext
from connector.pipeline.verdicts import store_verdicts
from connector.pipeline.write_back import PendingUpdates, _pending_with_verdicts
from connector.runtime import Runtime
from tests.conftest import with_settings

# Characters COPY's text and CSV formats treat specially, all allowed in an email's local part.
AWKWARD = ['"quoted"@example.com', "back\\slash@example.com", "o'brien@example.com", "josé@example.com"]


def add_sync(runtime: Runtime, session: Session, crm: str = "file") -> Sync:
    connection_id = crm_connection(runtime, crm).id
    sync = Sync(
        connection_id=connection_id, trigger="test", crm=crm, type="email", target_country="US",
        name="set-based", reverify_after_days=30,
    )  # fmt: skip
    session.add(sync)
    session.flush()
    return sync


def add_contacts(
    session: Session, sync: Sync, values: list[tuple[str, str | None]], outcome: str = ContactOutcome.PENDING
) -> None:
    session.add_all(
        SyncContact(sync_id=sync.id, record_id=f"r{n}", value=value, reason=reason, outcome=outcome)
        for n, (value, reason) in enumerate(values)
    )
    session.flush()


def test_values_are_collected_once_with_known_verdicts_and_batched_exactly(runtime: Runtime) -> None:
    runtime = with_settings(runtime, apexverify_max_batch_rows=3)
    fresh = utcnow() - timedelta(days=30)
    with runtime.session() as session:
        session.add(
            VerifiedValue(type="email", value="cached@example.com", status="wrong", valid=False, wrong=True,
                          unknown=False, is_role=False, is_disposable=False, verified_at=utcnow())
        )  # fmt: skip
        sync = add_sync(runtime, session)
        fresh_values = [f"fresh{n}@example.com" for n in range(3)]
        add_contacts(
            session,
            sync,
            [(value, None) for value in [*AWKWARD, *fresh_values, AWKWARD[0]]]  # AWKWARD[0] twice: one row
            + [("cached@example.com", None), ("bad value", "invalid_format")],
        )
        collect_values(session, sync, fresh, runtime.settings.apexverify_max_batch_rows)
        batches = write_batch_files(session, runtime, sync)
        rows = {v.value: v for v in session.scalars(select(SyncValue).where(SyncValue.sync_id == sync.id))}
        sent = [b.rows for b in session.scalars(select(SyncBatch).where(SyncBatch.sync_id == sync.id))]

    assert set(rows) == {*AWKWARD, *fresh_values, "cached@example.com", "bad value"}
    assert (rows["cached@example.com"].status, rows["cached@example.com"].from_cache) == ("wrong", True)
    assert rows["cached@example.com"].batch_seq is None
    assert (rows["bad value"].status, rows["bad value"].wrong, rows["bad value"].batch_seq) == (
        "invalid_format",
        True,
        None,
    )
    assert sorted(sent) == [1, 3, 3] and [b.seq for b in batches] == [0, 1, 2]
    files = {batch.seq: Path(batch.file_path).read_text(encoding="utf-8") for batch in batches}
    lines = [line for text in files.values() for line in text.split("\n") if line]
    assert sorted(lines) == sorted([*AWKWARD, *fresh_values])  # each value once, byte for byte
    for seq, text in files.items():
        assert set(text.split()) == {value for value, row in rows.items() if row.batch_seq == seq}


def test_text_rows_gives_back_what_copy_escapes(runtime: Runtime) -> None:
    moment = datetime(2026, 12, 7, 12, 30, 1, 250000, tzinfo=UTC)
    query = select(
        literal(7).label("id"),
        literal("tab\there\\back\nline", String).label("text"),
        literal(None, String).label("missing"),
        literal(True, Boolean).label("yes"),
        literal(False, Boolean).label("no"),
        literal(moment, DateTime(timezone=True)).label("at"),
    )
    with runtime.session() as session:
        [row] = list(text_rows(session, query))

    assert row[:5] == ["7", "tab\there\\back\nline", None, "t", "f"]
    parsed = datetime.fromisoformat(row[5] or "")
    assert (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)) == moment


def test_a_record_remembered_by_another_sync_meanwhile_takes_this_syncs_digest(runtime: Runtime) -> None:
    """The plain INSERT meets the other transaction's row on the key, waits for it, fails; the
    upsert then writes this sync's digest over it."""
    key = record_hash_key(runtime)
    with runtime.session() as session:
        if not uses_postgresql(session):
            pytest.skip("the update-then-insert statement is PostgreSQL's; SQLite upserts")
        sync = add_sync(runtime, session, crm="hubspot")
        add_contacts(session, sync, [("mine@example.com", None)], outcome=ContactOutcome.VERIFIED)
        sync_id, connection_id = sync.id, sync.connection_id
    other_inserted, other_done = threading.Event(), threading.Event()

    def other_sync() -> None:
        with runtime.session() as other:
            other.add(RecordVerification(connection_id=connection_id, type="email", record_id="r0",
                                         value_digest="0" * 64))  # fmt: skip
            other.flush()
            other_inserted.set()
            time.sleep(0.5)  # this sync's INSERT is now waiting on the key
        other_done.set()

    thread = threading.Thread(target=other_sync)
    thread.start()
    assert other_inserted.wait(10)
    with runtime.session() as session:
        remember_written_values(session, session.get_one(Sync, sync_id), key, 0, 2**62)
    thread.join(10)
    assert other_done.is_set()
    with runtime.session() as session:
        stored = session.scalar(
            select(RecordVerification.value_digest).where(RecordVerification.record_id == "r0")
        )
    assert stored == hmac.new(key, b"mine@example.com", hashlib.sha256).hexdigest()


def test_a_value_another_sync_caches_meanwhile_takes_this_syncs_verdict(runtime: Runtime) -> None:
    """As above, for the verdict cache: the plain INSERT fails on the key, the upsert writes."""
    with runtime.session() as session:
        if not uses_postgresql(session):
            pytest.skip("the update-then-insert statements are PostgreSQL's; SQLite upserts")
        sync = add_sync(runtime, session)
        session.add(SyncValue(sync_id=sync.id, value="shared@example.com", batch_seq=0))
        sync_id = sync.id
    other_inserted = threading.Event()

    def other_sync() -> None:
        with runtime.session() as other:
            other.add(VerifiedValue(type="email", value="shared@example.com", status="unknown", valid=False,
                                    wrong=False, unknown=True, verified_at=utcnow()))  # fmt: skip
            other.flush()
            other_inserted.set()
            time.sleep(0.5)  # this sync's INSERT is now waiting on the key

    thread = threading.Thread(target=other_sync)
    thread.start()
    assert other_inserted.wait(10)
    with runtime.session() as session:
        verdict = ("shared@example.com", "valid", True, False, False, False, False)
        store_verdicts(session, sync_id, 0, "email", [verdict], utcnow())
    thread.join(10)
    with runtime.session() as session:
        cached = session.get_one(VerifiedValue, ("email", "shared@example.com"))
        mine = session.scalars(select(SyncValue.status).where(SyncValue.sync_id == sync_id)).one()
    assert (cached.status, cached.valid, mine) == ("valid", True, "valid")


def test_an_export_without_a_record_stores_nothing_and_fails_nothing(runtime: Runtime) -> None:
    """ApexVerify may drop every value of a batch as malformed: its export then holds no record."""
    with runtime.session() as session:
        sync = add_sync(runtime, session)
        session.add(SyncValue(sync_id=sync.id, value="dropped", batch_seq=0))
        sync_id = sync.id
    with runtime.session() as session:
        store_verdicts(session, sync_id, 0, "email", iter(()), utcnow())
        stored = session.scalars(select(SyncValue.status).where(SyncValue.sync_id == sync_id)).all()
    assert stored == [None]  # left for fetch_results to judge invalid_format


def test_a_write_back_page_joins_by_hash_though_the_statistics_are_of_another_sync(runtime: Runtime) -> None:
    """Analysed while they held another sync's rows (or this one's before its verdicts), the tables
    look to the planner as if this sync had a row or two: a nested loop then rescans the values once
    per contact (12,000 contacts took minutes in the crash-safety tests)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the plan is PostgreSQL's")
    values = [(f"person{n}@example.com", None) for n in range(12_000)]
    with runtime.session() as session:
        earlier = add_sync(runtime, session)
        add_contacts(session, earlier, values)
        collect_values(session, earlier, utcnow() - timedelta(days=30), 500_000)
    for table in ("sync_contacts", "sync_values"):
        with runtime.session() as session:
            analyze(session, table)
    verdict = {"valid": True, "wrong": False, "unknown": False, "is_role": False, "is_disposable": False}
    with runtime.session() as session:
        session.execute(delete(SyncContact))
        session.execute(delete(SyncValue))
        sync = add_sync(runtime, session)
        add_contacts(session, sync, values)
        collect_values(session, sync, utcnow() - timedelta(days=30), 500_000)
        session.execute(
            update(SyncValue)
            .where(SyncValue.sync_id == sync.id)
            .values(status="valid", verified_at=utcnow(), **verdict)
        )
        sync_id = sync.id
    # The page's session joins the test's transaction, so its plan can be read there afterwards.
    with runtime.engine.connect() as connection, connection.begin():
        sessions = sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
        context = StepContext(dataclasses.replace(runtime, sessions=sessions), sync_id, "job")
        written = list(PendingUpdates(context, 0, 5_000))
        query = _pending_with_verdicts(sync_id, 0, 5_000)
        sql = query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
        plan = connection.exec_driver_sql(f"EXPLAIN {sql}").scalars().all()
    assert len(written) == 5_000
    assert not [line for line in plan if "Nested Loop" in line], plan
