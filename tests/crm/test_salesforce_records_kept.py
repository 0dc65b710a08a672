"""Salesforce records as the org keeps them, end to end over HTTP (issue 17): a campaign whose leads
are converted and whose contacts are deleted after the export, before the write-back.

The sync is planned, so it stops in awaiting_approval once its contacts are exported and parsed.
The org is then changed as its users would change it (leads converted through the sandbox's lead
conversion, records deleted through the REST API with simple-salesforce), and the approved sync
writes back: converted leads' flags on the contacts they became (when those hold the verified
email), deleted records skipped, nothing a write failure. A row locked by another transaction
(UNABLE_TO_LOCK_ROW) is written again in the same run.
"""

from __future__ import annotations

from typing import Any

from connector.crm.salesforce.client import make_salesforce
from connector.models import SyncStatus
from connector.pipeline.connections import segment_connection
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.syncs import create_sync
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import SALESFORCE_SESSION
from tests.crm.records_kept_support import approve_and_finish, outcomes, verdicts
from tests.crm.test_salesforce_end_to_end import EMAIL_FIELDS
from tests.sandbox.test_sandbox_salesforce import control, converted_to, sandbox_record

# Verdicts valid, wrong, unknown (disposable) and unknown, by the ApexVerify sandbox's rules.
LEAD_EMAILS = ("lead{n}@initech.com", "bounce{n}@initech.com", "lead{n}@mailinator.com", "unknown{n}@co.com")


def planned_sync(runtime: Runtime, campaign_id: str) -> int:
    """A plan of the campaign's contacts and leads (the sync a Flow callout starts, one for both
    objects: an admin segment reads one), exported and parsed, waiting for approval."""
    connection = segment_connection(runtime, "salesforce")
    source = {"kind": "salesforce_campaign", "ref": campaign_id, "object": None}
    sync = create_sync(
        runtime, connection_id=connection.id, crm="salesforce", type_="email", target_country="US",
        source=source, trigger="admin", name="campaign", plan_requested=True,
    )  # fmt: skip
    sync = drive_until_settled(runtime, sync.id, tick_seconds=0.1)
    assert sync.status == SyncStatus.AWAITING_APPROVAL, (sync.status, sync.error_message)
    return sync.id


def flags_of(sandbox: SandboxServer, record_id: str) -> dict[str, Any]:
    fields = sandbox_record(sandbox, record_id)["fields"]
    return {name: fields[name] for name in EMAIL_FIELDS}


