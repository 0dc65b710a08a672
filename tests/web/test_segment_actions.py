"""A segment's verdict actions are checked against its CRM when it is created or changed (400s)."""

from __future__ import annotations

import pytest
import requests

from connector.sandbox.server import SandboxServer
from tests.web.test_admin_api import AUTH, LIST_SEGMENT, add_segment

CAMPAIGN_SEGMENT = {"crm": "salesforce", "kind": "salesforce_campaign", "ref": "701000000000001",
                    "object": "Contact", "type": "email"}  # fmt: skip


@pytest.mark.parametrize(
    ("segment", "actions", "code"),
    [
        (LIST_SEGMENT, {"when": "wrong", "do": "opt_out"}, "invalid_actions"),
        (LIST_SEGMENT, ["opt_out"], "invalid_actions"),
        (LIST_SEGMENT, [{"when": "bounced", "do": "opt_out"}], "invalid_action_when"),
        (LIST_SEGMENT, [{"when": "wrong", "do": "delete"}], "invalid_action_do"),
        (LIST_SEGMENT, [{"when": "wrong", "do": "add_to_campaign", "campaign_id": "7"}], "invalid_action_do"),
        (LIST_SEGMENT, [{"when": "disposable", "do": "add_to_list"}], "missing_list_id"),
        (LIST_SEGMENT, [{"when": "disposable", "do": "add_to_list", "list_id": " "}], "missing_list_id"),
        (LIST_SEGMENT, [{"when": "wrong", "do": "opt_out", "list_id": "9"}], "invalid_actions"),
        (LIST_SEGMENT, [{"when": "wrong", "do": "opt_out", "colour": "red"}], "invalid_actions"),
        (LIST_SEGMENT, [{"when": "role", "do": "add_to_list", "list_id": "9", "status": "x"}],
         "invalid_actions"),
        (LIST_SEGMENT, [{"when": "wrong", "do": "opt_out"}] * 2, "invalid_actions"),
        ({**LIST_SEGMENT, "type": "phone"}, [{"when": "wrong", "do": "opt_out"}], "invalid_action_do"),
        (CAMPAIGN_SEGMENT, [{"when": "wrong", "do": "add_to_list", "list_id": "9"}], "invalid_action_do"),
        (CAMPAIGN_SEGMENT, [{"when": "role", "do": "add_to_campaign"}], "missing_campaign_id"),
        (CAMPAIGN_SEGMENT, [{"when": "role", "do": "add_to_campaign", "campaign_id": "701", "status": 5}],
         "invalid_actions"),
    ],
)  # fmt: skip
def test_an_action_the_crm_cannot_take_is_refused(
    web: SandboxServer, segment: dict, actions: object, code: str
) -> None:
    created = add_segment(web, {**segment, "actions": actions})
    assert created.status_code == 400, created.text
    assert created.json()["error"] == code and created.json()["message"]

    segment_id = add_segment(web, segment).json()["id"]
    patched = requests.patch(
        f"{web.url}/admin/segments/{segment_id}", json={"actions": actions}, headers=AUTH, timeout=5
    )
    assert patched.status_code == 400 and patched.json()["error"] == code
    kept = requests.get(f"{web.url}/admin/segments/{segment_id}", headers=AUTH, timeout=5).json()
    assert kept["actions"] == []


def test_actions_are_kept_as_given_and_a_patch_to_phone_rechecks_them(web: SandboxServer) -> None:
    actions = [
        {"when": "wrong", "do": "opt_out"},
        {"when": "disposable", "do": "add_to_list", "list_id": " 77 "},
        {"when": "role", "do": "add_to_list", "list_id": 78},
    ]
    segment = add_segment(web, {**LIST_SEGMENT, "actions": actions}).json()
    assert segment["actions"] == [
        {"when": "wrong", "do": "opt_out"},
        {"when": "disposable", "do": "add_to_list", "list_id": "77"},
        {"when": "role", "do": "add_to_list", "list_id": "78"},
    ]
    url = f"{web.url}/admin/segments/{segment['id']}"
    to_phone = requests.patch(url, json={"type": "phone"}, headers=AUTH, timeout=5)
    assert to_phone.status_code == 400 and to_phone.json()["error"] == "invalid_action_do"
    cleared = requests.patch(url, json={"type": "phone", "actions": []}, headers=AUTH, timeout=5)
    assert cleared.status_code == 200 and cleared.json()["actions"] == []

    campaign = add_segment(web, {**CAMPAIGN_SEGMENT, "actions": [
        {"when": "wrong", "do": "opt_out"},
        {"when": "unknown", "do": "add_to_campaign", "campaign_id": "701000000000009", "status": "Responded"},
    ]}).json()  # fmt: skip
    assert campaign["actions"][1] == {
        "when": "unknown", "do": "add_to_campaign", "campaign_id": "701000000000009", "status": "Responded"
    }  # fmt: skip
