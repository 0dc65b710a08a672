"""The Salesforce sandbox, driven over real HTTP with simple-salesforce built by `make_salesforce`
(as the connector drives Salesforce): SOQL and paging, describe, sObject Collections, Bulk API 2.0,
the API allocation, sessions and OAuth client credentials, generated campaigns, lead conversion,
records deleted to the recycle bin and locked rows.
"""

from __future__ import annotations

import csv
import io
import re
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import click
import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from connector.crm.salesforce.client import make_salesforce, refresh_session
from connector.sandbox.salesforce import command, create_app
from connector.sandbox.salesforce_ids import to_18
from connector.sandbox.server import SandboxServer, serve_in_thread

TOKEN = "00DDn0000000001!sandbox-session"
CLIENT_ID = "3MVG9-connector-client"
CLIENT_SECRET = "connector-client-secret"
VERSION = "62.0"
CSV = {"Content-Type": "text/csv"}
APEXVERIFY_FIELDS = [
    "ApexVerify_Valid__c",
    "ApexVerify_Wrong__c",
    "ApexVerify_Is_Role__c",
    "ApexVerify_Is_Disposable__c",
    "ApexVerify_Status__c",
    "ApexVerify_Verified_At__c",
    "ApexVerify_Phone_Valid__c",
    "ApexVerify_Phone_Wrong__c",
    "ApexVerify_Phone_Status__c",
    "ApexVerify_Phone_Verified_At__c",
]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    app = create_app(access_token=TOKEN, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, bulk_delay=0)
    server = serve_in_thread(app)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(sandbox: SandboxServer) -> None:
    control(sandbox, "reset")


@pytest.fixture
def sf(sandbox: SandboxServer) -> Salesforce:
    return make_salesforce(sandbox.url, session_id=TOKEN, version=VERSION)


Rest = Callable[..., requests.Response]


