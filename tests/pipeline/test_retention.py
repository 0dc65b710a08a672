"""Personal data has an end: files go when a sync completes, values after their window, everywhere."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import requests
from sqlalchemy import JSON, String, Text, func, select, update
from sqlalchemy.orm import Session

from connector.models import (
    Base,
    CoalescedContact,
    Connection,
    ContactOutcome,
    RecordVerification,
    Segment,
    Sync,
    SyncAction,
    SyncContact,
    SyncStatus,
    SyncTransition,
    SyncValue,
    VerifiedValue,
    WebhookEvent,
    utcnow,
)
from connector.pipeline.batchfiles import sync_dir
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.retention import purge_expired_data, reverify_window_days
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.verify_command import start_file_sync


def test_files_are_deleted_on_completion_and_values_after_the_retention_period(
    runtime: Runtime, web: SandboxServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a@example.com\nb@example.com\n", encoding="utf-8")
    sync = drive_until_settled(runtime, start_file_sync(runtime, source, type_="email", country="US").id)
    assert sync.status == SyncStatus.COMPLETED
    assert not (runtime.settings.data_dir / "syncs" / str(sync.id)).exists()

    assert purge_expired_data(runtime) == []  # ended just now: kept for DATA_RETENTION_DAYS
    with runtime.session() as session:
        session.execute(update(Sync).values(updated_at=utcnow() - timedelta(days=8)))
        contact_id = session.scalars(select(SyncContact.id)).first()
        session.add(SyncAction(sync_id=sync.id, contact_id=contact_id, action="opt_out", do="opt_out",
                               outcome="failed", error_message="refused"))  # fmt: skip
    assert purge_expired_data(runtime) == [sync.id]

    with runtime.session() as session:
        for model in (SyncContact, SyncValue, SyncAction):
            assert session.scalar(select(func.count()).select_from(model)) == 0
        purged = session.get_one(Sync, sync.id)
        assert purged.data_purged_at is not None and purged.counts["contacts"] == 2
    assert purge_expired_data(runtime) == []
    admin = {"Authorization": "Bearer test-admin-token"}
    gone = requests.get(f"{web.url}/admin/syncs/{sync.id}/results", headers=admin, timeout=5)
    assert gone.status_code == 410 and gone.json()["error"] == "results_purged"


# ---- everything that can hold an email or phone ---------------------------------------------

DAY = timedelta(days=1)


def values_of(age: str, tag: str) -> tuple[str, str]:
    """An email and a phone stored only under `tag`; `age` "old" ones must be gone after the purge."""
    number = sum(map(ord, tag)) % 10_000
    return f"{age}-{tag}@example.com", f"+1{'415' if age == 'old' else '212'}555{number:04d}"


def add_sync_with_data(session: Session, runtime: Runtime, status: str, updated: datetime, tag: str) -> int:
    """A sync holding its tag's values in each of its tables (contacts, values, coalesced) and files."""
    connection_id = session.scalars(select(Connection.id)).one()
    sync = Sync(
        connection_id=connection_id, trigger="test", crm="hubspot", type="email", target_country="US",
        name="seeded", status=status, updated_at=updated, reverify_after_days=30,
    )  # fmt: skip
    session.add(sync)
    session.flush()
    email, phone = values_of("old" if updated < utcnow() - 7 * DAY else "new", tag)
    session.add_all(
        [
            SyncContact(sync_id=sync.id, record_id="1", value=email,
                        outcome=ContactOutcome.WRITE_FAILED, error_message=f"INVALID_EMAIL: {email}"),
            SyncContact(sync_id=sync.id, record_id="2", value=phone),
            SyncValue(sync_id=sync.id, value=email, status="valid"),
            SyncValue(sync_id=sync.id, value=phone, status="valid"),
            CoalescedContact(connection_id=connection_id, type="email", record_id=f"s{sync.id}", value=email,
                             sync_id=sync.id, received_at=updated),
        ]
    )  # fmt: skip
    directory = sync_dir(runtime, sync.id)
    (directory / "batch-0.txt").write_text(f"{email}\n{phone}\n", encoding="utf-8")
    (directory / "export-list-7-1.download").write_text(f"Record ID,email\n1,{email}\n", encoding="utf-8")
    return sync.id


def cached_verdict(value: str, verified_at: datetime) -> VerifiedValue:
    return VerifiedValue(
        type="email", value=value, status="valid", valid=True, wrong=False, unknown=False,
        verified_at=verified_at,
    )  # fmt: skip


def write_aged(path: Path, text: str, age: timedelta) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.utime(path, (time.time() - age.total_seconds(),) * 2)


def stored_text(runtime: Runtime) -> str:
    """Every text, string and JSON column of every table, and every file under the data directory."""
    parts = []
    with runtime.session() as session:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
            for row in session.execute(select(*columns)) if columns else ():
                parts.extend(v if isinstance(v, str) else json.dumps(v) for v in row if v is not None)
    parts.extend(
        path.read_text(encoding="utf-8", errors="replace")
        for path in runtime.settings.data_dir.rglob("*")
        if path.is_file()
    )
    return "\n".join(parts)