def test_converted_leads_get_their_flags_on_their_contacts_and_deleted_records_are_skipped(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    sandbox = salesforce_sandbox
    people = control(
        sandbox,
        "seed",
        {
            "contacts": [{"LastName": f"C{n}", "Email": f"contact{n}@acme{n % 7}.com"} for n in range(40)],
            "leads": [
                {"LastName": f"L{n}", "Company": f"Co{n}", "Email": LEAD_EMAILS[n % 4].format(n=n)}
                for n in range(25)
            ],
        },
    )
    contacts, leads = people["contacts"], people["leads"]
    members = [{"ContactId": c} for c in contacts] + [{"LeadId": lead} for lead in leads]
    campaign = control(sandbox, "seed", {"campaigns": [{"Name": "Spring", "members": members}]})
    sync_id = planned_sync(sf_runtime, campaign["campaigns"][0]["Id"])

    # After the export: 15 leads converted (each to a new contact with its email), 10 contacts deleted.
    converted = converted_to(sandbox, *({"LeadId": lead} for lead in leads[:15]))
    deleted = contacts[:10]
    sf = make_salesforce(sandbox.url, session_id=SALESFORCE_SESSION)
    for record_id in deleted:
        assert sf.Contact.delete(record_id) == 204

    sync, _ = approve_and_finish(sf_runtime, web, sync_id)

    ended = outcomes(sf_runtime, sync_id)
    by_email = verdicts(sf_runtime, sync_id)
    statuses = set()
    for lead, contact in converted.items():
        assert ended[lead][:3] == ("verified", "converted_to", contact), ended[lead]
        assert contact in (ended[lead][3] or "")  # the message names the contact written
        email = sandbox_record(sandbox, contact)["fields"]["Email"]
        written = flags_of(sandbox, contact)
        assert written["ApexVerify_Status__c"] == by_email[email]
        statuses.add(written["ApexVerify_Status__c"])
        assert all(value is not None for value in written.values()), written
        assert flags_of(sandbox, lead)["ApexVerify_Status__c"] is None  # the lead itself is read-only
    assert statuses == {"valid", "wrong", "unknown"}
    for contact in deleted:
        assert ended[contact][:2] == ("skipped", "deleted"), ended[contact]
    assert [r for r, (outcome, *_) in ended.items() if outcome == "write_failed"] == []
    for record_id in [*contacts[10:], *leads[15:]]:  # the rest, written as usual
        assert ended[record_id][:3] == ("verified", None, None)
        email = sandbox_record(sandbox, record_id)["fields"]["Email"]
        assert flags_of(sandbox, record_id)["ApexVerify_Status__c"] == by_email[email]
    counts = sync.counts
    assert counts["verified_by_reason"]["converted_to"] == 15
    assert counts["skipped_by_reason"]["deleted"] == 10
    assert (counts["verified"], counts["write_failed"]) == (30 + 25, 0)


def test_a_lead_converted_into_a_contact_holding_another_email_writes_nothing_there(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    sandbox = salesforce_sandbox
    people = control(
        sandbox,
        "seed",
        {
            # Outside the campaign: the contacts two of its leads are merged into.
            "contacts": [
                {"LastName": "Owner", "Email": "owner@acme.com"},
                {"LastName": "Same", "Email": " SAME@Acme.com"},
            ],
            "leads": [
                {"LastName": "Other", "Company": "Acme", "Email": "other@acme.com"},
                {"LastName": "Same", "Company": "Acme", "Email": "same@acme.com"},
            ],
        },
    )
    (owner, same_contact), (other, same_lead) = people["contacts"], people["leads"]
    members = [{"LeadId": lead} for lead in people["leads"]]
    campaign = control(sandbox, "seed", {"campaigns": [{"Name": "Webinar", "members": members}]})
    sync_id = planned_sync(sf_runtime, campaign["campaigns"][0]["Id"])

    converted_to(
        sandbox, {"LeadId": other, "ContactId": owner}, {"LeadId": same_lead, "ContactId": same_contact}
    )
    sync, _ = approve_and_finish(sf_runtime, web, sync_id)

    ended = outcomes(sf_runtime, sync_id)
    outcome, reason, written_to, message = ended[other]
    assert (outcome, reason, written_to) == ("skipped", "successor_value_differs", None)
    assert owner in (message or "")  # it says which contact holds another email
    assert all(value in (None, False) for value in flags_of(sandbox, owner).values())
    assert sandbox_record(sandbox, owner)["fields"]["Email"] == "owner@acme.com"
    # The same address, as Salesforce keeps it (case, spaces): the flags are true of it, so written.
    assert ended[same_lead][:3] == ("verified", "converted_to", same_contact)
    assert (
        flags_of(sandbox, same_contact)["ApexVerify_Status__c"]
        == verdicts(sf_runtime, sync_id)["same@acme.com"]
    )
    assert sync.counts["skipped_by_reason"] == {
        "no_value": 0,
        "recently_verified": 0,
        "deleted": 0,
        "successor_value_differs": 1,
    }
    assert sync.counts["verified_by_reason"] == {"converted_to": 1}
    assert sync.counts["write_failed"] == 0


def test_a_locked_row_is_written_again_in_the_same_run(
    sf_runtime: Runtime, salesforce_sandbox: SandboxServer, web: SandboxServer
) -> None:
    sandbox = salesforce_sandbox
    contacts = control(
        sandbox, "seed", {"contacts": [{"LastName": f"K{n}", "Email": f"k{n}@acme.com"} for n in range(6)]}
    )["contacts"]
    members = [{"ContactId": contact} for contact in contacts]
    campaign = control(sandbox, "seed", {"campaigns": [{"Name": "Locks", "members": members}]})
    sync_id = planned_sync(sf_runtime, campaign["campaigns"][0]["Id"])
    # Held by another transaction for one update, and for longer than the write-back tries.
    control(sandbox, "locks", {"ids": contacts[:2], "times": 1})
    control(sandbox, "locks", {"ids": contacts[2:3], "times": 10})

    sync, _ = approve_and_finish(sf_runtime, web, sync_id)

    ended = outcomes(sf_runtime, sync_id)
    assert [ended[contact][:2] for contact in contacts] == [("verified", None)] * 2 + [
        ("write_failed", "UNABLE_TO_LOCK_ROW")
    ] + [("verified", None)] * 3
    for contact in contacts[:2]:
        assert flags_of(sandbox, contact)["ApexVerify_Status__c"] == "valid"
    assert sync.counts["write_failed"] == 1
