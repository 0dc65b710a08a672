"""A real worker is SIGKILLed between a sync's flags and its verdict actions, and just after an
action's CRM call before it was recorded: the survivor finishes the actions with no address
unsubscribed twice and no second call to add a member."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from connector.models import Sync, SyncAction, SyncStatus
from connector.pipeline.reconcile import reconcile
from connector.pipeline.segments import create_segment, sync_segment
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN, SALESFORCE_SESSION
from tests.crm.test_hubspot_actions import Hub
from tests.crm.test_hubspot_actions_end_to_end import add_calls, all_members, flagged
from tests.crm.test_hubspot_end_to_end import generate_list
from tests.crm.test_salesforce_actions_end_to_end import contacts
from tests.processes import kill, start_worker, wait_for, worker_env
from tests.sandbox.test_sandbox_salesforce import control, sandbox_state


@pytest.mark.slow
@pytest.mark.parametrize("point", ["actions.before", "actions.after_call"])
def test_a_worker_killed_around_the_actions_takes_each_once(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, tmp_path: Path, point: str
) -> None:
    if "fakeredis" in type(hubspot_runtime.redis).__module__:
        pytest.skip("a worker process needs a real Redis server")
    runtime = hubspot_runtime
    hub = Hub(hubspot_sandbox.url)
    static_list = hub.seed_list("disposable inboxes", [])
    list_id = generate_list(hubspot_sandbox, 1500)
    segment = create_segment(runtime, {
        "crm": "hubspot", "kind": "hubspot_list", "ref": list_id, "type": "email",
        "actions": [{"when": "wrong", "do": "opt_out"},
                    {"when": "disposable", "do": "add_to_list", "list_id": static_list}],
    })  # fmt: skip
    env = worker_env(
        runtime, HUBSPOT_BASE_URL=hubspot_sandbox.url, HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN,
        CONNECTOR_STEP_LEASE_SECONDS="5",
    )  # fmt: skip
    sync_id = sync_segment(runtime, segment.id, "admin").id

    kill_at(point, env, tmp_path)
    finish(runtime, sync_id, env, tmp_path)

    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        outcomes = {r.outcome for r in session.query(SyncAction).filter(SyncAction.sync_id == sync_id)}
    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    assert outcomes == {"done"}
    wrong, disposable = flagged(hubspot_sandbox)
    unsubscribes = hub.unsubscribes()
    assert set(unsubscribes["unsubscribed"]) == wrong and set(unsubscribes["requests"].values()) == {1}
    assert sorted(all_members(hub, static_list)) == sorted(disposable)
    assert add_calls(hub) == math.ceil(len(disposable) / 100)
    assert sync.counts["actions"]["add_to_list"] == len(disposable)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["actions.before", "actions.after_call"])
def test_a_worker_killed_around_salesforce_actions_adds_no_member_twice(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, tmp_path: Path, point: str
) -> None:
    if "fakeredis" in type(sf_runtime.redis).__module__:
        pytest.skip("a worker process needs a real Redis server")
    runtime = sf_runtime
    source = control(salesforce_sandbox, "seed", {"generate": {"campaign_members": 1500, "lead_ratio": 0}})
    target = control(salesforce_sandbox, "seed", {"campaigns": [{"Name": "Disposable"}]})
    target_id = target["campaigns"][0]["Id"]
    segment = create_segment(runtime, {
        "crm": "salesforce", "kind": "salesforce_campaign", "ref": source["campaign_id"], "object": "Contact",
        "type": "email",
        "actions": [{"when": "wrong", "do": "opt_out"},
                    {"when": "disposable", "do": "add_to_campaign", "campaign_id": target_id}],
    })  # fmt: skip
    env = worker_env(
        runtime, SALESFORCE_INSTANCE_URL=salesforce_sandbox.url, SALESFORCE_ACCESS_TOKEN=SALESFORCE_SESSION,
        CONNECTOR_STEP_LEASE_SECONDS="5",
    )  # fmt: skip
    sync_id = sync_segment(runtime, segment.id, "admin").id

    kill_at(point, env, tmp_path)
    finish(runtime, sync_id, env, tmp_path)

    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        outcomes = {r.outcome for r in session.query(SyncAction).filter(SyncAction.sync_id == sync_id)}
    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    assert outcomes == {"done"}
    people = contacts(salesforce_sandbox)
    wrong = {c["Id"] for c in people if c.get("ApexVerify_Status__c") == "wrong"}
    disposable = {c["Id"] for c in people if c.get("ApexVerify_Is_Disposable__c") is True}
    assert {c["Id"] for c in people if c.get("HasOptedOutOfEmail")} == wrong
    state = sandbox_state(salesforce_sandbox)
    assert state["duplicate_members_refused"] == 0
    assert state["campaign_members_created"][target_id] == dict.fromkeys(disposable, 1)
    assert sync.counts["actions"] == {"opt_out": len(wrong), "add_to_campaign": len(disposable)}


def kill_at(point: str, env: dict[str, str], tmp_path: Path) -> None:
    """Run a worker until it reaches chaos point `point`, then SIGKILL it."""
    markers = tmp_path / "markers"
    doomed = start_worker(
        {**env, "CONNECTOR_CHAOS_PAUSE_AT": point, "CONNECTOR_CHAOS_MARKER_DIR": str(markers)},
        tmp_path / "worker1.log",
    )
    try:
        wait_for(lambda: (markers / point).exists(), 90, f"the worker to reach {point}")
    finally:
        kill(doomed)


def finish(runtime: Runtime, sync_id: int, env: dict[str, str], tmp_path: Path) -> None:
    """A second worker takes the sync over (the reconciler run every second) until it settles."""
    survivor = start_worker(env, tmp_path / "worker2.log")
    try:

        def settled() -> bool:
            time.sleep(0.9)
            reconcile(runtime, overdue_after_seconds=2)
            with runtime.session() as session:
                return session.get_one(Sync, sync_id).status in (SyncStatus.COMPLETED, SyncStatus.FAILED)

        wait_for(settled, 120, "the sync to settle after the crash")
    finally:
        kill(survivor)
