"""The HubSpot sandbox, driven over real HTTP with hubspot-api-client (as the connector drives HubSpot).

The sandbox checks every request against HubSpot's OpenAPI specs and, here, its own answers too
(`validate_responses=True`), so these tests also prove the sandbox answers in the specs' shapes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    BatchResponseSimplePublicObject,
    BatchResponseSimplePublicObjectWithErrors,
    PublicMergeInput,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectId,
)
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.properties import PropertyCreate, PropertyGroupCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException

from connector.crm.hubspot.client import make_hubspot_client
from connector.sandbox.hubspot import command, create_app
from connector.sandbox.openapi_check import SPECS_DIR_ENV, load_checker
from connector.sandbox.server import SandboxServer, serve_in_thread

TOKEN = "pat-na1-sandbox-test-token"
BATCH_READ = "POST /crm/v3/objects/contacts/batch/read"
RATE_HEADERS = (
    "X-HubSpot-RateLimit-Daily",
    "X-HubSpot-RateLimit-Daily-Remaining",
    "X-HubSpot-RateLimit-Interval-Milliseconds",
    "X-HubSpot-RateLimit-Max",
    "X-HubSpot-RateLimit-Remaining",
    "X-HubSpot-RateLimit-Secondly",
    "X-HubSpot-RateLimit-Secondly-Remaining",
)


needs_specs = pytest.mark.usefixtures("specs_present")


@pytest.fixture
def specs_present(hubspot_specs_dir: Path) -> None:
    if not (hubspot_specs_dir / "contacts.v3.json").exists():
        pytest.skip("HubSpot's OpenAPI specs (shared/specs/hubspot beside the repository) are not here")


@pytest.fixture(scope="module")
def sandbox(hubspot_specs_dir: Path) -> Iterator[SandboxServer]:
    app = create_app(
        access_token=TOKEN,
        export_delay=0,
        import_delay=0,
        validate_responses=True,
        specs_dir=hubspot_specs_dir,
    )
    server = serve_in_thread(app)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(sandbox: SandboxServer) -> None:
    control(sandbox, "reset")


@pytest.fixture
def client(sandbox: SandboxServer) -> HubSpot:
    return make_hubspot_client(sandbox.url, TOKEN)


def control(sandbox: SandboxServer, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(f"{sandbox.url}/_sandbox/{name}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def sandbox_contact(sandbox: SandboxServer, contact_id: str) -> dict[str, str]:
    response = requests.get(f"{sandbox.url}/_sandbox/contacts/{contact_id}", timeout=5)
    response.raise_for_status()
    return response.json()["properties"]


def api(sandbox: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
    return requests.request(method, f"{sandbox.url}{path}", headers=headers, timeout=30, **kwargs)


def seed_contacts(sandbox: SandboxServer, *emails: str) -> list[str]:
    contacts = [{"properties": {"email": email, "firstname": f"F{i}"}} for i, email in enumerate(emails)]
    return control(sandbox, "seed", {"contacts": contacts})["contactIds"]


def create_apexverify_properties(client: HubSpot) -> None:
    client.crm.properties.groups_api.create(
        "contacts", PropertyGroupCreate(name="apexverify", label="ApexVerify")
    )
    core = client.crm.properties.core_api
    core.create(
        "contacts",
        PropertyCreate(
            name="apexverify_valid",
            label="Email deliverable",
            type="bool",
            field_type="booleancheckbox",
            group_name="apexverify",
        ),
    )
    core.create(
        "contacts",
        PropertyCreate(
            name="apexverify_verified_at",
            label="Verified at",
            type="datetime",
            field_type="date",
            group_name="apexverify",
        ),
    )
    statuses = [
        {"label": s.title(), "value": s, "hidden": False}
        for s in ("valid", "wrong", "unknown", "invalid_format")
    ]
    core.create(
        "contacts",
        PropertyCreate(
            name="apexverify_status",
            label="Verdict",
            type="enumeration",
            field_type="select",
            group_name="apexverify",
            options=statuses,
        ),
    )


# ---- contacts -----------------------------------------------------------------------------


def test_batch_read_returns_the_properties_asked_for_and_207_for_unknown_ids(
    sandbox: SandboxServer, client: HubSpot
) -> None:
    ann, bob = seed_contacts(sandbox, "ann@acme.com", "bob@globex.com")

    request = BatchReadInputSimplePublicObjectId(
        inputs=[SimplePublicObjectId(id=ann), SimplePublicObjectId(id=bob)],
        properties=["email"],
        properties_with_history=[],
    )
    complete = client.crm.contacts.batch_api.read(request)
    assert isinstance(complete, BatchResponseSimplePublicObject)
    assert {r.id: r.properties["email"] for r in complete.results} == {
        ann: "ann@acme.com",
        bob: "bob@globex.com",
    }
    assert all(
        set(r.properties) == {"email", "hs_object_id", "createdate", "lastmodifieddate"}
        for r in complete.results
    )

    request.inputs.append(SimplePublicObjectId(id="987654"))
    partial = client.crm.contacts.batch_api.read(request)
    assert isinstance(partial, BatchResponseSimplePublicObjectWithErrors)
    assert len(partial.results) == 2
    assert [(e.category, e.context["ids"]) for e in partial.errors] == [("OBJECT_NOT_FOUND", ["987654"])]


def test_batch_read_by_email_and_get_by_id(sandbox: SandboxServer, client: HubSpot) -> None:
    (ann,) = seed_contacts(sandbox, "Ann@Acme.com")
    by_email = client.crm.contacts.batch_api.read(
        BatchReadInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id="ann@acme.com")],
            properties=["firstname"],
            properties_with_history=[],
            id_property="email",
        )
    )
    assert [(r.id, r.properties["firstname"]) for r in by_email.results] == [(ann, "F0")]

    contact = client.crm.contacts.basic_api.get_by_id(ann, properties=["email", "firstname"])
    assert contact.properties["email"] == "Ann@Acme.com"
    with pytest.raises(ContactsApiException) as missing:
        client.crm.contacts.basic_api.get_by_id("424242")
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["category"] == "OBJECT_NOT_FOUND"


def test_batch_update_writes_checked_values_and_answers_200(sandbox: SandboxServer, client: HubSpot) -> None:
    create_apexverify_properties(client)
    ann, bob = seed_contacts(sandbox, "ann@acme.com", "bob@globex.com")

    answer = client.crm.contacts.batch_api.update(
        BatchInputSimplePublicObjectBatchInput(
            inputs=[
                SimplePublicObjectBatchInput(
                    id=ann,
                    properties={
                        "apexverify_valid": "true",
                        "apexverify_status": "valid",
                        "apexverify_verified_at": "2025-03-01T12:30:00Z",
                    },
                ),
                SimplePublicObjectBatchInput(
                    id=bob,
                    properties={"apexverify_valid": "false", "apexverify_verified_at": "1740832200000"},
                ),
            ]
        )
    )

    assert isinstance(answer, BatchResponseSimplePublicObject)
    assert sorted(r.id for r in answer.results) == sorted([ann, bob])
    stored_ann, stored_bob = sandbox_contact(sandbox, ann), sandbox_contact(sandbox, bob)
    assert stored_ann["apexverify_status"] == "valid"
    assert stored_ann["apexverify_verified_at"] == "2025-03-01T12:30:00.000Z"
    assert stored_bob["apexverify_valid"] == "false"
    assert stored_bob["apexverify_verified_at"] == "2025-03-01T12:30:00.000Z"  # epoch millis, same moment


def test_batch_update_answers_207_per_refused_input(sandbox: SandboxServer, client: HubSpot) -> None:
    create_apexverify_properties(client)
    good, bad_option, bad_bool, unknown_prop, bad_date = seed_contacts(
        sandbox, *[f"p{i}@acme.com" for i in range(5)]
    )

    answer = client.crm.contacts.batch_api.update(
        BatchInputSimplePublicObjectBatchInput(
            inputs=[
                SimplePublicObjectBatchInput(id=good, properties={"apexverify_status": "wrong"}),
                SimplePublicObjectBatchInput(id=bad_option, properties={"apexverify_status": "maybe"}),
                SimplePublicObjectBatchInput(id=bad_bool, properties={"apexverify_valid": "yes"}),
                SimplePublicObjectBatchInput(id=unknown_prop, properties={"apexverify_nope": "x"}),
                SimplePublicObjectBatchInput(
                    id=bad_date, properties={"apexverify_verified_at": "last tuesday"}
                ),
                SimplePublicObjectBatchInput(id="999999", properties={"apexverify_status": "valid"}),
            ]
        )
    )

    assert isinstance(answer, BatchResponseSimplePublicObjectWithErrors)
    assert [r.id for r in answer.results] == [good]
    refused = {e.context["ids"][0]: (e.category, [d.code for d in e.errors]) for e in answer.errors}
    assert refused == {
        bad_option: ("VALIDATION_ERROR", ["INVALID_OPTION"]),
        bad_bool: ("VALIDATION_ERROR", ["INVALID_OPTION"]),
        unknown_prop: ("VALIDATION_ERROR", ["PROPERTY_DOESNT_EXIST"]),
        bad_date: ("VALIDATION_ERROR", ["INVALID_DATETIME"]),
        "999999": ("OBJECT_NOT_FOUND", []),
    }
    assert answer.num_errors == 5
    assert sandbox_contact(sandbox, good)["apexverify_status"] == "wrong"
    assert "apexverify_status" not in sandbox_contact(sandbox, bad_option)


def read_contacts(client: HubSpot, contact_ids: list[str], properties: list[str], **kwargs: Any) -> Any:
    request = BatchReadInputSimplePublicObjectId(
        inputs=[SimplePublicObjectId(id=i) for i in contact_ids],
        properties=properties,
        properties_with_history=[],
    )
    return client.crm.contacts.batch_api.read(request, **kwargs)


def list_members(client: HubSpot, list_id: str) -> list[str]:
    return [m.record_id for m in client.crm.lists.memberships_api.get_page(list_id, limit=250).results]


def merge(client: HubSpot, primary: str, secondary: str) -> Any:
    return client.crm.contacts.basic_api.merge(
        PublicMergeInput(primary_object_id=primary, object_id_to_merge=secondary)
    )


def test_a_merge_makes_a_new_record_that_both_old_ids_are_read_as(
    sandbox: SandboxServer, client: HubSpot
) -> None:
    create_apexverify_properties(client)
    seeded = control(
        sandbox,
        "seed",
        {
            "contacts": [
                {"properties": {"email": "ann@acme.com", "firstname": "Ann", "lastname": ""}},
                {"properties": {"email": "ann.b@globex.com", "lastname": "Berg", "phone": "+1 415 555 0101"}},
                {"properties": {"email": "carl@initech.com"}},
            ],
        },
    )
    primary, secondary, third = seeded["contactIds"]
    only_primary, only_secondary = (
        control(sandbox, "seed", {"lists": [{"name": name, "contactIds": [member, third]}]})["listIds"][0]
        for name, member in (("A", primary), ("B", secondary))
    )

    merged = merge(client, primary, secondary)

    assert merged.id not in (primary, secondary) and int(merged.id) > int(third)
    assert merged.properties["email"] == "ann@acme.com"  # the primary's values
    assert merged.properties["firstname"] == "Ann"
    assert merged.properties["lastname"] == "Berg"  # the secondary's fill what the primary lacks
    assert merged.properties["hs_merged_object_ids"] == f"{primary};{secondary}"
    for old_id in (primary, secondary):
        read = client.crm.contacts.basic_api.get_by_id(old_id, properties=["email", "hs_merged_object_ids"])
        assert (read.id, read.properties["email"]) == (merged.id, "ann@acme.com")
        assert read.properties["hs_merged_object_ids"].split(";") == [primary, secondary]
    kept = sandbox_contact(sandbox, merged.id)
    assert (kept["phone"], kept["hs_additional_emails"]) == ("+1 415 555 0101", "ann.b@globex.com")

    batch = read_contacts(client, [primary, secondary, third, "987654"], ["email"])
    assert isinstance(batch, BatchResponseSimplePublicObjectWithErrors)
    assert sorted(r.id for r in batch.results) == sorted([merged.id, third])  # the merged record once
    assert [(e.category, e.context["ids"]) for e in batch.errors] == [("OBJECT_NOT_FOUND", ["987654"])]
    # The merged record is in every list either was in, in their place.
    assert list_members(client, only_primary) == list_members(client, only_secondary) == [third, merged.id]

    # Writes do not follow the old ids: refused as unknown ids are, the rest written.
    written = update_statuses(client, [secondary, merged.id, third], "wrong")
    assert sorted(r.id for r in written.results) == sorted([merged.id, third])
    assert [(e.category, e.context["ids"]) for e in written.errors] == [("OBJECT_NOT_FOUND", [secondary])]
    assert sandbox_contact(sandbox, merged.id)["apexverify_status"] == "wrong"

    # Merged again: every id merged so far points to the newest record.
    newest = merge(client, third, merged.id)
    assert newest.properties["email"] == "carl@initech.com"
    merged_ids = [primary, secondary, third, merged.id]
    assert newest.properties["hs_merged_object_ids"].split(";") == merged_ids
    answers = read_contacts(client, merged_ids, ["hs_merged_object_ids"])
    assert [r.id for r in answers.results] == [newest.id]
    for old_id in merged_ids:
        assert (
            requests.get(f"{sandbox.url}/_sandbox/contacts/{old_id}", timeout=5).json()["mergedInto"]
            == newest.id
        )
    state = requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()
    assert state["contacts"] == 1


def test_merging_needs_two_live_contacts(sandbox: SandboxServer, client: HubSpot) -> None:
    ann, bob, carl = seed_contacts(sandbox, "ann@acme.com", "bob@acme.com", "carl@acme.com")
    merged = merge(client, ann, bob)
    client.crm.contacts.basic_api.archive(carl)
    for primary, secondary, status in ((ann, ann, 400), (merged.id, ann, 404), (merged.id, carl, 404)):
        with pytest.raises(ContactsApiException) as refused:
            merge(client, primary, secondary)
        assert refused.value.status == status
    missing = api(sandbox, "POST", "/crm/v3/objects/contacts/merge", json={"primaryObjectId": ann})
    assert missing.status_code == 400  # the spec requires objectIdToMerge


def test_archived_contacts_are_not_found_and_refuse_writes(
    sandbox: SandboxServer, client: HubSpot, tmp_path: Path
) -> None:
    create_apexverify_properties(client)
    ids = seed_contacts(sandbox, *[f"a{i}@acme.com" for i in range(5)])
    (list_id,) = control(sandbox, "seed", {"lists": [{"name": "All", "contactIds": ids}]})["listIds"]

    client.crm.contacts.basic_api.archive(ids[0])
    client.crm.contacts.batch_api.archive(
        BatchInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id=i) for i in (ids[1], ids[2], "987654")]
        )
    )
    client.crm.contacts.basic_api.archive(ids[0])  # again: nothing to do, still 204

    with pytest.raises(ContactsApiException) as missing:
        client.crm.contacts.basic_api.get_by_id(ids[0])
    assert (missing.value.status, json.loads(missing.value.body)["category"]) == (404, "OBJECT_NOT_FOUND")
    batch = read_contacts(client, ids, ["email"])
    assert [r.id for r in batch.results] == ids[3:]
    assert [(e.category, sorted(e.context["ids"])) for e in batch.errors] == [
        ("OBJECT_NOT_FOUND", sorted(ids[:3]))
    ]
    archived = read_contacts(client, ids, ["email"], archived=True)
    assert [(r.id, r.archived, r.archived_at is not None) for r in archived.results] == [
        (i, True, True) for i in ids[:3]
    ]
    assert list_members(client, list_id) == ids[3:]

    written = update_statuses(client, ids[2:], "valid")
    assert sorted(r.id for r in written.results) == ids[3:]
    assert [(e.category, e.context["ids"]) for e in written.errors] == [("OBJECT_NOT_FOUND", [ids[2]])]
    done, errors = import_statuses(client, tmp_path, ids)
    assert done.metadata.counters["UPDATED_OBJECTS"] == 2
    assert [(e.error_type, e.source_data.row_data[0]) for e in errors] == [
        ("INVALID_OBJECT_ID", i) for i in ids[:3]
    ]
    assert "apexverify_status" not in sandbox_contact(sandbox, ids[0])
    assert "archivedAt" in requests.get(f"{sandbox.url}/_sandbox/contacts/{ids[0]}", timeout=5).json()


def test_batch_create_seeds_contacts_and_refuses_an_existing_email(
    sandbox: SandboxServer, client: HubSpot
) -> None:
    created = client.crm.contacts.batch_api.create(
        BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[
                SimplePublicObjectBatchInputForCreate(properties={"email": "new@acme.com"}, associations=[]),
                SimplePublicObjectBatchInputForCreate(
                    properties={"email": "other@acme.com"}, associations=[]
                ),
            ]
        )
    )
    assert len(created.results) == 2
    assert sandbox_contact(sandbox, created.results[0].id)["email"] == "new@acme.com"

    with pytest.raises(ContactsApiException) as conflict:
        client.crm.contacts.batch_api.create(
            BatchInputSimplePublicObjectBatchInputForCreate(
                inputs=[
                    SimplePublicObjectBatchInputForCreate(
                        properties={"email": "NEW@acme.com"}, associations=[]
                    )
                ]
            )
        )
    assert conflict.value.status == 409
    assert f"Existing ID: {created.results[0].id}" in json.loads(conflict.value.body)["message"]


# ---- properties ---------------------------------------------------------------------------


def test_properties_and_groups_are_created_once(sandbox: SandboxServer, client: HubSpot) -> None:
    create_apexverify_properties(client)

    status = client.crm.properties.core_api.get_by_name("contacts", "apexverify_status")
    assert (status.type, status.field_type, status.group_name) == ("enumeration", "select", "apexverify")
    assert [o.value for o in status.options] == ["valid", "wrong", "unknown", "invalid_format"]
    assert "apexverify" in [g.name for g in client.crm.properties.groups_api.get_all("contacts").results]
    names = [p.name for p in client.crm.properties.core_api.get_all("contacts").results]
    assert {"email", "phone", "apexverify_valid", "apexverify_verified_at"} <= set(names)

    with pytest.raises(PropertiesApiException) as duplicate:
        client.crm.properties.core_api.create(
            "contacts",
            PropertyCreate(
                name="apexverify_valid",
                label="x",
                type="bool",
                field_type="booleancheckbox",
                group_name="apexverify",
            ),
        )
    assert duplicate.value.status == 409
    with pytest.raises(PropertiesApiException) as duplicate_group:
        client.crm.properties.groups_api.create(
            "contacts", PropertyGroupCreate(name="apexverify", label="Again")
        )
    assert duplicate_group.value.status == 409
    with pytest.raises(PropertiesApiException) as missing:
        client.crm.properties.core_api.get_by_name("contacts", "apexverify_phone_status")
    assert missing.value.status == 404
    state = requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()
    assert state["properties"] == ["apexverify_valid", "apexverify_verified_at", "apexverify_status"]


# ---- lists --------------------------------------------------------------------------------


def test_list_memberships_are_paged_with_after(sandbox: SandboxServer, client: HubSpot) -> None:
    list_id = control(sandbox, "seed", {"generate": {"contacts": 600, "list_name": "Newsletter"}})["listId"]

    info = client.crm.lists.lists_api.get_by_id(list_id)
    assert (info.list.name, info.list.size) == ("Newsletter", 600)

    record_ids, pages, after = [], 0, None
    while True:
        page = client.crm.lists.memberships_api.get_page(
            list_id, limit=250, **({"after": after} if after else {})
        )
        pages += 1
        record_ids += [m.record_id for m in page.results]
        if page.paging is None or page.paging.next is None:
            break
        after = page.paging.next.after
    assert pages == 3
    assert len(record_ids) == len(set(record_ids)) == 600
    assert record_ids == sorted(record_ids, key=int)

    too_many = api(sandbox, "GET", f"/crm/v3/lists/{list_id}/memberships", params={"limit": 251})
    assert too_many.status_code == 400


def test_lists_are_found_by_search_and_name(sandbox: SandboxServer, client: HubSpot) -> None:
    ids = seed_contacts(sandbox, "a@acme.com", "b@acme.com")
    control(sandbox, "seed", {"lists": [{"listId": "77", "name": "VIP customers", "contactIds": ids}]})

    found = api(
        sandbox,
        "POST",
        "/crm/v3/lists/search",
        json={"query": "vip", "offset": 0, "additionalProperties": []},
    )
    assert [(li["listId"], li["additionalProperties"]["hs_list_size"]) for li in found.json()["lists"]] == [
        ("77", "2")
    ]
    by_name = api(sandbox, "GET", "/crm/v3/lists/object-type-id/0-1/name/VIP customers")
    assert by_name.json()["list"]["listId"] == "77"


# ---- exports ------------------------------------------------------------------------------


def export_request(list_id: str, properties: list[str], internal: list[str]) -> dict[str, Any]:
    # hubspot-api-client 12's PublicExportListRequest lacks two fields the spec requires, so the
    # request goes as a plain dict, which the client serializes as it is.
    return {
        "exportType": "LIST",
        "listId": list_id,
        "exportName": "apexverify segment",
        "format": "CSV",
        "language": "EN",
        "objectType": "CONTACT",
        "objectProperties": properties,
        "associatedObjectType": [],
        "exportInternalValuesOptions": internal,
        "includeLabeledAssociations": False,
        "includePrimaryDisplayPropertyForAssociatedObjects": False,
        "overrideAssociatedObjectsPerDefinitionPerRowLimit": False,
    }


def test_export_runs_pending_to_complete_and_serves_a_csv(sandbox: SandboxServer, client: HubSpot) -> None:
    list_id = control(sandbox, "seed", {"generate": {"contacts": 2500}})["listId"]
    control(sandbox, "config", {"export_delay": 3600})

    exports = client.crm.exports.public_exports_api
    task = exports.start(
        public_export_request=export_request(list_id, ["email", "phone"], ["NAMES", "VALUES"])
    )
    assert exports.get_status(int(task.id)).status == "PENDING"

    control(sandbox, "config", {"export_delay": 0})
    done = exports.get_status(int(task.id))
    assert done.status == "COMPLETE"

    download = requests.get(done.result, timeout=30)  # a pre-signed URL: no token
    assert download.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(download.text)))
    assert rows[0] == ["Record ID", "email", "phone"]
    assert len(rows) == 2501
    first = sandbox_contact(sandbox, rows[1][0])
    assert rows[1][1:] == [first.get("email", ""), first.get("phone", "")]


def test_export_headers_are_labels_and_zip_when_configured(sandbox: SandboxServer, client: HubSpot) -> None:
    list_id = control(sandbox, "seed", {"generate": {"contacts": 10}})["listId"]
    control(sandbox, "config", {"export_zip": True})

    exports = client.crm.exports.public_exports_api
    task = exports.start(public_export_request=export_request(list_id, ["email", "firstname"], []))
    done = exports.get_status(int(task.id))
    archive = zipfile.ZipFile(io.BytesIO(requests.get(done.result, timeout=30).content))
    (member,) = archive.namelist()
    rows = list(csv.reader(io.StringIO(archive.read(member).decode())))
    assert rows[0] == ["Record ID", "Email", "First Name"]
    assert len(rows) == 11


# ---- imports ------------------------------------------------------------------------------


def test_import_updates_contacts_and_reports_row_errors(
    sandbox: SandboxServer, client: HubSpot, tmp_path: Path
) -> None:
    create_apexverify_properties(client)
    ann, bob = seed_contacts(sandbox, "ann@acme.com", "bob@globex.com")
    upload = tmp_path / "apexverify-writeback.csv"
    upload.write_text(
        "Record ID,apexverify_status,apexverify_valid\n"
        f"{ann},valid,true\n"
        "55555,wrong,false\n"
        f"{bob},not-a-status,false\n"
    )
    import_request = {
        "name": "apexverify write-back",
        "importOperations": {"0-1": "UPDATE"},
        "files": [
            {
                "fileName": upload.name,
                "fileFormat": "CSV",
                "fileImportPage": {
                    "hasHeader": True,
                    "columnMappings": [
                        {
                            "columnObjectTypeId": "0-1",
                            "columnName": "Record ID",
                            "propertyName": "hs_object_id",
                            "columnType": "HUBSPOT_OBJECT_ID",
                        },
                        {
                            "columnObjectTypeId": "0-1",
                            "columnName": "apexverify_status",
                            "propertyName": "apexverify_status",
                        },
                        {
                            "columnObjectTypeId": "0-1",
                            "columnName": "apexverify_valid",
                            "propertyName": "apexverify_valid",
                        },
                    ],
                },
            }
        ],
    }
    control(sandbox, "config", {"import_delay": 3600})

    imports = client.crm.imports
    started = imports.core_api.create(files=str(upload), import_request=json.dumps(import_request))
    assert started.state == "STARTED"
    assert imports.core_api.get_by_id(int(started.id)).state == "STARTED"
    assert "apexverify_status" not in sandbox_contact(sandbox, ann)

    control(sandbox, "config", {"import_delay": 0})
    done = imports.core_api.get_by_id(int(started.id))
    assert done.state == "DONE"
    assert done.metadata.counters["TOTAL_ROWS"] == 3
    assert done.metadata.counters["UPDATED_OBJECTS"] == 2
    assert sandbox_contact(sandbox, ann)["apexverify_status"] == "valid"
    assert sandbox_contact(sandbox, bob)["apexverify_valid"] == "false"  # the row's valid cell still counts
    assert "apexverify_status" not in sandbox_contact(sandbox, bob)

    errors = imports.public_imports_api.get_errors(
        int(started.id), include_row_data=True, include_error_message=True
    )
    assert [(e.error_type, e.source_data.line_number) for e in errors.results] == [
        ("INVALID_OBJECT_ID", 3),
        ("INVALID_ENUMERATION_OPTION", 4),
    ]
    assert errors.results[1].source_data.row_data == [bob, "not-a-status", "false"]
    first_page = imports.public_imports_api.get_errors(int(started.id), limit=1)
    assert first_page.paging.next.after == "1"


def test_a_record_errors_fault_refuses_some_records_of_a_batch_update_and_of_an_import(
    sandbox: SandboxServer, client: HubSpot, tmp_path: Path
) -> None:
    create_apexverify_properties(client)
    ids = seed_contacts(sandbox, *[f"r{i}@acme.com" for i in range(250)])
    for endpoint in ("POST /crm/v3/objects/contacts/batch/update", "POST /crm/v3/imports"):
        control(sandbox, "faults", {"endpoint": endpoint, "kind": "record_errors", "count": 1})

    def update(contact_ids: list[str]) -> Any:
        inputs = [
            SimplePublicObjectBatchInput(id=i, properties={"apexverify_status": "valid"}) for i in contact_ids
        ]
        return client.crm.contacts.batch_api.update(BatchInputSimplePublicObjectBatchInput(inputs=inputs))

    partial = update(ids[:3])
    assert [r.id for r in partial.results] == ids[1:3]
    assert [(e.category, e.context["ids"]) for e in partial.errors] == [("OBJECT_NOT_FOUND", [ids[0]])]
    assert "apexverify_status" not in sandbox_contact(sandbox, ids[0])
    assert isinstance(update(ids[:3]), BatchResponseSimplePublicObject)  # the fault is spent

    upload = tmp_path / "flags.csv"
    upload.write_text("Record ID,apexverify_status\n" + "".join(f"{i},wrong\n" for i in ids))
    mappings = [
        {"columnObjectTypeId": "0-1", "columnName": "Record ID", "propertyName": "hs_object_id",
         "columnType": "HUBSPOT_OBJECT_ID"},
        {"columnObjectTypeId": "0-1", "columnName": "apexverify_status", "propertyName": "apexverify_status"},
    ]  # fmt: skip
    import_request = {
        "name": "flags",
        "importOperations": {"0-1": "UPDATE"},
        "files": [
            {
                "fileName": upload.name,
                "fileFormat": "CSV",
                "fileImportPage": {"hasHeader": True, "columnMappings": mappings},
            }
        ],
    }
    imports = client.crm.imports
    started = imports.core_api.create(files=str(upload), import_request=json.dumps(import_request))
    done = imports.core_api.get_by_id(int(started.id))

    assert (done.state, done.metadata.counters["UPDATED_OBJECTS"]) == ("DONE", 248)
    errors = imports.public_imports_api.get_errors(int(started.id), include_row_data=True).results
    assert [(e.error_type, e.source_data.row_data[0]) for e in errors] == [
        ("INVALID_OBJECT_ID", ids[99]),
        ("INVALID_OBJECT_ID", ids[199]),
    ]
    assert "apexverify_status" not in sandbox_contact(sandbox, ids[99])
    assert sandbox_contact(sandbox, ids[1])["apexverify_status"] == "wrong"


def flag_import_request(file_name: str) -> dict[str, Any]:
    """An UPDATE import of one apexverify_status column, as the connector's write-back sends it."""
    mappings = [
        {"columnObjectTypeId": "0-1", "columnName": "Record ID", "propertyName": "hs_object_id",
         "columnType": "HUBSPOT_OBJECT_ID"},
        {"columnObjectTypeId": "0-1", "columnName": "apexverify_status", "propertyName": "apexverify_status"},
    ]  # fmt: skip
    return {
        "name": "flags",
        "importOperations": {"0-1": "UPDATE"},
        "files": [
            {
                "fileName": file_name,
                "fileFormat": "CSV",
                "fileImportPage": {"hasHeader": True, "columnMappings": mappings},
            }
        ],
    }


