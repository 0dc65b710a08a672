"""Salesforce end to end through the sandboxes over HTTP: a campaign, an outbound message, a missing field."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from sqlalchemy import select

from connector.models import Sync, SyncContact, SyncStatus, SyncValue, utcnow
from connector.pipeline.coalesce import flush_due_buffers
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import SALESFORCE_WEBHOOK_TOKEN, with_settings
from tests.web.test_webhooks_salesforce import ORG_18, notification, outbound_message, post_xml

EMAIL_FIELDS = (
    "ApexVerify_Valid__c", "ApexVerify_Wrong__c", "ApexVerify_Is_Role__c", "ApexVerify_Is_Disposable__c",
    "ApexVerify_Status__c", "ApexVerify_Verified_At__c",
)  # fmt: skip


def records(sandbox: SandboxServer, sobject: str, fields: tuple[str, ...] = ()) -> list[dict]:
    found, offset = [], 0
    while True:
        page = requests.get(
            f"{sandbox.url}/_sandbox/records",
            params={"object": sobject, "offset": offset, "limit": 5000,
                    "field": ["Email", *EMAIL_FIELDS, *fields]},
            timeout=30,
        ).json()  # fmt: skip
        items = page["records"] if isinstance(page, dict) else page
        if not items:
            return found
        found.extend(items)
        offset += len(items)


def start_campaign_sync(sandbox: SandboxServer, web: SandboxServer, campaign: dict) -> None:
    """Generate a campaign in the sandbox and send the Flow callout that syncs it."""
    seeded = requests.post(f"{sandbox.url}/_sandbox/seed", json={"generate": campaign}, timeout=60).json()
    answer = requests.post(
        f"{web.url}/webhooks/salesforce", json={"campaignId": seeded["campaign_id"]},
        headers={"X-Connector-Token": SALESFORCE_WEBHOOK_TOKEN}, timeout=10,
    )  # fmt: skip
    assert answer.json() == {"accepted": 1}


def only_sync(runtime: Runtime) -> int:
    with runtime.session() as session:
        return session.scalars(select(Sync.id)).one()


@pytest.mark.slow
def test_a_10000_member_campaign_gets_every_field_and_converted_leads_are_flagged_as_their_contacts(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    campaign = {"campaign_members": 10_000, "lead_ratio": 0.3, "converted_every": 200}
    start_campaign_sync(salesforce_sandbox, web, campaign)

    sync = drive_until_settled(sf_runtime, only_sync(sf_runtime), tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    with sf_runtime.session() as session:
        verdicts = dict(session.execute(select(SyncValue.value, SyncValue.status)).all())
        exported = dict(session.execute(select(SyncContact.record_id, SyncContact.object_type)).all())
        outcomes = dict(session.execute(select(SyncContact.record_id, SyncContact.outcome)).all())
    # A converted lead's member carries the contact it became: it is exported as that contact, and its
    # flags are written there. Salesforce refuses nothing, so nothing is a write failure.
    leads = records(salesforce_sandbox, "Lead", ("IsConverted", "ConvertedContactId"))
    became = {lead["Id"]: lead["ConvertedContactId"] for lead in leads if lead["IsConverted"]}
    assert len(became) == 50 and all(became.values())
    assert {exported.get(contact) for contact in became.values()} == {"Contact"}
    assert not set(became) & set(exported)
    assert sync.counts["write_failed"] == 0 and "write_failed" not in set(outcomes.values())
    flagged = written = 0
    for sobject in ("Contact", "Lead"):
        for fields in records(salesforce_sandbox, sobject):
            email = (fields.get("Email") or "").strip().lower()
            if fields["Id"] in became:  # the converted lead itself: read-only, never written
                assert all(fields.get(name) in (None, False) for name in EMAIL_FIELDS), fields
                continue
            if not email or email not in verdicts:
                continue
            assert all(fields.get(name) is not None for name in EMAIL_FIELDS), fields
            assert fields["ApexVerify_Status__c"] == verdicts[email]
            assert outcomes[fields["Id"]] == "verified"
            written += 1
            flagged += fields["Id"] in set(became.values())
    assert written == sync.counts["verified"]
    # Every converted lead's contact carries its flags (each has an address: every 200th person's
    # repeats the 199th's, padded and upper-cased).
    assert flagged == sum(1 for contact in became.values() if outcomes[contact] == "verified") == 50


def test_an_outbound_message_of_100_notifications_is_verified_and_written_back(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    contacts = [{"Email": f"ob{n}@example.com", "LastName": f"L{n}"} for n in range(100)]
    ids = requests.post(
        f"{salesforce_sandbox.url}/_sandbox/seed", json={"contacts": contacts}, timeout=10
    ).json()
    body = outbound_message(
        *(notification(f"04lOB{n:012d}", record_id, Email=f"ob{n}@example.com")
          for n, record_id in enumerate(ids["contacts"])),
        org=ORG_18,
    )  # fmt: skip
    assert post_xml(web, body, token=SALESFORCE_WEBHOOK_TOKEN).status_code == 200

    [sync_id] = flush_due_buffers(sf_runtime)
    sync = drive_until_settled(sf_runtime, sync_id, tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    for record_id in ids["contacts"]:
        fields = requests.get(f"{salesforce_sandbox.url}/_sandbox/records/{record_id}", timeout=5).json()[
            "fields"
        ]
        assert fields["ApexVerify_Status__c"] == "valid" and fields["ApexVerify_Valid__c"] is True


def test_a_missing_custom_field_fails_the_sync_before_any_credit_is_spent(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    requests.post(
        f"{salesforce_sandbox.url}/_sandbox/config",
        json={"missing_fields": {"Contact": ["ApexVerify_Is_Role__c", "ApexVerify_Status__c"]}}, timeout=5,
    ).raise_for_status()  # fmt: skip
    seed = {"contacts": [{"Email": "m@example.com", "LastName": "M"}]}
    ids = requests.post(f"{salesforce_sandbox.url}/_sandbox/seed", json=seed, timeout=5).json()
    records_body = {"records": [{"Id": ids["contacts"][0], "Email": "m@example.com"}]}
    requests.post(
        f"{web.url}/webhooks/salesforce",
        json=records_body,
        headers={"X-Connector-Token": SALESFORCE_WEBHOOK_TOKEN},
        timeout=5,
    ).raise_for_status()

    [sync_id] = flush_due_buffers(sf_runtime)
    sync = drive_until_settled(sf_runtime, sync_id, tick_seconds=0.1)

    assert (sync.status, sync.failed_step, sync.error_code) == (
        "failed",
        "exporting",
        "salesforce_fields_missing",
    )
    assert "ApexVerify_Is_Role__c" in sync.error_message and "ApexVerify_Status__c" in sync.error_message
    state = requests.get(f"{sf_runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()
    assert state["batches"] == [] and state["charges"] == 0


def test_a_step_retrying_through_salesforce_errors_keeps_its_lease(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    """Three 503s keep the export retrying for 1 + 2 + 4 s, longer than its 2-second lease.

    The step renews the lease as it waits; before, the lease lapsed mid-retry and the reconciler
    was free to start a second job on the same sync.
    """
    start_campaign_sync(salesforce_sandbox, web, {"campaign_members": 20})
    runtime = with_settings(sf_runtime, step_lease_seconds=2)
    sync_id = only_sync(runtime)
    fault = {"endpoint": "any", "kind": "http_503", "count": 3}
    requests.post(f"{salesforce_sandbox.url}/_sandbox/faults", json=fault, timeout=5).raise_for_status()

    lapsed: list[tuple[str, object]] = []
    done = threading.Event()

    def watch_the_lease() -> None:
        while not done.is_set():
            with runtime.session() as session:
                status, lease_until = session.execute(
                    select(Sync.status, Sync.lease_until).where(Sync.id == sync_id)
                ).one()
            if lease_until is not None and lease_until < utcnow():
                lapsed.append((status, lease_until))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_the_lease)
    watcher.start()
    try:
        sync = drive_until_settled(runtime, sync_id, tick_seconds=0.1)
    finally:
        done.set()
        watcher.join()

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    assert lapsed == []
    pending_faults = requests.get(f"{salesforce_sandbox.url}/_sandbox/state", timeout=5).json()["faults"]
    assert pending_faults == []  # the three 503s were answered and retried through


QUERY_ROUTE = "GET /services/data/v{version}/query"


def record_fields(sandbox: SandboxServer, record_id: str) -> dict:
    return requests.get(f"{sandbox.url}/_sandbox/records/{record_id}", timeout=5).json()["fields"]


def deliver(web: SandboxServer, how: str, claims: list[tuple[str, str, str]]) -> None:
    """Claims (record id, object, email) as an outbound message or as a Flow `records` callout."""
    if how == "outbound_message":
        body = outbound_message(
            *(notification(f"04lHINT{n:010d}", record_id, sobject, Email=email)
              for n, (record_id, sobject, email) in enumerate(claims)),
            org=ORG_18,
        )  # fmt: skip
        assert post_xml(web, body, token=SALESFORCE_WEBHOOK_TOKEN).status_code == 200
    else:
        records = [{"Id": record_id, "attributes": {"type": sobject}, "Email": email}
                   for record_id, sobject, email in claims]  # fmt: skip
        answer = requests.post(
            f"{web.url}/webhooks/salesforce", json={"records": records},
            headers={"X-Connector-Token": SALESFORCE_WEBHOOK_TOKEN}, timeout=10,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("how", ["outbound_message", "flow_records"])
def test_flags_are_written_for_the_value_the_record_holds_not_the_one_a_message_claims(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer, how: str
) -> None:
    seed = {
        "contacts": [{"LastName": "Real", "Email": "real.person@example.com"},
                     {"LastName": "Gone", "Email": "gone@example.com"}],
        "leads": [{"LastName": "Lead", "Company": "Acme", "Email": "lead.person@example.com"}],
    }  # fmt: skip
    ids = requests.post(f"{salesforce_sandbox.url}/_sandbox/seed", json=seed, timeout=10).json()
    (real, gone), (lead,) = ids["contacts"], ids["leads"]
    deliver(web, how, [(real, "Contact", "bounce@example.com"), (lead, "Lead", "nobody@example.com"),
                       (gone, "Contact", "gone@example.com")])  # fmt: skip
    # Deleted after the message was sent: nothing is left to verify or to flag.
    requests.post(
        f"{salesforce_sandbox.url}/_sandbox/seed", json={"deleted_ids": [gone]}, timeout=10
    ).raise_for_status()

    [sync_id] = flush_due_buffers(sf_runtime)
    sync = drive_until_settled(sf_runtime, sync_id, tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    for record_id in (real, lead):
        fields = record_fields(salesforce_sandbox, record_id)
        flags = (fields["ApexVerify_Status__c"], fields["ApexVerify_Valid__c"], fields["ApexVerify_Wrong__c"])
        assert flags == ("valid", True, False), fields
    with sf_runtime.session() as session:
        contacts = dict(session.execute(select(SyncContact.record_id, SyncContact.value)).all())
        sent = set(session.scalars(select(SyncValue.value).where(SyncValue.sync_id == sync_id)))
        gone_outcome = session.execute(
            select(SyncContact.outcome, SyncContact.reason).where(SyncContact.record_id == gone)
        ).one()
    assert contacts == {real: "real.person@example.com", lead: "lead.person@example.com", gone: None}
    assert sent == {"real.person@example.com", "lead.person@example.com"}  # no credit on a claim
    assert tuple(gone_outcome) == ("skipped", "no_value")
    assert record_fields(salesforce_sandbox, gone).get("ApexVerify_Status__c") is None


def test_webhook_records_are_read_back_in_chunks_of_ids(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    """450 contacts from one Flow callout: three `Id IN (…)` queries of at most 200 ids, not 450 reads."""
    contacts = [{"LastName": f"C{n}", "Email": f"chunk{n}@example.com"} for n in range(450)]
    ids = requests.post(
        f"{salesforce_sandbox.url}/_sandbox/seed", json={"contacts": contacts}, timeout=30
    ).json()["contacts"]
    deliver(web, "flow_records", [(record_id, "Contact", "claimed@example.com") for record_id in ids])
    queries_before = requests.get(f"{salesforce_sandbox.url}/_sandbox/state", timeout=5).json()["requests"]

    [sync_id] = flush_due_buffers(sf_runtime)
    sync = drive_until_settled(sf_runtime, sync_id, tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    assert sync.counts["verified"] == 450
    queries = requests.get(f"{salesforce_sandbox.url}/_sandbox/state", timeout=5).json()["requests"]
    assert queries.get(QUERY_ROUTE, 0) - queries_before.get(QUERY_ROUTE, 0) == 3
