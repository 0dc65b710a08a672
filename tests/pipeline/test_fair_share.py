"""Worker time shared between connections (connector.pipeline.fair_share), with real RQ workers.

The share rule is checked on the database directly; then two RQ workers (threads of this process,
on the test queue of the real Redis) run syncs of two connections whose steps only sleep, once
with the shares and once without, and the test prints what it measured: how long connection B's
steps waited for a worker while connection A had three syncs at work. What it asserts holds
whatever the machine's speed: A never runs more steps at once than its share while B has a sync
at work, and B is served while A's syncs are still running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker
from sqlalchemy import select, update

from connector.models import Connection, Sync, SyncStatus, utcnow
from connector.pipeline import fair_share, runner
from connector.pipeline.jobs import schedule_step
from connector.pipeline.state import Advance, StepContext, StepResult
from connector.pipeline.syncs import add_sync
from connector.runtime import Runtime
from connector.states import RUNNABLE_STATES

STEP_SECONDS = 0.4
# Each test sync runs these steps, each sleeping STEP_SECONDS: three steps of a worker's time.
CHAIN = {
    SyncStatus.PENDING: SyncStatus.EXPORTING,
    SyncStatus.EXPORTING: SyncStatus.UPLOADING,
    SyncStatus.UPLOADING: SyncStatus.COMPLETED,
}


def add_connection(runtime: Runtime, name: str, crm: str = "testcrm") -> int:
    with runtime.session() as session:
        connection = Connection(crm=crm, external_id=name, name=name, settings={})
        session.add(connection)
        session.flush()
        return connection.id


def add_live_sync(
    runtime: Runtime, connection_id: int, *, running: bool = False, crm: str = "testcrm"
) -> int:
    """A sync of `connection_id` whose next step is queued (a job id, no lease) or running (a lease)."""
    with runtime.session() as session:
        sync = add_sync(
            session,
            note="test",
            connection_id=connection_id,
            crm=crm,
            type="email",
            target_country="US",
            parameters={},
            source={"kind": "coalesced"},
            trigger="webhook",
            name="test",
        )
        sync.job_id = f"sync-{sync.id}-test"
        if running:
            sync.lease_until = utcnow() + timedelta(minutes=5)
        return sync.id


def room(runtime: Runtime, connection_id: int, workers: int) -> bool:
    with runtime.session() as session:
        return fair_share.has_room(session, connection_id, workers, utcnow())


def test_the_share_of_each_connection() -> None:
    #        (workers, live connections, spare) -> steps one connection may run at once
    cases = {(2, 1, 0): 2, (2, 1, 1): 1, (2, 2, 0): 1, (8, 2, 1): 3, (4, 3, 0): 1, (2, 5, 0): 1, (1, 1, 0): 1}
    assert {case: fair_share.share(*case) for case in cases} == cases


def test_a_single_connection_uses_every_worker(runtime: Runtime) -> None:
    a = add_connection(runtime, "A")
    add_live_sync(runtime, a, running=True)
    add_live_sync(runtime, a)

    assert room(runtime, a, workers=2)


def test_a_worker_is_kept_free_for_a_connection_that_has_no_sync_yet(runtime: Runtime) -> None:
    a = add_connection(runtime, "A")
    add_connection(runtime, "B")
    add_live_sync(runtime, a, running=True)
    add_live_sync(runtime, a)

    assert not room(runtime, a, workers=2)
    assert room(runtime, a, workers=3)


def test_live_connections_share_the_workers(runtime: Runtime) -> None:
    a, b = add_connection(runtime, "A"), add_connection(runtime, "B")
    add_live_sync(runtime, a, running=True)
    add_live_sync(runtime, a)
    add_live_sync(runtime, b)

    assert not room(runtime, a, workers=2) and room(runtime, b, workers=2)
    assert room(runtime, a, workers=4)  # 4 workers, 2 live connections: 2 steps each


def test_disconnected_and_local_file_connections_keep_no_worker_free(runtime: Runtime) -> None:
    a = add_connection(runtime, "A")
    gone = add_connection(runtime, "B")
    add_connection(runtime, "local", crm=fair_share.LOCAL_CRM)
    with runtime.session() as session:
        session.execute(update(Connection).where(Connection.id == gone).values(status="disconnected"))
    add_live_sync(runtime, a, running=True)

    assert room(runtime, a, workers=2)


def test_a_paused_sync_does_not_make_its_connection_live(runtime: Runtime) -> None:
    a, b = add_connection(runtime, "A"), add_connection(runtime, "B")
    add_live_sync(runtime, a, running=True)
    paused = add_live_sync(runtime, b)
    with runtime.session() as session:
        session.execute(
            update(Sync).where(Sync.id == paused).values(paused_until=utcnow() + timedelta(hours=1))
        )

    # B's only sync waits an hour: B is not live, only connected, and keeps one spare worker.
    assert not room(runtime, a, workers=2)
    assert room(runtime, a, workers=3)


def test_a_step_over_its_share_hands_the_sync_to_a_later_job_without_running(runtime: Runtime) -> None:
    a, b = add_connection(runtime, "A"), add_connection(runtime, "B")
    add_live_sync(runtime, a, running=True)
    add_live_sync(runtime, b)
    waiting = add_live_sync(runtime, a)
    job_id = f"sync-{waiting}-test"

    assert runner.run_sync_step(waiting, job_id) is None

    with runtime.session() as session:
        sync = session.get_one(Sync, waiting)
        assert sync.status == SyncStatus.PENDING and sync.lease_until is None
        assert sync.job_id not in (None, job_id)
        new_job = sync.job_id
    assert new_job in runtime.queue().scheduled_job_registry.get_job_ids()
    # The old job is no longer the sync's: running it again does nothing.
    assert runner.run_sync_step(waiting, job_id) == "superseded"


# ---- two real workers ---------------------------------------------------------------------------


class ThreadWorker(SimpleWorker):
    """An RQ worker that can run in a thread: no signal handlers, no pub/sub, a timer for timeouts."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        return None

    def subscribe(self) -> None:
        return None


