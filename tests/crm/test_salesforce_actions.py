"""Salesforce verdict actions against the Salesforce sandbox, over real HTTP with the real
simple-salesforce: Email Opt Out and campaign membership through sObject Collections and Bulk API 2.0,
what a batch cut short already did, a member never created twice, and what `prepare` refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from connector.config import Settings
from connector.crm.base import ActionTarget, CrmContext, VerdictAction, WriteFailure
from connector.crm.registry import crm_named
from connector.crm.salesforce.actions import SalesforceActionRunner
from connector.errors import ConnectorError
from connector.sandbox.server import SandboxServer
from tests.conftest import settings_with
from tests.crm import test_crm_salesforce
from tests.crm.test_crm_salesforce import CLIENT_ID, CLIENT_SECRET, TOKEN
from tests.sandbox.test_sandbox_salesforce import control, sandbox_record, sandbox_state

ROUTE = "/services/data/v{version}"
UPDATE_COLLECTION = f"PATCH {ROUTE}/composite/sobjects"
CREATE_COLLECTION = f"POST {ROUTE}/composite/sobjects"
CREATE_JOB = f"POST {ROUTE}/jobs/ingest"
QUERY = f"GET {ROUTE}/query"
OPT_OUT = VerdictAction(when="wrong", do="opt_out")


# The CRM tests' Salesforce sandbox, one a module, reset before each test.
sandbox, fresh = test_crm_salesforce.sandbox, test_crm_salesforce.fresh


@pytest.fixture
def settings(sandbox: SandboxServer, tmp_path: Path) -> Settings:
    return settings_with(
        Settings(),
        salesforce_instance_url=sandbox.url,
        salesforce_access_token=TOKEN,
        salesforce_client_id=CLIENT_ID,
        salesforce_client_secret=CLIENT_SECRET,
        data_dir=tmp_path / "var",
        poll_initial_seconds=0.01,
        poll_max_seconds=0.05,
        step_lease_seconds=30,
        crm_bulk_threshold=3,
    )


def runner(settings: Settings, tmp_path: Path, expected: int) -> SalesforceActionRunner:
    """The runner as the CRM's factory makes it (bulk above settings.crm_bulk_threshold = 3)."""
    crm = crm_named("salesforce")
    assert crm is not None and crm.action_runner is not None
    # The runner keeps no state in Redis: a client that never connects will do.
    context = CrmContext(settings, redis.Redis(), lambda seconds: None, tmp_path / "sync")
    made = crm.action_runner(context, "email", expected)
    assert isinstance(made, SalesforceActionRunner)
    return made


def requests_to(sandbox: SandboxServer, route: str) -> int:
    return int(sandbox_state(sandbox)["requests"].get(route, 0))


def control_get(url: str) -> dict[str, Any]:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def seed(sandbox: SandboxServer) -> dict[str, str]:
    """Contacts and leads, a campaign with one member, a converted lead; ids by role."""
    people = control(
        sandbox,
        "seed",
        {
            "contacts": [
                {"LastName": "Adams", "Email": "ada@acme.com"},
                {"LastName": "Berg", "Email": "ben@globex.com"},
                {"LastName": "Costa", "Email": "cleo@mailinator.com"},
            ],
            "leads": [
                {"LastName": "Evans", "Company": "Initech", "Email": "eve@gmail.com"},
                {"LastName": "Fischer", "Company": "Hooli", "Email": "fritz@hooli.com", "IsConverted": True},
            ],
        },
    )
    ada, ben, cleo = people["contacts"]
    eve, fritz = people["leads"]
    campaign = control(sandbox, "seed", {"campaigns": [{"Name": "Bounced", "members": [{"ContactId": ada}]}]})
    return {
        "ada": ada,
        "ben": ben,
        "cleo": cleo,
        "eve": eve,
        "fritz": fritz,
        "campaign": campaign["campaigns"][0]["Id"],
    }


def target(record_id: str, object_type: str | None = None) -> ActionTarget:
    return ActionTarget(record_id, object_type, "someone@example.com")


def opted_out(sandbox: SandboxServer, *record_ids: str) -> list[bool]:
    return [sandbox_record(sandbox, record_id)["fields"]["HasOptedOutOfEmail"] for record_id in record_ids]


def created(sandbox: SandboxServer) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = sandbox_state(sandbox)["campaign_members_created"]
    return found


