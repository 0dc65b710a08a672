"""The Salesforce source, reader and writer against the Salesforce sandbox, over real HTTP with the real
simple-salesforce: campaign and SOQL segments over REST and Bulk API 2.0, records by id, the field
check, sObject Collections and ingest write-backs with per-record refusals (locked rows transient),
what became of refused records (converted leads, deleted records), the daily API reserve,
REQUEST_LIMIT_EXCEEDED, 5xx retries and an expired session refreshed with client credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.config import Settings
from connector.crm.base import (
    CONVERTED_TO,
    DELETED,
    FlagUpdate,
    RecordFate,
    SourceRecord,
    Verdict,
    WriteFailure,
)
from connector.crm.salesforce.api import SalesforceApi
from connector.crm.salesforce.flags import SalesforceFlagWriter
from connector.crm.salesforce.records import SalesforceRecordReader, SalesforceSegmentSource
from connector.errors import ConnectorError, TransientError
from connector.sandbox.salesforce import create_app
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.conftest import settings_with
from tests.sandbox.test_sandbox_salesforce import control, converted_to, sandbox_record, sandbox_state

TOKEN = "00DDn0000000001!connector-test-session"
CLIENT_ID = "3MVG9-connector-test-client"
CLIENT_SECRET = "connector-test-client-secret"
VERIFIED = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
UNKNOWN_CONTACT = "003Dn0000000zzz"  # well-formed, names no record
NOW = datetime(2025, 3, 2, 8, 30, 15, 250000, tzinfo=UTC)
ROUTE = "/services/data/v{version}"
COLLECTIONS = f"PATCH {ROUTE}/composite/sobjects"
QUERY_RESULTS = f"GET {ROUTE}/jobs/query/{{job_id}}/results"
EMAIL_FIELDS = (
    "ApexVerify_Valid__c", "ApexVerify_Wrong__c", "ApexVerify_Is_Role__c", "ApexVerify_Is_Disposable__c",
    "ApexVerify_Status__c", "ApexVerify_Verified_At__c",
)  # fmt: skip


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    # bulk_delay=0: a job finishes at the next request, so polls with a no-op sleep never wait for real.
    app = create_app(access_token=TOKEN, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, bulk_delay=0)
    server = serve_in_thread(app)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(sandbox: SandboxServer) -> None:
    control(sandbox, "reset")


@pytest.fixture
def settings(sandbox: SandboxServer, tmp_path: Path) -> Settings:
    return settings_with(
        Settings(),
        salesforce_instance_url=sandbox.url,
        salesforce_access_token=TOKEN,
        data_dir=tmp_path / "var",
        poll_initial_seconds=0.01,
        poll_max_seconds=0.05,
        step_lease_seconds=30,
    )


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def api(settings: Settings, sleeps: list[float]) -> SalesforceApi:
    return SalesforceApi(settings, sleep=sleeps.append)


def requests_to(sandbox: SandboxServer, route: str) -> int:
    return int(sandbox_state(sandbox)["requests"].get(route, 0))


def seed_campaign(sandbox: SandboxServer) -> dict[str, Any]:
    """Contacts and leads in one campaign: a duplicate address, no address, verified ones, a phone, a
    converted lead (fritz, whose member names the contact it became)."""
    people = control(
        sandbox,
        "seed",
        {
            "contacts": [
                {"LastName": "Adams", "Email": "ada@acme.com",
                 "ApexVerify_Verified_At__c": "2024-05-01T10:00:00Z"},
                {"LastName": "Berg", "Email": "ADA@acme.com "},
                {"LastName": "Costa", "Email": None, "Phone": "+1 415 555 0100"},
                {"LastName": "Outsider", "Email": "out@acme.com"},
            ],
            "leads": [
                {"LastName": "Evans", "Company": "Initech", "Email": "eve@gmail.com"},
                {"LastName": "Fischer", "Company": "Hooli", "Email": "fritz@hooli.com", "IsConverted": True},
                {"LastName": "Gray", "Company": "Umbrella", "Email": None,
                 "ApexVerify_Phone_Verified_At__c": "2024-05-01T10:00:00Z", "Phone": "020 7946 0000"},
            ],
        },
    )  # fmt: skip
    contacts, leads = people["contacts"], people["leads"]
    members = [{"ContactId": c} for c in contacts[:3]] + [{"LeadId": lead} for lead in leads]
    campaign = control(sandbox, "seed", {"campaigns": [{"Name": "Spring", "members": members}]})
    [fritz] = people["converted"]  # seeded converted: to a contact of its own, as on Salesforce
    return {
        "contacts": contacts,
        "leads": leads,
        "fritz_contact": fritz["ContactId"],
        "campaign": campaign["campaigns"][0]["Id"],
    }


def verdict(status: str = "valid", *, is_role: bool | None = False) -> Verdict:
    return Verdict(
        status=status,
        valid=status == "valid",
        wrong=status in ("wrong", "invalid_format"),
        unknown=status == "unknown",
        is_role=is_role,
        is_disposable=False,
        verified_at=NOW,
    )


def by_id(records: list[SourceRecord]) -> list[SourceRecord]:
    return sorted(records, key=lambda record: record.record_id)


# ---- segments ----------------------------------------------------------------------------------


def campaign_source(api: SalesforceApi, campaign: str, **options: Any) -> SalesforceSegmentSource:
    source = {"kind": "salesforce_campaign", "ref": campaign, "object": options.pop("object", None)}
    return SalesforceSegmentSource(api, source, options.pop("type_", "email"), **options)


def test_a_campaign_read_over_rest_and_bulk_yields_the_same_contacts_and_leads(
    api: SalesforceApi, sandbox: SandboxServer
) -> None:
    seeded = seed_campaign(sandbox)
    (ada, ben, costa, _), (eve, _, gray) = seeded["contacts"], seeded["leads"]

    over_rest = list(campaign_source(api, seeded["campaign"]).iter_records())
    over_bulk = list(
        campaign_source(api, seeded["campaign"], bulk_threshold=0, bulk_page_records=2).iter_records()
    )

    expected = [
        SourceRecord(ada, "ada@acme.com", "Contact", VERIFIED),
        SourceRecord(ben, "ADA@acme.com ", "Contact", None),  # normalizing is the pipeline's job
        SourceRecord(costa, None, "Contact", None),
        SourceRecord(eve, "eve@gmail.com", "Lead", None),
        # The converted lead's member is read as the contact it became, with the lead's email.
        SourceRecord(seeded["fritz_contact"], "fritz@hooli.com", "Contact", None),
        SourceRecord(gray, None, "Lead", None),
    ]
    assert by_id(over_rest) == by_id(over_bulk) == by_id(expected)
    state = sandbox_state(sandbox)
    assert len(state["query_jobs"]) == 1
    assert state["requests"][QUERY_RESULTS] == 3  # 6 rows, 2 a page: paged by Sforce-Locator
    assert not list(Path(api.settings.data_dir).rglob("*.csv")), "result pages are deleted once read"


def test_a_generated_campaign_pages_the_same_over_rest_and_bulk_and_keeps_to_its_object(
    api: SalesforceApi, sandbox: SandboxServer
) -> None:
    generated = control(sandbox, "seed", {"generate": {"campaign_members": 2500, "lead_ratio": 0.3}})
    campaign, counts = generated["campaign_id"], generated["generated"]

    over_rest = list(campaign_source(api, campaign).iter_records())
    over_bulk = list(
        campaign_source(api, campaign, bulk_threshold=100, bulk_page_records=1000).iter_records()
    )

    assert len(over_rest) == 2500 and over_rest == over_bulk
    assert requests_to(sandbox, f"GET {ROUTE}/query/{{locator}}") == 1  # 2,500 rows: two REST pages
    assert sum(record.value is None for record in over_rest) == 2500 // 61  # missing_email_every
    leads = list(campaign_source(api, campaign, object="Lead").iter_records())
    contacts = list(campaign_source(api, campaign, object="Contact", bulk_threshold=0).iter_records())
    # A converted lead's member is its contact's: read with the contacts, never with the leads.
    assert counts["converted_leads"] == 2500 // 200
    assert len(leads) == counts["leads"] - counts["converted_leads"] and {r.object_type for r in leads} == {
        "Lead"
    }
    assert len(contacts) == counts["contacts"] and {r.object_type for r in contacts} == {"Contact"}
    assert all(record.record_id.startswith("00Q") for record in leads)
    converted = api.query("SELECT ConvertedContactId FROM Lead WHERE IsConverted = TRUE")["records"]
    became = {str(lead["ConvertedContactId"]) for lead in converted}
    assert len(became) == counts["converted_leads"] and became <= {r.record_id for r in contacts}
    assert became <= {r.record_id for r in over_rest}


def test_a_soql_segment_selects_by_where_clause_for_email_and_phone(
    api: SalesforceApi, sandbox: SandboxServer
) -> None:
    seeded = seed_campaign(sandbox)
    (ada, ben, costa, outsider), (_, _, gray) = seeded["contacts"], seeded["leads"]

    def soql(object_: str, where: str, type_: str, **options: Any) -> list[SourceRecord]:
        source = {"kind": "salesforce_soql", "ref": where, "object": object_}
        return by_id(list(SalesforceSegmentSource(api, source, type_, **options).iter_records()))

    acme = soql("Contact", "Email LIKE '%@acme.com%'", "email")
    assert acme == soql("Contact", "Email LIKE '%@acme.com%'", "email", bulk_threshold=0)
    assert acme == by_id(
        [
            SourceRecord(ada, "ada@acme.com", "Contact", VERIFIED),
            SourceRecord(ben, "ADA@acme.com ", "Contact", None),
            SourceRecord(outsider, "out@acme.com", "Contact", None),
        ]
    )
    assert soql("Lead", "Phone != NULL", "phone") == [SourceRecord(gray, "020 7946 0000", "Lead", VERIFIED)]
    assert soql("Contact", "Phone != NULL", "phone", bulk_threshold=0) == [
        SourceRecord(costa, "+1 415 555 0100", "Contact", None)
    ]


def test_a_bad_where_clause_or_an_unknown_campaign_fails_with_salesforces_reason(api: SalesforceApi) -> None:
    source = {"kind": "salesforce_soql", "ref": "Email = ", "object": "Contact"}
    with pytest.raises(ConnectorError) as malformed:
        list(SalesforceSegmentSource(api, source, "email").iter_records())
    assert malformed.value.code == "malformed_query"

    with pytest.raises(ConnectorError) as unknown:
        list(campaign_source(api, "701Dn0000000zzz").iter_records())
    assert unknown.value.code == "salesforce_campaign_not_found"

    with pytest.raises(ConnectorError) as malformed_id:
        campaign_source(api, "701Dn0000000zzzAAA")  # the case-safe suffix does not match
    assert malformed_id.value.code == "invalid_ref"


def test_a_bulk_query_still_running_at_the_step_budget_is_resumed_not_started_again(
    settings: Settings, sandbox: SandboxServer, sleeps: list[float]
) -> None:
    seeded = seed_campaign(sandbox)
    control(sandbox, "config", {"bulk_delay": 3600})
    impatient = SalesforceApi(replace(settings, step_lease_seconds=1), sleep=sleeps.append)

    with pytest.raises(TransientError) as running:
        list(campaign_source(impatient, seeded["campaign"], bulk_threshold=0).iter_records())
    assert running.value.code == "salesforce_bulk_query_running"

    control(sandbox, "config", {"bulk_delay": 0})
    records = list(campaign_source(impatient, seeded["campaign"], bulk_threshold=0).iter_records())
    assert len(records) == 6
    assert len(sandbox_state(sandbox)["query_jobs"]) == 1


# ---- records by id -----------------------------------------------------------------------------


def test_the_reader_finds_contacts_and_leads_by_id_in_chunks_and_leaves_unknown_ids_out(
    api: SalesforceApi, sandbox: SandboxServer
) -> None:
    contacts = control(
        sandbox, "seed", {"contacts": [{"LastName": f"C{n}", "Email": f"c{n}@x.com"} for n in range(250)]}
    )
    leads = control(sandbox, "seed", {"leads": [{"LastName": "L", "Company": "Co", "Email": "l@x.com"}]})
    contact_ids, [lead] = contacts["contacts"], leads["leads"]
    control(sandbox, "seed", {"contacts": [{"LastName": "Dup", "Email": "d@x.com"}]})

    wrong_suffix = contact_ids[1][:15] + "AAA"  # Salesforce would refuse the whole query over it
    asked = [lead, contact_ids[0][:15], UNKNOWN_CONTACT, wrong_suffix, "x'); DELETE", *contact_ids[1:]]
    found = list(SalesforceRecordReader(api).read_records(asked, "email"))

    # By object in the order first asked, each record under the id it was asked by.
    assert [record.record_id for record in found] == [lead, contact_ids[0][:15], *contact_ids[1:]]
    assert found[1] == SourceRecord(contact_ids[0][:15], "c0@x.com", "Contact", None)
    assert found[0] == SourceRecord(lead, "l@x.com", "Lead", None)
    assert requests_to(sandbox, f"GET {ROUTE}/query") == 3  # 251 contact ids in 2 chunks, 1 lead


# ---- the field check ---------------------------------------------------------------------------


def test_prepare_names_every_missing_or_read_only_field_before_anything_is_written(
    api: SalesforceApi, sandbox: SandboxServer, tmp_path: Path
) -> None:
    control(
        sandbox,
        "config",
        {
            "missing_fields": {"Contact": ["ApexVerify_Is_Role__c", "ApexVerify_Status__c"]},
            "readonly_fields": {"Lead": ["ApexVerify_Verified_At__c"]},
        },
    )

    with pytest.raises(ConnectorError) as missing:
        SalesforceFlagWriter(api, "email", work_dir=tmp_path).prepare()

    assert missing.value.code == "salesforce_fields_missing"
    assert "Contact: missing or not updateable: ApexVerify_Is_Role__c, ApexVerify_Status__c" in str(
        missing.value
    )
    assert "Lead: missing or not updateable: ApexVerify_Verified_At__c" in str(missing.value)
    assert requests_to(sandbox, COLLECTIONS) == 0 and not sandbox_state(sandbox)["ingest_jobs"]
    # Only the objects (and the type) the sync writes are checked.
    SalesforceFlagWriter(api, "email", objects=("Lead",), work_dir=tmp_path, field_names={
        "ApexVerify_Verified_At__c": "ApexVerify_Phone_Verified_At__c"}).prepare()  # fmt: skip
    SalesforceFlagWriter(api, "phone", objects=("Contact",), work_dir=tmp_path).prepare()


# ---- writing flags -----------------------------------------------------------------------------


def seed_write_targets(sandbox: SandboxServer) -> dict[str, str]:
    people = control(
        sandbox,
        "seed",
        {
            "contacts": [
                {"LastName": name, "Email": f"{name}@x.com"} for name in ("ok1", "ok2", "gone", "rule")
            ],
            "leads": [
                {"LastName": "lead", "Company": "Co", "Email": "lead@x.com"},
                {"LastName": "conv", "Company": "Co", "Email": "conv@x.com", "IsConverted": True},
            ],
        },
    )
    ids = dict(zip(("ok1", "ok2", "gone", "rule"), people["contacts"], strict=True))
    ids.update(zip(("lead", "conv"), people["leads"], strict=True))
    control(sandbox, "seed", {"deleted_ids": [ids["gone"]], "validation_rule_ids": [ids["rule"]]})
    return ids


def updates_for(ids: dict[str, str]) -> Iterator[FlagUpdate]:
    """Interleaved contacts and leads; some name their object, some leave it to the id's prefix."""
    yield FlagUpdate(ids["ok1"], "Contact", verdict("valid"))
    yield FlagUpdate(ids["lead"], "Lead", verdict("wrong", is_role=True))
    yield FlagUpdate(ids["gone"], None, verdict())
    yield FlagUpdate(ids["conv"], None, verdict())
    yield FlagUpdate(ids["ok2"], None, verdict("unknown", is_role=None))
    yield FlagUpdate(ids["rule"], "Contact", verdict())


