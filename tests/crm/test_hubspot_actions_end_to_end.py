"""A HubSpot segment with verdict actions, synced through the admin API: after its flags are written,
exactly its wrong addresses are unsubscribed from all email and exactly its disposable contacts are
in the static list — checked through the sandbox's Communication Preferences and Lists endpoints."""

from __future__ import annotations

import math
from typing import Any

import requests

from connector.models import SyncAction
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN
from tests.crm.test_hubspot_actions import Hub
from tests.crm.test_hubspot_end_to_end import all_contacts, generate_list
from tests.web.test_admin_api import AUTH

CONTACTS = 400  # several pages of 100 per action


def segment_with_actions(web: SandboxServer, list_id: str, static_list: str) -> int:
    body = {
        "crm": "hubspot", "kind": "hubspot_list", "ref": list_id, "type": "email",
        "actions": [
            {"when": "wrong", "do": "opt_out"},
            {"when": "disposable", "do": "add_to_list", "list_id": static_list},
        ],
    }  # fmt: skip
    answer = requests.post(f"{web.url}/admin/segments", json=body, headers=AUTH, timeout=5)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def start_sync(web: SandboxServer, segment_id: int) -> int:
    answer = requests.post(f"{web.url}/admin/segments/{segment_id}/sync", headers=AUTH, timeout=5)
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


def flagged(sandbox: SandboxServer) -> tuple[set[str], set[str]]:
    """(addresses of verdict wrong, ids of contacts flagged disposable), as the portal now holds them."""
    wrong: set[str] = set()
    disposable: set[str] = set()
    for contact in all_contacts(sandbox):
        props: dict[str, Any] = contact["properties"]
        if props.get("apexverify_status") == "wrong":
            wrong.add(props["email"].strip().lower())
        if props.get("apexverify_is_disposable") == "true":
            disposable.add(str(contact["id"]))
    return wrong, disposable


def all_members(hub: Hub, list_id: str) -> list[str]:
    members: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 250, **({"after": after} if after else {})}
        page = requests.get(
            f"{hub.url}/crm/v3/lists/{list_id}/memberships", params=params, timeout=10,
            headers={"Authorization": f"Bearer {HUBSPOT_TOKEN}"},
        ).json()  # fmt: skip
        members += [m["recordId"] for m in page["results"]]
        after = (page.get("paging") or {}).get("next", {}).get("after")
        if not after:
            return members


def add_calls(hub: Hub) -> int:
    return sum(n for route, n in hub.requests().items() if "memberships/add" in route)


def test_wrong_addresses_are_unsubscribed_and_disposable_contacts_listed_once(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    hub = Hub(hubspot_sandbox.url)
    list_id = generate_list(hubspot_sandbox, CONTACTS)
    static_list = hub.seed_list("disposable inboxes", [])
    segment_id = segment_with_actions(web, list_id, static_list)

    sync = drive_until_settled(hubspot_runtime, start_sync(web, segment_id), tick_seconds=0.1)

    assert sync.status == "completed", (sync.error_code, sync.error_message)
    wrong, disposable = flagged(hubspot_sandbox)
    assert wrong and disposable  # the generated list has both
    unsubscribes = hub.unsubscribes()
    assert set(unsubscribes["unsubscribed"]) == wrong
    assert set(unsubscribes["requests"]) == wrong and set(unsubscribes["requests"].values()) == {1}
    members = all_members(hub, static_list)
    assert sorted(members) == sorted(disposable)  # each once
    with hubspot_runtime.session() as session:
        rows = session.query(SyncAction).filter(SyncAction.sync_id == sync.id).all()
    by_do = {do: sum(1 for r in rows if r.do == do) for do in ("opt_out", "add_to_list")}
    assert sync.counts["actions"] == by_do and by_do["add_to_list"] == len(disposable)
    assert by_do["opt_out"] >= len(wrong)  # contacts; two contacts may share an address
    assert {r.outcome for r in rows} == {"done"}
    assert add_calls(hub) == math.ceil(len(disposable) / 100)

    detail = requests.get(f"{web.url}/admin/syncs/{sync.id}", headers=AUTH, timeout=5).json()
    assert detail["counts"]["actions"] == by_do and detail["actions"][0] == {"when": "wrong", "do": "opt_out"}

    # The next sync of the segment finds every contact recently verified: no action is taken again.
    again = drive_until_settled(hubspot_runtime, start_sync(web, segment_id), tick_seconds=0.1)
    assert again.status == "completed" and again.counts["actions"] == {}
    assert set(hub.unsubscribes()["requests"].values()) == {1}
    assert add_calls(hub) == math.ceil(len(disposable) / 100)


def test_a_list_that_is_not_static_fails_the_sync_before_any_credit_is_spent(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    hub = Hub(hubspot_sandbox.url)
    list_id = generate_list(hubspot_sandbox, 20)
    dynamic = hub.seed_list("active leads", [], processing_type="DYNAMIC")
    segment_id = segment_with_actions(web, list_id, dynamic)

    sync = drive_until_settled(hubspot_runtime, start_sync(web, segment_id), tick_seconds=0.1)

    assert (sync.status, sync.failed_step, sync.error_code) == (
        "failed",
        "exporting",
        "hubspot_list_not_static",
    )
    state = requests.get(f"{hubspot_runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()
    assert state["charges"] == 0 and not state["batches"]


def test_addresses_hubspot_refuses_to_unsubscribe_are_reported_without_the_address(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    """A malformed address (verdict invalid_format) cannot be unsubscribed: HubSpot refuses it alone,
    the sync completes, and the refusal is counted and listed with HubSpot's code."""
    list_id = generate_list(hubspot_sandbox, CONTACTS)
    body = {"crm": "hubspot", "kind": "hubspot_list", "ref": list_id, "type": "email",
            "actions": [{"when": "invalid_format", "do": "opt_out"}]}  # fmt: skip
    segment_id = requests.post(f"{web.url}/admin/segments", json=body, headers=AUTH, timeout=5).json()["id"]

    sync = drive_until_settled(hubspot_runtime, start_sync(web, segment_id), tick_seconds=0.1)

    assert sync.status == "completed", (sync.error_code, sync.error_message)
    malformed = {
        contact["id"]: contact["properties"]["email"]
        for contact in all_contacts(hubspot_sandbox)
        if contact["properties"].get("apexverify_status") == "invalid_format"
    }
    assert malformed and hub_unsubscribed(hubspot_sandbox) == set()
    assert sync.counts["actions_failed"] == {"opt_out": len(malformed)} and sync.counts["actions"] == {}
    detail = requests.get(f"{web.url}/admin/syncs/{sync.id}", headers=AUTH, timeout=5).json()
    refused = detail["action_failures"]
    assert sorted(r["record_id"] for r in refused) == sorted(malformed)
    assert all(r["do"] == "opt_out" and r["error_message"].startswith("INVALID_EMAIL") for r in refused)
    assert not any(address.strip() in r["error_message"] for r in refused for address in malformed.values())


def hub_unsubscribed(sandbox: SandboxServer) -> set[str]:
    return set(Hub(sandbox.url).unsubscribes()["unsubscribed"])
