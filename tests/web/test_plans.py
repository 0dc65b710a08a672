"""Plans over the admin API: a HubSpot segment exported, uploaded and parsed, then stopped for approval
with what the launch would do; approved, the same batches launch for the estimated credits."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import Page, expect

from connector.models import SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.web.test_admin_api import AUTH
from tests.web.test_ops_page import TOKEN

EMAILS = [f"plan{n}@example.com" for n in range(9)] + ["Plan0@Example.com", "info@shop.io"]


def seed_list(hubspot: SandboxServer, emails: list[str]) -> str:
    """A static list of contacts with these emails (a duplicate value is two contacts)."""
    contacts = [{"properties": {"email": e}} for e in emails]
    ids = requests.post(f"{hubspot.url}/_sandbox/seed", json={"contacts": contacts}, timeout=10).json()
    body = {"lists": [{"name": f"plan {emails[0]}", "contactIds": ids["contactIds"]}]}
    return str(requests.post(f"{hubspot.url}/_sandbox/seed", json=body, timeout=10).json()["listIds"][0])


def add_list_segment(web: SandboxServer, list_id: str, **fields: object) -> int:
    body = {"crm": "hubspot", "kind": "hubspot_list", "ref": list_id, "type": "email", **fields}
    answer = requests.post(f"{web.url}/admin/segments", json=body, headers=AUTH, timeout=5)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def post(web: SandboxServer, path: str) -> requests.Response:
    return requests.post(f"{web.url}/admin{path}", headers=AUTH, timeout=10)


def get_sync(web: SandboxServer, sync_id: int) -> dict:
    return requests.get(f"{web.url}/admin/syncs/{sync_id}", headers=AUTH, timeout=5).json()


def apexverify_state(runtime: Runtime) -> dict:
    return requests.get(f"{runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()


def flagged(hubspot: SandboxServer) -> int:
    """How many contacts the connector wrote flags on."""
    answer = requests.get(f"{hubspot.url}/_sandbox/contacts", params={"limit": 5000}, timeout=10)
    return sum(1 for c in answer.json()["contacts"] if c["properties"].get("apexverify_status"))


def test_a_plan_stops_before_launch_and_approved_launches_its_batches_for_the_estimate(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    segment_id = add_list_segment(web, seed_list(hubspot_sandbox, EMAILS))

    started = post(web, f"/segments/{segment_id}/plan")
    assert started.status_code == 202, started.text
    sync = started.json()
    assert (sync["status"], sync["trigger"], sync["segment_id"], sync["plan"]) == (
        "pending", "admin", segment_id, None,
    )  # fmt: skip
    assert drive_until_settled(hubspot_runtime, sync["id"]).status == SyncStatus.AWAITING_APPROVAL

    waiting = get_sync(web, sync["id"])
    plan = waiting["plan"]
    assert plan["contacts"] == 11 and plan["skipped_recent"] == 0
    assert plan["distinct_values"] == 10 and plan["to_send"] == 10  # the two plan0 contacts share a value
    assert plan["estimated_cost"] == waiting["cost"]["net"] > 0 and waiting["cost"]["charged"] == 0
    assert plan["actions"] == {}
    assert waiting["history"][-1]["note"].startswith("plan ready: 10 values to send")
    state = apexverify_state(hubspot_runtime)
    assert (len(state["batches"]), state["launches"], state["charges"]) == (1, 0, 0)
    assert flagged(hubspot_sandbox) == 0  # nothing written before approval

    # Asked again (or a sync asked for) while it waits: the same plan, nothing new uploaded.
    assert post(web, f"/segments/{segment_id}/plan").json()["id"] == sync["id"]
    assert post(web, f"/segments/{segment_id}/sync").json()["id"] == sync["id"]

    approved = post(web, f"/syncs/{sync['id']}/approve")
    assert approved.status_code == 202 and approved.json()["status"] == "launching"
    assert drive_until_settled(hubspot_runtime, sync["id"]).status == SyncStatus.COMPLETED
    done = get_sync(web, sync["id"])
    state = apexverify_state(hubspot_runtime)
    assert (len(state["batches"]), state["launches"], state["charges"]) == (1, 1, 1)  # no second upload
    assert done["batch_uuids"] == waiting["batch_uuids"] == [state["batches"][0]["batch_uuid"]]
    assert done["cost"]["charged"] == state["batches"][0]["charged"] == plan["estimated_cost"]
    assert done["plan"] == plan
    assert flagged(hubspot_sandbox) == 11

    # A new plan now: every contact was just verified (skipped as recent), so nothing is sent, nothing
    # written, and it still waits for approval; cancelled, it ends without a launch.
    again = post(web, f"/segments/{segment_id}/plan").json()
    assert again["id"] != sync["id"]
    assert drive_until_settled(hubspot_runtime, again["id"]).status == SyncStatus.AWAITING_APPROVAL
    assert get_sync(web, again["id"])["plan"] == {
        "contacts": 11, "distinct_values": 0, "skipped_recent": 11, "to_send": 0, "estimated_cost": 0.0,
        "actions": {},
    }  # fmt: skip
    cancelled = post(web, f"/syncs/{again['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert apexverify_state(hubspot_runtime)["launches"] == 1


def test_a_cancelled_plan_launches_nothing(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    segment_id = add_list_segment(web, seed_list(hubspot_sandbox, EMAILS[:4]))
    sync_id = post(web, f"/segments/{segment_id}/plan").json()["id"]
    assert drive_until_settled(hubspot_runtime, sync_id).status == SyncStatus.AWAITING_APPROVAL

    answer = post(web, f"/syncs/{sync_id}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    assert drive_until_settled(hubspot_runtime, sync_id).status == SyncStatus.CANCELLED
    state = apexverify_state(hubspot_runtime)
    assert (len(state["batches"]), state["launches"], state["charges"]) == (1, 0, 0)
    assert flagged(hubspot_sandbox) == 0
    late = post(web, f"/syncs/{sync_id}/approve")
    assert late.status_code == 409 and late.json()["error"] == "not_awaiting_approval"


def test_a_plan_is_refused_while_another_sync_of_the_segment_runs(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    segment_id = add_list_segment(web, seed_list(hubspot_sandbox, EMAILS[:2]))
    running = post(web, f"/segments/{segment_id}/sync").json()

    refused = post(web, f"/segments/{segment_id}/plan")
    assert refused.status_code == 409
    assert refused.json()["error"] == "segment_busy" and f"sync {running['id']}" in refused.json()["message"]
    assert drive_until_settled(hubspot_runtime, running["id"]).status == SyncStatus.COMPLETED
    assert post(web, f"/segments/{segment_id}/plan").status_code == 202  # settled: a plan may start


def test_a_plan_counts_the_contacts_each_action_would_touch_and_takes_none(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    emails = [*EMAILS[:4], "bounce1@example.com", "nobody2@example.com"]
    opt_out = [{"when": "wrong", "do": "opt_out"}]
    segment_id = add_list_segment(web, seed_list(hubspot_sandbox, emails), actions=opt_out)
    sync_id = post(web, f"/segments/{segment_id}/plan").json()["id"]
    assert drive_until_settled(hubspot_runtime, sync_id).status == SyncStatus.AWAITING_APPROVAL

    # Before the verdicts any contact may come back wrong: at most all six.
    assert get_sync(web, sync_id)["plan"]["actions"] == {"opt_out": 6}
    assert unsubscribed(hubspot_sandbox) == set()

    assert post(web, f"/syncs/{sync_id}/approve").status_code == 202
    assert drive_until_settled(hubspot_runtime, sync_id).status == SyncStatus.COMPLETED
    assert get_sync(web, sync_id)["counts"]["actions"] == {"opt_out": 2}
    assert unsubscribed(hubspot_sandbox) == {"bounce1@example.com", "nobody2@example.com"}


def unsubscribed(hubspot: SandboxServer) -> set[str]:
    answer = requests.get(f"{hubspot.url}/_sandbox/unsubscribes", timeout=5)
    return set(answer.json()["unsubscribed"])


@pytest.mark.parametrize("segment_id", [999_999, 2**63 - 1])
def test_a_plan_of_an_unknown_segment_is_404(web: SandboxServer, segment_id: int) -> None:
    answer = post(web, f"/segments/{segment_id}/plan")
    assert answer.status_code == 404 and answer.json()["error"] == "segment_not_found"


def test_a_plan_asked_and_approved_on_the_ops_page(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer, page: Page
) -> None:
    segment_id = add_list_segment(web, seed_list(hubspot_sandbox, EMAILS))
    page.goto(f"{web.url}/admin/")
    page.fill("#token", TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{web.url}/admin/ops/segments")
    page.locator(f'tr[data-segment-id="{segment_id}"]').get_by_role("button", name="Plan").click()
    expect(page).to_have_url(re.compile(r"/admin/ops/syncs/\d+$"))
    sync_id = int(page.url.rsplit("/", 1)[1])
    assert drive_until_settled(hubspot_runtime, sync_id).status == SyncStatus.AWAITING_APPROVAL
    estimate = get_sync(web, sync_id)["plan"]["estimated_cost"]

    page.goto(f"{web.url}/admin/?refresh=0")
    row = page.locator(f'tr[data-sync-id="{sync_id}"]')
    expect(row).to_contain_text("plan: 10 values to send")
    row.get_by_role("link", name="approve or cancel").click()
    plan = page.locator("#plan")
    expect(plan).to_contain_text("awaiting approval")
    figures = {"contacts": "11", "distinct values": "10", "skipped as recently verified": "0",
               "values to send": "10", "estimated cost (credits)": f"{estimate:g}"}  # fmt: skip
    for label, figure in figures.items():
        expect(plan.locator("tr", has_text=label)).to_contain_text(figure)
    assert flagged(hubspot_sandbox) == 0 and apexverify_state(hubspot_runtime)["launches"] == 0

    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_contain_text("approve done; it is now launching")
    assert drive_until_settled(hubspot_runtime, sync_id).status == SyncStatus.COMPLETED
    page.reload()
    expect(page.locator("#status .badge")).to_have_text("completed")
    expect(page.locator("#plan")).not_to_contain_text("awaiting approval")
    state = apexverify_state(hubspot_runtime)
    assert (len(state["batches"]), state["launches"], state["batches"][0]["charged"]) == (1, 1, estimate)
    assert flagged(hubspot_sandbox) == 11
