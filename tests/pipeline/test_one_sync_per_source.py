"""One unsettled sync per CRM segment, whoever asks and however many ask at once.

"Sync now" double clicks, retried POSTs, HubSpot list triggers and the schedule race on one
partial unique index; every loser answers with the winner's sync, and ApexVerify sees one
upload and one launch.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from alembic import command
from sqlalchemy import func, select, update

from connector.crm.hubspot.webhook import sign
from connector.db import alembic_config
from connector.models import Segment, Sync, SyncStatus, utcnow
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.intake import crm_connection, start_segment_sync
from connector.pipeline.schedule import enqueue_due_segment_syncs
from connector.pipeline.segments import create_segment, sync_segment
from connector.pipeline.syncs import source_key
from connector.runtime import Runtime, make_engine
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_SECRET, PG_ADMIN_URL

AUTH = {"Authorization": "Bearer test-admin-token"}
RACERS = 20


def seed_list(sandbox: SandboxServer, contacts: int = 25) -> str:
    body = {"generate": {"contacts": contacts, "list_name": "race", "seed": 11}}
    answer = requests.post(f"{sandbox.url}/_sandbox/seed", json=body, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["listId"])


def list_trigger(web: SandboxServer, list_id: str) -> requests.Response:
    body = json.dumps({"listId": list_id, "type": "email"}).encode()
    stamp = str(int(time.time() * 1000))
    url = f"{web.url}/webhooks/hubspot"
    headers = {"X-HubSpot-Signature-v3": sign(HUBSPOT_SECRET, "POST", url, body, stamp),
               "X-HubSpot-Request-Timestamp": stamp, "Content-Type": "application/json"}  # fmt: skip
    return requests.post(url, data=body, headers=headers, timeout=60)


def all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls on their own threads, released together."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def sync_ids(runtime: Runtime) -> list[int]:
    with runtime.session() as session:
        return list(session.scalars(select(Sync.id).order_by(Sync.id)))


def test_sync_now_and_list_triggers_at_once_make_one_sync_and_one_launch(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    list_id = seed_list(hubspot_sandbox)
    segment = {"crm": "hubspot", "kind": "hubspot_list", "ref": list_id, "type": "email"}
    created = requests.post(f"{web.url}/admin/segments", json=segment, headers=AUTH, timeout=5)
    sync_url = f"{web.url}/admin/segments/{created.json()['id']}/sync"

    def sync_now() -> requests.Response:
        return requests.post(sync_url, headers=AUTH, timeout=60)

    answers = all_at_once([sync_now] * RACERS + [lambda: list_trigger(web, list_id)] * RACERS)

    [sync_id] = sync_ids(hubspot_runtime)
    admin, hooks = answers[:RACERS], answers[RACERS:]
    assert {(a.status_code, a.json()["id"], a.json()["segment_id"]) for a in admin} == {
        (202, sync_id, created.json()["id"])
    }
    assert {(h.status_code, json.dumps(h.json())) for h in hooks} == {(200, '{"accepted": 1}')}

    sync = drive_until_settled(hubspot_runtime, sync_id, tick_seconds=0.1)
    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    state = requests.get(f"{hubspot_runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()
    assert len(state["batches"]) == 1 and state["launches"] == 1 and state["charges"] == 1
    assert sync_now().json()["id"] != sync_id  # settled: the next request starts a new sync


def test_racing_starts_agree_on_one_sync_whichever_path_wins(hubspot_runtime: Runtime) -> None:
    segment = create_segment(hubspot_runtime, {"kind": "hubspot_list", "ref": "77", "type": "email"})
    connection = crm_connection(hubspot_runtime, "hubspot")

    def from_segment() -> int:
        return sync_segment(hubspot_runtime, segment.id, "admin").id

    def from_webhook() -> int:
        source = {"kind": "hubspot_list", "ref": "77"}
        sync = start_segment_sync(
            hubspot_runtime, connection, source=source, type_="email", trigger="webhook", name="list 77"
        )
        return sync.id

    started = all_at_once([from_segment, from_webhook] * 8)

    assert set(started) == set(sync_ids(hubspot_runtime)) and len(set(started)) == 1
    other_type = start_segment_sync(
        hubspot_runtime, connection, source={"kind": "hubspot_list", "ref": "77"}, type_="phone",
        trigger="webhook", name="list 77 phones",
    )  # fmt: skip
    assert other_type.id not in started  # another type is another source


def test_a_sync_awaiting_approval_still_holds_its_list(hubspot_runtime: Runtime) -> None:
    segment = create_segment(hubspot_runtime, {"kind": "hubspot_list", "ref": "78", "type": "email"})
    first = sync_segment(hubspot_runtime, segment.id, "admin")
    with hubspot_runtime.session() as session:
        session.execute(update(Sync).values(status=SyncStatus.AWAITING_APPROVAL))
    source = {"kind": "hubspot_list", "ref": "78"}
    connection = crm_connection(hubspot_runtime, "hubspot")
    again = start_segment_sync(
        hubspot_runtime, connection, source=source, type_="email", trigger="webhook", name="list 78"
    )
    assert again.id == first.id


def test_a_schedule_that_loses_to_a_running_sync_is_deferred(hubspot_runtime: Runtime) -> None:
    """Two segments of one list: the second's due time finds the first's sync holding the list."""
    body = {"kind": "hubspot_list", "ref": "79", "type": "email", "schedule": "* * * * *"}
    first, second = (create_segment(hubspot_runtime, body) for _ in range(2))
    with hubspot_runtime.session() as session:
        session.execute(update(Segment).values(created_at=utcnow() - timedelta(minutes=5)))
    running = sync_segment(hubspot_runtime, first.id, "admin")

    assert enqueue_due_segment_syncs(hubspot_runtime) == []
    assert sync_ids(hubspot_runtime) == [running.id]
    with hubspot_runtime.session() as session:
        session.execute(update(Sync).values(status=SyncStatus.COMPLETED))
    assert len(enqueue_due_segment_syncs(hubspot_runtime)) == 1  # the deferred due time, once free


def test_a_failed_sync_is_not_retried_while_another_holds_its_list(
    hubspot_runtime: Runtime, web: SandboxServer
) -> None:
    segment = create_segment(hubspot_runtime, {"kind": "hubspot_list", "ref": "80", "type": "email"})
    failed = sync_segment(hubspot_runtime, segment.id, "admin")
    with hubspot_runtime.session() as session:
        failing = update(Sync).values(status=SyncStatus.FAILED, failed_step="exporting", error_code="e")
        session.execute(failing)
    newer = sync_segment(hubspot_runtime, segment.id, "admin")

    retry = f"{web.url}/admin/syncs/{failed.id}/retry"
    answer = requests.post(retry, headers=AUTH, timeout=5)

    assert answer.status_code == 409 and answer.json()["error"] == "source_busy"
    assert f"sync {newer.id}" in answer.json()["message"]
    with hubspot_runtime.session() as session:
        session.execute(update(Sync).where(Sync.id == newer.id).values(status=SyncStatus.CANCELLED))
    assert requests.post(retry, headers=AUTH, timeout=5).status_code == 202


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ({"kind": "hubspot_list", "ref": "9", "object": None}, {"kind": "hubspot_list", "ref": "9"}, True),
        (
            {"kind": "salesforce_campaign", "ref": "701000000000001AAA", "object": "Lead"},
            {"kind": "salesforce_campaign", "ref": "701000000000001", "object": "Lead"},
            True,
        ),
        (
            {"kind": "salesforce_campaign", "ref": "701000000000001", "object": "Lead"},
            {"kind": "salesforce_campaign", "ref": "701000000000001", "object": "Contact"},
            False,
        ),
        ({"kind": "hubspot_list", "ref": "9"}, {"kind": "hubspot_list", "ref": "10"}, False),
    ],
)
def test_source_keys_name_what_is_read(one: dict, other: dict, same: bool) -> None:
    assert (source_key(1, one, "email") == source_key(1, other, "email")) is same
    assert source_key(1, one, "email") != source_key(2, one, "email")
    assert source_key(1, one, "email") != source_key(1, one, "phone")


def test_files_and_long_filters_have_fitting_keys() -> None:
    assert source_key(1, {"kind": "file", "path": "/tmp/x.txt"}, "email") is None
    assert source_key(1, {"kind": "coalesced"}, "email") is None
    long_where = {"kind": "salesforce_soql", "ref": "Email LIKE '%a%' OR " * 30, "object": "Lead"}
    key = source_key(1, long_where, "email")
    assert key is not None and len(key) <= 200
    assert key != source_key(1, {**long_where, "ref": long_where["ref"] + "x"}, "email")


# --- The migration that adds the key to existing syncs -----------------------------------------


@pytest.fixture
def empty_database(migrated_engine: sa.Engine, tmp_path: Any) -> Iterator[sa.Engine]:
    """A database of its own (same backend as the suite's), for migrating step by step."""
    if migrated_engine.dialect.name != "postgresql":
        engine = make_engine(f"sqlite:///{tmp_path / 'steps.db'}")
        yield engine
        engine.dispose()
        return
    name = f"connector_steps_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    yield engine
    engine.dispose()
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrate(engine: sa.Engine, revision: str, *, down: bool = False) -> None:
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_the_migration_keys_unsettled_syncs_and_keeps_twins_unkeyed(empty_database: sa.Engine) -> None:
    migrate(empty_database, "5d2a8c61f0b7")
    hubspot_list = {"kind": "hubspot_list", "ref": "42"}
    rows = [  # (status, source): two running syncs of one list, as the old check could let through
        ("exporting", hubspot_list),
        ("awaiting_approval", {**hubspot_list, "object": None}),
        ("completed", hubspot_list),
        ("verifying", {"kind": "file", "path": "/tmp/in.txt"}),
        ("pending", {"kind": "salesforce_campaign", "ref": "701000000000001AAA", "object": "Contact"}),
    ]
    metadata = sa.MetaData()
    syncs = sa.Table("syncs", metadata, autoload_with=empty_database)
    connections = sa.Table("connections", metadata, autoload_with=empty_database)
    now = utcnow()
    with empty_database.begin() as db:
        db.execute(connections.insert().values(id=1, crm="hubspot", external_id="1", name="h", settings={},
                                               created_at=now))  # fmt: skip
        for status, source in rows:
            db.execute(syncs.insert().values(
                connection_id=1, trigger="admin", crm="hubspot", type="email", target_country="US",
                parameters={}, source=source, name="s", reverify_after_days=30, status=status, counts={},
                cost={}, poll_attempt=0, created_at=now, updated_at=now,
            ))  # fmt: skip

    migrate(empty_database, "a1c0ffee0011")  # keys as the code computes them:
    assert source_key(1, hubspot_list, "email") == "1|hubspot_list||email|42"

    with empty_database.connect() as db:
        keys = db.execute(sa.text("SELECT status, source_key FROM syncs ORDER BY id")).all()
    assert [tuple(k) for k in keys] == [
        ("exporting", None),  # the older twin runs on, unkeyed
        ("awaiting_approval", "1|hubspot_list||email|42"),
        ("completed", None),
        ("verifying", None),
        ("pending", "1|salesforce_campaign|Contact|email|701000000000001"),
    ]
    with pytest.raises(sa.exc.IntegrityError), empty_database.begin() as db:
        db.execute(
            sa.text("UPDATE syncs SET source_key = '1|hubspot_list||email|42' WHERE status = 'exporting'")
        )
    migrate(empty_database, "5d2a8c61f0b7", down=True)
    with empty_database.connect() as db:
        assert db.scalar(select(func.count()).select_from(sa.text("syncs"))) == len(rows)
