"""The HubSpot sandbox's endpoints for verdict actions: Communication Preferences v4 "unsubscribe all"
and static list memberships, driven over real HTTP.

The sandbox checks requests against HubSpot's OpenAPI specs and, here, its own answers too
(`validate_responses=True`: an answer that breaks the spec comes back as 500), so every 2xx and
4xx asserted below is also an answer in the spec's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from hubspot import HubSpot
from hubspot.crm.lists.exceptions import ApiException as ListsApiException

from connector.sandbox.openapi_check import load_checker
from connector.sandbox.server import SandboxServer
from tests.sandbox import test_sandbox_hubspot as hubspot_sandbox_tests
from tests.sandbox.test_sandbox_hubspot import TOKEN, control

UNSUBSCRIBE = "/communication-preferences/v4/statuses/batch/unsubscribe-all"
UNSUBSCRIBE_READ = UNSUBSCRIBE + "/read"
EMAIL = {"channel": "EMAIL"}


# The HubSpot sandbox tests' portal (validating answers against the specs), reset before each test.
# Skipped where HubSpot's specs are not beside the repository.
sandbox, fresh, client, specs_present = (
    hubspot_sandbox_tests.sandbox,
    hubspot_sandbox_tests.fresh,
    hubspot_sandbox_tests.client,
    hubspot_sandbox_tests.specs_present,
)
pytestmark = hubspot_sandbox_tests.needs_specs


def unsubscribes(sandbox: SandboxServer) -> dict[str, Any]:
    response = requests.get(f"{sandbox.url}/_sandbox/unsubscribes", timeout=10)
    response.raise_for_status()
    return response.json()


def api(sandbox: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
    return requests.request(method, f"{sandbox.url}{path}", headers=headers, timeout=10, **kwargs)


def unsubscribe(sandbox: SandboxServer, *addresses: str, **query: str) -> requests.Response:
    return api(sandbox, "POST", UNSUBSCRIBE, params={**EMAIL, **query}, json={"inputs": list(addresses)})


def assert_hubspot_error(response: requests.Response, status: int, category: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["category"] == category and body["message"] and body["correlationId"]
    return body


# ---- unsubscribe all ----------------------------------------------------------------------------


def test_batch_unsubscribe_all_unsubscribes_each_address_and_counts_every_request(
    sandbox: SandboxServer,
) -> None:
    first = unsubscribe(sandbox, "ann@acme.com", "Bob@Globex.com", verbose="true")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["status"] == "COMPLETE" and "errors" not in body
    assert [r["subscriberIdString"] for r in body["results"]] == ["ann@acme.com", "Bob@Globex.com"]
    statuses = body["results"][0]["statuses"]
    assert statuses and {s["status"] for s in statuses} == {"UNSUBSCRIBED"}
    assert {s["setStatusSuccessReason"] for s in statuses} == {"UNSUBSCRIBE_FROM_ALL_OCCURRED"}

    again = unsubscribe(sandbox, "ann@acme.com", verbose="true").json()
    assert {s["setStatusSuccessReason"] for s in again["results"][0]["statuses"]} == {"NO_STATUS_CHANGE"}
    assert unsubscribes(sandbox) == {
        "unsubscribed": ["ann@acme.com", "bob@globex.com"],
        "requests": {"ann@acme.com": 2, "bob@globex.com": 1},
    }


def test_an_address_that_is_not_an_email_is_refused_alone(sandbox: SandboxServer) -> None:
    response = unsubscribe(sandbox, "ann@acme.com", "not-an-email")

    assert response.status_code == 200  # the spec declares no 207 for this operation
    body = response.json()
    assert [r["subscriberIdString"] for r in body["results"]] == ["ann@acme.com"]
    assert body["results"][0]["statuses"] == []  # not verbose
    assert body["numErrors"] == 1
    [error] = body["errors"]
    assert error["category"] == "VALIDATION_ERROR"
    assert error["context"] == {"subscriberIdString": ["not-an-email"]}
    assert error["errors"][0]["subCategory"] == "INVALID_EMAIL"
    assert unsubscribes(sandbox)["unsubscribed"] == ["ann@acme.com"]


def test_the_batch_read_and_the_single_read_show_who_is_unsubscribed(sandbox: SandboxServer) -> None:
    control(sandbox, "seed", {"unsubscribed": ["Earlier@Acme.com"]})
    unsubscribe(sandbox, "ann@acme.com")

    read = api(
        sandbox,
        "POST",
        UNSUBSCRIBE_READ,
        params=EMAIL,
        json={"inputs": ["ann@acme.com", "earlier@acme.com", "new@acme.com"]},
    )
    assert read.status_code == 200, read.text
    wide = {r["subscriberIdString"]: r["wideStatuses"] for r in read.json()["results"]}
    assert wide["new@acme.com"] == []
    for address in ("ann@acme.com", "earlier@acme.com"):
        [status] = wide[address]
        assert (status["status"], status["channel"], status["wideStatusType"]) == (
            "UNSUBSCRIBED",
            "EMAIL",
            "PORTAL_WIDE",
        )

    partial = api(sandbox, "POST", UNSUBSCRIBE_READ, params=EMAIL, json={"inputs": ["ann@acme.com", "nope"]})
    assert partial.status_code == 207
    assert partial.json()["errors"][0]["context"] == {"subscriberIdString": ["nope"]}

    single = api(
        sandbox, "GET", "/communication-preferences/v4/statuses/ann@acme.com/unsubscribe-all", params=EMAIL
    )
    assert single.status_code == 200, single.text
    assert [s["status"] for s in single.json()["results"]] == ["UNSUBSCRIBED"]
    never = api(
        sandbox, "GET", "/communication-preferences/v4/statuses/new@acme.com/unsubscribe-all", params=EMAIL
    )
    assert never.json()["results"] == []
    assert unsubscribes(sandbox)["requests"] == {"ann@acme.com": 1}  # reads are not requests to unsubscribe


@pytest.mark.parametrize("validate", [True, False])
def test_a_missing_or_unsupported_channel_is_a_400(sandbox: SandboxServer, validate: bool) -> None:
    # With validation on the spec check refuses it; with it off, the endpoint itself, as HubSpot does.
    control(sandbox, "config", {"validate_requests": validate})

    missing = api(sandbox, "POST", UNSUBSCRIBE, json={"inputs": ["ann@acme.com"]})
    assert "channel" in assert_hubspot_error(missing, 400, "VALIDATION_ERROR")["message"]
    sms = api(sandbox, "POST", UNSUBSCRIBE, params={"channel": "SMS"}, json={"inputs": ["ann@acme.com"]})
    assert_hubspot_error(sms, 400, "VALIDATION_ERROR")
    read = api(sandbox, "POST", UNSUBSCRIBE_READ, json={"inputs": ["ann@acme.com"]})
    assert_hubspot_error(read, 400, "VALIDATION_ERROR")
    single = api(sandbox, "GET", "/communication-preferences/v4/statuses/ann@acme.com/unsubscribe-all")
    assert_hubspot_error(single, 400, "VALIDATION_ERROR")
    assert unsubscribes(sandbox)["requests"] == {}


def test_a_batch_takes_at_most_100_addresses(sandbox: SandboxServer) -> None:
    addresses = [f"user{i}@acme.com" for i in range(101)]

    too_many = unsubscribe(sandbox, *addresses)
    assert "at most 100" in assert_hubspot_error(too_many, 400, "VALIDATION_ERROR")["message"]
    too_many_read = api(sandbox, "POST", UNSUBSCRIBE_READ, params=EMAIL, json={"inputs": addresses})
    assert_hubspot_error(too_many_read, 400, "VALIDATION_ERROR")
    assert unsubscribes(sandbox)["requests"] == {}

    assert unsubscribe(sandbox, *addresses[:100]).status_code == 200
    assert len(unsubscribes(sandbox)["unsubscribed"]) == 100


def test_the_new_endpoints_need_a_token_and_share_the_portal_rate_limit(sandbox: SandboxServer) -> None:
    anonymous = requests.post(f"{sandbox.url}{UNSUBSCRIBE}", params=EMAIL, json={"inputs": []}, timeout=10)
    assert_hubspot_error(anonymous, 401, "INVALID_AUTHENTICATION")

    control(sandbox, "config", {"rate_limit_per_10s": 2})
    assert unsubscribe(sandbox, "ann@acme.com").status_code == 200
    assert api(sandbox, "GET", "/crm/v3/lists", params={"listIds": "1"}).status_code == 200
    limited = unsubscribe(sandbox, "bob@acme.com")
    assert limited.status_code == 429
    assert limited.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    state = requests.get(f"{sandbox.url}/_sandbox/state", timeout=10).json()
    # Counted like every route: the refused 401, the accepted one, the 429.
    assert state["requests"][f"POST {UNSUBSCRIBE}"] == 3 and state["rate_limited"] == 1


def test_the_sandbox_answers_match_the_spec(sandbox: SandboxServer, hubspot_specs_dir: Path) -> None:
    """The same check validate_responses makes, made here on the answers directly."""
    checker = load_checker(hubspot_specs_dir)
    assert checker is not None
    answers = [
        ("POST", UNSUBSCRIBE, unsubscribe(sandbox, "ann@acme.com", "nope", verbose="true")),
        (
            "POST",
            UNSUBSCRIBE_READ,
            api(sandbox, "POST", UNSUBSCRIBE_READ, params=EMAIL, json={"inputs": ["ann@acme.com", "x"]}),
        ),
        ("POST", UNSUBSCRIBE, api(sandbox, "POST", UNSUBSCRIBE, json={"inputs": ["ann@acme.com"]})),
    ]
    for method, path, response in answers:
        operation, problems = checker.match(method, path)
        assert operation is not None and not problems
        found = checker.check_response(
            operation, response.status_code, response.headers["Content-Type"], response.content
        )
        assert found == [], (path, response.status_code, found)


# ---- static list memberships --------------------------------------------------------------------


def seed_lists(sandbox: SandboxServer) -> tuple[list[str], str, str]:
    contacts = [{"properties": {"email": f"c{i}@acme.com"}} for i in range(4)]
    ids = control(sandbox, "seed", {"contacts": contacts})["contactIds"]
    manual, dynamic = control(
        sandbox,
        "seed",
        {
            "lists": [
                {"name": "Bounced", "contactIds": [ids[0]]},
                {"name": "Everyone", "contactIds": ids, "processingType": "DYNAMIC"},
            ]
        },
    )["listIds"]
    return ids, manual, dynamic


def test_adding_to_a_static_list_adds_new_members_only(sandbox: SandboxServer, client: HubSpot) -> None:
    ids, manual, _ = seed_lists(sandbox)
    memberships = client.crm.lists.memberships_api

    answer = memberships.add(manual, [ids[2], ids[0], "999999", ids[1], ids[2]])
    assert answer.records_ids_added == [ids[2], ids[1]]  # ids[0] was a member already
    assert answer.record_ids_missing == ["999999"]
    assert answer.record_ids_removed == []
    page = memberships.get_page(manual)
    assert [m.record_id for m in page.results] == sorted(ids[:3], key=int)

    again = memberships.add(manual, [ids[1]])
    assert again.records_ids_added == [] and again.record_ids_missing == []
    listed = client.crm.lists.lists_api.get_by_id(manual).list
    assert (listed.processing_type, listed.size) == ("MANUAL", 3)


def test_a_dynamic_or_unknown_list_is_refused(sandbox: SandboxServer, client: HubSpot) -> None:
    ids, _, dynamic = seed_lists(sandbox)
    assert client.crm.lists.lists_api.get_by_id(dynamic).list.processing_type == "DYNAMIC"

    with pytest.raises(ListsApiException) as refused:
        client.crm.lists.memberships_api.add(dynamic, [ids[0]])
    assert refused.value.status == 400
    assert "MANUAL or SNAPSHOT" in refused.value.body
    with pytest.raises(ListsApiException) as unknown:
        client.crm.lists.memberships_api.add("424242", [ids[0]])
    assert unknown.value.status == 404
    bad_body = api(sandbox, "PUT", f"/crm/v3/lists/{dynamic}/memberships/add", json={"ids": [ids[0]]})
    assert_hubspot_error(bad_body, 400, "VALIDATION_ERROR")


def test_seeding_a_list_of_an_unknown_processing_type_is_refused(sandbox: SandboxServer) -> None:
    response = requests.post(
        f"{sandbox.url}/_sandbox/seed", json={"lists": [{"name": "x", "processingType": "SMART"}]}, timeout=10
    )
    assert response.status_code == 400
    assert "processingType" in response.json()["error"]


def test_record_memberships_batch_read_names_each_records_lists(sandbox: SandboxServer) -> None:
    ids, manual, dynamic = seed_lists(sandbox)
    inputs = [{"objectTypeId": "0-1", "recordId": record_id} for record_id in (ids[0], ids[3], "999999")]

    response = api(sandbox, "POST", "/crm/v3/lists/records/memberships/batch/read", json={"inputs": inputs})

    assert response.status_code == 207, response.text
    body = response.json()
    lists = {r["recordId"]: sorted(m["listId"] for m in r["recordListMemberships"]) for r in body["results"]}
    assert lists == {ids[0]: sorted([manual, dynamic]), ids[3]: [dynamic]}
    assert body["errors"][0]["context"] == {"ids": ["999999"]}
    too_many = [{"objectTypeId": "0-1", "recordId": str(i)} for i in range(101)]
    limited = api(sandbox, "POST", "/crm/v3/lists/records/memberships/batch/read", json={"inputs": too_many})
    assert_hubspot_error(limited, 400, "VALIDATION_ERROR")
