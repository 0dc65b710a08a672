"""Scheduled segments under the real `cron` process: two `rq cron connector.cron` processes (as the
Procfile runs them) and a worker, across real minute boundaries.

A segment scheduled every minute must get exactly one sync per due minute although two cron
processes tick every 20 s each, and its second sync must send ApexVerify only the contacts
added to the list since the first one (the others are recently verified).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from rq.cron import CronScheduler, get_cron_job_ids
from rq.job import Job
from sqlalchemy import select

from connector.cron import schedule_job
from connector.models import Segment, Sync, SyncBatch, SyncStatus, utcnow
from connector.pipeline.schedule import due_key
from connector.pipeline.segments import create_segment
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN, with_settings
from tests.processes import connector_env, kill, start_cron, start_worker, wait_for

FIRST = [f"first{n}@example.com" for n in range(30)]
ADDED = [f"added{n}@example.com" for n in range(12)]
SCHEDULE_JOB = f"{schedule_job.__module__}.{schedule_job.__name__}"  # rq cron's name for it


@pytest.fixture
def cron_runtime(runtime: Runtime, hubspot_sandbox: SandboxServer) -> Runtime:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("cron and worker processes need a real Redis server")
    return with_settings(
        runtime,
        hubspot_base_url=hubspot_sandbox.url,
        hubspot_access_token=HUBSPOT_TOKEN,
        hubspot_portal_id="4242",
        step_lease_seconds=10,
    )


def seed_contacts(sandbox: SandboxServer, emails: list[str], list_name: str | None = None) -> dict:
    body: dict = {"contacts": [{"properties": {"email": email}} for email in emails]}
    answer = requests.post(f"{sandbox.url}/_sandbox/seed", json=body, timeout=10)
    answer.raise_for_status()
    ids = answer.json()["contactIds"]
    if list_name is None:
        return {"contactIds": ids}
    listed = requests.post(
        f"{sandbox.url}/_sandbox/seed", json={"lists": [{"name": list_name, "contactIds": ids}]}, timeout=10
    )
    listed.raise_for_status()
    return {"contactIds": ids, "listId": listed.json()["listIds"][0]}


def add_to_list(sandbox: SandboxServer, list_id: str, contact_ids: list[str]) -> None:
    """What "add to list" in HubSpot does. The sandbox has no endpoint for it (its control API
    seeds whole lists), so the membership is extended in-process, under the sandbox's own lock."""
    state = sandbox.app.extensions["hubspot_sandbox"]
    with state.lock:
        found = state.lists[list_id]
        found.members = sorted({*found.members, *contact_ids}, key=int)


def batch_lines(sandbox: SandboxServer, batch_uuid: str) -> list[str]:
    """The rows ApexVerify received in one batch (the sandbox keeps them in memory)."""
    state = sandbox.app.extensions["apexverify_state"]
    with state.lock:
        return list(state.batches[batch_uuid].lines)


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def scheduled_syncs(runtime: Runtime, segment_id: int) -> list[Sync]:
    with runtime.session() as session:
        syncs = session.scalars(select(Sync).where(Sync.segment_id == segment_id).order_by(Sync.id)).all()
        for sync in syncs:
            session.expunge(sync)
    return list(syncs)


