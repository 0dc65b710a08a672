"""A Salesforce campaign segment with verdict actions, synced through the admin API: after its flags
are written, exactly its contacts of verdict wrong have HasOptedOutOfEmail checked and exactly its
disposable ones are members of the target campaign, once, with the status asked for."""

from __future__ import annotations

from typing import Any

import requests

from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.sandbox.test_sandbox_salesforce import control, sandbox_state
from tests.web.test_admin_api import AUTH

FIELDS = ("Email", "ApexVerify_Status__c", "ApexVerify_Is_Disposable__c", "HasOptedOutOfEmail")


def contacts(sandbox: SandboxServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = requests.get(
            f"{sandbox.url}/_sandbox/records", timeout=30,
            params={"object": "Contact", "offset": len(found), "limit": 5000, "field": list(FIELDS)},
        ).json()  # fmt: skip
        items = page["records"] if isinstance(page, dict) else page
        if not items:
            return found
        found += items


def members_of(sandbox: SandboxServer, campaign_id: str) -> list[dict[str, Any]]:
    answer = requests.get(
        f"{sandbox.url}/_sandbox/records", timeout=30,
        params={"object": "CampaignMember", "limit": 5000, "field": ["CampaignId", "ContactId", "Status"]},
    ).json()  # fmt: skip
    items = answer["records"] if isinstance(answer, dict) else answer
    return [m for m in items if m["CampaignId"] == campaign_id]


def test_wrong_contacts_are_opted_out_and_disposable_ones_join_the_campaign_once(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    source = control(salesforce_sandbox, "seed", {"generate": {"campaign_members": 600, "lead_ratio": 0}})
    target = control(salesforce_sandbox, "seed", {"campaigns": [{"Name": "Disposable inboxes"}]})
    target_id = target["campaigns"][0]["Id"]
    body = {
        "crm": "salesforce", "kind": "salesforce_campaign", "ref": source["campaign_id"], "object": "Contact",
        "type": "email",
        "actions": [
            {"when": "wrong", "do": "opt_out"},
            {"when": "disposable", "do": "add_to_campaign", "campaign_id": target_id, "status": "Responded"},
        ],
    }  # fmt: skip
    segment = requests.post(f"{web.url}/admin/segments", json=body, headers=AUTH, timeout=5).json()
    started = requests.post(f"{web.url}/admin/segments/{segment['id']}/sync", headers=AUTH, timeout=5)

    sync = drive_until_settled(sf_runtime, started.json()["id"], tick_seconds=0.1)

    assert sync.status == "completed", (sync.error_code, sync.error_message)
    people = contacts(salesforce_sandbox)
    wrong = {c["Id"] for c in people if c.get("ApexVerify_Status__c") == "wrong"}
    disposable = {c["Id"] for c in people if c.get("ApexVerify_Is_Disposable__c") is True}
    assert wrong and disposable
    assert {c["Id"] for c in people if c.get("HasOptedOutOfEmail")} == wrong
    members = members_of(salesforce_sandbox, target_id)
    assert sorted(m["ContactId"] for m in members) == sorted(disposable)  # each once
    assert {m["Status"] for m in members} == {"Responded"}
    state = sandbox_state(salesforce_sandbox)
    assert state["duplicate_members_refused"] == 0
    assert set(state["campaign_members_created"][target_id].values()) == {1}
    assert sync.counts["actions"] == {"opt_out": len(wrong), "add_to_campaign": len(disposable)}