def test_the_purge_leaves_no_email_or_phone_older_than_its_window_in_any_table_or_file(
    runtime: Runtime,
) -> None:
    now = utcnow()
    old, recent = now - 8 * DAY, now - DAY  # DATA_RETENTION_DAYS is 7
    with runtime.session() as session:
        session.add(Connection(crm="hubspot", external_id="62515", name="portal", settings={}))
        session.flush()
        cid = session.scalars(select(Connection.id)).one()
        ended_old = add_sync_with_data(session, runtime, "completed", old, "ended")
        failed_old = add_sync_with_data(session, runtime, "failed", old, "failed")
        stuck = add_sync_with_data(session, runtime, "verifying", old, "stuck")
        unapproved = add_sync_with_data(session, runtime, "awaiting_approval", old, "approval")
        ended_new = add_sync_with_data(session, runtime, "completed", recent, "ended")
        running = add_sync_with_data(session, runtime, "verifying", recent, "running")
        for age, received in (("old", old), ("new", recent)):  # waiting in a coalescing buffer
            email = values_of(age, "buffer")[0]
            session.add(CoalescedContact(connection_id=cid, type="email", record_id=email, value=email,
                                         received_at=received))  # fmt: skip
        # The verdict cache: 30 days is the longest reverify window in use here.
        session.add_all(cached_verdict(v, now - 31 * DAY) for v in values_of("old", "cache"))
        session.add_all(cached_verdict(v, now - 29 * DAY) for v in values_of("new", "cache"))
        for key, age in (("old-event", 8 * DAY), ("new-event", DAY)):
            session.add(WebhookEvent(source="hubspot", dedupe_key=key, received_at=now - age))
        for record_id, age in (("old-record", 31 * DAY), ("new-record", 29 * DAY)):
            session.add(RecordVerification(connection_id=cid, type="email", record_id=record_id,
                                           value_digest="0" * 64, written_at=now - age))  # fmt: skip
    data_dir = runtime.settings.data_dir
    orphan, legacy = data_dir / "syncs" / "999999", data_dir / "hubspot"  # a sync that no longer exists,
    # and where exports were downloaded before they moved into their sync's own directory
    write_aged(orphan / "batch-0.txt", values_of("old", "orphan")[0], DAY)
    write_aged(legacy / "export-list-1-1.download", "\n".join(values_of("old", "legacy")), 8 * DAY)
    write_aged(legacy / "export-list-2-2.download", "\n".join(values_of("new", "legacy")), DAY)
    tags = ("ended", "failed", "stuck", "approval", "cache", "legacy")
    olds = [v for tag in tags for v in values_of("old", tag)]
    olds += [values_of("old", "buffer")[0], values_of("old", "orphan")[0]]
    news = [v for tag in ("ended", "running", "cache", "legacy") for v in values_of("new", tag)]
    news += [values_of("new", "buffer")[0]]
    before = stored_text(runtime)
    assert [v for v in olds + news if v not in before] == []

    assert purge_expired_data(runtime) == sorted([ended_old, failed_old, stuck, unapproved])

    after = stored_text(runtime)
    assert [v for v in olds if v in after] == []
    assert [v for v in news if v not in after] == []
    with runtime.session() as session:
        assert session.scalars(select(WebhookEvent.dedupe_key)).all() == ["new-event"]
        assert session.scalars(select(RecordVerification.record_id)).all() == ["new-record"]
        assert dict(session.execute(select(Sync.id, Sync.status)).all()) == {
            ended_old: "completed", failed_old: "failed", stuck: "cancelled", unapproved: "cancelled",
            ended_new: "completed", running: "verifying",
        }  # fmt: skip
        history = select(SyncTransition.note).where(SyncTransition.sync_id == stuck)
        assert session.scalars(history).all() == ["cancelled: contact data expired after 7 days unsettled"]
    assert sorted(p.name for p in (data_dir / "syncs").iterdir()) == sorted([str(ended_new), str(running)])
    assert purge_expired_data(runtime) == []


def test_cached_verdicts_are_kept_for_the_longest_reverify_window_still_in_use(runtime: Runtime) -> None:
    now = utcnow()
    with runtime.session() as session:
        session.add(Connection(crm="hubspot", external_id="1", name="portal", settings={}))
        session.flush()
        cid = session.scalars(select(Connection.id)).one()

        def window() -> int:
            session.flush()
            return reverify_window_days(session)

        assert window() == 30  # what a sync gets when nothing says otherwise
        segment = {"connection_id": cid, "crm": "hubspot", "kind": "list", "ref": "1", "type": "email"}
        session.add(Segment(**segment, reverify_after_days=90))
        session.add(Segment(**segment, reverify_after_days=900, deleted_at=now))  # deleted: never runs again
        assert window() == 90
        settings = {"reverify_after_days": 120}
        session.add(Connection(crm="salesforce", external_id="2", name="org", settings=settings))
        assert window() == 120
        sync = dict(
            connection_id=cid, trigger="t", crm="hubspot", type="email", target_country="US", name="s"
        )
        for status, days in (("pending", 150), ("completed", 400), ("failed", 500)):  # only unsettled count
            session.add(Sync(**sync, status=status, reverify_after_days=days))
        assert window() == 150
        session.add_all(cached_verdict(f"v{days}@example.com", now - days * DAY) for days in (149, 151))

    purge_expired_data(runtime)

    with runtime.session() as session:
        assert session.scalars(select(VerifiedValue.value)).all() == ["v149@example.com"]