def import_statuses(client: HubSpot, tmp_path: Path, contact_ids: list[str]) -> tuple[Any, list[Any]]:
    """Import apexverify_status=wrong onto these contacts: (the finished import, its errors)."""
    upload = tmp_path / "flags.csv"
    upload.write_text("Record ID,apexverify_status\n" + "".join(f"{i},wrong\n" for i in contact_ids))
    imports = client.crm.imports
    started = imports.core_api.create(
        files=str(upload), import_request=json.dumps(flag_import_request(upload.name))
    )
    done = imports.core_api.get_by_id(int(started.id))
    errors = imports.public_imports_api.get_errors(
        int(started.id), include_row_data=True, include_error_message=True
    ).results
    return done, errors


def update_statuses(client: HubSpot, contact_ids: list[str], status: str = "valid") -> Any:
    inputs = [
        SimplePublicObjectBatchInput(id=i, properties={"apexverify_status": status}) for i in contact_ids
    ]
    return client.crm.contacts.batch_api.update(BatchInputSimplePublicObjectBatchInput(inputs=inputs))


def test_refused_contacts_are_refused_by_every_write_until_the_refusals_are_lifted(
    sandbox: SandboxServer, client: HubSpot, tmp_path: Path
) -> None:
    create_apexverify_properties(client)
    ids = seed_contacts(sandbox, *[f"v{i}@acme.com" for i in range(4)])
    assert control(sandbox, "refusals", {"contactIds": [ids[1], int(ids[3])]}) == {
        "refusals": [ids[1], ids[3]]
    }

    for _ in range(2):  # permanent: a retry meets the same refusal
        partial = update_statuses(client, ids)
        assert isinstance(partial, BatchResponseSimplePublicObjectWithErrors)
        assert sorted(r.id for r in partial.results) == [ids[0], ids[2]]
        refused = {e.context["ids"][0]: e for e in partial.errors}
        assert sorted(refused) == [ids[1], ids[3]]
        error = refused[ids[1]]
        assert error.category == "VALIDATION_ERROR"
        assert error.message.startswith("Property values were not valid: ")
        assert [d.code for d in error.errors] == ["INVALID_CUSTOM_PROPERTY_VALIDATION"]
        assert error.context["propertyName"] == ["apexverify_status"]
    assert "apexverify_status" not in sandbox_contact(sandbox, ids[1])
    assert sandbox_contact(sandbox, ids[0])["apexverify_status"] == "valid"

    done, errors = import_statuses(client, tmp_path, ids)
    assert (done.state, done.metadata.counters["UPDATED_OBJECTS"]) == ("DONE", 2)
    assert [(e.error_type, e.source_data.row_data[0]) for e in errors] == [
        ("INVALID_CUSTOM_PROPERTY_VALIDATION", ids[1]),
        ("INVALID_CUSTOM_PROPERTY_VALIDATION", ids[3]),
    ]
    assert sandbox_contact(sandbox, ids[1]).get("apexverify_status") is None
    assert sandbox_contact(sandbox, ids[2])["apexverify_status"] == "wrong"

    assert control(sandbox, "refusals", {"contactIds": []}) == {"refusals": []}
    assert isinstance(update_statuses(client, ids), BatchResponseSimplePublicObject)
    assert sandbox_contact(sandbox, ids[1])["apexverify_status"] == "valid"