@pytest.fixture
def rest(sandbox: SandboxServer) -> Rest:
    """Raw calls to /services/data/v62.0/<path> with the session id, for what simple-salesforce hides."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        return session.request(method, f"{sandbox.url}/services/data/v{VERSION}/{path}", timeout=10, **kwargs)

    return call


def control(sandbox: SandboxServer, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(f"{sandbox.url}/_sandbox/{name}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def sandbox_record(sandbox: SandboxServer, record_id: str) -> dict[str, Any]:
    response = requests.get(f"{sandbox.url}/_sandbox/records/{record_id}", timeout=5)
    response.raise_for_status()
    return response.json()


def sandbox_state(sandbox: SandboxServer) -> dict[str, Any]:
    return requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()


def error_code(error: Exception) -> str:
    content = getattr(error, "content", None)
    assert isinstance(content, list), content
    return str(content[0]["errorCode"])


def seed_people(sandbox: SandboxServer) -> dict[str, str]:
    """A small org covering every per-record refusal; returns ids by role (fritz_contact: the contact
    converted lead fritz became)."""
    seeded = control(
        sandbox,
        "seed",
        {
            "contacts": [
                {
                    "FirstName": "Ada",
                    "LastName": "Adams",
                    "Email": "ada@acme.com",
                    "Phone": "+1 415 555 0100",
                },
                {"FirstName": "Ben", "LastName": "Berg", "Email": "info@globex.com"},
                {"FirstName": "Cleo", "LastName": "Costa", "Email": "cleo@mailinator.com"},
                {"FirstName": "Dev", "LastName": "Dubois", "Email": None},
            ],
            "leads": [
                {"LastName": "Evans", "Company": "Initech", "Email": "eve@gmail.com"},
                {"LastName": "Fischer", "Company": "Hooli", "Email": "fritz@hooli.com", "IsConverted": True},
            ],
        },
    )
    ada, ben, cleo, dev = seeded["contacts"]
    eve, fritz = seeded["leads"]
    # Seeded converted, fritz is converted as Salesforce converts: to a new contact.
    [conversion] = seeded["converted"]
    assert conversion["LeadId"] == fritz
    campaign = control(
        sandbox,
        "seed",
        {
            "campaigns": [
                {"Name": "Spring", "members": [{"ContactId": ada}, {"ContactId": ben}, {"LeadId": eve}]}
            ],
            "deleted_ids": [dev],
            "validation_rule_ids": [cleo],
        },
    )["campaigns"][0]
    return {
        "ada": ada,
        "ben": ben,
        "cleo": cleo,
        "dev": dev,
        "eve": eve,
        "fritz": fritz,
        "fritz_contact": conversion["ContactId"],
        "campaign": campaign["Id"],
    }


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [record["Id"] for record in records]


# ---- ids ----


def test_ids_are_18_characters_with_the_case_safe_suffix_and_key_prefix(sandbox: SandboxServer) -> None:
    people = seed_people(sandbox)
    # Salesforce's documented example of the suffix algorithm.
    assert to_18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert to_18("001A0000006Vm9rIAD") is None
    for role, prefix in (("ada", "003"), ("eve", "00Q"), ("campaign", "701")):
        record_id = people[role]
        assert len(record_id) == 18 and record_id.startswith(prefix)
        assert to_18(record_id[:15]) == record_id


# ---- SOQL ----


def test_query_pages_in_batches_of_2000_and_query_all_includes_deleted(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    seeded = control(sandbox, "seed", {"contacts": [{"LastName": f"P{i}"} for i in range(2300)]})["contacts"]
    control(sandbox, "seed", {"deleted_ids": seeded[:5]})

    first = sf.query("SELECT Id, LastName FROM Contact")
    assert (first["totalSize"], first["done"], len(first["records"])) == (2295, False, 2000)
    assert re.fullmatch(rf"/services/data/v{VERSION}/query/01g\w{{15}}-2000", first["nextRecordsUrl"])
    assert first["records"][0]["attributes"] == {
        "type": "Contact",
        "url": f"/services/data/v{VERSION}/sobjects/Contact/{seeded[5]}",
    }

    everything = sf.query_all("SELECT Id FROM Contact")
    assert ids(everything["records"]) == seeded[5:]
    with_deleted = sf.query_all("SELECT Id, IsDeleted FROM Contact", include_deleted=True)
    assert ids(with_deleted["records"]) == seeded
    assert [r["IsDeleted"] for r in with_deleted["records"][:6]] == [True] * 5 + [False]

    counts = sandbox_state(sandbox)["requests"]
    assert counts["GET /services/data/v{version}/query/{locator}"] == 1
    assert counts["GET /services/data/v{version}/queryAll/{locator}"] == 1


def test_soql_where_order_limit_and_campaign_member_relationships(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    ada, ben, cleo = people["ada"], people["ben"], people["cleo"]
    fischer = people["fritz_contact"]  # LastName Fischer, fritz@hooli.com, no phone

    def contact_ids(where: str) -> list[str]:
        return ids(sf.query_all(f"SELECT Id FROM Contact WHERE {where} ORDER BY LastName")["records"])

    assert contact_ids("email = 'ADA@acme.com'") == [ada]  # text compares case-insensitively
    assert contact_ids("Email != 'ada@acme.com'") == [ben, cleo, fischer]
    assert contact_ids("Email LIKE '%@globex.com' OR Email LIKE 'cleo%'") == [ben, cleo]
    assert contact_ids(f"Id IN ('{ada[:15]}', '{cleo}')") == [ada, cleo]  # 15-char ids match too
    assert contact_ids(f"Id NOT IN ('{ada}') AND (Phone = null OR FirstName = 'Ada')") == [ben, cleo, fischer]
    assert contact_ids("ApexVerify_Valid__c = false AND ApexVerify_Verified_At__c = null") == [
        ada,
        ben,
        cleo,
        fischer,
    ]
    assert contact_ids("CreatedDate = LAST_N_DAYS:1 AND CreatedDate > 2020-01-01T00:00:00Z") == [
        ada,
        ben,
        cleo,
        fischer,
    ]
    assert contact_ids("CreatedDate < LAST_N_DAYS:30") == []
    assert contact_ids("NOT Email LIKE '%acme%'") == [ben, cleo, fischer]

    ordered = sf.query("SELECT LastName FROM Contact ORDER BY LastName DESC LIMIT 2")["records"]
    assert [r["LastName"] for r in ordered] == ["Fischer", "Costa"]
    assert sf.query("SELECT COUNT() FROM Lead WHERE IsConverted = TRUE")["totalSize"] == 1

    members = sf.query_all(
        "SELECT Id, ContactId, LeadId, Contact.Email, Lead.Email FROM CampaignMember "
        f"WHERE CampaignId = '{people['campaign']}' AND (Contact.Email LIKE '%acme.com' OR LeadId != null)"
    )["records"]
    assert [(m["ContactId"], m["LeadId"]) for m in members] == [(ada, None), (None, people["eve"])]
    assert members[0]["Contact"]["Email"] == "ada@acme.com" and members[0]["Lead"] is None
    assert members[1]["Lead"] == {
        "attributes": {"type": "Lead", "url": f"/services/data/v{VERSION}/sobjects/Lead/{people['eve']}"},
        "Email": "eve@gmail.com",
    }


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id FROM Contact WHERE Email = 'a' AND Phone = 'b' OR Title = 'c'", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE", "MALFORMED_QUERY"),
        ("SELECT Id, Nope__c FROM Contact", "INVALID_FIELD"),
        ("SELECT Id, Account.Name FROM CampaignMember", "INVALID_FIELD"),
        ("SELECT Id FROM Contact WHERE CreatedDate > '2024-01-01'", "INVALID_FIELD"),
        ("SELECT Id FROM Opportunity", "INVALID_TYPE"),
    ],
)
def test_soql_errors(sf: Salesforce, soql: str, code: str) -> None:
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query(soql)
    assert error_code(raised.value) == code


# ---- describe ----


def test_describe_has_the_apexverify_fields_and_honours_missing_and_readonly(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    for described in (sf.Contact.describe(), sf.Lead.describe()):
        fields = {f["name"]: f for f in described["fields"]}
        assert all(fields[name]["updateable"] for name in APEXVERIFY_FIELDS)
        assert fields["ApexVerify_Valid__c"]["type"] == "boolean"
        assert fields["ApexVerify_Verified_At__c"]["type"] == "datetime"
        assert fields["Email"]["type"] == "email" and fields["Id"]["type"] == "id"
        status = fields["ApexVerify_Phone_Status__c"]
        assert status["type"] == "picklist" and status["restrictedPicklist"]
        assert [v["value"] for v in status["picklistValues"]] == [
            "valid",
            "wrong",
            "unknown",
            "invalid_format",
        ]

    control(
        sandbox,
        "config",
        {
            "missing_fields": {"Contact": ["ApexVerify_Is_Role__c", "ApexVerify_Phone_Status__c"]},
            "readonly_fields": {"Lead": ["ApexVerify_Valid__c"]},
        },
    )
    contact_fields = {f["name"] for f in sf.Contact.describe()["fields"]}
    assert set(APEXVERIFY_FIELDS) - contact_fields == {"ApexVerify_Is_Role__c", "ApexVerify_Phone_Status__c"}
    lead_fields = {f["name"]: f for f in sf.Lead.describe()["fields"]}
    assert not lead_fields["ApexVerify_Valid__c"]["updateable"]
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query("SELECT ApexVerify_Is_Role__c FROM Contact")
    assert error_code(raised.value) == "INVALID_FIELD"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Opportunity.describe()


# ---- sObject Collections ----


def collection_update(sf: Salesforce, records: list[dict[str, Any]], all_or_none: bool = False) -> Any:
    return sf.restful(
        "composite/sobjects", method="PATCH", json={"allOrNone": all_or_none, "records": records}
    )


def flags(object_type: str, record_id: str, **values: Any) -> dict[str, Any]:
    return {"attributes": {"type": object_type}, "Id": record_id, **values}


def test_collections_update_reports_each_record(sandbox: SandboxServer, sf: Salesforce) -> None:
    people = seed_people(sandbox)
    nonexistent = people["ada"][:8] + "zzzzzzz"
    results = collection_update(
        sf,
        [
            flags(
                "Contact",
                people["ada"],
                ApexVerify_Valid__c=True,
                ApexVerify_Status__c="valid",
                ApexVerify_Verified_At__c="2024-05-01T10:00:00Z",
            ),
            flags("Contact", people["dev"], ApexVerify_Valid__c=True),  # deleted
            flags("Lead", people["fritz"], ApexVerify_Wrong__c=True),  # converted
            flags("Contact", people["cleo"], ApexVerify_Is_Disposable__c=True),  # validation rule
            flags("Contact", nonexistent, ApexVerify_Valid__c=True),
            flags("Contact", "not-an-id", ApexVerify_Valid__c=True),
            flags("Contact", people["eve"], ApexVerify_Valid__c=True),  # a Lead id as a Contact
            flags("Lead", people["eve"], ApexVerify_Status__c="maybe", ApexVerify_Valid__c="yes"),
            flags("Contact", people["ben"], Name="Someone Else"),
        ],
    )
    codes = [[e["statusCode"] for e in r["errors"]] for r in results]
    assert codes == [
        [],
        ["ENTITY_IS_DELETED"],
        ["CANNOT_UPDATE_CONVERTED_LEAD"],
        ["FIELD_CUSTOM_VALIDATION_EXCEPTION"],
        ["INVALID_CROSS_REFERENCE_KEY"],
        ["MALFORMED_ID"],
        ["MALFORMED_ID"],
        ["INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "INVALID_TYPE_ON_FIELD_IN_RECORD"],
        ["INVALID_FIELD_FOR_INSERT_UPDATE"],
    ]
    assert results[0] == {"id": people["ada"], "success": True, "errors": []}
    assert results[1]["id"] == people["dev"] and results[1]["success"] is False
    assert "id" not in results[5]
    assert results[7]["errors"][0]["fields"] == ["ApexVerify_Status__c"]

    ada = sandbox_record(sandbox, people["ada"])["fields"]
    assert (ada["ApexVerify_Valid__c"], ada["ApexVerify_Status__c"]) == (True, "valid")
    assert ada["ApexVerify_Verified_At__c"] == "2024-05-01T10:00:00.000+0000"
    assert sandbox_record(sandbox, people["cleo"])["fields"]["ApexVerify_Is_Disposable__c"] is False


def test_collections_all_or_none_rolls_everything_back(sandbox: SandboxServer, sf: Salesforce) -> None:
    people = seed_people(sandbox)
    results = collection_update(
        sf,
        [
            flags("Contact", people["ada"], ApexVerify_Valid__c=True),
            flags("Lead", people["fritz"], ApexVerify_Valid__c=True),
        ],
        all_or_none=True,
    )
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "CANNOT_UPDATE_CONVERTED_LEAD",
    ]
    assert sandbox_record(sandbox, people["ada"])["fields"]["ApexVerify_Valid__c"] is False


def test_collections_refuse_more_than_200_records_and_unknown_fields(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    with pytest.raises(SalesforceMalformedRequest) as too_many:
        collection_update(sf, [flags("Contact", people["ada"], ApexVerify_Valid__c=True)] * 201)
    assert error_code(too_many.value) == "EXCEEDED_ID_LIMIT"

    control(sandbox, "config", {"missing_fields": {"Contact": ["ApexVerify_Is_Role__c"]}})
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        collection_update(sf, [flags("Contact", people["ada"], ApexVerify_Is_Role__c=True)])
    assert error_code(unknown.value) == "INVALID_FIELD"


# ---- Bulk API 2.0 ----


def test_bulk_ingest_update_with_failed_and_successful_results(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    rows = [
        {"Id": people["ada"], "ApexVerify_Wrong__c": "true", "ApexVerify_Status__c": "wrong"},
        {"Id": people["ben"], "ApexVerify_Wrong__c": "false", "ApexVerify_Status__c": "valid"},
        {"Id": people["dev"], "ApexVerify_Wrong__c": "true", "ApexVerify_Status__c": "wrong"},
        {"Id": people["cleo"], "ApexVerify_Wrong__c": "true", "ApexVerify_Status__c": "wrong"},
        {"Id": people["ben"][:15], "ApexVerify_Wrong__c": "perhaps", "ApexVerify_Status__c": "valid"},
    ]
    [outcome] = sf.bulk2.Contact.update(records=rows, wait=0)
    assert (outcome["numberRecordsProcessed"], outcome["numberRecordsFailed"]) == (5, 3)

    failed = list(csv.DictReader(io.StringIO(sf.bulk2.Contact.get_failed_records(outcome["job_id"]))))
    assert [(row["sf__Id"], row["sf__Error"].split(":")[0]) for row in failed] == [
        (people["dev"], "ENTITY_IS_DELETED"),
        (people["cleo"], "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        (people["ben"], "INVALID_TYPE_ON_FIELD_IN_RECORD"),
    ]
    assert failed[0]["sf__Error"] == "ENTITY_IS_DELETED:entity is deleted:--"
    assert failed[2]["Id"] == people["ben"][:15]  # the original columns, as uploaded
    succeeded = list(csv.DictReader(io.StringIO(sf.bulk2.Contact.get_successful_records(outcome["job_id"]))))
    assert [(row["sf__Id"], row["sf__Created"]) for row in succeeded] == [
        (people["ada"], "false"),
        (people["ben"], "false"),
    ]

    ada = sandbox_record(sandbox, people["ada"])["fields"]
    assert (ada["ApexVerify_Wrong__c"], ada["ApexVerify_Status__c"]) == (True, "wrong")


def test_bulk_ingest_job_lifecycle_over_the_raw_endpoints(sandbox: SandboxServer, rest: Rest) -> None:
    people = seed_people(sandbox)
    control(sandbox, "config", {"bulk_delay": 3600})
    job = rest(
        "POST", "jobs/ingest", json={"object": "Lead", "operation": "update", "lineEnding": "LF"}
    ).json()
    assert (job["state"], job["object"], job["id"][:3]) == ("Open", "Lead", "750")
    path = f"jobs/ingest/{job['id']}"

    upload = f"Id,ApexVerify_Valid__c\n{people['eve']},true\n{people['fritz']},true\n"
    assert rest("PUT", f"{path}/batches", data=upload, headers=CSV).status_code == 201
    again = rest("PUT", f"{path}/batches", data=upload, headers=CSV)
    assert (again.status_code, again.json()[0]["errorCode"]) == (400, "BULK_API_ERROR")  # one upload per job

    assert rest("PATCH", path, json={"state": "UploadComplete"}).json()["state"] == "UploadComplete"
    assert rest("GET", path).json()["state"] in ("UploadComplete", "InProgress")  # the delay is not over
    control(sandbox, "config", {"bulk_delay": 0})
    done = rest("GET", path).json()
    assert (done["state"], done["numberRecordsProcessed"], done["numberRecordsFailed"]) == (
        "JobComplete",
        2,
        1,
    )
    assert rest("GET", f"{path}/unprocessedrecords").text.strip() == '"Id","ApexVerify_Valid__c"'
    assert rest("DELETE", path).status_code == 204
    assert rest("GET", path).status_code == 404

    aborted = rest("POST", "jobs/ingest", json={"object": "Contact", "operation": "update"}).json()
    rest("PUT", f"jobs/ingest/{aborted['id']}/batches", data=f"Id\n{people['ada']}\n", headers=CSV)
    assert (
        rest("PATCH", f"jobs/ingest/{aborted['id']}", json={"state": "Aborted"}).json()["state"] == "Aborted"
    )
    unprocessed = rest("GET", f"jobs/ingest/{aborted['id']}/unprocessedrecords").text.split()
    assert unprocessed == ['"Id"', f'"{people["ada"]}"']

    unknown = rest("POST", "jobs/ingest", json={"object": "Contact", "operation": "update"}).json()
    rest("PUT", f"jobs/ingest/{unknown['id']}/batches", data=f"Id,Nope__c\n{people['ada']},1\n", headers=CSV)
    rest("PATCH", f"jobs/ingest/{unknown['id']}", json={"state": "UploadComplete"})
    failed = rest("GET", f"jobs/ingest/{unknown['id']}").json()
    assert failed["state"] == "Failed" and "Nope__c" in failed["errorMessage"]


def test_bulk_query_pages_with_the_locator(sandbox: SandboxServer, sf: Salesforce, rest: Rest) -> None:
    contacts = [{"LastName": f"P{i}", "Email": f"p{i}@acme.com"} for i in range(2500)]
    seeded = control(sandbox, "seed", {"contacts": contacts})["contacts"]
    pages = list(sf.bulk2.Contact.query("SELECT Id, Email FROM Contact", max_records=1000, wait=0))
    page_rows = [list(csv.DictReader(io.StringIO(page))) for page in pages]
    assert [len(rows) for rows in page_rows] == [1000, 1000, 500]
    assert [row["Id"] for rows in page_rows for row in rows] == seeded
    assert page_rows[0][7]["Email"] == "p7@acme.com"

    query = "SELECT Id FROM Contact WHERE Email LIKE '%9@acme.com'"
    job = rest("POST", "jobs/query", json={"operation": "query", "query": query}).json()
    assert rest("GET", f"jobs/query/{job['id']}").json()["state"] == "JobComplete"
    first = rest("GET", f"jobs/query/{job['id']}/results", params={"maxRecords": 200})
    assert first.headers["Sforce-NumberOfRecords"] == "200" and first.headers["Sforce-Locator"] != "null"
    locator = first.headers["Sforce-Locator"]
    last = rest("GET", f"jobs/query/{job['id']}/results", params={"maxRecords": 200, "locator": locator})
    assert (last.headers["Sforce-NumberOfRecords"], last.headers["Sforce-Locator"]) == ("50", "null")
    assert last.text.splitlines()[0] == '"Id"'


# ---- allocation, sessions, faults ----


def test_limit_info_on_every_answer_and_request_limit_exceeded(
    sandbox: SandboxServer, sf: Salesforce, rest: Rest
) -> None:
    sf.query("SELECT Id FROM Contact")
    assert (sf.api_usage["api-usage"].used, sf.api_usage["api-usage"].total) == (1, 100_000)

    control(sandbox, "config", {"daily_api_limit": 3})
    assert sf.limits()["DailyApiRequests"] == {"Max": 3, "Remaining": 1}
    sf.query("SELECT Id FROM Lead")
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.query("SELECT Id FROM Lead")
    assert refused.value.content == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    answer = rest("GET", "limits")
    assert (answer.status_code, answer.headers["Sforce-Limit-Info"]) == (403, "api-usage=3/3")
    assert sandbox_state(sandbox)["api_usage"] == 3

    control(sandbox, "config", {"daily_api_limit": 10, "api_usage": 0})
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0


def test_wrong_session_id_is_invalid_session(sandbox: SandboxServer) -> None:
    wrong = make_salesforce(sandbox.url, session_id="not-the-session")
    with pytest.raises(SalesforceExpiredSession) as expired:
        wrong.query("SELECT Id FROM Contact")
    assert expired.value.content == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    versions = requests.get(f"{sandbox.url}/services/data/", timeout=5).json()  # no session needed
    assert {"label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0"} in versions


def test_client_credentials_token_and_refresh_after_expiry(sandbox: SandboxServer) -> None:
    token = requests.post(
        f"{sandbox.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        timeout=5,
    ).json()
    assert token["instance_url"] == sandbox.url and token["token_type"] == "Bearer"
    assert set(token) >= {"access_token", "issued_at", "signature", "id"}

    sf = make_salesforce(sandbox.url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    first_session = sf.session_id
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0
    assert control(sandbox, "config", {"expire_token": True})["expired_tokens"] >= 2

    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0  # refreshed on INVALID_SESSION_ID
    assert sf.session_id != first_session
    assert sandbox_state(sandbox)["requests"]["POST /services/oauth2/token"] == 3

    control(sandbox, "config", {"expire_token": True})
    with pytest.raises(SalesforceExpiredSession):  # Bulk API 2.0 calls are not retried by simple-salesforce
        list(sf.bulk2.Contact.query("SELECT Id FROM Contact", wait=0))
    refresh_session(sf)
    assert list(sf.bulk2.Contact.query("SELECT Id FROM Contact", wait=0)) == ['"Id"\n']

    with pytest.raises(SalesforceAuthenticationFailed):
        make_salesforce(sandbox.url, client_id=CLIENT_ID, client_secret="wrong")


def test_injected_faults_fail_the_next_requests_only(sandbox: SandboxServer, sf: Salesforce) -> None:
    control(
        sandbox, "faults", {"endpoint": "GET /services/data/v{version}/query", "kind": "http_503", "count": 1}
    )
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf.query("SELECT Id FROM Contact")
    assert unavailable.value.status == 503
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0

    control(sandbox, "faults", {"endpoint": "any", "kind": "request_limit", "count": 1})
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.Contact.describe()
    assert error_code(refused.value) == "REQUEST_LIMIT_EXCEEDED"

    control(sandbox, "faults", {"endpoint": "any", "kind": "concurrent_limit", "count": 1})
    with pytest.raises(SalesforceRefusedRequest) as concurrent:
        sf.Contact.describe()
    assert concurrent.value.content == [
        {"message": "ConcurrentPerOrgLongTxn Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    assert sf.Contact.describe()["name"] == "Contact"


def test_tracked_fields_keep_every_value_written_by_collections_and_bulk_ingest(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    control(sandbox, "config", {"track_writes": ["apexverify_status__c"]})  # any case, as field names

    collection_update(
        sf,
        [
            flags("Contact", people["ada"], ApexVerify_Status__c="valid"),
            flags("Contact", people["cleo"], ApexVerify_Status__c="valid"),  # refused: not written
            flags("Contact", people["ben"], ApexVerify_Valid__c=True),  # another field only
        ],
    )
    sf.bulk2.Contact.update(records=[{"Id": people["ada"], "ApexVerify_Status__c": "wrong"}], wait=0)

    writes = requests.get(
        f"{sandbox.url}/_sandbox/writes", params={"field": "ApexVerify_Status__c"}, timeout=5
    ).json()
    assert writes == {"field": "ApexVerify_Status__c", "records": {people["ada"]: ["valid", "wrong"]}}
    untracked = requests.get(f"{sandbox.url}/_sandbox/writes", params={"field": "Email"}, timeout=5)
    assert untracked.status_code == 400
    with pytest.raises(requests.HTTPError):
        control(sandbox, "config", {"track_writes": ["No_Such_Field__c"]})


def test_unknown_version_and_route_answer_not_found(sandbox: SandboxServer, rest: Rest) -> None:
    old = requests.get(
        f"{sandbox.url}/services/data/v12.0/limits", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert old.status_code == 404
    assert old.json() == [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
    assert rest("GET", "nope").status_code == 404


# ---- generated campaigns ----


def test_generate_10000_campaign_members(sandbox: SandboxServer, sf: Salesforce) -> None:
    knobs = {
        "campaign_members": 10_000,
        "lead_ratio": 0.3,
        "duplicate_every": 50,
        "malformed_every": 97,
        "missing_email_every": 61,
        "converted_every": 200,
        "seed": 1,
    }
    answer = control(sandbox, "seed", {"generate": knobs})
    campaign = answer["campaign_id"]
    generated = answer["generated"]
    # Records: the members' contacts and leads, and the contact and account each converted lead became.
    assert (generated["converted_leads"], generated["accounts"]) == (50, 50)
    assert generated["contacts"] + generated["leads"] == 10_000 + 50
    assert 2_700 < generated["leads"] < 3_300

    soql = (
        "SELECT Id, ContactId, LeadId, Contact.Email, Lead.Email FROM CampaignMember WHERE CampaignId = '{}'"
    )
    pages = sf.bulk2.CampaignMember.query(soql.format(campaign), wait=0)
    members = [row for page in pages for row in csv.DictReader(io.StringIO(page))]
    assert len(members) == 10_000 and len({m["Id"] for m in members}) == 10_000
    assert sum(1 for m in members if m["LeadId"]) == generated["leads"]
    # A converted lead's member names the contact it became too, with the lead's email.
    both = [m for m in members if m["LeadId"] and m["ContactId"]]
    assert len(both) == 50 and all(m["Contact.Email"] == m["Lead.Email"] for m in both)
    assert sum(1 for m in members if m["ContactId"]) == generated["contacts"]
    emails = [m["Contact.Email"] or m["Lead.Email"] for m in members]
    positions = range(1, 10_001)  # every n-th member is position % n == 0; a missing email wins
    assert sum(1 for e in emails if not e) == sum(1 for p in positions if p % 61 == 0)
    malformed = [e for e in emails if e and not re.fullmatch(r"[^@\s]+@[^@\s]+\.\w+", e.strip())]
    assert len(malformed) == sum(1 for p in positions if p % 97 == 0 and p % 61)
    padded = [index for index, e in enumerate(emails) if e and e != e.strip()]
    assert len(padded) == sum(1 for p in positions if p % 50 == 0 and p % 61 and p % 97)
    # A duplicate repeats the previous member's address (that one's own, unless it was missing or malformed).
    repeated = [i for i in padded if i % 61 and i % 97]
    assert repeated and all(emails[i - 1] == emails[i].strip().lower() for i in repeated)
    for pattern in (
        r"^(info|support|sales|admin|contact)@",
        r"@mailinator\.com$",
        r"@gmail\.com$",
        r"^bounce\d+@",
    ):
        assert any(re.search(pattern, e) for e in emails if e), pattern

    converted = sf.query("SELECT COUNT() FROM Lead WHERE IsConverted = TRUE")["totalSize"]
    assert converted == 50
    to_contacts = "SELECT COUNT() FROM Lead WHERE IsConverted = TRUE AND ConvertedContactId != NULL"
    assert sf.query(to_contacts)["totalSize"] == 50  # never converted to no contact
    assert control(sandbox, "seed", {"generate": knobs})["generated"] == generated  # deterministic


def generated_conversions(sf: Salesforce) -> dict[str, dict[str, Any]]:
    """{converted lead id: its row} of every converted lead."""
    soql = (
        "SELECT Id, FirstName, LastName, Email, Phone, Company, Status, ConvertedContactId, "
        "ConvertedAccountId, ConvertedDate FROM Lead WHERE IsConverted = TRUE"
    )
    return {lead["Id"]: lead for lead in sf.query_all(soql)["records"]}


def test_a_generated_converted_lead_has_the_contact_it_became_and_its_member_names_both(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    knobs = {"campaign_members": 1000, "lead_ratio": 0.3, "converted_every": 100}
    answer = control(sandbox, "seed", {"generate": knobs})
    campaign, generated = answer["campaign_id"], answer["generated"]
    leads = generated_conversions(sf)
    assert len(leads) == generated["converted_leads"] == generated["accounts"] == 10
    contact_of = {lead_id: lead["ConvertedContactId"] for lead_id, lead in leads.items()}

    contacts = sf.query_all(
        "SELECT Id, FirstName, LastName, Email, Phone, AccountId, Account.Name, CreatedDate FROM Contact "
        f"WHERE Id IN ({', '.join(repr(c) for c in contact_of.values())})"
    )["records"]
    by_id = {contact["Id"]: contact for contact in contacts}
    assert len(by_id) == 10
    for lead_id, lead in leads.items():
        contact = by_id[contact_of[lead_id]]
        assert contact["Id"][:3] == "003" and lead["ConvertedAccountId"][:3] == "001"
        assert [contact[name] for name in ("FirstName", "LastName", "Email", "Phone")] == [
            lead[name] for name in ("FirstName", "LastName", "Email", "Phone")
        ]
        assert (contact["AccountId"], contact["Account"]["Name"]) == (
            lead["ConvertedAccountId"],
            lead["Company"],
        )
        assert (lead["Status"], lead["ConvertedDate"]) == ("Closed - Converted", contact["CreatedDate"][:10])

    # Each has an id of its own: not another record's, not one seeded or generated later.
    listed = requests.get(
        f"{sandbox.url}/_sandbox/records",
        params={"object": "Contact", "limit": 5000, "field": "Id"},
        timeout=10,
    ).json()
    contact_ids = [record["Id"] for record in listed["records"]]
    assert listed["total"] == len(set(contact_ids)) == generated["contacts"]
    assert set(contact_of.values()) <= set(contact_ids)
    later = control(sandbox, "seed", {"contacts": [{"LastName": "Later"}], "generate": knobs})
    again = generated_conversions(sf)
    assert len(again) == 20 and len({lead["ConvertedContactId"] for lead in again.values()}) == 20
    assert len({lead["ConvertedAccountId"] for lead in again.values()}) == 20
    assert later["contacts"][0] not in {lead["ConvertedContactId"] for lead in again.values()}

    # The member names both; a campaign segment's Contact read takes it as the contact.
    soql = f"SELECT LeadId, ContactId, Contact.Email FROM CampaignMember WHERE CampaignId = '{campaign}'"
    members = sf.query_all(soql)["records"]
    named = {m["LeadId"]: m["ContactId"] for m in members if m["LeadId"] and m["ContactId"]}
    assert named == contact_of
    assert all(m["Contact"]["Email"] == leads[m["LeadId"]]["Email"] for m in members if m["LeadId"] in named)
    as_contacts = f"SELECT COUNT() FROM CampaignMember WHERE CampaignId = '{campaign}' AND ContactId != NULL"
    assert sf.query(as_contacts)["totalSize"] == generated["contacts"]

    # Converted already: neither converted again nor updated.
    lead_id = next(iter(leads))
    assert convert(sandbox, {"LeadId": lead_id}).status_code == 400
    assert bulk_errors(sf, "Lead", [{"Id": lead_id, "ApexVerify_Valid__c": "true"}]) == {
        lead_id: "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead:--"
    }


def test_writes_to_a_generated_converted_leads_contact_are_kept_and_read_everywhere(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    knobs = {"campaign_members": 2000, "lead_ratio": 0.3, "converted_every": 100}
    control(sandbox, "seed", {"generate": knobs})
    leads = generated_conversions(sf)
    contacts = sorted(lead["ConvertedContactId"] for lead in leads.values())
    assert len(contacts) == 20
    over_rest, over_bulk = contacts[:10], contacts[10:]
    control(sandbox, "config", {"track_writes": ["ApexVerify_Status__c"]})

    results = collection_update(sf, [flags("Contact", c, ApexVerify_Status__c="valid") for c in over_rest])
    assert outcomes(results) == ["ok"] * 10
    assert bulk_errors(sf, "Contact", [{"Id": c, "ApexVerify_Status__c": "wrong"} for c in over_bulk]) == {}

    expected = {**dict.fromkeys(over_rest, "valid"), **dict.fromkeys(over_bulk, "wrong")}
    assert {c: sandbox_record(sandbox, c)["fields"]["ApexVerify_Status__c"] for c in contacts} == expected
    assert sandbox_record(sandbox, contacts[0])["object"] == "Contact"
    listed = requests.get(
        f"{sandbox.url}/_sandbox/records",
        params={"object": "Contact", "limit": 5000, "field": "ApexVerify_Status__c"},
        timeout=10,
    ).json()["records"]
    assert {r["Id"]: r["ApexVerify_Status__c"] for r in listed if r["ApexVerify_Status__c"]} == expected
    written = sf.query_all("SELECT Id, ApexVerify_Status__c FROM Contact WHERE ApexVerify_Status__c != NULL")
    assert {r["Id"]: r["ApexVerify_Status__c"] for r in written["records"]} == expected
    pages = sf.bulk2.Contact.query("SELECT Id, ApexVerify_Status__c FROM Contact", wait=0)
    rows = [row for page in pages for row in csv.DictReader(io.StringIO(page))]
    assert {r["Id"]: r["ApexVerify_Status__c"] for r in rows if r["ApexVerify_Status__c"]} == expected
    writes = requests.get(
        f"{sandbox.url}/_sandbox/writes", params={"field": "ApexVerify_Status__c"}, timeout=5
    ).json()["records"]
    assert writes == {c: [status] for c, status in expected.items()}
    # The leads they were keep none of it.
    assert sf.query("SELECT COUNT() FROM Lead WHERE ApexVerify_Status__c != NULL")["totalSize"] == 0


def test_generated_converted_leads_contacts_cost_a_column_per_written_field(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    """200,000 members, 10,000 of them converted leads whose contacts are all written: what the record
    store holds stays a byte per member and 8 bytes per written value, no record of its own."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        knobs = {"campaign_members": 200_000, "lead_ratio": 0.3, "converted_every": 20}
        assert control(sandbox, "seed", {"generate": knobs})["generated"]["converted_leads"] == 10_000
        contacts = [lead["ConvertedContactId"] for lead in generated_conversions(sf).values()]
        rows = [{"Id": c, "ApexVerify_Status__c": "valid", "ApexVerify_Valid__c": "true"} for c in contacts]
        assert bulk_errors(sf, "Contact", rows) == {}
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    store = [tracemalloc.Filter(True, "*/connector/sandbox/salesforce_records.py")]
    grown = after.filter_traces(store).compare_to(before.filter_traces(store), "filename")
    held = sum(stat.size_diff for stat in grown)
    # 200,000 kinds (1 byte each) + 4 columns of 10,000 values (the 2 fields, LastModifiedDate and
    # SystemModstamp; 8 bytes each): ~520 kB. A dict per contact would add 10,000 x 200+ bytes.
    assert held < 700_000, held
    assert sandbox_record(sandbox, contacts[-1])["fields"]["ApexVerify_Valid__c"] is True