def campaign_action(people: dict[str, str], status: str | None = None) -> VerdictAction:
    return VerdictAction(when="disposable", do="add_to_campaign", target=people["campaign"], status=status)


def assert_no_contact_value(failures: list[WriteFailure]) -> None:
    for failure in failures:
        assert "@" not in failure.message and "someone" not in failure.message


# ---- opt_out ----


def test_opt_out_checks_the_box_of_exactly_the_targets_over_rest(
    sandbox: SandboxServer, settings: Settings, tmp_path: Path
) -> None:
    people = seed(sandbox)
    control(sandbox, "config", {"track_writes": ["HasOptedOutOfEmail"]})
    actions = runner(settings, tmp_path, expected=3)
    assert (actions.bulk, actions.batch_size) == (False, 200)
    actions.prepare(OPT_OUT)
    targets = [target(people["ada"], "Contact"), target(people["eve"]), target("0015g00000XyZ12")]

    assert actions.already_done(OPT_OUT, targets) == set()
    failures = actions.run(OPT_OUT, targets)

    assert [(f.record_id, f.code) for f in failures] == [("0015g00000XyZ12", "MALFORMED_ID")]
    assert opted_out(sandbox, people["ada"], people["eve"], people["ben"], people["cleo"]) == [
        True,
        True,
        False,
        False,
    ]
    assert requests_to(sandbox, UPDATE_COLLECTION) == 1
    assert actions.already_done(OPT_OUT, targets + [target(people["ben"])]) == {people["ada"], people["eve"]}
    assert actions.already_done(OPT_OUT, [target(people["ada"][:15])]) == {people["ada"][:15]}
    writes = sandbox.url + "/_sandbox/writes?field=HasOptedOutOfEmail"
    assert control_get(writes)["records"] == {people["ada"]: [True], people["eve"]: [True]}


def test_opt_out_in_bulk_writes_one_ingest_job_per_object(
    sandbox: SandboxServer, settings: Settings, tmp_path: Path
) -> None:
    people = seed(sandbox)
    actions = runner(settings, tmp_path, expected=4)
    assert actions.bulk
    targets = [target(people[name]) for name in ("ada", "ben", "eve", "fritz")]

    failures = actions.run(OPT_OUT, targets)

    # A converted lead cannot be updated: Salesforce's refusal, per record.
    assert [(f.record_id, f.code) for f in failures] == [(people["fritz"], "CANNOT_UPDATE_CONVERTED_LEAD")]
    assert_no_contact_value(failures)
    assert opted_out(sandbox, people["ada"], people["ben"], people["eve"], people["cleo"]) == [
        True,
        True,
        True,
        False,
    ]
    assert requests_to(sandbox, CREATE_JOB) == 2  # Contact and Lead
    assert requests_to(sandbox, UPDATE_COLLECTION) == 0
    assert actions.already_done(OPT_OUT, targets + [target(people["cleo"])]) == {
        people["ada"],
        people["ben"],
        people["eve"],
    }
    assert not list((tmp_path / "sync" / "actions").glob("*.csv"))  # no job file left behind


# ---- add_to_campaign ----


def test_add_to_campaign_creates_each_member_once_over_rest(
    sandbox: SandboxServer, settings: Settings, tmp_path: Path
) -> None:
    people = seed(sandbox)
    action = campaign_action(people, status="Responded")
    actions = runner(settings, tmp_path, expected=2)
    actions.prepare(action)
    targets = [target(people[name]) for name in ("ada", "cleo", "eve", "fritz")]

    assert actions.already_done(action, targets) == {people["ada"]}
    failures = actions.run(action, targets)

    # ada was a member already: DUPLICATE_VALUE counts as done; fritz is a converted lead.
    assert [(f.record_id, f.code) for f in failures] == [(people["fritz"], "CANNOT_UPDATE_CONVERTED_LEAD")]
    assert_no_contact_value(failures)
    assert created(sandbox) == {people["campaign"]: {people["cleo"]: 1, people["eve"]: 1}}
    assert requests_to(sandbox, CREATE_COLLECTION) == 1
    members = control_get(
        sandbox.url + "/_sandbox/records?object=CampaignMember&field=ContactId&field=LeadId&field=Status"
    )["records"]
    assert sorted((m["ContactId"] or m["LeadId"], m["Status"]) for m in members) == sorted(
        [(people["ada"], "Sent"), (people["cleo"], "Responded"), (people["eve"], "Responded")]
    )

    # A retried batch (the answer lost): nothing is created twice, nothing reported failed but fritz.
    again = actions.run(action, targets)
    assert [f.record_id for f in again] == [people["fritz"]]
    assert created(sandbox) == {people["campaign"]: {people["cleo"]: 1, people["eve"]: 1}}
    assert sandbox_state(sandbox)["duplicate_members_refused"] == 4
    assert actions.already_done(action, targets) == {people["ada"], people["cleo"], people["eve"]}