def test_refusals_are_per_portal_and_checked(sandbox: SandboxServer) -> None:
    other = requests.post(
        f"{sandbox.url}/_sandbox/refusals?account=777", json={"contactIds": ["5"]}, timeout=5
    )
    assert other.json() == {"refusals": ["5"]}
    assert requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()["refused_contacts"] == []
    bad = requests.post(f"{sandbox.url}/_sandbox/refusals", json={"contactIds": ["x"]}, timeout=5)
    assert bad.status_code == 400


def test_import_needs_a_record_id_column(sandbox: SandboxServer, tmp_path: Path) -> None:
    upload = tmp_path / "rows.csv"
    upload.write_text("Email\nann@acme.com\n")
    import_request = {
        "name": "no id",
        "importOperations": {"0-1": "UPDATE"},
        "files": [
            {
                "fileName": "rows.csv",
                "fileFormat": "CSV",
                "fileImportPage": {
                    "hasHeader": True,
                    "columnMappings": [{"columnObjectTypeId": "0-1", "propertyName": "email"}],
                },
            }
        ],
    }
    with upload.open("rb") as file:
        refused = api(
            sandbox,
            "POST",
            "/crm/v3/imports",
            data={"importRequest": json.dumps(import_request)},
            files={"files": ("rows.csv", file, "text/csv")},
        )
    assert refused.status_code == 400
    assert "Record ID" in refused.json()["message"]


