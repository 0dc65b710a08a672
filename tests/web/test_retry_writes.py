"""A completed sync's refused writes are written again from its stored verdicts: POST
/admin/syncs/<id>/retry and the ops page's "Retry failed writes", over HTTP against the sandboxes."""

from __future__ import annotations

from typing import Any

import requests
from playwright.sync_api import Page

from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.crm.test_hubspot_end_to_end import all_contacts, generate_list
from tests.web.test_admin_api import AUTH, LIST_SEGMENT, add_segment
from tests.web.test_ops_page import open_sync, sign_in

REFUSED = 50


def refuse(hubspot: SandboxServer, contact_ids: list[str]) -> None:
    answer = requests.post(f"{hubspot.url}/_sandbox/refusals", json={"contactIds": contact_ids}, timeout=5)
    answer.raise_for_status()


def sandbox_state(server: SandboxServer) -> dict[str, Any]:
    return requests.get(f"{server.url}/_sandbox/state", timeout=10).json()


def admin(web: SandboxServer, method: str, path: str) -> requests.Response:
    return requests.request(method, f"{web.url}/admin{path}", headers=AUTH, timeout=10)


def synced_list_with_refusals(
    runtime: Runtime, web: SandboxServer, hubspot: SandboxServer, contacts: int = 400
) -> tuple[int, list[str]]:
    """A list synced while HubSpot refused REFUSED of its contacts for good: (sync id, their ids)."""
    list_id = generate_list(hubspot, contacts)
    with_email = [c["id"] for c in all_contacts(hubspot) if (c["properties"].get("email") or "").strip()]
    refused = with_email[7 : 7 + REFUSED]
    refuse(hubspot, refused)
    segment = add_segment(web, {**LIST_SEGMENT, "ref": list_id}).json()
    sync_id = admin(web, "POST", f"/segments/{segment['id']}/sync").json()["id"]
    drive_until_settled(runtime, sync_id)
    return sync_id, refused


def test_retry_writes_rewrites_just_the_refused_records_without_apexverify(
    hubspot_runtime: Runtime,
    hubspot_sandbox: SandboxServer,
    apexverify_sandbox: SandboxServer,
    web: SandboxServer,
) -> None:
    sync_id, refused = synced_list_with_refusals(hubspot_runtime, web, hubspot_sandbox)
    first = admin(web, "GET", f"/syncs/{sync_id}").json()
    assert first["status"] == "completed" and first["counts"]["write_failed"] == REFUSED
    assert sorted(f["record_id"] for f in first["write_failures"]) == sorted(refused)
    assert {f["reason"] for f in first["write_failures"]} == {"VALIDATION_ERROR"}
    unflagged = {
        c["id"] for c in all_contacts(hubspot_sandbox) if not c["properties"].get("apexverify_status")
    }
    assert set(refused) <= unflagged
    apexverify_before = sandbox_state(apexverify_sandbox)
    updates_before = sandbox_state(hubspot_sandbox)["requests"].get(
        "POST /crm/v3/objects/contacts/batch/update", 0
    )

    refuse(hubspot_sandbox, [])  # the portal's validation rule is fixed
    answer = admin(web, "POST", f"/syncs/{sync_id}/retry")

    assert answer.status_code == 202 and answer.json()["status"] == "writing_back"
    assert drive_until_settled(hubspot_runtime, sync_id).status == "completed"
    after = admin(web, "GET", f"/syncs/{sync_id}").json()
    assert after["counts"]["write_failed"] == 0 and after["write_failures"] == []
    assert after["counts"]["verified"] == first["counts"]["verified"] + REFUSED
    assert after["counts"]["contacts"] == first["counts"]["contacts"]
    retried = [h for h in after["history"] if h["from_status"] == "completed"]
    assert [(h["to_status"], h["note"]) for h in retried] == [
        ("writing_back", f"retry {REFUSED} failed writes from the stored verdicts")
    ]
    assert after["history"][-1]["to_status"] == "completed"
    flagged = {c["id"]: c["properties"] for c in all_contacts(hubspot_sandbox)}
    assert all(flagged[record_id].get("apexverify_status") for record_id in refused)
    # Only the 50 were written again (one batch of 100 at most), and ApexVerify heard nothing.
    updates_after = sandbox_state(hubspot_sandbox)["requests"]["POST /crm/v3/objects/contacts/batch/update"]
    assert updates_after - updates_before == 1
    apexverify_after = sandbox_state(apexverify_sandbox)
    assert apexverify_after["requests"] == apexverify_before["requests"]
    assert apexverify_after["charges"] == apexverify_before["charges"]

    again = admin(web, "POST", f"/syncs/{sync_id}/retry")
    assert again.status_code == 409 and again.json()["error"] == "nothing_to_retry"


def test_retry_writes_that_are_refused_again_stay_write_failures(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    sync_id, refused = synced_list_with_refusals(hubspot_runtime, web, hubspot_sandbox, contacts=150)

    assert admin(web, "POST", f"/syncs/{sync_id}/retry").status_code == 202  # the rule still holds
    settled = drive_until_settled(hubspot_runtime, sync_id)

    assert settled.status == "completed" and settled.counts["write_failed"] == REFUSED
    detail = admin(web, "GET", f"/syncs/{sync_id}").json()
    assert sorted(f["record_id"] for f in detail["write_failures"]) == sorted(refused)


def test_the_ops_page_offers_retry_failed_writes_on_a_completed_sync_with_failures(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer, page: Page
) -> None:
    sync_id, _ = synced_list_with_refusals(hubspot_runtime, web, hubspot_sandbox, contacts=120)
    refuse(hubspot_sandbox, [])
    sign_in(page, web)
    open_sync(page, web, sync_id)

    page.get_by_role("button", name="Retry failed writes").click()

    assert "it is now writing_back" in page.locator(".flash").inner_text()
    assert drive_until_settled(hubspot_runtime, sync_id).counts["write_failed"] == 0
    open_sync(page, web, sync_id)
    assert page.get_by_role("button", name="Retry failed writes").count() == 0
