"""Outages: the web keeps acknowledging webhooks without Redis, and work resumes when it is back."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
import redis
import requests
from rq.job import Job
from sqlalchemy import func, select

from connector.models import CoalescedContact, Sync
from connector.pipeline.coalesce import flush_due_buffers
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.reconcile import reconcile
from connector.runtime import Runtime, set_runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.conftest import with_settings

pytestmark = pytest.mark.slow  # the long tier: every outage here is waited out for real

TOKEN = "flow-token-outage-test"
ORG = "00D5g000004OUTA"


@pytest.fixture
def redis_down(runtime: Runtime) -> Iterator[Runtime]:
    """The same runtime, but its Redis is a port nobody listens on."""
    runtime = with_settings(
        runtime, salesforce_org_id=ORG, salesforce_webhook_token=TOKEN, coalesce_window_seconds=0
    )
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    down = dataclasses.replace(runtime, redis=dead)
    set_runtime(down)
    yield down
    set_runtime(runtime)


@pytest.fixture
def web_without_redis(redis_down: Runtime) -> Iterator[SandboxServer]:
    from connector.web import create_app

    server = serve_in_thread(create_app(runtime=redis_down))
    yield server
    server.stop()


def test_webhooks_are_acknowledged_while_redis_is_down_and_verified_once_it_is_back(
    redis_down: Runtime, web_without_redis: SandboxServer, runtime: Runtime
) -> None:
    records = [{"Id": f"0035g00000AAAA{n:04d}", "Email": f"r{n}@example.com"} for n in range(20)]
    response = requests.post(
        f"{web_without_redis.url}/webhooks/salesforce", json={"records": records},
        headers={"X-Connector-Token": TOKEN}, timeout=10,
    )  # fmt: skip
    assert response.status_code == 200 and response.json() == {"accepted": 20}
    with redis_down.session() as session:
        assert session.scalar(select(func.count()).select_from(CoalescedContact)) == 20
    assert requests.get(f"{web_without_redis.url}/readyz", timeout=5).status_code == 503

    # Redis is back: the cron sweep and the reconciler pick everything up.
    back = with_settings(runtime, salesforce_webhook_token=TOKEN, coalesce_window_seconds=0)
    [sync_id] = flush_due_buffers(back)
    reconcile(back)
    with back.session() as session:
        sync = session.get_one(Sync, sync_id)
        taken = session.scalar(select(func.count()).where(CoalescedContact.sync_id == sync_id))
    assert (sync.source, sync.crm, taken) == ({"kind": "coalesced"}, "salesforce", 20)
    assert Job.fetch(sync.job_id, connection=back.redis).get_status() == "queued"


def test_a_sync_started_while_redis_is_down_is_enqueued_by_the_reconciler(
    redis_down: Runtime, runtime: Runtime, tmp_path
) -> None:
    from connector.verify_command import start_file_sync

    source = tmp_path / "in.txt"
    source.write_text("a@example.com\n", encoding="utf-8")
    sync = start_file_sync(redis_down, source, type_="email", country="US")  # enqueue fails quietly

    assert reconcile(runtime) == [sync.id]
    assert drive_until_settled(runtime, sync.id).status == "completed"


def drop_database_connections(runtime: Runtime) -> int:
    """What a PostgreSQL restart does to our processes: every connection to the database is cut."""
    from sqlalchemy import text

    from connector.runtime import make_engine

    admin = make_engine(runtime.settings.database_url.rsplit("/", 1)[0] + "/postgres")
    with admin.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": runtime.engine.url.database},
        ).scalar_one()
    admin.dispose()
    return killed


@pytest.fixture
def token_runtime(runtime: Runtime) -> Runtime:
    return with_settings(runtime, salesforce_org_id=ORG, salesforce_webhook_token=TOKEN)


def test_worker_and_web_recover_when_postgres_drops_every_connection(
    token_runtime: Runtime, web: SandboxServer, tmp_path
) -> None:
    runtime = token_runtime
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("needs PostgreSQL")
    from tests.processes import kill, start_worker, wait_for, worker_env

    source = tmp_path / "in.txt"
    source.write_text("".join(f"pg{n}@example.com\n" for n in range(30_000)), encoding="utf-8")
    from connector.verify_command import start_file_sync

    sync = start_file_sync(runtime, source, type_="email", country="US")
    worker = start_worker(worker_env(runtime), tmp_path / "worker.log")
    try:
        wait_for(lambda: _status(runtime, sync.id) not in ("pending",), 60, "the sync to start")
        for _ in range(3):  # cut the connections several times during the sync
            time.sleep(0.7)
            drop_database_connections(runtime)
        body = {"records": [{"Id": "0035g00000PGPGPG01", "Email": "after-restart@example.com"}]}
        answer = requests.post(
            f"{web.url}/webhooks/salesforce", json=body, headers={"X-Connector-Token": TOKEN}, timeout=10
        )
        assert answer.status_code == 200  # the web process reconnected by itself

        def settled() -> bool:
            reconcile(runtime)
            return _status(runtime, sync.id) in ("completed", "failed")

        wait_for(settled, 180, "the sync to finish after the connection drops")
    finally:
        kill(worker)
    assert _status(runtime, sync.id) == "completed"


OUTAGE_SECONDS = 600


@pytest.mark.timeout(OUTAGE_SECONDS + 600)
def test_syncs_wait_out_a_ten_minute_apexverify_outage_and_resume(
    runtime: Runtime, apexverify_sandbox: SandboxServer, tmp_path
) -> None:
    """One sync is verifying and one not yet uploaded when ApexVerify goes away for 10 minutes.

    Neither fails: they pause with the outage's reason, try again less and less often, and
    finish once it is back, with one launch and one charge per batch.
    """
    from tests.processes import kill, start_worker, wait_for, worker_env

    sandbox_url = apexverify_sandbox.url
    requests.post(f"{sandbox_url}/_sandbox/config", json={"verify_delay": 20}, timeout=5).raise_for_status()
    verifying = _file_sync(runtime, tmp_path, "verifying", 40)
    worker = start_worker(worker_env(runtime), tmp_path / "worker.log")
    try:
        wait_for(lambda: _status(runtime, verifying) == "verifying", 60, "the first sync to launch")
        port = apexverify_sandbox.server.server_address[1]
        apexverify_sandbox.stop()  # connections refused from now on
        not_uploaded = _file_sync(runtime, tmp_path, "waiting", 30)
        down_until = time.monotonic() + OUTAGE_SECONDS
        reasons: set[str] = set()
        while time.monotonic() < down_until:
            time.sleep(10)
            reconcile(runtime)  # the cron process's job: it must not make things worse
            for sync_id in (verifying, not_uploaded):
                sync = _sync(runtime, sync_id)
                assert sync.status not in ("failed", "completed"), (sync.status, sync.error_code)
                reasons.add((sync.pause_reason or "").split(":")[0])
        restored = serve_in_thread(apexverify_sandbox.app, port=port)
        try:
            pauses = {s: _sync(runtime, s).pause_count for s in (verifying, not_uploaded)}

            def both_done() -> bool:
                reconcile(runtime)
                return all(_status(runtime, s) in ("completed", "failed") for s in (verifying, not_uploaded))

            try:
                wait_for(both_done, 240, "both syncs to finish after the outage")
            except AssertionError as error:  # CI keeps no files: say where each sync stood
                syncs = [_sync(runtime, i) for i in (verifying, not_uploaded)]
                states = [(s.id, s.status, s.poll_attempt, s.pause_reason) for s in syncs]
                log_tail = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{error}: {states}\nworker log ends:\n{log_tail}") from None
            state = requests.get(f"{sandbox_url}/_sandbox/state", timeout=5).json()
        finally:
            restored.stop()
    finally:
        kill(worker)
    assert [_status(runtime, s) for s in (verifying, not_uploaded)] == ["completed", "completed"]
    assert "apexverify_unavailable" in reasons
    # Backing off: a try every ~25 s throughout would be 24 pauses; doubling up to 120 s makes ~10.
    assert all(1 <= count <= 15 for count in pauses.values()), pauses
    assert all(b["launch_count"] == 1 and b["charged"] for b in state["batches"]), state["batches"]
    assert len(state["batches"]) == 2


def _file_sync(runtime: Runtime, tmp_path, name: str, rows: int) -> int:  # type: ignore[no-untyped-def]
    from connector.verify_command import start_file_sync

    source = tmp_path / f"{name}.txt"
    source.write_text("".join(f"{name}{n}@example.com\n" for n in range(rows)), encoding="utf-8")
    return start_file_sync(runtime, source, type_="email", country="US").id


def _sync(runtime: Runtime, sync_id: int) -> Sync:
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        session.expunge(sync)
        return sync


def _status(runtime: Runtime, sync_id: int) -> str:
    with runtime.session() as session:
        return session.get_one(Sync, sync_id).status
