"""Chaos: a 20,000-contact HubSpot sync while workers are SIGKILLed at random, Redis loses its data,
ApexVerify fails 10% of calls and sends bursts of 429s and an internal_error, and HubSpot answers
429s and 5xx. The sync must end completed (after at most one operator retry) with every contact
given exactly one outcome, one launch and one charge per batch, and nothing left in a queue or lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from rq import Queue
from sqlalchemy import func, select

from connector.models import ContactOutcome, Sync, SyncBatch, SyncContact, SyncStatus, SyncValue
from connector.pipeline.intake import crm_connection, start_segment_sync
from connector.pipeline.reconcile import reconcile
from connector.pipeline.syncs import retry_sync
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.conftest import with_settings
from tests.test_crash_safety import kill, start_worker, worker_env

CONTACTS = 20_000
KILLS = 10
TOKEN = "chaos-hubspot-token"


@pytest.fixture
def hubspot_sandbox() -> Iterator[SandboxServer]:
    from connector.sandbox.hubspot import create_app

    server = serve_in_thread(create_app(access_token=TOKEN, export_delay=0.3, import_delay=0.3))
    yield server
    server.stop()


@pytest.fixture
def chaos_runtime(runtime: Runtime, hubspot_sandbox: SandboxServer) -> Runtime:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("worker processes need a real Redis server")
    return with_settings(
        runtime,
        hubspot_base_url=hubspot_sandbox.url,
        hubspot_access_token=TOKEN,
        hubspot_portal_id="chaos",
        step_lease_seconds=5,
    )


class WorkerChaos:
    """Keeps one worker process running, SIGKILLing and replacing it at random moments."""

    def __init__(self, runtime: Runtime, log_dir, kills: int, seed: int = 11) -> None:  # type: ignore[no-untyped-def]
        self.runtime, self.log_dir, self.kills_left = runtime, log_dir, kills
        self.random = random.Random(seed)
        self.worker = start_worker(self._env(), log_dir / "worker-0.log")
        self.kills = 0
        self.redis_restarted = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _env(self) -> dict[str, str]:
        settings = self.runtime.settings
        return worker_env(
            self.runtime,
            HUBSPOT_BASE_URL=settings.hubspot_base_url,
            HUBSPOT_ACCESS_TOKEN=settings.hubspot_access_token or "",
            HUBSPOT_PORTAL_ID=settings.hubspot_portal_id or "",
        )

    def _run(self) -> None:
        while not self.stop.wait(self.random.uniform(1.0, 3.0)) and self.kills < self.kills_left:
            kill(self.worker)
            self.kills += 1
            if self.kills == KILLS // 2:
                self._lose_redis_data()
            self.worker = start_worker(self._env(), self.log_dir / f"worker-{self.kills}.log")

    def _lose_redis_data(self) -> None:
        """What a Redis restart does to us: every connection dropped and every key gone."""
        connection = self.runtime.redis
        connection.flushdb()
        connection.client_kill_filter(_type="normal", skipme=True)
        self.redis_restarted = True

    def __enter__(self) -> WorkerChaos:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        kill(self.worker)


def inject_faults(apexverify_url: str, hubspot_url: str) -> None:
    requests.post(f"{apexverify_url}/_sandbox/config", json={"error_rate": 0.1}, timeout=5).raise_for_status()
    for fault in (
        {"endpoint": "any", "kind": "http_429", "count": 5},
        {"endpoint": "status", "kind": "internal_error", "count": 1},
    ):
        requests.post(f"{apexverify_url}/_sandbox/faults", json=fault, timeout=5).raise_for_status()
    for kind in ("http_429", "http_500", "http_502"):
        fault = {"endpoint": "any", "kind": kind, "count": 4}
        requests.post(f"{hubspot_url}/_sandbox/faults", json=fault, timeout=5).raise_for_status()


def wait_settled(runtime: Runtime, sync_id: int, timeout: float) -> Sync:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(2)
        reconcile(runtime, overdue_after_seconds=5)  # the cron process's job, every minute in production
        with runtime.session() as session:
            sync = session.get_one(Sync, sync_id)
            if sync.status in (SyncStatus.COMPLETED, SyncStatus.FAILED):
                session.expunge(sync)
                return sync
    raise AssertionError(f"sync {sync_id} did not settle within {timeout} s")


@pytest.mark.slow
def test_hubspot_sync_survives_chaos(
    chaos_runtime: Runtime, hubspot_sandbox: SandboxServer, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    runtime = chaos_runtime
    apexverify_url = runtime.settings.apexverify_base_url
    seeded = requests.post(
        f"{hubspot_sandbox.url}/_sandbox/seed",
        json={"generate": {"contacts": CONTACTS, "seed": 5}},
        timeout=30,
    ).json()
    inject_faults(apexverify_url, hubspot_sandbox.url)
    source = {"kind": "hubspot_list", "ref": str(seeded["listId"])}
    connection = crm_connection(runtime, "hubspot")
    sync = start_segment_sync(runtime, connection, source=source, type_="email", trigger="admin", name="c")

    with WorkerChaos(runtime, tmp_path, KILLS) as chaos:
        final = wait_settled(runtime, sync.id, timeout=400)
        if final.status == SyncStatus.FAILED:  # allowed once, with a clear code, then one operator retry
            assert final.error_code, final
            retry_sync(runtime, sync.id)
            final = wait_settled(runtime, sync.id, timeout=400)
        while chaos.kills < KILLS:  # the chaos must really have happened
            time.sleep(0.5)

    assert final.status == SyncStatus.COMPLETED, (final.error_code, final.error_message)
    assert chaos.redis_restarted
    assert_every_contact_has_one_outcome(runtime, sync.id)
    assert_one_launch_and_charge_per_batch(runtime, sync.id, apexverify_url)
    assert_flags_match_verdicts(runtime, sync.id, hubspot_sandbox.url)
    assert_nothing_left_behind(runtime, sync.id)


def assert_every_contact_has_one_outcome(runtime: Runtime, sync_id: int) -> None:
    with runtime.session() as session:
        outcomes = dict(
            session.execute(
                select(SyncContact.outcome, func.count()).where(SyncContact.sync_id == sync_id)
                .group_by(SyncContact.outcome)
            ).all()
        )  # fmt: skip
        distinct_records = session.scalar(
            select(func.count(func.distinct(SyncContact.record_id))).where(SyncContact.sync_id == sync_id)
        )
    assert sum(outcomes.values()) == distinct_records == CONTACTS
    assert ContactOutcome.PENDING not in outcomes


def assert_one_launch_and_charge_per_batch(runtime: Runtime, sync_id: int, apexverify_url: str) -> None:
    state = requests.get(f"{apexverify_url}/_sandbox/state", timeout=5).json()
    with runtime.session() as session:
        ours = set(session.scalars(select(SyncBatch.batch_uuid).where(SyncBatch.sync_id == sync_id)))
    launched = {b["batch_uuid"]: b for b in state["batches"] if b["launch_count"]}
    assert set(launched) == ours
    assert all(b["launch_count"] == 1 for b in launched.values())
    assert state["charges"] == len(ours)


def assert_flags_match_verdicts(runtime: Runtime, sync_id: int, hubspot_url: str) -> None:
    with runtime.session() as session:
        verdicts = dict(
            session.execute(
                select(SyncValue.value, SyncValue.status).where(SyncValue.sync_id == sync_id)
            ).all()
        )
    contacts = requests.get(
        f"{hubspot_url}/_sandbox/contacts",
        params={"property": ["email", "apexverify_status"], "limit": CONTACTS},
        timeout=30,
    ).json()["contacts"]
    for contact in contacts:
        email = (contact["properties"].get("email") or "").strip().lower()
        if email:
            assert contact["properties"].get("apexverify_status") == verdicts[email], contact


def assert_nothing_left_behind(runtime: Runtime, sync_id: int) -> None:
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        assert (sync.job_id, sync.lease_until) == (None, None)
    queue = Queue(runtime.settings.queue_name, connection=runtime.redis)
    assert queue.count == 0
    assert queue.scheduled_job_registry.count == 0