def test_add_to_campaign_in_bulk_inserts_with_one_job(
    sandbox: SandboxServer, settings: Settings, tmp_path: Path
) -> None:
    people = seed(sandbox)
    action = campaign_action(people)  # no status: the campaign's default, "Sent"
    actions = runner(settings, tmp_path, expected=5)
    assert actions.bulk
    targets = [target(people[name]) for name in ("ada", "ben", "cleo", "eve", "fritz")]

    failures = actions.run(action, targets)

    assert [(f.record_id, f.code) for f in failures] == [(people["fritz"], "CANNOT_UPDATE_CONVERTED_LEAD")]
    assert created(sandbox) == {people["campaign"]: {people[name]: 1 for name in ("ben", "cleo", "eve")}}
    assert requests_to(sandbox, CREATE_JOB) == 1
    assert requests_to(sandbox, CREATE_COLLECTION) == 0
    assert actions.already_done(action, targets) == {people[name] for name in ("ada", "ben", "cleo", "eve")}

    again = actions.run(action, targets)
    assert [f.record_id for f in again] == [people["fritz"]]
    assert created(sandbox) == {people["campaign"]: {people[name]: 1 for name in ("ben", "cleo", "eve")}}
    assert not list((tmp_path / "sync" / "actions").glob("*.csv"))


def test_add_to_campaign_survives_an_expired_session(
    sandbox: SandboxServer, settings: Settings, tmp_path: Path
) -> None:
    people = seed(sandbox)
    action = campaign_action(people)
    actions = runner(settings, tmp_path, expected=1)
    actions.prepare(action)
    control(sandbox, "config", {"expire_token": True})

    assert actions.run(action, [target(people["cleo"])]) == []
    assert actions.api.refreshes == 1
    assert created(sandbox) == {people["campaign"]: {people["cleo"]: 1}}


# ---- prepare ----


def test_prepare_refuses_an_unknown_campaign_or_status_and_a_locked_opt_out_field(
    sandbox: SandboxServer, settings: Settings, tmp_path: Path
) -> None:
    people = seed(sandbox)
    actions = runner(settings, tmp_path, expected=1)
    for campaign in ("701Dn0000000zzz", "not-a-campaign", people["ada"]):
        with pytest.raises(ConnectorError) as missing:
            actions.prepare(VerdictAction(when="wrong", do="add_to_campaign", target=campaign))
        assert missing.value.code == "salesforce_campaign_not_found"
        assert campaign in missing.value.message
    with pytest.raises(ConnectorError) as status:
        actions.prepare(campaign_action(people, status="Attended"))
    assert status.value.code == "salesforce_campaign_status_unknown"
    assert "Sent, Responded" in status.value.message
    actions.prepare(campaign_action(people, status="Responded"))
    assert created(sandbox) == {}  # nothing created by a check

    control(sandbox, "config", {"readonly_fields": {"Lead": ["HasOptedOutOfEmail"]}})
    with pytest.raises(ConnectorError) as locked:
        actions.prepare(OPT_OUT)
    assert locked.value.code == "salesforce_fields_missing"
    assert "HasOptedOutOfEmail" in locked.value.message and "Lead" in locked.value.message


def test_salesforce_declares_its_actions(settings: Settings) -> None:
    crm = crm_named("salesforce")
    assert crm is not None
    kinds = {kind.name: kind for kind in crm.actions}
    assert set(kinds) == {"opt_out", "add_to_campaign"}
    assert kinds["opt_out"].email_only and kinds["opt_out"].target_field is None
    assert kinds["add_to_campaign"].target_field == "campaign_id" and kinds["add_to_campaign"].takes_status
