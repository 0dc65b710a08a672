"""A real worker process is SIGKILLed in the middle of each step; the chain must still finish,
launching one batch, charging once and losing no value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def worker_env(runtime: Runtime, **extra: str) -> dict[str, str]:
    settings = runtime.settings
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CONNECTOR_QUEUE": settings.queue_name,
        "CONNECTOR_DATA_DIR": str(settings.data_dir),
        "APEXVERIFY_BASE_URL": settings.apexverify_base_url,
        "APEXVERIFY_API_KEY": settings.apexverify_api_key or "",
        "CONNECTOR_POLL_INITIAL_SECONDS": "0.2",
        "CONNECTOR_POLL_MAX_SECONDS": "1",
        "CONNECTOR_STEP_LEASE_SECONDS": str(settings.step_lease_seconds),
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


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