def assert_written(sandbox: SandboxServer, ids: dict[str, str]) -> None:
    expected = {
        "ok1": (True, False, False, "valid"),
        "lead": (False, True, True, "wrong"),
        "ok2": (False, False, False, "unknown"),  # an unknown role flag unchecks the box
    }
    for name, (valid, wrong, role, status) in expected.items():
        fields = sandbox_record(sandbox, ids[name])["fields"]
        assert (fields["ApexVerify_Valid__c"], fields["ApexVerify_Wrong__c"]) == (valid, wrong), name
        assert (fields["ApexVerify_Is_Role__c"], fields["ApexVerify_Status__c"]) == (role, status), name
        assert fields["ApexVerify_Verified_At__c"] == "2025-03-02T08:30:15.250+0000", name
    for name in ("gone", "conv", "rule"):
        assert sandbox_record(sandbox, ids[name])["fields"]["ApexVerify_Status__c"] is None, name


def failures_by_name(failures: list[WriteFailure], ids: dict[str, str]) -> dict[str, str]:
    names = {record_id: name for name, record_id in ids.items()}
    return {names[failure.record_id]: failure.code for failure in failures}


def test_rest_write_back_records_per_record_refusals_and_writes_the_rest(
    api: SalesforceApi, sandbox: SandboxServer, tmp_path: Path
) -> None:
    ids = seed_write_targets(sandbox)
    writer = SalesforceFlagWriter(api, "email", work_dir=tmp_path)

    failures = writer.write(updates_for(ids))

    assert writer.batch_size == 200
    assert failures_by_name(failures, ids) == {
        "gone": "ENTITY_IS_DELETED",
        "conv": "CANNOT_UPDATE_CONVERTED_LEAD",
        "rule": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    }
    assert all(failure.message for failure in failures)
    assert_written(sandbox, ids)
    assert requests_to(sandbox, COLLECTIONS) == 1