def test_the_cli_command_serves_on_port_8103_by_default() -> None:
    assert isinstance(command, click.Command)
    options = {param.name: param.default for param in command.params}
    assert (options["host"], options["port"]) == ("127.0.0.1", 8103)


def test_make_salesforce_keeps_the_instance_scheme() -> None:
    secure = make_salesforce("https://acme.my.salesforce.com", session_id="x", version="61.0")
    assert secure.base_url == "https://acme.my.salesforce.com/services/data/v61.0/"
    assert secure.bulk2_url == "https://acme.my.salesforce.com/services/data/v61.0/jobs/"
    local = make_salesforce("http://127.0.0.1:8103/", session_id="x")
    assert local.base_url == "http://127.0.0.1:8103/services/data/v62.0/"
    assert local.Contact.base_url == "http://127.0.0.1:8103/services/data/v62.0/sobjects/Contact/"
    with pytest.raises(ValueError):
        make_salesforce("http://127.0.0.1:8103")


# ---- verdict actions: Email Opt Out, campaign members ----

CREATE_COLLECTION = "POST /services/data/v{version}/composite/sobjects"


def member(campaign: str, person: str, **values: Any) -> dict[str, Any]:
    person_field = "LeadId" if person.startswith("00Q") else "ContactId"
    return {"attributes": {"type": "CampaignMember"}, "CampaignId": campaign, person_field: person, **values}


