"""An idle deployment is quiet: cron ticks that find nothing to do write no INFO lines, in the
worker (neither RQ's per-job lines nor the connector's) or in the cron process, while a real
sync's step jobs still show at INFO (one `job_done` line each, with the sync id). A sweep that
did something (a purge that deleted rows) still says so at INFO.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from pathlib import Path

import pytest
from rq.cron import get_cron_job_ids
from rq.job import Job
from sqlalchemy import select, update

from connector import cron
from connector.models import Segment, Sync, SyncStatus, WebhookEvent, utcnow
from connector.pipeline.retention import purge_expired_data
from connector.pipeline.schedule import enqueue_due_segment_syncs
from connector.pipeline.segments import create_segment
from connector.runtime import Runtime
from connector.verify_command import start_file_sync
from tests.processes import connector_env, kill, start_cron, start_worker, wait_for

CRON_JOBS = [f"{job.__module__}.{job.__name__}" for job in (
    cron.reconcile_job, cron.flush_buffers_job, cron.schedule_job, cron.purge_job
)]  # fmt: skip


def finished_ticks(runtime: Runtime, name: str) -> int:
    """How many runs of one cron job, enqueued on this test's queue, a worker finished."""
    jobs = Job.fetch_many(get_cron_job_ids(name, runtime.redis), connection=runtime.redis)
    return sum(
        1
        for job in jobs
        if job is not None and job.origin == runtime.settings.queue_name and job.get_status() == "finished"
    )


def records(log_path: Path) -> list[dict]:
    """The worker's log lines: every one must be a JSON record (RQ's own text lines are not)."""
    return [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_idle_cron_ticks_log_nothing_at_info_and_step_jobs_still_show(
    runtime: Runtime, tmp_path: Path
) -> None:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("cron and worker processes need a real Redis server")
    env = connector_env(runtime, LOG_LEVEL="INFO")
    worker_log, cron_log = tmp_path / "worker.log", tmp_path / "cron.log"
    processes = [start_worker(env, worker_log), start_cron(env, cron_log)]
    try:
        # Every cron job runs once at start; the coalescing flush (every 10 s) runs again.
        wait_for(
            lambda: (
                all(finished_ticks(runtime, name) >= 1 for name in CRON_JOBS)
                and finished_ticks(runtime, CRON_JOBS[1]) >= 2
            ),
            60,
            "two rounds of idle cron ticks",
        )
        time.sleep(0.5)  # anything the worker logs after its last tick
        idle = records(worker_log)

        source = tmp_path / "in.txt"
        source.write_text("a@example.com\nb@example.com\n", encoding="utf-8")
        sync_id = start_file_sync(runtime, source, type_="email", country="US").id

        def settled() -> bool:
            assert all(process.poll() is None for process in processes), f"a process died; see {tmp_path}"
            with runtime.session() as session:
                status = session.scalar(select(Sync.status).where(Sync.id == sync_id))
            return status in (SyncStatus.COMPLETED, SyncStatus.FAILED)

        wait_for(settled, 60, "the sync to settle")
        time.sleep(0.5)
        busy = records(worker_log)[len(idle) :]
    finally:
        for process in reversed(processes):
            kill(process)

    assert [r["event"] for r in idle if r["level"] != "debug"] == ["worker_started"]
    assert "Enqueued job" not in cron_log.read_text(encoding="utf-8")
    steps = [r for r in busy if r["event"] == "job_done" and r.get("sync_id") == sync_id]
    assert steps and all(r["level"] == "info" for r in steps)
    assert {r["job"] for r in steps} == {"connector.pipeline.runner.run_sync_step"}


def test_sweeps_that_find_nothing_to_do_log_below_info(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    segment = {
        "crm": "hubspot",
        "kind": "hubspot_list",
        "ref": "42",
        "type": "email",
        "schedule": "* * * * *",
    }
    create_segment(runtime, segment)
    with runtime.session() as session:  # created a while ago, so a due time has passed since
        session.execute(update(Segment).values(created_at=utcnow() - timedelta(minutes=5)))
    [sync_id] = enqueue_due_segment_syncs(runtime)
    with runtime.session() as session:
        created = session.get_one(Sync, sync_id).created_at

    with caplog.at_level(logging.DEBUG, logger="connector"):
        # The next due minute comes while the first sync still runs: deferred, tick after tick.
        assert enqueue_due_segment_syncs(runtime, now=created + timedelta(minutes=2)) == []
        assert purge_expired_data(runtime) == []  # nothing has expired
    said = {(r.getMessage(), r.levelno) for r in caplog.records if r.name.startswith("connector")}
    assert said == {("scheduled_sync_deferred", logging.DEBUG), ("personal_data_purged", logging.DEBUG)}

    caplog.clear()
    with runtime.session() as session:
        session.add(
            WebhookEvent(source="hubspot", dedupe_key="old", received_at=utcnow() - timedelta(days=8))
        )
    with caplog.at_level(logging.DEBUG, logger="connector"):
        purge_expired_data(runtime)
    [purged] = [r for r in caplog.records if r.getMessage() == "personal_data_purged"]
    assert purged.levelno == logging.INFO and purged.webhook_events == 1