def test_rest_write_back_sends_200_records_a_call(
    api: SalesforceApi, sandbox: SandboxServer, tmp_path: Path
) -> None:
    contacts = control(sandbox, "seed", {"contacts": [{"LastName": f"C{n}"} for n in range(450)]})["contacts"]

    failures = SalesforceFlagWriter(api, "phone", work_dir=tmp_path).write(
        FlagUpdate(record_id, None, verdict("valid")) for record_id in contacts
    )

    assert failures == []
    assert requests_to(sandbox, COLLECTIONS) == 3
    last = sandbox_record(sandbox, contacts[-1])["fields"]
    assert (last["ApexVerify_Phone_Status__c"], last["ApexVerify_Phone_Valid__c"]) == ("valid", True)


def test_bulk_write_back_runs_one_ingest_job_per_object_and_reports_failed_results(
    api: SalesforceApi, sandbox: SandboxServer, tmp_path: Path
) -> None:
    ids = seed_write_targets(sandbox)
    writer = SalesforceFlagWriter(api, "email", expected_updates=6, bulk_threshold=5, work_dir=tmp_path)

    failures = writer.write(updates_for(ids))

    assert writer.batch_size == 500_000
    assert failures_by_name(failures, ids) == {
        "gone": "ENTITY_IS_DELETED",
        "conv": "CANNOT_UPDATE_CONVERTED_LEAD",
        "rule": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    }
    messages = {failure.code: failure.message for failure in failures}
    assert messages["CANNOT_UPDATE_CONVERTED_LEAD"] == "cannot reference converted lead"
    assert_written(sandbox, ids)
    state = sandbox_state(sandbox)
    assert sorted(state["ingest_jobs"].values()) == ["JobComplete", "JobComplete"]
    assert requests_to(sandbox, COLLECTIONS) == 0
    assert not list(tmp_path.iterdir()), "ingest files and markers are removed once the job is done"