def collection_create(sf: Salesforce, records: list[dict[str, Any]], all_or_none: bool = False) -> Any:
    return sf.restful(
        "composite/sobjects", method="POST", json={"allOrNone": all_or_none, "records": records}
    )


def outcomes(results: list[dict[str, Any]]) -> list[str]:
    """ "ok" or the first error's status code, per SaveResult."""
    return ["ok" if r["success"] else r["errors"][0]["statusCode"] for r in results]


def members_of(sf: Salesforce, campaign: str) -> list[tuple[str | None, str | None, str]]:
    soql = f"SELECT ContactId, LeadId, Status FROM CampaignMember WHERE CampaignId = '{campaign}'"
    return [(r["ContactId"], r["LeadId"], r["Status"]) for r in sf.query_all(soql)["records"]]


def test_email_opt_out_is_an_updateable_checkbox_on_contacts_and_leads(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    for described in (sf.Contact.describe(), sf.Lead.describe()):
        opt_out = {f["name"]: f for f in described["fields"]}["HasOptedOutOfEmail"]
        assert (opt_out["type"], opt_out["label"], opt_out["updateable"]) == (
            "boolean",
            "Email Opt Out",
            True,
        )
    control(sandbox, "config", {"track_writes": ["HasOptedOutOfEmail"]})

    results = collection_update(
        sf,
        [
            {"attributes": {"type": "Contact"}, "Id": people["ada"], "HasOptedOutOfEmail": True},
            {"attributes": {"type": "Lead"}, "Id": people["eve"], "HasOptedOutOfEmail": True},
        ],
    )
    assert outcomes(results) == ["ok", "ok"]
    [job] = sf.bulk2.Contact.update(records=[{"Id": people["ben"], "HasOptedOutOfEmail": "true"}], wait=0)
    assert job["numberRecordsFailed"] == 0

    opted_out = sf.query_all("SELECT Id FROM Contact WHERE HasOptedOutOfEmail = true ORDER BY LastName")
    assert ids(opted_out["records"]) == [people["ada"], people["ben"]]
    [eve] = sf.query(f"SELECT HasOptedOutOfEmail FROM Lead WHERE Id = '{people['eve']}'")["records"]
    assert eve["HasOptedOutOfEmail"] is True
    assert sandbox_record(sandbox, people["cleo"])["fields"]["HasOptedOutOfEmail"] is False
    writes = requests.get(f"{sandbox.url}/_sandbox/writes", params={"field": "HasOptedOutOfEmail"}, timeout=5)
    assert writes.json()["records"] == {people["ada"]: [True], people["eve"]: [True], people["ben"]: [True]}


def test_campaign_members_created_through_collections_once_per_campaign_and_person(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    campaign, cleo = people["campaign"], people["cleo"]
    results = collection_create(
        sf,
        [
            member(campaign, cleo),  # no Status: the campaign's default, "Sent"
            member(campaign, people["ada"]),  # seeded member already
            member(campaign, cleo, Status="Responded"),  # named twice in one call
            member(campaign, people["fritz"]),  # converted lead
            member(campaign, people["dev"]),  # deleted contact
            member(campaign, "003Dn0000000zzz"),  # names no record
            member(campaign, "not-an-id"),
            member("701Dn0000000zzz", people["eve"]),  # no such campaign
            member(campaign, people["eve"], Status="Attended"),  # not one of its statuses
            {**member(campaign, people["ben"]), "Id": "00vDn0000000001"},
            {"attributes": {"type": "CampaignMember"}, "CampaignId": campaign},
        ],
    )
    assert outcomes(results) == [
        "ok",
        "DUPLICATE_VALUE",
        "DUPLICATE_VALUE",
        "CANNOT_UPDATE_CONVERTED_LEAD",
        "ENTITY_IS_DELETED",
        "INVALID_CROSS_REFERENCE_KEY",
        "MALFORMED_ID",
        "INVALID_CROSS_REFERENCE_KEY",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "REQUIRED_FIELD_MISSING",
    ]
    assert results[0]["id"].startswith("00v") and len(results[0]["id"]) == 18
    assert results[1]["errors"][0]["message"] == "Already a campaign member."
    assert "id" not in results[1]
    created = sandbox_record(sandbox, results[0]["id"])["fields"]
    assert (created["ContactId"], created["Status"], created["HasResponded"]) == (cleo, "Sent", False)

    assert members_of(sf, campaign) == [
        (people["ada"], None, "Sent"),
        (people["ben"], None, "Sent"),
        (None, people["eve"], "Sent"),
        (cleo, None, "Sent"),
    ]
    # The members a campaign segment reads, with their contact's email.
    soql = (
        "SELECT ContactId, Contact.Email FROM CampaignMember "
        f"WHERE CampaignId = '{campaign}' AND ContactId IN ('{cleo}')"
    )
    assert sf.query(soql)["records"][0]["Contact"]["Email"] == "cleo@mailinator.com"

    again = collection_create(
        sf, [member(campaign, cleo), member(campaign, people["eve"], Status="Responded")]
    )
    assert outcomes(again) == ["DUPLICATE_VALUE", "DUPLICATE_VALUE"]
    state = sandbox_state(sandbox)
    assert state["campaign_members_created"] == {campaign: {cleo: 1}}
    assert state["duplicate_members_refused"] == 4
    assert state["requests"][CREATE_COLLECTION] == 2


def test_member_creates_all_or_none_and_the_request_limits(
    sandbox: SandboxServer, sf: Salesforce, rest: Rest
) -> None:
    people = seed_people(sandbox)
    campaign = people["campaign"]
    results = collection_create(sf, [member(campaign, people["cleo"]), member(campaign, people["ada"])], True)
    assert outcomes(results) == ["ALL_OR_NONE_OPERATION_ROLLED_BACK", "DUPLICATE_VALUE"]
    assert sandbox_state(sandbox)["campaign_members_created"] == {}

    with pytest.raises(SalesforceMalformedRequest) as too_many:
        collection_create(sf, [member(campaign, people["cleo"])] * 201)
    assert error_code(too_many.value) == "EXCEEDED_ID_LIMIT"
    with pytest.raises(SalesforceMalformedRequest) as not_creatable:
        collection_create(sf, [{"attributes": {"type": "Contact"}, "LastName": "New"}])
    assert error_code(not_creatable.value) == "INVALID_TYPE"

    control(sandbox, "config", {"daily_api_limit": 10, "api_usage": 9})
    answer = rest("POST", "composite/sobjects", json={"records": [member(campaign, people["cleo"])]})
    assert answer.headers["Sforce-Limit-Info"] == "api-usage=10/10"
    assert answer.json() == [{"id": answer.json()[0]["id"], "success": True, "errors": []}]
    refused = rest("POST", "composite/sobjects", json={"records": [member(campaign, people["ben"])]})
    assert (refused.status_code, refused.json()[0]["errorCode"]) == (403, "REQUEST_LIMIT_EXCEEDED")


def test_campaign_member_statuses_are_queryable_and_decide_the_default(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    statuses = [{"Label": "Invited", "IsDefault": True}, {"Label": "Attended", "HasResponded": True}]
    webinar = control(sandbox, "seed", {"campaigns": [{"Name": "Webinar", "member_statuses": statuses}]})
    webinar_id = webinar["campaigns"][0]["Id"]

    soql = "SELECT Label, IsDefault, HasResponded FROM CampaignMemberStatus WHERE CampaignId = '%s'"
    rows = sf.query(soql % people["campaign"])["records"]
    assert [(r["Label"], r["IsDefault"], r["HasResponded"]) for r in rows] == [
        ("Sent", True, False),
        ("Responded", False, True),
    ]
    assert [r["Label"] for r in sf.query(soql % webinar_id)["records"]] == ["Invited", "Attended"]

    results = collection_create(
        sf,
        [
            member(webinar_id, people["ada"]),
            member(webinar_id, people["eve"], Status="Attended"),
            member(webinar_id, people["ben"], Status="Sent"),
        ],
    )
    assert outcomes(results) == ["ok", "ok", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"]
    assert members_of(sf, webinar_id) == [(people["ada"], None, "Invited"), (None, people["eve"], "Attended")]
    assert sandbox_record(sandbox, results[1]["id"])["fields"]["HasResponded"] is True


def test_bulk_ingest_inserts_campaign_members_with_failed_and_successful_results(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    campaign = people["campaign"]
    rows = [
        {"CampaignId": campaign, "ContactId": people["cleo"], "LeadId": "", "Status": ""},
        {"CampaignId": campaign, "ContactId": people["ada"], "LeadId": "", "Status": ""},
        {"CampaignId": campaign, "ContactId": "", "LeadId": people["fritz"], "Status": "Responded"},
        {"CampaignId": campaign, "ContactId": people["cleo"], "LeadId": "", "Status": "Responded"},
    ]
    [outcome] = sf.bulk2.CampaignMember.insert(records=rows, wait=0)
    assert (outcome["numberRecordsProcessed"], outcome["numberRecordsFailed"]) == (4, 3)

    failed = list(csv.DictReader(io.StringIO(sf.bulk2.CampaignMember.get_failed_records(outcome["job_id"]))))
    assert [(row["sf__Id"], row["sf__Error"], row["ContactId"] or row["LeadId"]) for row in failed] == [
        ("", "DUPLICATE_VALUE:Already a campaign member.:--", people["ada"]),
        ("", "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead:LeadId --", people["fritz"]),
        ("", "DUPLICATE_VALUE:Already a campaign member.:--", people["cleo"]),
    ]
    succeeded = list(
        csv.DictReader(io.StringIO(sf.bulk2.CampaignMember.get_successful_records(outcome["job_id"])))
    )
    assert [(row["sf__Created"], row["ContactId"]) for row in succeeded] == [("true", people["cleo"])]
    assert sandbox_record(sandbox, succeeded[0]["sf__Id"])["fields"]["Status"] == "Sent"
    assert sandbox_state(sandbox)["campaign_members_created"] == {campaign: {people["cleo"]: 1}}

    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.bulk2.Contact.insert(records=[{"LastName": "New"}], wait=0)
    assert error_code(refused.value) == "INVALIDJOB"


def test_members_created_in_a_generated_campaign_are_refused_as_duplicates(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    campaign = control(sandbox, "seed", {"generate": {"campaign_members": 10, "lead_ratio": 0}})[
        "campaign_id"
    ]
    first = sf.query(f"SELECT ContactId FROM CampaignMember WHERE CampaignId = '{campaign}' LIMIT 1")
    existing = first["records"][0]["ContactId"]
    outsider = control(sandbox, "seed", {"contacts": [{"LastName": "Outsider"}]})["contacts"][0]
    assert outcomes(collection_create(sf, [member(campaign, existing), member(campaign, outsider)])) == [
        "DUPLICATE_VALUE",
        "ok",
    ]
    assert sf.query(f"SELECT COUNT() FROM CampaignMember WHERE CampaignId = '{campaign}'")["totalSize"] == 11


# ---- lead conversion, deletion, locked rows ----

DELETE_ROUTE = "DELETE /services/data/v{version}/sobjects/{object_name}/{record_id}"


def convert(sandbox: SandboxServer, *leads: dict[str, str]) -> requests.Response:
    return requests.post(f"{sandbox.url}/_sandbox/convert", json={"leads": list(leads)}, timeout=10)


def converted_to(sandbox: SandboxServer, *leads: dict[str, str]) -> dict[str, str]:
    """Convert the leads; {lead id: contact id}."""
    answer = convert(sandbox, *leads)
    answer.raise_for_status()
    return {c["LeadId"]: c["ContactId"] for c in answer.json()["converted"]}


def bulk_errors(sf: Salesforce, object_name: str, rows: list[dict[str, str]]) -> dict[str, str]:
    """Update `rows` with one Bulk API 2.0 ingest job; {record id: sf__Error} of its failed results."""
    [outcome] = getattr(sf.bulk2, object_name).update(records=rows, wait=0)
    failed = getattr(sf.bulk2, object_name).get_failed_records(outcome["job_id"])
    return {row["sf__Id"]: row["sf__Error"] for row in csv.DictReader(io.StringIO(failed))}


def test_a_converted_lead_becomes_a_new_contact_and_refuses_updates(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    eve = people["eve"]
    sf.Lead.update(eve, {"Phone": "+44 20 7946 0000", "FirstName": "Eve"})

    answer = convert(sandbox, {"LeadId": eve[:15]})

    assert answer.status_code == 200
    [conversion] = answer.json()["converted"]
    contact, account = conversion["ContactId"], conversion["AccountId"]
    assert (conversion["LeadId"], contact[:3], account[:3]) == (eve, "003", "001")
    soql = (
        "SELECT Id, IsConverted, ConvertedContactId, ConvertedAccountId, ConvertedDate, Status "
        f"FROM Lead WHERE Id IN ('{eve[:15]}', '{people['fritz']}') ORDER BY LastName"
    )
    lead, fritz = sf.query(soql)["records"]
    assert (lead["IsConverted"], lead["ConvertedContactId"], lead["ConvertedAccountId"]) == (
        True,
        contact,
        account,
    )
    assert (lead["Status"], lead["ConvertedDate"]) == (
        "Closed - Converted",
        datetime.now(UTC).date().isoformat(),
    )
    # Seeded converted, fritz was converted to a contact of its own: never to none.
    assert (fritz["IsConverted"], fritz["ConvertedContactId"]) == (True, people["fritz_contact"])
    assert fritz["ConvertedAccountId"] not in (None, account) and fritz["Status"] == "Closed - Converted"
    [created] = sf.query(
        f"SELECT Id, Email, Phone, FirstName, LastName, Account.Name FROM Contact WHERE Id IN ('{contact}')"
    )["records"]
    assert (created["Email"], created["Phone"]) == ("eve@gmail.com", "+44 20 7946 0000")
    assert (created["FirstName"], created["LastName"], created["Account"]["Name"]) == (
        "Eve",
        "Evans",
        "Initech",
    )
    # Custom fields are not carried over unless the org maps them.
    assert sandbox_record(sandbox, contact)["fields"]["ApexVerify_Status__c"] is None
    # Its campaign member names the contact too, as a converted lead's member does.
    assert (contact, eve, "Sent") in members_of(sf, people["campaign"])

    refused = collection_update(sf, [flags("Lead", eve, ApexVerify_Valid__c=True)])
    assert refused[0]["errors"][0] == {
        "statusCode": "CANNOT_UPDATE_CONVERTED_LEAD",
        "message": "cannot reference converted lead",
        "fields": [],
    }
    with pytest.raises(SalesforceMalformedRequest) as patched:
        sf.Lead.update(eve, {"ApexVerify_Valid__c": True})
    assert error_code(patched.value) == "CANNOT_UPDATE_CONVERTED_LEAD"
    assert bulk_errors(sf, "Lead", [{"Id": eve, "ApexVerify_Valid__c": "true"}]) == {
        eve: "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead:--"
    }
    assert outcomes(collection_update(sf, [flags("Contact", contact, ApexVerify_Valid__c=True)])) == ["ok"]


def test_a_lead_converted_into_an_existing_contact_keeps_that_contacts_values(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    lead = control(
        sandbox,
        "seed",
        {"leads": [{"LastName": "Gray", "Company": "Umbrella", "Email": "gil@umbrella.com",
                    "Phone": "+1 212 555 0199", "Title": "CTO"}]},
    )["leads"][0]  # fmt: skip
    contacts_before = sf.query("SELECT COUNT() FROM Contact")["totalSize"]

    assert converted_to(sandbox, {"LeadId": lead, "ContactId": people["ben"]}) == {lead: people["ben"]}

    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == contacts_before
    [ben] = sf.query(
        f"SELECT Email, Phone, Title, LastName, AccountId FROM Contact WHERE Id = '{people['ben']}'"
    )["records"]
    # Only its empty fields are filled: it keeps its own email and name.
    assert (ben["Email"], ben["LastName"]) == ("info@globex.com", "Berg")
    assert (ben["Phone"], ben["Title"]) == ("+1 212 555 0199", "CTO")
    [gray] = sf.query(f"SELECT ConvertedContactId, ConvertedAccountId FROM Lead WHERE Id = '{lead}'")[
        "records"
    ]
    assert (gray["ConvertedContactId"], gray["ConvertedAccountId"]) == (people["ben"], ben["AccountId"])


def test_a_lead_seeded_converted_is_converted_to_a_contact_never_to_none(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    [account] = control(sandbox, "seed", {"accounts": [{"Name": "Owner Inc"}]})["accounts"]
    seeded = control(
        sandbox,
        "seed",
        {
            "contacts": [{"LastName": "Owner", "Email": "owner@acme.com", "AccountId": account}],
            "leads": [
                {"FirstName": "Nina", "LastName": "New", "Company": "Hooli", "Email": "nina@hooli.com",
                 "Phone": "+1 415 555 0102", "isconverted": True},
                {"LastName": "Old", "Company": "Initech", "Email": "old@initech.com", "IsConverted": True,
                 "ConvertedDate": "2023-04-01"},
                {"LastName": "Open", "Company": "Co", "Email": "open@co.com"},
            ],
        },
    )  # fmt: skip
    [owner], (nina, old, open_lead) = seeded["contacts"], seeded["leads"]
    converted = {c["LeadId"]: c for c in seeded["converted"]}
    assert list(converted) == [nina, old]
    nina_contact, nina_account = converted[nina]["ContactId"], converted[nina]["AccountId"]

    # As POST /_sandbox/convert converts without ContactId: a new contact and account from the lead.
    [contact] = sf.query(
        f"SELECT Id, FirstName, LastName, Email, Phone, AccountId, Account.Name FROM Contact "
        f"WHERE Id = '{nina_contact}'"
    )["records"]
    assert (contact["FirstName"], contact["LastName"], contact["Email"], contact["Phone"]) == (
        "Nina",
        "New",
        "nina@hooli.com",
        "+1 415 555 0102",
    )
    assert (contact["AccountId"], contact["Account"]["Name"]) == (nina_account, "Hooli")
    soql = (
        "SELECT Id, IsConverted, Status, ConvertedContactId, ConvertedAccountId, ConvertedDate FROM Lead "
        "WHERE IsConverted = TRUE ORDER BY LastName"
    )
    leads = {lead["Id"]: lead for lead in sf.query(soql)["records"]}
    assert set(leads) == {nina, old}
    today = datetime.now(UTC).date().isoformat()
    assert leads[nina] == {
        **leads[nina],
        "Status": "Closed - Converted",
        "ConvertedContactId": nina_contact,
        "ConvertedAccountId": nina_account,
        "ConvertedDate": today,
    }
    assert leads[old]["ConvertedDate"] == "2023-04-01"  # the day it was seeded with
    assert leads[old]["ConvertedContactId"] == converted[old]["ContactId"] != nina_contact
    assert (
        sf.query(f"SELECT IsConverted FROM Lead WHERE Id = '{open_lead}'")["records"][0]["IsConverted"]
        is False
    )

    # A ConvertedContactId naming a contact is kept as given; the rest is what a conversion sets.
    kept = control(
        sandbox,
        "seed",
        {"leads": [{"LastName": "Kept", "Company": "Co", "Email": "kept@co.com", "IsConverted": True,
                    "ConvertedContactId": owner}]},
    )  # fmt: skip
    [kept_lead] = kept["leads"]
    assert kept["converted"] == [{"LeadId": kept_lead, "ContactId": owner, "AccountId": account}]
    fields = sandbox_record(sandbox, kept_lead)["fields"]
    assert (fields["ConvertedContactId"], fields["ConvertedAccountId"], fields["ConvertedDate"]) == (
        owner,
        account,
        today,
    )
    assert sandbox_record(sandbox, owner)["fields"]["Email"] == "owner@acme.com"  # untouched
    assert bulk_errors(sf, "Lead", [{"Id": kept_lead, "ApexVerify_Valid__c": "true"}]) == {
        kept_lead: "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead:--"
    }

    # Their campaign members name the contacts too, as a converted lead's member does.
    campaign = control(
        sandbox, "seed", {"campaigns": [{"Name": "Fall", "members": [{"LeadId": nina}, {"LeadId": kept_lead},
                                                                      {"LeadId": open_lead}]}]}
    )["campaigns"][0]["Id"]  # fmt: skip
    assert sorted(members_of(sf, campaign), key=lambda m: str(m[1])) == sorted(
        [(nina_contact, nina, "Sent"), (owner, kept_lead, "Sent"), (None, open_lead, "Sent")],
        key=lambda m: str(m[1]),
    )


def test_seeding_refuses_a_conversion_salesforce_never_has(sandbox: SandboxServer, sf: Salesforce) -> None:
    people = seed_people(sandbox)
    contacts_before = sf.query("SELECT COUNT() FROM Contact")["totalSize"]
    lead = {"LastName": "Bad", "Company": "Co"}
    bad = {
        "a contact without conversion": {**lead, "ConvertedContactId": people["ada"]},
        "a date without conversion": {**lead, "IsConverted": False, "ConvertedDate": "2024-01-01"},
        "an account without a contact": {
            **lead,
            "IsConverted": True,
            "ConvertedAccountId": "001Dn0000000001",
        },
        "a lead as its contact": {**lead, "IsConverted": True, "ConvertedContactId": people["eve"]},
        "no such contact": {**lead, "IsConverted": True, "ConvertedContactId": "003Dn0000000zzz"},
        "not an id": {**lead, "IsConverted": True, "ConvertedContactId": "ada"},
    }
    for name, spec in bad.items():
        answer = requests.post(f"{sandbox.url}/_sandbox/seed", json={"leads": [spec]}, timeout=10)
        assert answer.status_code == 400 and "cannot seed" in answer.json()["error"], name
    assert sf.query("SELECT COUNT() FROM Lead WHERE LastName = 'Bad'")["totalSize"] == 0
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == contacts_before


def test_convert_refuses_what_salesforce_cannot_convert_and_converts_none(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    control(sandbox, "seed", {"deleted_ids": [people["eve"]]})
    gil = control(sandbox, "seed", {"leads": [{"LastName": "Gray", "Company": "Umbrella"}]})["leads"][0]
    bad = {
        "no such lead": {"LeadId": "00QDn0000000zzz"},
        "a contact": {"LeadId": people["ada"]},
        "not an id": {"LeadId": "gil"},
        "deleted": {"LeadId": people["eve"]},
        "converted already": {"LeadId": people["fritz"]},
        "deleted contact": {"LeadId": gil, "ContactId": people["dev"]},
        "a lead as contact": {"LeadId": gil, "ContactId": people["eve"]},
    }
    for name, entry in bad.items():
        answer = convert(sandbox, {"LeadId": gil}, entry)
        assert answer.status_code == 400 and "cannot convert" in answer.json()["error"], name
    twice = convert(sandbox, {"LeadId": gil}, {"LeadId": gil})
    assert twice.status_code == 400 and "named twice" in twice.json()["error"]
    assert convert(sandbox).status_code == 400
    assert sf.query(f"SELECT IsConverted FROM Lead WHERE Id = '{gil}'")["records"][0]["IsConverted"] is False


def test_a_generated_lead_converts_and_its_member_names_the_contact(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    generated = control(
        sandbox, "seed", {"generate": {"campaign_members": 40, "lead_ratio": 0.5, "converted_every": 0}}
    )
    campaign = generated["campaign_id"]
    soql = f"SELECT LeadId, Lead.Email FROM CampaignMember WHERE CampaignId = '{campaign}' AND LeadId != NULL"
    first, second = sf.query(soql + " LIMIT 2")["records"]

    contacts = converted_to(sandbox, {"LeadId": first["LeadId"]}, {"LeadId": second["LeadId"]})

    soql = f"SELECT ContactId, Contact.Email FROM CampaignMember WHERE LeadId = '{first['LeadId']}'"
    [member_row] = sf.query(soql)["records"]
    assert member_row["ContactId"] == contacts[first["LeadId"]]
    assert member_row["Contact"]["Email"] == first["Lead"]["Email"]
    converted = sf.query("SELECT Id FROM Lead WHERE IsConverted = TRUE AND ConvertedContactId != NULL")
    assert sorted(ids(converted["records"])) == sorted(contacts)
    assert bulk_errors(sf, "Lead", [{"Id": second["LeadId"], "ApexVerify_Valid__c": "true"}]) == {
        second["LeadId"]: "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead:--"
    }


def test_a_deleted_record_goes_to_the_recycle_bin_and_refuses_updates(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    ada, ben, eve = people["ada"], people["ben"], people["eve"]

    assert sf.Contact.delete(ada) == 204
    assert sf.Lead.delete(eve[:15]) == 204

    listed = sf.query(f"SELECT Id FROM Contact WHERE Id IN ('{ada}', '{ben}')")
    assert ids(listed["records"]) == [ben]
    with_deleted = sf.query_all(
        f"SELECT Id, IsDeleted FROM Contact WHERE Id IN ('{ada}')", include_deleted=True
    )
    assert with_deleted["records"][0]["IsDeleted"] is True
    assert members_of(sf, people["campaign"]) == [(ben, None, "Sent")]  # their memberships went with them
    with pytest.raises(SalesforceResourceNotFound) as read:
        sf.Contact.get(ada)
    assert error_code(read.value) == "ENTITY_IS_DELETED"

    refused = collection_update(sf, [flags("Contact", ada, ApexVerify_Valid__c=True)])
    assert refused[0]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceMalformedRequest) as patched:
        sf.Lead.update(eve, {"ApexVerify_Valid__c": True})
    assert error_code(patched.value) == "ENTITY_IS_DELETED"
    assert bulk_errors(sf, "Contact", [{"Id": ada, "ApexVerify_Valid__c": "true"}]) == {
        ada: "ENTITY_IS_DELETED:entity is deleted:--"
    }

    with pytest.raises(SalesforceResourceNotFound) as again:
        sf.Contact.delete(ada)
    assert error_code(again.value) == "ENTITY_IS_DELETED"
    for missing in ("003Dn0000000zzz", "not-an-id", eve):  # no such record, no id, a lead as a contact
        with pytest.raises(SalesforceResourceNotFound) as unknown:
            sf.Contact.delete(missing)
        assert error_code(unknown.value) == "NOT_FOUND"
    assert sandbox_state(sandbox)["requests"][DELETE_ROUTE] == 6


def test_a_locked_record_refuses_its_next_updates_then_takes_them(
    sandbox: SandboxServer, sf: Salesforce
) -> None:
    people = seed_people(sandbox)
    ada, ben = people["ada"], people["ben"]
    assert control(sandbox, "locks", {"ids": [ada[:15]], "times": 2}) == {"locked": {ada: 2}}

    first = collection_update(sf, [flags("Contact", ada, ApexVerify_Valid__c=True), flags("Contact", ben)])
    assert first[0]["errors"] == [
        {"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record",
         "fields": []}
    ]  # fmt: skip
    assert outcomes(first)[1] == "ok"
    assert bulk_errors(sf, "Contact", [{"Id": ada, "ApexVerify_Valid__c": "true"}]) == {
        ada: "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:--"
    }
    assert outcomes(collection_update(sf, [flags("Contact", ada, ApexVerify_Valid__c=True)])) == ["ok"]
    assert sandbox_record(sandbox, ada)["fields"]["ApexVerify_Valid__c"] is True

    for body in ({"ids": ["003Dn0000000zzz"]}, {"ids": [ada], "times": 0}):
        answer = requests.post(f"{sandbox.url}/_sandbox/locks", json=body, timeout=5)
        assert answer.status_code == 400, body
