"""Webhook durability: a HubSpot delivery is acknowledged only after its event is committed.

The real web process (gunicorn as the Procfile runs it, two workers) is SIGKILLed, master and
workers at once, in the middle of a burst of 5,000 signed deliveries. A sender that behaves
like HubSpot redelivers, with backoff, every delivery that got no 2xx (connection refused or
reset, 5xx) until it gets one, and redelivers a sample of acknowledged ones as HubSpot
sometimes does. Every acknowledged delivery must already be in the database while the web
process is dead, every contact must be buffered exactly once, and the buffer must then turn
into syncs that a real worker runs to completion, giving each contact exactly one outcome.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from connector.models import CoalescedContact, ContactOutcome, Sync, SyncContact, SyncStatus, WebhookEvent
from connector.pipeline.coalesce import flush_due_buffers
from connector.pipeline.reconcile import reconcile
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN, with_settings
from tests.processes import WebProcess, connector_env, kill, start_web, start_worker, wait_for
from tests.web.test_webhooks_hubspot import PORTAL, SECRET, event, post_signed

DELIVERIES = 5_000
KILL_AFTER_ACKS = 1_500
SENDER_THREADS = 16
REDELIVERED_SAMPLE = 250
FIRST_CONTACT_ID = 700_001


@pytest.fixture
def durable_runtime(runtime: Runtime, hubspot_sandbox: SandboxServer) -> Runtime:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("web and worker processes need a real Redis server")
    return with_settings(
        runtime,
        hubspot_base_url=hubspot_sandbox.url,
        hubspot_access_token=HUBSPOT_TOKEN,
        hubspot_client_secret=SECRET,
        hubspot_portal_id=PORTAL,
        # Nothing flushes on its own during the test: the flush below is the cron sweep's.
        coalesce_window_seconds=3600,
        step_lease_seconds=10,
    )


@dataclass
class Delivery:
    """One HubSpot webhook delivery (an array with one event) and what became of it."""

    object_id: int
    body: list[dict[str, Any]]
    attempts: int = 0
    acked: bool = False
    accepted: int | None = None
    failures: list[str] = field(default_factory=list)


class HubSpotSender:
    """Delivers like HubSpot: signed, many at once, each retried with backoff until it gets a 2xx.

    HubSpot retries connection failures, timeouts and 5xx answers. A 4xx is never expected here
    (every delivery is correctly signed), so one fails the test rather than being retried.
    """

    def __init__(self, web: WebProcess, kill_after: int, give_up_after: float) -> None:
        self.web = web  # restarted on the same port, so its URL stays valid
        self.kill_after = kill_after
        self.deadline = time.monotonic() + give_up_after
        self.lock = threading.Lock()
        self.acked: list[Delivery] = []
        self.kill_point = threading.Event()
        self.stop = threading.Event()

    def deliver(self, delivery: Delivery) -> Delivery:
        backoff = 0.05
        while not self.stop.is_set():
            if time.monotonic() > self.deadline:
                raise AssertionError(
                    f"delivery {delivery.object_id} still unacknowledged: {delivery.failures}"
                )
            delivery.attempts += 1
            try:
                response = post_signed(self.web, delivery.body)  # type: ignore[arg-type]
            except requests.RequestException as error:
                delivery.failures.append(type(error).__name__)
            else:
                if 200 <= response.status_code < 300:
                    self._acknowledged(delivery, response.json()["accepted"])
                    return delivery
                delivery.failures.append(f"http_{response.status_code}")
                if response.status_code < 500:
                    raise AssertionError(f"delivery {delivery.object_id} refused: {response.text}")
            time.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 1.0)
        return delivery

    def _acknowledged(self, delivery: Delivery, accepted: int) -> None:
        with self.lock:
            delivery.acked, delivery.accepted = True, accepted
            self.acked.append(delivery)
            if len(self.acked) >= self.kill_after:
                self.kill_point.set()

    def acked_so_far(self) -> list[Delivery]:
        with self.lock:
            return list(self.acked)


def make_deliveries() -> list[Delivery]:
    """Distinct events and contacts: even ones are creations (value read from HubSpot later),
    odd ones email changes carrying the value."""
    deliveries = []
    for n in range(DELIVERIES):
        object_id = FIRST_CONTACT_ID + n
        kind = "contact.creation" if n % 2 == 0 else "contact.propertyChange"
        deliveries.append(Delivery(object_id, [event(5_000_000 + n, object_id, kind=kind)]))
    return deliveries


def seed_contacts(sandbox: SandboxServer) -> None:
    contacts = [
        {"id": str(FIRST_CONTACT_ID + n), "properties": {"email": f"user{FIRST_CONTACT_ID + n}@example.com"}}
        for n in range(DELIVERIES)
    ]
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"contacts": contacts}, timeout=60).raise_for_status()


def buffered(runtime: Runtime, type_: str) -> list[tuple[str, str | None]]:
    with runtime.session() as session:
        rows = session.execute(
            select(CoalescedContact.record_id, CoalescedContact.value).where(CoalescedContact.type == type_)
        )
        return [tuple(row) for row in rows]


@pytest.mark.slow
def test_web_killed_mid_burst_loses_no_acknowledged_delivery_and_processes_each_once(
    durable_runtime: Runtime,
    hubspot_sandbox: SandboxServer,
    apexverify_sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    runtime = durable_runtime
    seed_contacts(hubspot_sandbox)
    env = connector_env(runtime)
    deliveries = make_deliveries()
    web = start_web(env, tmp_path / "web1.log")
    sender = HubSpotSender(web, kill_after=KILL_AFTER_ACKS, give_up_after=150)
    try:
        with ThreadPoolExecutor(SENDER_THREADS) as pool:
            futures = [pool.submit(sender.deliver, d) for d in deliveries]
            try:
                assert sender.kill_point.wait(90), "the burst never reached the kill point"
                web.kill()
                # The web process is dead: whatever it acknowledged must be committed already.
                acked_before_kill = sender.acked_so_far()
                committed = {record_id for record_id, _ in buffered(runtime, "email")}
                lost = [d.object_id for d in acked_before_kill if str(d.object_id) not in committed]
                assert not lost, f"{len(lost)} acknowledged deliveries are not in the database: {lost[:10]}"
                web = start_web(env, tmp_path / "web2.log", port=web.port)
                for future in futures:
                    future.result()
            except BaseException:
                sender.stop.set()
                raise

        assert KILL_AFTER_ACKS <= len(acked_before_kill) < DELIVERIES  # the kill hit mid-burst
        assert all(d.acked for d in deliveries)
        assert any(d.attempts > 1 for d in deliveries), "the kill made no delivery fail"
        # A first answer accepts the event; {"accepted": 0} is right only for a redelivery of one
        # committed just before the kill whose answer was lost with the process.
        assert all(d.accepted == 1 or (d.accepted == 0 and d.attempts > 1) for d in deliveries)

        # HubSpot sometimes redelivers what was acknowledged: accepted again, added nowhere.
        sample = random.Random(7).sample(deliveries, REDELIVERED_SAMPLE)
        with ThreadPoolExecutor(SENDER_THREADS) as pool:
            answers = list(pool.map(lambda d: post_signed(web, d.body), sample))  # type: ignore[arg-type]
        assert {(a.status_code, a.json()["accepted"]) for a in answers} == {(200, 0)}
    finally:
        web.kill()
    print(
        f"\nacked before kill: {len(acked_before_kill)}; deliveries retried: "
        f"{sum(d.attempts > 1 for d in deliveries)}; committed but unanswered: "
        f"{sum(d.accepted == 0 for d in deliveries)}; failures: "
        f"{Counter(f for d in deliveries for f in d.failures)}"
    )

    emails, phones = buffered(runtime, "email"), buffered(runtime, "phone")
    changed = {d.object_id for d in deliveries if d.body[0]["subscriptionType"] == "contact.propertyChange"}

    def by_record(row: tuple[str, str | None]) -> tuple[str, str]:
        return row[0], row[1] or ""

    assert sorted(emails, key=by_record) == sorted(
        (
            (str(d.object_id), f"user{d.object_id}@example.com" if d.object_id in changed else None)
            for d in deliveries
        ),
        key=by_record,
    )  # every contact once, with the value its event carried
    assert sorted(r for r, _ in phones) == sorted(
        str(d.object_id) for d in deliveries if d.object_id not in changed
    )
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == DELIVERIES

    # The cron sweep's flush, then a real worker runs the syncs to completion.
    sync_ids = flush_due_buffers(with_settings(runtime, coalesce_window_seconds=0))
    assert len(sync_ids) == 2  # one per buffer: email and phone
    with runtime.session() as session:
        assert session.scalar(select(func.count()).where(CoalescedContact.sync_id.is_(None))) == 0
    worker = start_worker(env, tmp_path / "worker.log")
    try:

        def settled() -> bool:
            assert worker.poll() is None, f"the worker died; see {tmp_path / 'worker.log'}"
            time.sleep(0.5)
            reconcile(runtime, overdue_after_seconds=5)  # the cron process's reconciler
            with runtime.session() as session:
                statuses = session.scalars(select(Sync.status).where(Sync.id.in_(sync_ids))).all()
            return all(s in (SyncStatus.COMPLETED, SyncStatus.FAILED) for s in statuses)

        wait_for(settled, 150, "the coalesced syncs to finish")
    finally:
        kill(worker)

    with runtime.session() as session:
        syncs = {s.type: s for s in session.scalars(select(Sync).where(Sync.id.in_(sync_ids)))}
        assert {t: (s.status, s.error_code) for t, s in syncs.items()} == {
            "email": (SyncStatus.COMPLETED, None),
            "phone": (SyncStatus.COMPLETED, None),
        }
        outcomes = {
            type_: session.execute(
                select(SyncContact.record_id, SyncContact.outcome, SyncContact.reason).where(
                    SyncContact.sync_id == sync.id
                )
            ).all()
            for type_, sync in syncs.items()
        }
    # Exactly one outcome per contact: verified emails, and no phone to verify (none seeded).
    assert sorted((r, o) for r, o, _ in outcomes["email"]) == sorted(
        (str(d.object_id), ContactOutcome.VERIFIED) for d in deliveries
    )
    assert sorted(outcomes["phone"]) == sorted(
        (str(d.object_id), ContactOutcome.SKIPPED, "no_value")
        for d in deliveries
        if d.object_id not in changed
    )
    state = requests.get(f"{apexverify_sandbox.url}/_sandbox/state", timeout=10).json()
    launched = [b for b in state["batches"] if b["launch_count"]]
    assert [(b["rows"], b["launch_count"]) for b in launched] == [(DELIVERIES, 1)] and state["charges"] == 1
    flagged = requests.get(
        f"{hubspot_sandbox.url}/_sandbox/contacts", params={"property": "apexverify_status"}, timeout=30
    ).json()["contacts"]
    assert len(flagged) == DELIVERIES and all(c["properties"].get("apexverify_status") for c in flagged)
