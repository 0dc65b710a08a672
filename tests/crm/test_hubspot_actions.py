"""HubSpot's verdict actions (opt_out, add_to_list) against the HubSpot sandbox over real HTTP.

The runner is driven the way the pipeline drives it: prepare, run a batch, and after a crash ask
already_done about the batch and run only what is left. The sandbox checks every request against
HubSpot's OpenAPI specs and its own answers too, and counts each unsubscribe request per address,
so "never re-unsubscribed" and "never added twice" are read from the portal, not assumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from connector.config import Settings
from connector.crm.base import ActionTarget, CrmContext, VerdictAction
from connector.crm.hubspot import CRM
from connector.crm.hubspot.actions import HubSpotActionRunner
from connector.crm.hubspot.api import HubSpotApi
from connector.errors import ConnectorError
from connector.sandbox.server import SandboxServer
from tests.crm import test_crm_hubspot as crm_tests
from tests.crm.test_crm_hubspot import TOKEN, SandboxControl

UNSUBSCRIBE = "POST /communication-preferences/v4/statuses/batch/unsubscribe-all"
UNSUBSCRIBE_READ = UNSUBSCRIBE + "/read"
ADD = "PUT /crm/v3/lists/{listId}/memberships/add"
OPT_OUT = VerdictAction(when="wrong", do="opt_out")


# The HubSpot CRM tests' portal (answers validated against the specs) and settings.
sandbox, settings, limiter_redis = crm_tests.sandbox, crm_tests.settings, crm_tests.limiter_redis


@pytest.fixture
def hub(sandbox: SandboxServer) -> Hub:
    hub = Hub(sandbox.url)
    hub.post("/_sandbox/reset", {})
    return hub


@pytest.fixture
def runner(settings: Settings, limiter_redis: redis.Redis) -> HubSpotActionRunner:
    return HubSpotActionRunner(HubSpotApi(settings, limiter_redis), "email", bulk=False)


class Hub(SandboxControl):
    """The sandbox's control endpoints, and what the portal now holds of the actions."""

    def seed_contacts(self, *emails: str) -> list[ActionTarget]:
        contacts = [{"properties": {"email": email}} for email in emails]
        ids = self.post("/_sandbox/seed", {"contacts": contacts})["contactIds"]
        return [
            ActionTarget(record_id, "contact", email.lower())
            for record_id, email in zip(ids, emails, strict=True)
        ]

    def seed_list(self, name: str, members: list[str], processing_type: str = "MANUAL") -> str:
        spec = {"name": name, "contactIds": members, "processingType": processing_type}
        return str(self.post("/_sandbox/seed", {"lists": [spec]})["listIds"][0])

    def requests(self) -> dict[str, int]:
        return dict(self.get("/_sandbox/state")["requests"])

    def unsubscribes(self) -> dict[str, Any]:
        return self.get("/_sandbox/unsubscribes")

    def members(self, list_id: str) -> list[str]:
        page = requests.get(
            f"{self.url}/crm/v3/lists/{list_id}/memberships",
            headers={"Authorization": f"Bearer {TOKEN}"},
            params={"limit": 250},
            timeout=10,
        )
        page.raise_for_status()
        return [member["recordId"] for member in page.json()["results"]]


def rerun(runner: HubSpotActionRunner, action: VerdictAction, targets: list[ActionTarget]) -> list[Any]:
    """What the pipeline does for a batch whose call may have been made before a crash."""
    done = runner.already_done(action, targets)
    return runner.run(action, [t for t in targets if t.record_id not in done])


# ---- opt_out ------------------------------------------------------------------------------------


def test_opt_out_unsubscribes_exactly_the_targets_and_a_retry_sends_nothing(
    hub: Hub, runner: HubSpotActionRunner
) -> None:
    targets = hub.seed_contacts("ann@acme.com", "Bob@Globex.com", "cy@initech.com")
    bystander = hub.seed_contacts("dee@acme.com")

    runner.prepare(OPT_OUT)
    assert runner.run(OPT_OUT, targets[:2]) == []

    assert hub.unsubscribes() == {
        "unsubscribed": ["ann@acme.com", "bob@globex.com"],
        "requests": {"ann@acme.com": 1, "bob@globex.com": 1},
    }
    assert runner.already_done(OPT_OUT, targets + bystander) == {targets[0].record_id, targets[1].record_id}

    before = hub.requests()
    assert rerun(runner, OPT_OUT, targets[:2]) == []
    after = hub.requests()
    assert after.get(UNSUBSCRIBE) == before.get(UNSUBSCRIBE) == 1  # no second unsubscribe call
    assert after[UNSUBSCRIBE_READ] == before[UNSUBSCRIBE_READ] + 1
    assert hub.unsubscribes()["requests"] == {"ann@acme.com": 1, "bob@globex.com": 1}


def test_an_address_already_unsubscribed_in_hubspot_counts_as_done(
    hub: Hub, runner: HubSpotActionRunner
) -> None:
    ann, bob = hub.seed_contacts("ann@acme.com", "bob@acme.com")
    hub.post("/_sandbox/seed", {"unsubscribed": ["ANN@acme.com"]})

    assert runner.already_done(OPT_OUT, [ann, bob]) == {ann.record_id}
    assert rerun(runner, OPT_OUT, [ann, bob]) == []
    assert hub.unsubscribes()["requests"] == {"bob@acme.com": 1}


