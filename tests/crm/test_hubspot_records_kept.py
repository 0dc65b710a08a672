"""HubSpot contacts merged or archived between a list's export and its write-back (issue 17), end to end:
the admin API, the pipeline, the ApexVerify and HubSpot sandboxes over HTTP, the changes made
through hubspot-api-client as a portal user's tools would make them.

A merge makes a new record that both merged ids point to (HubSpot's developer changelog "Updated
merge functionality for contacts and companies"): the flags of a list contact merged as the primary
go onto that record, whose email is the one verified; one merged as the secondary into a contact
holding another email gets nothing written. An archived contact ends `skipped`, reason `deleted`.
"""

from __future__ import annotations

import re

import requests
from hubspot import HubSpot
from hubspot.crm.contacts import BatchInputSimplePublicObjectId, PublicMergeInput, SimplePublicObjectId
from playwright.sync_api import Page

from connector.crm.hubspot.client import make_hubspot_client
from connector.models import SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN
from tests.crm.records_kept_support import approve_and_finish, outcomes, verdicts
from tests.crm.test_hubspot_actions_end_to_end import start_sync
from tests.crm.test_hubspot_end_to_end import EMAIL_PROPERTIES, all_contacts, generate_list, generate_list_at
from tests.web.test_admin_api import LIST_SEGMENT, add_segment
from tests.web.test_ops_page import open_sync, sign_in

CLEAN_EMAIL = re.compile(r"[a-z0-9.]+@[a-z0-9-]+\.[a-z]+")
MERGED, ARCHIVED = 20, 20


def sync_awaiting_approval(web: SandboxServer, runtime: Runtime, list_id: str) -> int:
    """A sync of the list that stops after its export and parse: its budget (0) is under the cost."""
    answer = add_segment(web, {**LIST_SEGMENT, "ref": list_id, "max_net_cost": 0})
    assert answer.status_code == 201, answer.text
    sync = drive_until_settled(runtime, start_sync(web, int(answer.json()["id"])), tick_seconds=0.1)
    assert sync.status == SyncStatus.AWAITING_APPROVAL, (sync.status, sync.error_code, sync.error_message)
    return sync.id


def seed_contact(sandbox: SandboxServer, email: str) -> str:
    """A contact outside every list (seeding, unlike the API, does not refuse an email in use)."""
    body = {"contacts": [{"properties": {"email": email, "firstname": "Duplicate"}}]}
    answer = requests.post(f"{sandbox.url}/_sandbox/seed", json=body, timeout=10)
    answer.raise_for_status()
    return str(answer.json()["contactIds"][0])


def merge(client: HubSpot, primary: str, secondary: str) -> str:
    merge_input = PublicMergeInput(primary_object_id=primary, object_id_to_merge=secondary)
    return str(client.crm.contacts.basic_api.merge(merge_input).id)


def contact_properties(sandbox: SandboxServer, contact_id: str) -> dict[str, str]:
    answer = requests.get(f"{sandbox.url}/_sandbox/contacts/{contact_id}", timeout=5)
    answer.raise_for_status()
    return dict(answer.json()["properties"])


def pick_spread(candidates: list[dict], count: int) -> list[dict]:
    """`count` contacts spread over the list, so that they fall in different write-back pages."""
    stride = len(candidates) // count
    return [candidates[i * stride] for i in range(count)]