def test_a_bulk_write_still_running_is_resumed_by_the_retried_batch(
    settings: Settings, sandbox: SandboxServer, tmp_path: Path, sleeps: list[float]
) -> None:
    ids = seed_write_targets(sandbox)
    control(sandbox, "config", {"bulk_delay": 3600})
    impatient = SalesforceApi(replace(settings, step_lease_seconds=1), sleep=sleeps.append)
    writer = SalesforceFlagWriter(impatient, "email", expected_updates=6, bulk_threshold=5, work_dir=tmp_path)

    with pytest.raises(TransientError) as running:
        writer.write(updates_for(ids))
    assert running.value.code == "salesforce_bulk_ingest_running"

    control(sandbox, "config", {"bulk_delay": 0})
    failures = writer.write(updates_for(ids))

    assert set(failures_by_name(failures, ids)) == {"gone", "conv", "rule"}
    assert len(sandbox_state(sandbox)["ingest_jobs"]) == 2  # the Contact job resumed, the Lead job new
    assert_written(sandbox, ids)


# ---- limits, outages and sessions --------------------------------------------------------------


# ---- what became of refused records -----------------------------------------------------------


def seed_fates(sandbox: SandboxServer, api: SalesforceApi) -> dict[str, str]:
    """Records a write-back finds converted, deleted, or refusing for another reason; ids by name."""
    people = control(
        sandbox,
        "seed",
        {
            "contacts": [
                {"LastName": "kept", "Email": "kept@acme.com"},
                {"LastName": "gone", "Email": "gone@acme.com"},
                {"LastName": "rule", "Email": "rule@acme.com"},
                {"LastName": "owner", "Email": "owner@acme.com", "Phone": "+1 415 555 0101"},
            ],
            "leads": [
                {"LastName": "lena", "Company": "Hooli", "Email": "lena@hooli.com",
                 "Phone": "+1 415 555 0102"},
                {"LastName": "max", "Company": "Initech", "Email": "max@initech.com"},
                {"LastName": "orphan", "Company": "Umbrella", "Email": "orphan@umbrella.com"},
                {"LastName": "early", "Company": "Co", "Email": "early@co.com", "IsConverted": True},
                {"LastName": "lead_gone", "Company": "Co", "Email": "lead_gone@co.com"},
            ],
        },
    )  # fmt: skip
    ids = dict(zip(("kept", "gone", "rule", "owner"), people["contacts"], strict=True))
    ids.update(zip(("lena", "max", "orphan", "early", "lead_gone"), people["leads"], strict=True))
    ids["early_contact"] = people["converted"][0]["ContactId"]  # seeded converted: to a new contact
    control(sandbox, "seed", {"validation_rule_ids": [ids["rule"]]})
    contacts = converted_to(
        sandbox,
        {"LeadId": ids["lena"]},  # a new contact, with the lead's email and phone
        {"LeadId": ids["max"], "ContactId": ids["owner"]},  # merged into a contact with its own email
        {"LeadId": ids["orphan"]},  # its contact is deleted afterwards
    )
    ids["lena_contact"], ids["orphan_contact"] = contacts[ids["lena"]], contacts[ids["orphan"]]
    for object_name, name in (("Contact", "gone"), ("Lead", "lead_gone"), ("Contact", "orphan_contact")):
        api.rest("DELETE", f"sobjects/{object_name}/{ids[name]}")  # to the recycle bin, as a user would
    return ids


