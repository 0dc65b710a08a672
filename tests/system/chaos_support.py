"""What the chaos tests of both CRMs share: the worker killer, ApexVerify's faults, waiting for a sync
to settle (with at most one operator retry), and the checks made afterwards.

Each CRM's test (tests/system/test_chaos.py) brings its own sandbox, seeding, CRM faults and a reading of
the flags its sandbox holds; everything that judges the outcome lives here, so both are held to
exactly the same standard.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from rq import Queue
from sqlalchemy import and_, func, select

from connector.models import ContactOutcome, Sync, SyncBatch, SyncContact, SyncStatus, SyncValue, utcnow
from connector.pipeline.reconcile import reconcile
from connector.pipeline.syncs import retry_sync
from connector.runtime import Runtime
from tests.processes import kill, start_worker, worker_env

KILLS = 10
LONG_PAUSE_SECONDS = 10.0
KILLS_PER_STATUS = 3  # so the kills spread over the steps instead of piling up in a long export
SETTLE_SECONDS = 400.0


class WorkerChaos:
    """Keeps one worker process running, SIGKILLing and replacing it at random moments of sync `sync_id`.

    Half-way through the kills, Redis loses its data as in a restart. `crm_env` is the CRM part of
    the worker's environment; `gap` the range of seconds between kills. No kill is spent while the
    sync sits out a long pause (killing an idle worker tests little) or in a status that already had
    KILLS_PER_STATUS of them: the kills are meant to land in every phase of the sync, write-back
    included. `killed_in` says where they did (after completion, a kill lands on an idle worker).
    """

    def __init__(
        self,
        runtime: Runtime,
        log_dir: Path,
        sync_id: int,
        crm_env: Mapping[str, str],
        *,
        kills: int = KILLS,
        seed: int = 11,
        gap: tuple[float, float] = (2.0, 10.0),
    ) -> None:
        self.runtime, self.log_dir, self.sync_id = runtime, log_dir, sync_id
        self.kills_wanted, self.gap = kills, gap
        self.env = worker_env(runtime, **crm_env)
        # CHAOS_SEED=n explores other kill schedules; the committed seeds are the ones CI runs.
        self.random = random.Random(int(os.environ.get("CHAOS_SEED") or seed))
        self.worker = start_worker(self.env, log_dir / "worker-0.log")
        self.kills = 0
        self.killed_in: list[str] = []
        self.redis_restarted = False
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.wait(self.random.uniform(*self.gap)) and self.kills < self.kills_wanted:
                status, paused_for = self._sync_state()
                if paused_for > LONG_PAUSE_SECONDS or self.killed_in.count(status) >= KILLS_PER_STATUS:
                    continue
                kill(self.worker)
                self.kills += 1
                self.killed_in.append(status)
                if self.kills == self.kills_wanted // 2:
                    self._lose_redis_data()
                self.worker = start_worker(self.env, self.log_dir / f"worker-{self.kills}.log")
        except BaseException as error:  # reported by wait_for_all_kills rather than lost with the thread
            self.error = error

    def _sync_state(self) -> tuple[str, float]:
        """The sync's status, and how many more seconds it is paused for."""
        with self.runtime.session() as session:
            status, paused_until = session.execute(
                select(Sync.status, Sync.paused_until).where(Sync.id == self.sync_id)
            ).one()
        left = (paused_until - utcnow()).total_seconds() if paused_until is not None else 0.0
        return str(status), left

    def _lose_redis_data(self) -> None:
        """What a Redis restart does to us: every connection dropped and every key gone."""
        connection = self.runtime.redis
        connection.flushdb()
        connection.client_kill_filter(_type="normal", skipme=True)
        self.redis_restarted = True

    def wait_for_all_kills(self, timeout: float = 120.0) -> None:
        """The chaos must really have happened, even when the sync settled before it was over."""
        deadline = time.monotonic() + timeout
        while self.kills < self.kills_wanted and self.error is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert self.error is None, f"the worker killer broke down: {self.error!r}"
        assert self.kills >= self.kills_wanted and self.redis_restarted, (self.kills, self.redis_restarted)

    def __enter__(self) -> WorkerChaos:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        kill(self.worker)


def add_faults(sandbox_url: str, faults: list[dict[str, Any]]) -> None:
    for fault in faults:
        requests.post(f"{sandbox_url}/_sandbox/faults", json=fault, timeout=5).raise_for_status()