@dataclass
class Ran:
    connection: str
    sync_id: int
    enqueued: float
    started: float
    ended: float


class Recorder:
    """The test steps: each sleeps STEP_SECONDS and records when its job was enqueued and ran."""

    def __init__(self, runtime: Runtime, names: dict[int, str]) -> None:
        self.runtime, self.names = runtime, names
        self.ran: list[Ran] = []
        self.lock = threading.Lock()

    def step(self, ctx: StepContext) -> StepResult:
        started = time.monotonic()
        with ctx.session() as session:
            sync = session.get_one(Sync, ctx.sync_id)
            status, connection_id = SyncStatus(sync.status), sync.connection_id
        job = self.runtime.queue().fetch_job(ctx.job_id)
        assert job is not None and job.enqueued_at is not None
        waited = (utcnow() - job.enqueued_at.replace(tzinfo=utcnow().tzinfo)).total_seconds()
        time.sleep(STEP_SECONDS)
        with self.lock:
            self.ran.append(
                Ran(self.names[connection_id], ctx.sync_id, started - waited, started, time.monotonic())
            )
        return Advance(CHAIN[status])


def work_until_settled(runtime: Runtime, sync_ids: list[int], timeout: float = 60.0) -> None:
    """Two worker threads, each working the queue in bursts until every sync has settled."""
    stop = threading.Event()

    def work() -> None:
        worker = ThreadWorker([runtime.queue()], connection=runtime.redis)
        while not stop.is_set():
            worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
            time.sleep(0.02)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with runtime.session() as session:
                statuses = session.scalars(select(Sync.status).where(Sync.id.in_(sync_ids))).all()
            if all(SyncStatus(s) not in RUNNABLE_STATES for s in statuses):
                return
            time.sleep(0.05)
        raise AssertionError("the syncs did not settle")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def most_at_once(ran: list[Ran], connection: str, during: tuple[float, float]) -> int:
    """The most steps of `connection` that ran at the same moment within `during`."""
    edges = sorted(
        [(r.started, 1) for r in ran if r.connection == connection and during[0] <= r.started < during[1]]
        + [(r.ended, -1) for r in ran if r.connection == connection and during[0] <= r.started < during[1]]
    )
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


@pytest.fixture
def short_deferral(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(fair_share, "DEFER_SECONDS", 0.2)
    yield


def run_three_of_a_and_one_of_b(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Ran], float]:
    a, b = add_connection(runtime, "A"), add_connection(runtime, "B")
    recorder = Recorder(runtime, {a: "A", b: "B"})
    monkeypatch.setattr(runner, "STEPS", dict.fromkeys(CHAIN, recorder.step))
    syncs_of_a = [add_live_sync(runtime, a) for _ in range(3)]
    for sync_id in syncs_of_a:
        schedule_step(runtime, sync_id)
    time.sleep(0.05)
    sync_of_b = add_live_sync(runtime, b)
    b_started = time.monotonic()
    schedule_step(runtime, sync_of_b)
    work_until_settled(runtime, [*syncs_of_a, sync_of_b])
    return recorder.ran, b_started


def summary(ran: list[Ran], b_started: float) -> tuple[float, float, float]:
    """(B's steps' total wait for a worker, B's wall time, A's wall time)."""
    of_b = [r for r in ran if r.connection == "B"]
    of_a = [r for r in ran if r.connection == "A"]
    return (
        sum(r.started - r.enqueued for r in of_b),
        max(r.ended for r in of_b) - b_started,
        max(r.ended for r in of_a) - min(r.enqueued for r in of_a),
    )


def test_two_workers_serve_b_while_a_has_three_syncs_at_work(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, short_deferral: None
) -> None:
    ran, b_started = run_three_of_a_and_one_of_b(runtime, monkeypatch)
    b_waited, b_wall, a_wall = summary(ran, b_started)
    b_live = (b_started, max(r.ended for r in ran if r.connection == "B"))
    print(
        f"\nwith shares: B's 3 steps waited {b_waited:.2f} s for a worker, B done in {b_wall:.2f} s "
        f"(its steps alone: {3 * STEP_SECONDS:.1f} s); A's 9 steps done in {a_wall:.2f} s"
        " (one worker: the other is kept for B, live or not)"
    )

    assert most_at_once(ran, "A", b_live) == 1  # A's share while B is live: 1 of 2 workers
    assert b_live[1] < max(r.ended for r in ran if r.connection == "A")  # B done before A
    assert len(ran) == 12


def test_without_shares_b_waits_behind_a(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, short_deferral: None
) -> None:
    """The comparison: the same run with every step allowed (what the step chain alone gives)."""
    monkeypatch.setattr(runner, "has_room", lambda *args: True)

    ran, b_started = run_three_of_a_and_one_of_b(runtime, monkeypatch)
    b_waited, b_wall, a_wall = summary(ran, b_started)
    print(
        f"\nwithout shares: B's 3 steps waited {b_waited:.2f} s for a worker, B done in {b_wall:.2f} s;"
        f" A's 9 steps done in {a_wall:.2f} s"
    )

    assert len(ran) == 12