@pytest.mark.parametrize("bulk", [False, True], ids=["rest", "bulk"])
def test_fates_follow_converted_leads_to_their_contacts_and_confirm_deletions(
    api: SalesforceApi, sandbox: SandboxServer, tmp_path: Path, bulk: bool
) -> None:
    ids = seed_fates(sandbox, api)
    names = ("kept", "gone", "rule", "lena", "max", "orphan", "early", "lead_gone")
    asked = [ids[name] for name in names] + [UNKNOWN_CONTACT, "not-an-id"]
    writer = SalesforceFlagWriter(api, "email", expected_updates=10, bulk_threshold=5 if bulk else 1000,
                                  work_dir=tmp_path)  # fmt: skip
    failures = writer.write(FlagUpdate(record_id, None, verdict()) for record_id in asked)
    assert writer.bulk is bulk
    # The refusals as Salesforce gives them, REST and Bulk alike.
    assert {f.record_id: f.code for f in failures} == {
        ids["gone"]: "ENTITY_IS_DELETED",
        ids["rule"]: "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        ids["lena"]: "CANNOT_UPDATE_CONVERTED_LEAD",
        ids["max"]: "CANNOT_UPDATE_CONVERTED_LEAD",
        ids["orphan"]: "CANNOT_UPDATE_CONVERTED_LEAD",
        ids["early"]: "CANNOT_UPDATE_CONVERTED_LEAD",
        ids["lead_gone"]: "ENTITY_IS_DELETED",
        UNKNOWN_CONTACT: "INVALID_CROSS_REFERENCE_KEY",
        "not-an-id": "MALFORMED_ID",
    }
    # A refusal saying "deleted" for a record that is there after all (restored since, say).
    failures.append(WriteFailure(ids["kept"], "ENTITY_IS_DELETED", "entity is deleted"))

    fates = SalesforceRecordReader(api).fates(failures, "email")

    assert sorted(fates, key=lambda fate: fate.record_id) == sorted(
        [
            RecordFate(ids["lena"], CONVERTED_TO, ids["lena_contact"], "Contact", "lena@hooli.com"),
            RecordFate(ids["max"], CONVERTED_TO, ids["owner"], "Contact", "owner@acme.com"),
            RecordFate(ids["orphan"], DELETED),  # the contact it became is deleted too
            RecordFate(ids["early"], CONVERTED_TO, ids["early_contact"], "Contact", "early@co.com"),
            RecordFate(ids["gone"], DELETED),
            RecordFate(ids["lead_gone"], DELETED),
            RecordFate(UNKNOWN_CONTACT, DELETED),  # a query confirms no such record
        ],
        key=lambda fate: fate.record_id,
    )  # left out: kept (found as it was), rule, not-an-id


