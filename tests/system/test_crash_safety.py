"""A real worker process is SIGKILLed in the middle of each step; the chain must still finish,
launching one batch, charging once and losing no value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from connector.models import ContactOutcome, SyncContact, SyncStatus, SyncValue
from connector.pipeline.reconcile import reconcile
from connector.runtime import Runtime
from connector.verify_command import start_file_sync
from tests.conftest import with_settings
from tests.processes import kill, start_worker, wait_for, worker_env

VALUES = 12_000  # more than one export chunk (5,000), result chunk (2,000) and write-back chunk

CHAOS_POINTS = [
    "export.mid",
    "upload.after_call",
    "configure.after_call",
    "parse.after_call",
    "launch.after_call",
    "verify.after_call",
    "fetch.mid",
    "write_back.after_call",
]


@pytest.fixture
def crash_runtime(runtime: Runtime) -> Runtime:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("a worker process needs a real Redis server")
    return with_settings(runtime, step_lease_seconds=5)


@pytest.mark.slow
@pytest.mark.parametrize("point", CHAOS_POINTS)
def test_worker_killed_mid_step_never_launches_twice_or_loses_a_value(
    crash_runtime: Runtime, tmp_path: Path, point: str
) -> None:
    runtime = crash_runtime
    source = tmp_path / "contacts.txt"
    source.write_text("".join(f"person{n}@example.com\n" for n in range(VALUES)), encoding="utf-8")
    markers = tmp_path / "markers"
    sync = start_file_sync(runtime, source, type_="email", country="US")

    doomed = start_worker(
        worker_env(runtime, CONNECTOR_CHAOS_PAUSE_AT=point, CONNECTOR_CHAOS_MARKER_DIR=str(markers)),
        tmp_path / "worker1.log",
    )
    try:
        wait_for(lambda: (markers / point).exists(), 90, f"the worker to reach {point}")
    finally:
        kill(doomed)

    survivor = start_worker(worker_env(runtime), tmp_path / "worker2.log")
    try:

        def settled() -> bool:
            time.sleep(0.9)  # the cron process reconciles every minute; here, every second
            reconcile(runtime, overdue_after_seconds=2)
            with runtime.session() as session:
                return session.get_one(type(sync), sync.id).status in (
                    SyncStatus.COMPLETED,
                    SyncStatus.FAILED,
                )

        wait_for(settled, 120, "the sync to settle after the crash")
    finally:
        kill(survivor)

    with runtime.session() as session:
        final = session.get_one(type(sync), sync.id)
        assert final.status == SyncStatus.COMPLETED, (final.error_code, final.error_message)
        assert (
            session.scalar(
                select(func.count()).where(SyncValue.sync_id == sync.id, SyncValue.status == "valid")
            )
            == VALUES
        )
        outcomes = dict(
            session.execute(
                select(SyncContact.outcome, func.count())
                .where(SyncContact.sync_id == sync.id)
                .group_by(SyncContact.outcome)
            ).all()
        )
    assert outcomes == {ContactOutcome.VERIFIED: VALUES}
    state = requests.get(f"{runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()
    launched = [b for b in state["batches"] if b["launch_count"]]
    assert len(launched) == 1 and launched[0]["launch_count"] == 1 and launched[0]["rows"] == VALUES
    assert state["charges"] == 1