def inject_apexverify_faults(apexverify_url: str) -> None:
    """10% of calls answer 5xx, a burst of 429s, and one batch that breaks with internal_error."""
    requests.post(f"{apexverify_url}/_sandbox/config", json={"error_rate": 0.1}, timeout=5).raise_for_status()
    add_faults(
        apexverify_url,
        [
            {"endpoint": "any", "kind": "http_429", "count": 5},
            {"endpoint": "status", "kind": "internal_error", "count": 1},
        ],
    )


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


def run_to_completion(runtime: Runtime, sync_id: int, chaos: WorkerChaos) -> Sync:
    """Wait for the sync under chaos; a failure is allowed once, with a clear code, then one retry."""
    final = wait_settled(runtime, sync_id, SETTLE_SECONDS)
    if final.status == SyncStatus.FAILED:
        assert final.error_code and final.error_code != "unexpected_error", (
            final.error_code,
            final.error_message,
        )
        retry_sync(runtime, sync_id)
        final = wait_settled(runtime, sync_id, SETTLE_SECONDS)
    chaos.wait_for_all_kills()
    print(f"sync {sync_id}: workers killed during {chaos.killed_in}; Redis data lost once")
    assert final.status == SyncStatus.COMPLETED, (final.error_code, final.error_message)
    return final


# ---- the checks ------------------------------------------------------------------------------


def assert_every_contact_has_one_outcome(runtime: Runtime, sync_id: int, contacts: int) -> dict[str, int]:
    """One row per CRM record, none pending; returns the count per outcome."""
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
    assert sum(outcomes.values()) == distinct_records == contacts, outcomes
    assert ContactOutcome.PENDING not in outcomes, outcomes
    return outcomes


def write_failure_reasons(runtime: Runtime, sync_id: int) -> set[str | None]:
    with runtime.session() as session:
        return set(
            session.scalars(
                select(SyncContact.reason).distinct()
                .where(SyncContact.sync_id == sync_id, SyncContact.outcome == ContactOutcome.WRITE_FAILED)
            )
        )  # fmt: skip


def assert_one_launch_and_charge_per_batch(runtime: Runtime, sync_id: int, apexverify_url: str) -> None:
    state = requests.get(f"{apexverify_url}/_sandbox/state", timeout=5).json()
    with runtime.session() as session:
        ours = set(session.scalars(select(SyncBatch.batch_uuid).where(SyncBatch.sync_id == sync_id)))
    launched = {b["batch_uuid"]: b for b in state["batches"] if b["launch_count"]}
    assert set(launched) == ours
    assert all(b["launch_count"] == 1 for b in launched.values())
    assert state["charges"] == len(ours)


def expected_statuses(runtime: Runtime, sync_id: int) -> dict[str, str | None]:
    """record id -> the status the CRM must show: the verdict of a written contact, nothing otherwise
    (skipped, or refused by the CRM: a write_failed contact must not carry a flag)."""
    with runtime.session() as session:
        rows = session.execute(
            select(SyncContact.record_id, SyncContact.outcome, SyncValue.status)
            .outerjoin(
                SyncValue,
                and_(SyncValue.sync_id == SyncContact.sync_id, SyncValue.value == SyncContact.value),
            )
            .where(SyncContact.sync_id == sync_id)
        ).all()
    return {
        record_id: status if outcome == ContactOutcome.VERIFIED else None
        for record_id, outcome, status in rows
    }


def assert_flags_match_verdicts(expected: Mapping[str, str | None], shown: Mapping[str, str | None]) -> None:
    """Every record of the sync shows exactly the status it should (`shown`: what the CRM holds)."""
    missing = sorted(set(expected) - set(shown))
    assert not missing, f"{len(missing)} records of the sync are not in the CRM, e.g. {missing[:5]}"
    wrong = [(rid, want, shown[rid]) for rid, want in expected.items() if shown[rid] != want]
    assert not wrong, f"{len(wrong)} records show the wrong status (id, expected, shown), e.g. {wrong[:5]}"


def assert_nothing_left_behind(runtime: Runtime, sync_id: int) -> None:
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        assert (sync.job_id, sync.lease_until) == (None, None)
    queue = Queue(runtime.settings.queue_name, connection=runtime.redis)
    assert queue.count == 0
    assert queue.scheduled_job_registry.count == 0