def test_fates_read_the_successors_phone_and_ask_200_ids_a_query(
    api: SalesforceApi, sandbox: SandboxServer
) -> None:
    ids = seed_fates(sandbox, api)
    deleted = control(sandbox, "seed", {"contacts": [{"LastName": f"D{n}"} for n in range(450)]})["contacts"]
    control(sandbox, "seed", {"deleted_ids": deleted})
    failures = [WriteFailure(record_id, "ENTITY_IS_DELETED", "entity is deleted") for record_id in deleted]
    failures += [WriteFailure(ids[name], "CANNOT_UPDATE_CONVERTED_LEAD", "x") for name in ("lena", "max")]
    queries = requests_to(sandbox, f"GET {ROUTE}/query")

    fates = SalesforceRecordReader(api).fates(failures, "phone")

    by_id = {fate.record_id: fate for fate in fates}
    assert by_id[ids["lena"]].successor_value == "+1 415 555 0102"
    assert by_id[ids["max"]].successor_value == "+1 415 555 0101"  # the contact's own phone
    assert {by_id[record_id].reason for record_id in deleted} == {DELETED} and len(fates) == 452
    # 450 contacts in 3 queries; the 2 leads in 1, their contacts in 1.
    assert requests_to(sandbox, f"GET {ROUTE}/query") - queries == 5
    assert SalesforceRecordReader(api).fates([], "email") == []