def schedule_ticks(runtime: Runtime) -> list[Job]:
    """Every finished run of the schedule job that this test's cron processes enqueued."""
    ids = get_cron_job_ids(SCHEDULE_JOB, runtime.redis)
    jobs = [job for job in Job.fetch_many(ids, connection=runtime.redis) if job is not None]
    return [
        job
        for job in jobs
        if job.origin == runtime.settings.queue_name  # the history is per Redis database, not per test
        and job.get_status() == "finished"
        and job.ended_at is not None
    ]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_cron_processes_start_one_sync_per_minute_and_the_second_sends_only_new_contacts(
    cron_runtime: Runtime,
    hubspot_sandbox: SandboxServer,
    apexverify_sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    runtime = cron_runtime
    seeded = seed_contacts(hubspot_sandbox, FIRST, list_name="every minute")
    segment = create_segment(
        runtime,
        {"crm": "hubspot", "kind": "hubspot_list", "ref": seeded["listId"], "type": "email",
         "schedule": "* * * * *"},
    )  # fmt: skip
    env = connector_env(runtime)
    processes = [start_worker(env, tmp_path / "worker.log")]
    try:
        processes += [start_cron(env, tmp_path / f"cron{n}.log") for n in (1, 2)]
        crons = {process.pid for process in processes[1:]}
        wait_for(
            lambda: crons <= {s.pid for s in CronScheduler.all(runtime.redis)},
            30,
            "both cron processes to start",
        )

        def alive() -> None:
            for process, log in zip(processes, ("worker", "cron1", "cron2"), strict=True):
                assert process.poll() is None, f"{log} died; see {tmp_path / f'{log}.log'}"

        def syncs_done(number: int) -> bool:
            alive()
            time.sleep(0.5)
            syncs = scheduled_syncs(runtime, segment.id)
            return len(syncs) >= number and syncs[number - 1].status in (
                SyncStatus.COMPLETED,
                SyncStatus.FAILED,
            )

        # The first due minute is the first minute boundary after the segment was created.
        wait_for(lambda: syncs_done(1), 120, "the first scheduled sync to finish")
        first = scheduled_syncs(runtime, segment.id)[0]
        assert first.status == SyncStatus.COMPLETED, (first.error_code, first.error_message)

        added = seed_contacts(hubspot_sandbox, ADDED)["contactIds"]
        add_to_list(hubspot_sandbox, seeded["listId"], added)
        added_at = utcnow()
        # The next due minute comes after the contacts joined the list.
        assert added_at < minute(first.created_at) + timedelta(minutes=1), "the first sync took too long"

        wait_for(lambda: syncs_done(2), 120, "the second scheduled sync to finish")
        second = scheduled_syncs(runtime, segment.id)[1]

        def repeated_ticks_after_second() -> bool:
            # Both cron processes keep ticking inside the second sync's minute: each later tick
            # (of either process) must find that minute's sync already there.
            alive()
            time.sleep(1)
            return sum(job.started_at > second.created_at for job in schedule_ticks(runtime)) >= 3

        wait_for(repeated_ticks_after_second, 90, "more schedule ticks after the second sync")
    finally:
        for process in reversed(processes):
            kill(process)

    # Exactly one sync per due minute: every minute boundary a tick ran in (since the segment
    # was created) has its sync, no other minute has one, and none has two.
    with runtime.session() as session:
        created_at = session.get_one(Segment, segment.id).created_at
    ticks = schedule_ticks(runtime)
    # A tick's clock reading lies between its job's start and end; a due minute before the
    # segment existed is not due.
    ran_in = {m for m in (minute(job.started_at) for job in ticks) if m >= created_at}
    may_have_run_in = ran_in | {m for m in (minute(job.ended_at) for job in ticks) if m >= created_at}
    syncs = scheduled_syncs(runtime, segment.id)
    keys = [sync.idempotency_key for sync in syncs]
    assert len(keys) == len(set(keys)) and all(sync.trigger == "schedule" for sync in syncs)
    assert (
        {due_key(segment.id, m) for m in ran_in}
        <= set(keys)
        <= {due_key(segment.id, m) for m in may_have_run_in}
    )
    assert len(ticks) >= 2 * len(syncs)  # repeated ticks really happened (two processes, every 20 s)

    # The second sync sent only the contacts added since the first; the others were skipped as
    # recently verified (their flags are in HubSpot) and cost nothing.
    assert second.status == SyncStatus.COMPLETED, (second.error_code, second.error_message)
    assert first.counts["verified"] == len(FIRST) and first.counts["values_sent"] == len(FIRST)
    assert second.counts["verified"] == len(ADDED) and second.counts["values_sent"] == len(ADDED)
    assert second.counts["skipped_by_reason"] == {
        "no_value": 0,
        "recently_verified": len(FIRST),
        "deleted": 0,
    }
    with runtime.session() as session:
        uuids = {
            sync_id: session.scalars(select(SyncBatch.batch_uuid).where(SyncBatch.sync_id == sync_id)).all()
            for sync_id in (first.id, second.id)
        }
    assert sorted(batch_lines(apexverify_sandbox, uuids[first.id][0])) == sorted(FIRST)
    assert [sorted(batch_lines(apexverify_sandbox, u)) for u in uuids[second.id]] == [sorted(ADDED)]
    state = requests.get(f"{apexverify_sandbox.url}/_sandbox/state", timeout=10).json()
    assert state["charges"] == len([s for s in syncs if s.counts.get("values_sent")])