def test_merged_contacts_get_their_flags_on_the_survivor_and_archived_ones_are_skipped(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer, page: Page
) -> None:
    list_id = generate_list(hubspot_sandbox, 2_000)
    sync_id = sync_awaiting_approval(web, hubspot_runtime, list_id)
    contacts = list(all_contacts(hubspot_sandbox))
    assert len(contacts) == 2_000
    addresses = [c["properties"].get("email") or "" for c in contacts]
    clean = [c for c, email in zip(contacts, addresses, strict=True)
             if CLEAN_EMAIL.fullmatch(email) and addresses.count(email) == 1]  # fmt: skip
    chosen = pick_spread(clean, MERGED + ARCHIVED)
    to_merge, to_archive = chosen[::2], chosen[1::2]

    # After the export, before the write-back: each merged list contact is the primary, its
    # duplicate (same email, in no list) the secondary, so the new record holds the verified email.
    client = make_hubspot_client(hubspot_sandbox.url, HUBSPOT_TOKEN)
    survivors = {}
    for contact in to_merge:
        duplicate = seed_contact(hubspot_sandbox, contact["properties"]["email"])
        survivors[contact["id"]] = merge(client, contact["id"], duplicate)
    archived = [c["id"] for c in to_archive]
    client.crm.contacts.batch_api.archive(
        BatchInputSimplePublicObjectId(inputs=[SimplePublicObjectId(id=i) for i in archived])
    )

    _, detail = approve_and_finish(hubspot_runtime, web, sync_id)

    by_email = verdicts(hubspot_runtime, sync_id)
    for contact in to_merge:
        kept = contact_properties(hubspot_sandbox, survivors[contact["id"]])
        assert kept["email"] == contact["properties"]["email"]
        assert all(kept.get(name) not in (None, "") for name in EMAIL_PROPERTIES), kept
        assert kept["apexverify_status"] == by_email[kept["email"].strip().lower()]
    for contact_id in archived:
        assert not contact_properties(hubspot_sandbox, contact_id).get("apexverify_status")

    rows = outcomes(hubspot_runtime, sync_id)
    assert {i: rows[i][:3] for i in survivors} == {
        i: ("verified", "merged_into", s) for i, s in survivors.items()
    }
    assert {i: rows[i][:3] for i in archived} == {i: ("skipped", "deleted", None) for i in archived}
    counts = detail["counts"]
    assert counts["write_failed"] == 0 and detail["write_failures"] == []
    assert counts["skipped_by_reason"]["deleted"] == ARCHIVED
    assert counts["verified_by_reason"]["merged_into"] == MERGED
    assert {m["record_id"]: (m["reason"], m["written_to"]) for m in detail["moved_records"]} == {
        i: ("merged_into", s) for i, s in survivors.items()
    }
    # The ops page says the same.
    sign_in(page, web)
    open_sync(page, web, sync_id)
    assert f"merged_into: {MERGED}" in page.locator("#verified").inner_text()
    assert f"deleted: {ARCHIVED}" in page.locator("#counts").inner_text()
    assert page.locator("#moved-records tbody tr").count() == MERGED


def test_a_contact_merged_into_one_holding_another_email_gets_nothing_written(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    list_id = generate_list_at(hubspot_sandbox.url, 20)
    sync_id = sync_awaiting_approval(web, hubspot_runtime, list_id)
    contact = next(iter(all_contacts(hubspot_sandbox)))
    other = seed_contact(hubspot_sandbox, "someone.else@example.com")
    client = make_hubspot_client(hubspot_sandbox.url, HUBSPOT_TOKEN)
    survivor = merge(client, other, contact["id"])  # the list contact is the secondary

    _, detail = approve_and_finish(hubspot_runtime, web, sync_id)

    kept = contact_properties(hubspot_sandbox, survivor)
    assert kept["email"] == "someone.else@example.com"
    assert not any(kept.get(name) for name in EMAIL_PROPERTIES), kept
    assert outcomes(hubspot_runtime, sync_id)[contact["id"]][:2] == ("skipped", "successor_value_differs")
    assert detail["counts"]["skipped_by_reason"]["successor_value_differs"] == 1
    assert detail["counts"]["write_failed"] == 0
    [moved] = detail["moved_records"]
    assert (moved["record_id"], moved["reason"]) == (contact["id"], "successor_value_differs")
    assert survivor in moved["message"]
    assert detail["counts"]["verified"] == 19