@pytest.mark.parametrize("bulk", [False, True], ids=["rest", "bulk"])
def test_a_locked_row_is_a_transient_failure_and_takes_the_write_again(
    api: SalesforceApi, sandbox: SandboxServer, tmp_path: Path, bulk: bool
) -> None:
    ids = seed_write_targets(sandbox)
    control(sandbox, "locks", {"ids": [ids["ok1"]]})
    writer = SalesforceFlagWriter(api, "email", expected_updates=6, bulk_threshold=5 if bulk else 1000,
                                  work_dir=tmp_path)  # fmt: skip

    failures = writer.write(updates_for(ids))

    assert {failure.code: failure.transient for failure in failures} == {
        "UNABLE_TO_LOCK_ROW": True,  # ok1's: the write-back tries it again in the same run
        "ENTITY_IS_DELETED": False,
        "CANNOT_UPDATE_CONVERTED_LEAD": False,
        "FIELD_CUSTOM_VALIDATION_EXCEPTION": False,
    }
    assert failures_by_name(failures, ids)["ok1"] == "UNABLE_TO_LOCK_ROW"
    assert writer.write([FlagUpdate(ids["ok1"], "Contact", verdict())]) == []
    assert sandbox_record(sandbox, ids["ok1"])["fields"]["ApexVerify_Status__c"] == "valid"


def read_one(api: SalesforceApi, record_id: str) -> list[SourceRecord]:
    return list(SalesforceRecordReader(api).read_records([record_id], "email"))


