"""Record digests are HMAC-SHA256 under one server key: not MD5, one key in every process, MD5s accepted."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from connector.models import (
    Connection,
    ContactOutcome,
    RecordVerification,
    ServerSecret,
    Sync,
    SyncContact,
    SyncStatus,
    utcnow,
)
from connector.pipeline.record_history import (
    record_hash_key,
    remember_written_values,
    reverify_changed_values,
    value_digest,
)
from connector.runtime import Runtime
from connector.server_secrets import RECORD_HASH_KEY

PHONE = "+14155552671"
VALUES = [PHONE, "alice@example.com", "zoë.müller@bücher.example", "名前@例え.jp", "", "x" * 320]


def python_hmac(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def md5(value: str) -> str:
    return hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()


def crm_sync(session: Session, *, contacts: list[tuple[str, str, str | None]]) -> Sync:
    """A HubSpot sync whose contacts are (record id, value, reason) rows, flagged as verified."""
    connection = Connection(crm="hubspot", external_id="62515", name="portal", settings={})
    session.add(connection)
    session.flush()
    sync = Sync(
        connection_id=connection.id, trigger="test", crm="hubspot", type="phone", target_country="US",
        source={"kind": "hubspot_list", "ref": "1"}, name="list", status=SyncStatus.WRITING_BACK,
    )  # fmt: skip
    session.add(sync)
    session.flush()
    for record_id, value, reason in contacts:
        outcome = ContactOutcome.SKIPPED if reason else ContactOutcome.VERIFIED
        session.add(
            SyncContact(sync_id=sync.id, record_id=record_id, value=value, outcome=outcome, reason=reason)
        )
    session.flush()
    return sync


def digests(runtime: Runtime) -> dict[str, str]:
    with runtime.session() as session:
        rows = session.execute(select(RecordVerification.record_id, RecordVerification.value_digest))
        return dict(rows.all())


def test_written_digests_are_hmacs_under_the_stored_server_key_not_md5(runtime: Runtime) -> None:
    key = record_hash_key(runtime)
    with runtime.session() as session:
        sync = crm_sync(session, contacts=[("r1", PHONE, None), ("r2", "bob@example.com", None)])
        remember_written_values(session, sync, key, 0, 10**9)

    stored = digests(runtime)
    assert stored == {"r1": python_hmac(key, PHONE), "r2": python_hmac(key, "bob@example.com")}
    assert all(len(d) == 64 for d in stored.values()) and stored["r1"] != md5(PHONE)
    with runtime.session() as session:
        assert session.scalars(select(ServerSecret.value)).all() == [key.hex()]
    assert len(key) == 32


def test_the_database_computes_the_same_hmac_as_python(runtime: Runtime) -> None:
    for key in (record_hash_key(runtime), b"k", bytes(range(100))):  # short, and longer than a block
        with runtime.session() as session:
            computed = [session.scalar(select(value_digest(session, key, literal(v)))) for v in VALUES]
        assert computed == [python_hmac(key, v) for v in VALUES]


def test_every_process_and_runtime_shares_one_key_that_never_changes(
    runtime: Runtime, tmp_path: Path
) -> None:
    # First uses racing on an empty table, each with its own runtime (its own process memory).
    found: list[bytes] = []
    racers = [
        threading.Thread(target=lambda: found.append(record_hash_key(replace(runtime, memo={}))))
        for _ in range(6)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert len(set(found)) == 1
    key = record_hash_key(runtime)
    assert found[0] == key

    script = (
        "from sqlalchemy import literal, select\n"
        "from connector.config import Settings\n"
        "from connector.pipeline.record_history import record_hash_key, value_digest\n"
        "from connector.runtime import build_runtime\n"
        "runtime = build_runtime(Settings.from_env())\n"
        "key = record_hash_key(runtime)\n"
        "with runtime.session() as session:\n"
        f"    print(session.scalar(select(value_digest(session, key, literal({PHONE!r})))))\n"
    )
    env = {**os.environ, "DATABASE_URL": runtime.settings.database_url, "CONNECTOR_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-c", script]
    other = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == python_hmac(key, PHONE)
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(ServerSecret)) == 1
        assert session.get_one(ServerSecret, RECORD_HASH_KEY).value == key.hex()


def test_a_legacy_md5_digest_still_matches_until_the_record_is_written_again(runtime: Runtime) -> None:
    """Rows written before the key existed hold MD5s: the upgrade must not make their records look
    changed (that would spend credits verifying them all again)."""
    key = record_hash_key(runtime)
    recent = "recently_verified"
    with runtime.session() as session:
        sync = crm_sync(
            session,
            contacts=[
                ("legacy-same", "+14155550001", recent),
                ("legacy-changed", "+14155550002", recent),
                ("hmac-same", "+14155550003", recent),
                ("hmac-changed", "+14155550004", recent),
            ],
        )
        earlier = {
            "legacy-same": md5("+14155550001"),
            "legacy-changed": md5("+14155559999"),
            "hmac-same": python_hmac(key, "+14155550003"),
            "hmac-changed": python_hmac(key, "+14155559998"),
        }
        for record_id, digest in earlier.items():
            session.add(
                RecordVerification(
                    connection_id=sync.connection_id, type="phone", record_id=record_id,
                    value_digest=digest, written_at=utcnow(),
                )
            )  # fmt: skip
        session.flush()
        assert reverify_changed_values(session, sync, key) == 2

    with runtime.session() as session:
        reasons = dict(session.execute(select(SyncContact.record_id, SyncContact.outcome)).all())
        assert reasons == {
            "legacy-same": ContactOutcome.SKIPPED,
            "legacy-changed": ContactOutcome.PENDING,
            "hmac-same": ContactOutcome.SKIPPED,
            "hmac-changed": ContactOutcome.PENDING,
        }
        # Written again (verified this time), the legacy row becomes an HMAC.
        session.execute(
            SyncContact.__table__.update()
            .where(SyncContact.record_id == "legacy-same")
            .values(outcome=ContactOutcome.VERIFIED, reason=None)
        )
        remember_written_values(session, session.get_one(Sync, sync.id), key, 0, 10**9)
    assert digests(runtime)["legacy-same"] == python_hmac(key, "+14155550001")