# ---- auth, rate limits, faults --------------------------------------------------------------


def test_a_missing_or_wrong_token_gets_401(sandbox: SandboxServer) -> None:
    wrong = make_hubspot_client(sandbox.url, "pat-na1-wrong")
    with pytest.raises(PropertiesApiException) as refused:
        wrong.crm.properties.core_api.get_all("contacts")
    assert refused.value.status == 401
    body = json.loads(refused.value.body)
    assert body["status"] == "error"
    assert body["category"] == "INVALID_AUTHENTICATION"
    assert body["correlationId"]

    anonymous = requests.get(f"{sandbox.url}/crm/v3/properties/contacts", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["category"] == "INVALID_AUTHENTICATION"


def test_over_the_ten_second_limit_answers_429_like_hubspot(sandbox: SandboxServer) -> None:
    control(sandbox, "config", {"rate_limit_per_10s": 3})

    answers = [api(sandbox, "GET", "/crm/v3/properties/contacts/groups") for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert all(name in a.headers for a in answers for name in RATE_HEADERS)
    assert [a.headers["X-HubSpot-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[0].headers["X-HubSpot-RateLimit-Max"] == "3"
    assert answers[0].headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    body = answers[3].json()
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert (body["errorType"], body["policyName"], body["status"]) == (
        "RATE_LIMIT",
        "TEN_SECONDLY_ROLLING",
        "error",
    )
    assert body["groupName"] and body["correlationId"]
    assert requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()["rate_limited"] == 1


def test_over_the_daily_limit_answers_429_daily(sandbox: SandboxServer, client: HubSpot) -> None:
    control(sandbox, "config", {"daily_limit": 1})
    assert api(sandbox, "GET", "/crm/v3/properties/contacts/groups").status_code == 200

    with pytest.raises(PropertiesApiException) as limited:
        client.crm.properties.groups_api.get_all("contacts")
    assert limited.value.status == 429
    assert json.loads(limited.value.body)["policyName"] == "DAILY"
    assert limited.value.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"


def test_injected_faults_fail_the_next_requests_then_stop(sandbox: SandboxServer) -> None:
    seed_contacts(sandbox, "a@acme.com")
    control(sandbox, "faults", {"endpoint": BATCH_READ, "kind": "http_500", "count": 1})
    control(sandbox, "faults", {"endpoint": "any", "kind": "http_502", "count": 1})
    body = {"inputs": [{"id": "1001"}], "properties": ["email"], "propertiesWithHistory": []}

    first = api(sandbox, "POST", "/crm/v3/objects/contacts/batch/read", json=body)
    second = api(sandbox, "POST", "/crm/v3/objects/contacts/batch/read", json=body)
    third = api(sandbox, "POST", "/crm/v3/objects/contacts/batch/read", json=body)

    assert (first.status_code, second.status_code, third.status_code) == (500, 502, 200)
    assert second.headers["Content-Type"].startswith("text/html")
    state = requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()
    assert state["requests"][BATCH_READ] == 3
    assert state["faults"] == []


# ---- validation against the specs ---------------------------------------------------------


@needs_specs
def test_requests_the_spec_does_not_allow_get_400(sandbox: SandboxServer) -> None:
    no_inputs = api(sandbox, "POST", "/crm/v3/objects/contacts/batch/update", json={"properties": {}})
    assert no_inputs.status_code == 400
    assert no_inputs.json()["category"] == "VALIDATION_ERROR"
    assert "'inputs' is a required property" in no_inputs.json()["message"]

    # hubspot-api-client fills `propertiesWithHistory`; a hand-written request that omits it breaks the spec.
    incomplete = api(
        sandbox, "POST", "/crm/v3/objects/contacts/batch/read", json={"inputs": [], "properties": []}
    )
    assert incomplete.status_code == 400
    assert "propertiesWithHistory" in incomplete.json()["message"]

    typo = api(sandbox, "GET", "/crm/v3/lists/1/memberships", params={"limt": 10})
    assert typo.status_code == 400
    assert typo.json()["errors"] == [{"in": "query", "message": "unknown query parameter 'limt'"}]

    not_an_id = api(sandbox, "GET", "/crm/v3/exports/export/async/tasks/abc/status")
    assert not_an_id.status_code == 400

    # The specs declare no maxItems; HubSpot's own limit of 100 inputs per batch still applies.
    too_many = {"inputs": [{"id": str(i), "properties": {"firstname": "x"}} for i in range(101)]}
    too_large = api(sandbox, "POST", "/crm/v3/objects/contacts/batch/update", json=too_many)
    assert too_large.status_code == 400
    assert "at most 100" in too_large.json()["message"]


@needs_specs
def test_the_checker_matches_literal_segments_first_and_checks_responses(hubspot_specs_dir: Path) -> None:
    checker = load_checker(hubspot_specs_dir)
    assert checker is not None

    groups = checker.check_request("GET", "/crm/v3/properties/contacts/groups")
    assert groups.ok and groups.operation is not None
    assert groups.operation.template == "/crm/v3/properties/{objectType}/groups"
    assert not checker.check_request("PATCH", "/crm/v3/lists/search").ok

    operation = checker.check_request("GET", "/crm/v3/objects/contacts/5").operation
    assert operation is not None
    bad_answer = json.dumps({"id": "5", "properties": {}}).encode()
    problems = checker.check_response(operation, 200, "application/json", bad_answer)
    assert any("'createdAt' is a required property" in p.message for p in problems)


@needs_specs
def test_specs_dir_comes_from_the_environment_and_missing_specs_turn_validation_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, hubspot_specs_dir: Path
) -> None:
    shutil.copy(hubspot_specs_dir / "contacts.v3.json", tmp_path / "contacts.v3.json")
    monkeypatch.setenv(SPECS_DIR_ENV, str(tmp_path))
    only_contacts = load_checker()
    assert only_contacts is not None
    assert only_contacts.check_request("GET", "/crm/v3/objects/contacts/5").ok
    assert not only_contacts.check_request("GET", "/crm/v3/lists/5").ok

    monkeypatch.setenv(SPECS_DIR_ENV, str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING):
        server = serve_in_thread(create_app(access_token=TOKEN))
    try:
        assert "validation is off" in caplog.text
        unchecked = api(server, "GET", "/crm/v3/lists/1/memberships", params={"limt": 10})
        assert unchecked.status_code == 404  # reached the endpoint: no list 1
    finally:
        server.stop()


# ---- seeding and generating ---------------------------------------------------------------


def test_generated_contacts_are_deterministic_and_cover_the_patterns(sandbox: SandboxServer) -> None:
    spec = {
        "contacts": 3000,
        "duplicate_every": 50,
        "malformed_every": 97,
        "missing_email_every": 61,
        "seed": 7,
    }
    control(sandbox, "seed", {"generate": spec})
    first = requests.get(f"{sandbox.url}/_sandbox/contacts", params={"property": "email"}, timeout=30).json()
    control(sandbox, "reset")
    control(sandbox, "seed", {"generate": spec})
    again = requests.get(f"{sandbox.url}/_sandbox/contacts", params={"property": "email"}, timeout=30).json()
    assert first == again
    assert first["total"] == 3000

    emails = [c["properties"].get("email") for c in first["contacts"]]
    present = [e for e in emails if e is not None]
    assert emails.count(None) == 3000 // 61
    assert (
        sum("@" not in e or e.count("@") > 1 or " " in e.strip() or e.startswith("@") for e in present) >= 20
    )
    normalized = [e.strip().lower() for e in present]
    assert len(normalized) - len(set(normalized)) >= 50
    for pattern in ("@mailinator.com", "@gmail.com", "info@", "bounce", "catchall-", "unknown"):
        assert any(pattern in e for e in normalized), pattern


def test_seeded_contacts_and_lists_are_visible(sandbox: SandboxServer) -> None:
    answer = control(
        sandbox,
        "seed",
        {
            "contacts": [{"id": "501", "properties": {"email": "x@acme.com", "phone": "+1 415 555 0101"}}],
            "lists": [{"name": "Seeded", "contactIds": ["501"]}],
        },
    )
    assert answer["contactIds"] == ["501"]
    assert sandbox_contact(sandbox, "501")["phone"] == "+1 415 555 0101"
    assert requests.get(f"{sandbox.url}/_sandbox/contacts/502", timeout=5).status_code == 404
    refused = requests.post(
        f"{sandbox.url}/_sandbox/seed", json={"lists": [{"name": "x", "contactIds": ["9"]}]}, timeout=5
    )
    assert refused.status_code == 400

    state = requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()
    assert (state["contacts"], state["lists"], state["total_requests"]) == (1, 1, 0)


def test_a_million_generated_contacts_are_cheap(sandbox: SandboxServer, client: HubSpot) -> None:
    list_id = control(sandbox, "seed", {"generate": {"contacts": 1_000_000}})["listId"]

    assert client.crm.lists.lists_api.get_by_id(list_id).list.size == 1_000_000
    last_page = client.crm.lists.memberships_api.get_page(list_id, after="999900", limit=250)
    assert len(last_page.results) == 100 and last_page.paging is None
    last_id = last_page.results[-1].record_id
    client.crm.contacts.batch_api.update(
        BatchInputSimplePublicObjectBatchInput(
            inputs=[SimplePublicObjectBatchInput(id=last_id, properties={"lifecyclestage": "customer"})]
        )
    )
    assert sandbox_contact(sandbox, last_id)["lifecyclestage"] == "customer"
    state = requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()
    assert state["contacts"] == 1_000_000


def test_the_cli_command_serves_on_port_8102_by_default() -> None:
    defaults = {p.name: p.default for p in command.params}
    assert (defaults["host"], defaults["port"]) == ("127.0.0.1", 8102)


@needs_specs
def test_the_cli_command_checks_against_the_specs_dir_it_is_given(
    monkeypatch: pytest.MonkeyPatch, hubspot_specs_dir: Path
) -> None:
    served: list[Flask] = []
    monkeypatch.setattr("connector.sandbox.hubspot.serve_forever", lambda app, host, port: served.append(app))
    monkeypatch.delenv(SPECS_DIR_ENV, raising=False)

    given = CliRunner().invoke(command, ["--specs-dir", str(hubspot_specs_dir)])
    assert given.exit_code == 0, given.output
    assert served[-1].extensions["hubspot_openapi"] is not None
    assert "not checked" not in given.output

    monkeypatch.setenv(SPECS_DIR_ENV, str(hubspot_specs_dir))
    from_env = CliRunner().invoke(command, [])
    assert from_env.exit_code == 0, from_env.output
    assert served[-1].extensions["hubspot_openapi"] is not None

    monkeypatch.delenv(SPECS_DIR_ENV)
    none = CliRunner().invoke(command, [])
    assert none.exit_code == 0, none.output
    assert served[-1].extensions["hubspot_openapi"] is None
    assert "requests are not checked against HubSpot's OpenAPI specs" in none.output

    missing = CliRunner().invoke(command, ["--specs-dir", str(hubspot_specs_dir / "absent")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