def test_the_daily_reserve_pauses_before_the_allocation_is_used_up(
    api: SalesforceApi, sandbox: SandboxServer
) -> None:
    [contact] = control(sandbox, "seed", {"contacts": [{"LastName": "A", "Email": "a@x.com"}]})["contacts"]
    control(sandbox, "config", {"daily_api_limit": 100, "api_usage": 80})

    with pytest.raises(TransientError) as paused:
        for _ in range(100):
            read_one(api, contact)

    assert paused.value.code == "salesforce_daily_limit"
    assert 0 < paused.value.retry_after <= 24 * 3600
    state = sandbox_state(sandbox)
    assert state["api_usage"] == 90  # 10% of 100 kept in reserve
    assert state["request_limited"] == 0
    assert api.api_usage == (90, 100)


def test_request_limit_exceeded_is_a_pause_until_the_next_day(
    api: SalesforceApi, sandbox: SandboxServer
) -> None:
    control(sandbox, "faults", {"endpoint": "any", "kind": "request_limit", "count": 1})

    with pytest.raises(TransientError) as paused:
        read_one(api, UNKNOWN_CONTACT)

    assert paused.value.code == "salesforce_daily_limit"
    assert paused.value.retry_after > 0


def test_5xx_answers_are_retried_with_capped_backoff_then_pause_the_step(
    api: SalesforceApi, sandbox: SandboxServer, sleeps: list[float]
) -> None:
    [contact] = control(sandbox, "seed", {"contacts": [{"LastName": "A", "Email": "a@x.com"}]})["contacts"]
    control(sandbox, "faults", {"endpoint": f"GET {ROUTE}/query", "kind": "http_503", "count": 2})

    assert [r.value for r in read_one(api, contact)] == ["a@x.com"]
    assert sleeps == [1.0, 2.0]

    sleeps.clear()
    control(sandbox, "faults", {"endpoint": "any", "kind": "http_500", "count": 20})
    with pytest.raises(TransientError) as unavailable:
        read_one(api, contact)
    assert unavailable.value.code == "salesforce_unavailable"
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_an_expired_session_is_refreshed_once_with_client_credentials(
    settings: Settings, sandbox: SandboxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ids = seed_write_targets(sandbox)
    with_credentials = settings_with(
        settings, salesforce_client_id=CLIENT_ID, salesforce_client_secret=CLIENT_SECRET
    )
    api = SalesforceApi(with_credentials, sleep=lambda _: None)
    assert [r.value for r in read_one(api, ids["ok1"])] == ["ok1@x.com"]

    control(sandbox, "config", {"expire_token": True})
    assert [r.value for r in read_one(api, ids["ok1"])] == ["ok1@x.com"]
    # Bulk API 2.0 calls, which simple-salesforce never refreshes itself, go through the same door.
    control(sandbox, "config", {"expire_token": True})
    writer = SalesforceFlagWriter(api, "email", expected_updates=6, bulk_threshold=5, work_dir=tmp_path)
    assert len(writer.write(updates_for(ids))) == 3

    assert api.refreshes == 2
    assert requests_to(sandbox, "POST /services/oauth2/token") == 2
    assert TOKEN not in caplog.text


def test_an_expired_session_without_client_credentials_fails_without_showing_the_token(
    api: SalesforceApi, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    control(sandbox, "config", {"expire_token": True})

    with pytest.raises(ConnectorError) as refused:
        read_one(api, UNKNOWN_CONTACT)

    assert refused.value.code == "salesforce_unauthorized"
    assert not isinstance(refused.value, TransientError)
    assert TOKEN not in str(refused.value) and TOKEN not in repr(refused.value.to_dict())
    assert TOKEN not in caplog.text


def test_client_credentials_the_org_refuses_fail_as_unauthorized(
    settings: Settings, sandbox: SandboxServer
) -> None:
    wrong = settings_with(
        settings,
        salesforce_access_token=None,
        salesforce_client_id=CLIENT_ID,
        salesforce_client_secret="not-the-secret",
    )

    with pytest.raises(ConnectorError) as refused:
        read_one(SalesforceApi(wrong), UNKNOWN_CONTACT)

    assert refused.value.code == "salesforce_unauthorized"
    assert "not-the-secret" not in str(refused.value)