def test_contacts_sharing_an_address_are_unsubscribed_once_and_both_reported_done(
    hub: Hub, runner: HubSpotActionRunner
) -> None:
    first = hub.seed_contacts("shared@acme.com")[0]
    second = ActionTarget(
        hub.post("/_sandbox/seed", {"contacts": [{"properties": {"firstname": "x"}}]})["contactIds"][0],
        "contact",
        "shared@acme.com",
    )

    assert runner.run(OPT_OUT, [first, second]) == []
    assert hub.unsubscribes()["requests"] == {"shared@acme.com": 1}
    assert runner.already_done(OPT_OUT, [first, second]) == {first.record_id, second.record_id}


def test_an_address_hubspot_refuses_fails_alone_and_its_value_stays_out_of_the_message(
    hub: Hub, runner: HubSpotActionRunner
) -> None:
    good, bad = hub.seed_contacts("ann@acme.com", "ann.at.acme")

    [failure] = runner.run(OPT_OUT, [good, bad])

    assert failure.record_id == bad.record_id
    assert failure.code == "INVALID_EMAIL"
    assert "ann.at.acme" not in failure.message and failure.message
    assert hub.unsubscribes()["unsubscribed"] == ["ann@acme.com"]


def test_opt_out_sends_at_most_100_addresses_a_call(
    hub: Hub, settings: Settings, limiter_redis: redis.Redis
) -> None:
    targets = hub.seed_contacts(*(f"user{i}@acme.com" for i in range(250)))
    bulk = HubSpotActionRunner(HubSpotApi(settings, limiter_redis), "email", bulk=True)
    assert bulk.batch_size >= 250

    assert bulk.run(OPT_OUT, targets) == []
    assert hub.requests()[UNSUBSCRIBE] == 3
    assert len(bulk.already_done(OPT_OUT, targets)) == 250
    assert hub.requests()[UNSUBSCRIBE_READ] == 3


def test_opt_out_is_refused_on_a_phone_segment(settings: Settings, limiter_redis: redis.Redis) -> None:
    phones = HubSpotActionRunner(HubSpotApi(settings, limiter_redis), "phone", bulk=False)
    with pytest.raises(ConnectorError) as refused:
        phones.prepare(OPT_OUT)
    assert refused.value.code == "hubspot_opt_out_needs_email"


# ---- add_to_list --------------------------------------------------------------------------------


def test_add_to_list_adds_exactly_the_targets_and_a_retry_adds_nothing(
    hub: Hub, runner: HubSpotActionRunner
) -> None:
    ann, bob, cy = hub.seed_contacts("ann@acme.com", "bob@acme.com", "cy@acme.com")
    list_id = hub.seed_list("Bad addresses", [ann.record_id])
    gone = ActionTarget("987654", "contact", "gone@acme.com")
    action = VerdictAction(when="wrong", do="add_to_list", target=list_id)

    runner.prepare(action)
    [failure] = runner.run(action, [ann, bob, gone])

    assert failure.record_id == "987654" and failure.code == "OBJECT_NOT_FOUND"
    assert "gone@acme.com" not in failure.message
    assert hub.members(list_id) == [ann.record_id, bob.record_id]
    assert runner.already_done(action, [ann, bob, cy, gone]) == {ann.record_id, bob.record_id}

    before = hub.requests().get(ADD)
    assert rerun(runner, action, [ann, bob]) == []
    assert hub.requests().get(ADD) == before == 1
    assert hub.members(list_id) == [ann.record_id, bob.record_id]


@pytest.mark.parametrize(
    ("list_type", "code"), [("DYNAMIC", "hubspot_list_not_static"), (None, "hubspot_list_not_found")]
)
def test_add_to_list_needs_an_existing_static_list(
    hub: Hub, runner: HubSpotActionRunner, list_type: str | None, code: str
) -> None:
    [ann] = hub.seed_contacts("ann@acme.com")
    list_id = hub.seed_list("Smart list", [ann.record_id], list_type) if list_type else "4040"

    with pytest.raises(ConnectorError) as refused:
        runner.prepare(VerdictAction(when="wrong", do="add_to_list", target=list_id))

    assert refused.value.code == code
    assert list_id in refused.value.message
    assert ADD not in hub.requests()


def test_a_snapshot_list_is_static(hub: Hub, runner: HubSpotActionRunner) -> None:
    [ann] = hub.seed_contacts("ann@acme.com")
    list_id = hub.seed_list("Snapshot", [], "SNAPSHOT")
    action = VerdictAction(when="role", do="add_to_list", target=list_id)

    runner.prepare(action)
    assert runner.run(action, [ann]) == []
    assert hub.members(list_id) == [ann.record_id]


# ---- registration -------------------------------------------------------------------------------


def test_hubspot_offers_both_actions_and_builds_its_runner(
    hub: Hub, settings: Settings, limiter_redis: redis.Redis, tmp_path: Path
) -> None:
    assert {kind.name: (kind.target_field, kind.email_only) for kind in CRM.actions} == {
        "opt_out": (None, True),
        "add_to_list": ("list_id", False),
    }
    assert CRM.action_runner is not None
    context = CrmContext(settings=settings, redis=limiter_redis, sleep=lambda _s: None, work_dir=tmp_path)
    small = CRM.action_runner(context, "email", 10)
    large = CRM.action_runner(context, "email", settings.crm_bulk_threshold + 1)
    assert small.batch_size == 100 < large.batch_size

    [ann] = hub.seed_contacts("ann@acme.com")
    assert small.run(OPT_OUT, [ann]) == []
    assert hub.unsubscribes()["unsubscribed"] == ["ann@acme.com"]
