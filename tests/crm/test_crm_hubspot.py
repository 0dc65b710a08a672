"""HubSpot source, reader and writer against the HubSpot sandbox, through the real hubspot-api-client.

The sandbox checks every request against HubSpot's OpenAPI specs (400 otherwise), and here also
its own answers, so each test that passes shows the connector's requests are ones HubSpot's
contract allows and that the client reads answers shaped like HubSpot's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hubspot.crm.contacts as hs_contacts
import pytest
import redis
import requests

from connector.config import Settings
from connector.crm.base import (
    DELETED,
    MERGED_INTO,
    FlagUpdate,
    RecordFate,
    SourceRecord,
    Verdict,
    WriteFailure,
)
from connector.crm.hubspot.api import PROCESS_COUNTERS, HubSpotApi
from connector.crm.hubspot.client import make_hubspot_client
from connector.crm.hubspot.flags import HubSpotFlagWriter, _batch_failures
from connector.crm.hubspot.records import HubSpotListSource, HubSpotRecordReader
from connector.crm.jobs import seconds_until_utc_midnight
from connector.errors import ConnectorError, TransientError
from connector.sandbox.hubspot import create_app
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.conftest import settings_with

TOKEN = "pat-sandbox-0123456789abcdef"
EMAIL_PROPERTIES = (
    "apexverify_valid",
    "apexverify_wrong",
    "apexverify_is_role",
    "apexverify_is_disposable",
    "apexverify_status",
    "apexverify_verified_at",
)
PHONE_PROPERTIES = (
    "apexverify_phone_valid",
    "apexverify_phone_wrong",
    "apexverify_phone_status",
    "apexverify_phone_verified_at",
)
VERIFIED_AT = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
EARLIER = "2024-05-01T10:00:00.000Z"


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(hubspot_specs_dir: Path) -> Iterator[SandboxServer]:
    server = serve_in_thread(
        create_app(
            access_token=TOKEN,
            export_delay=0.2,
            import_delay=0.2,
            validate_responses=True,
            specs_dir=hubspot_specs_dir,
        )
    )
    yield server
    server.stop()


@pytest.fixture
def hub(sandbox: SandboxServer) -> Iterator[SandboxControl]:
    control = SandboxControl(sandbox.url)
    control.post("/_sandbox/reset", {})
    yield control


@pytest.fixture
def limiter_redis(redis_connection: redis.Redis) -> redis.Redis:
    redis_connection.flushdb()  # TEST_REDIS_URL's database: the portal's shared limiter starts empty
    return redis_connection


@pytest.fixture
def settings(sandbox: SandboxServer, tmp_path: Path) -> Settings:
    return settings_with(
        Settings(),
        hubspot_access_token=TOKEN,
        hubspot_base_url=sandbox.url,
        hubspot_portal_id="62515",
        data_dir=tmp_path / "data",
        poll_initial_seconds=0.05,
        poll_max_seconds=0.2,
    )


@pytest.fixture
def api(settings: Settings, limiter_redis: redis.Redis) -> HubSpotApi:
    return HubSpotApi(settings, limiter_redis)


class SandboxControl:
    """The sandbox's /_sandbox/ control endpoints, and HubSpot reads made to check results."""

    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = requests.post(self.url + path, json=body, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def get(self, path: str) -> dict[str, Any]:
        answer = requests.get(self.url + path, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def hubspot_get(self, path: str) -> dict[str, Any]:
        answer = requests.get(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def configure(self, **changes: Any) -> None:
        self.post("/_sandbox/config", changes)

    def state(self) -> dict[str, Any]:
        return self.get("/_sandbox/state")

    def requests_to(self, route: str) -> int:
        return self.state()["requests"].get(route, 0)

    def contact(self, contact_id: str) -> dict[str, str]:
        return self.get(f"/_sandbox/contacts/{contact_id}")["properties"]

    def merge(self, primary: str, secondary: str) -> str:
        """Merge two contacts through HubSpot's merge endpoint (hubspot-api-client): the new record's id."""
        merge = hs_contacts.PublicMergeInput(primary_object_id=primary, object_id_to_merge=secondary)
        return str(make_hubspot_client(self.url, TOKEN).crm.contacts.basic_api.merge(merge).id)

    def archive(self, contact_ids: list[str]) -> None:
        inputs = [hs_contacts.SimplePublicObjectId(id=i) for i in contact_ids]
        batch = make_hubspot_client(self.url, TOKEN).crm.contacts.batch_api
        for start in range(0, len(inputs), 100):
            batch.archive(hs_contacts.BatchInputSimplePublicObjectId(inputs=inputs[start : start + 100]))

    def seed_list(self, contacts: list[dict[str, str]], name: str = "Segment") -> tuple[str, list[str]]:
        ids = self.post("/_sandbox/seed", {"contacts": [{"properties": p} for p in contacts]})["contactIds"]
        list_id = self.post("/_sandbox/seed", {"lists": [{"name": name, "contactIds": ids}]})["listIds"][0]
        return list_id, ids


def segment_contacts(count: int) -> list[dict[str, str]]:
    """Contacts with gaps (no email), duplicates (same address, other case) and earlier verifications."""
    contacts = []
    for i in range(count):
        properties = {"firstname": f"C{i}", "phone": f"+1 415 555 {i:04d}"}
        if i % 17 == 5:
            pass  # no email at all
        elif i % 23 == 7:
            properties["email"] = f"  PERSON{i - 1}@EXAMPLE.COM "  # the previous contact's address
        else:
            properties["email"] = f"person{i}@example.com"
        if i % 10 == 3:
            properties["apexverify_verified_at"] = EARLIER
        contacts.append(properties)
    return contacts


def verdict(status: str = "valid", **overrides: Any) -> Verdict:
    fields = {
        "status": status,
        "valid": status == "valid",
        "wrong": status in ("wrong", "invalid_format"),
        "unknown": status == "unknown",
        "is_role": False,
        "is_disposable": False,
        "verified_at": VERIFIED_AT,
    }
    return Verdict(**{**fields, **overrides})


def prepare_email_properties(api: HubSpotApi, tmp_path: Path) -> None:
    HubSpotFlagWriter(api, "email", work_dir=tmp_path / "work").prepare()


# ---- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [False, True], ids=["csv", "zip"])
def test_list_source_reads_the_same_records_through_rest_pages_and_an_export(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path, zipped: bool
) -> None:
    hub.configure(export_zip=zipped)
    prepare_email_properties(api, tmp_path)  # as the pipeline does before reading a segment
    list_id, ids = hub.seed_list(segment_contacts(300))

    work_dir = tmp_path / "sync"
    by_rest = list(HubSpotListSource(api, list_id, "email", work_dir=work_dir).iter_records())
    assert hub.requests_to("POST /crm/v3/objects/contacts/batch/read") == 3
    assert hub.requests_to("GET /crm/v3/lists/{listId}/memberships") == 2  # 250 a page
    assert hub.requests_to("POST /crm/v3/exports/export/async") == 0

    exporting = HubSpotListSource(api, list_id, "email", bulk_threshold=50, work_dir=work_dir)
    by_export = list(exporting.iter_records())
    assert hub.requests_to("POST /crm/v3/exports/export/async") == 1
    assert hub.requests_to("POST /crm/v3/objects/contacts/batch/read") == 3  # no REST reads this time

    assert by_export == by_rest
    assert [r.record_id for r in by_rest] == ids
    assert sum(r.value is None for r in by_rest) == len([i for i in range(300) if i % 17 == 5])
    assert by_rest[8] == SourceRecord(ids[8], "person8@example.com")
    assert by_rest[30].value == "  PERSON29@EXAMPLE.COM "  # values come as stored; the pipeline normalizes
    assert by_rest[3].verified_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert not list(work_dir.iterdir())  # the export file and marker are gone


def test_list_source_of_a_phone_sync_reads_phones_and_the_phone_verified_at(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    HubSpotFlagWriter(api, "phone", work_dir=tmp_path / "work").prepare()
    list_id, ids = hub.seed_list(
        [
            {"phone": "+1 415 555 0100", "apexverify_phone_verified_at": EARLIER},
            {"email": "no-phone@example.com"},
        ]
    )
    for threshold in (10_000, 1):
        source = HubSpotListSource(api, list_id, "phone", bulk_threshold=threshold, work_dir=tmp_path)
        records = list(source.iter_records())
        assert records == [
            SourceRecord(ids[0], "+1 415 555 0100", verified_at=datetime(2024, 5, 1, 10, tzinfo=UTC)),
            SourceRecord(ids[1], None),
        ]


def test_list_source_fails_clearly_for_an_unknown_list(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    with pytest.raises(ConnectorError) as raised:
        list(HubSpotListSource(api, "987654", "email", work_dir=tmp_path).iter_records())
    assert raised.value.code == "hubspot_list_not_found"


def test_export_still_running_at_the_poll_budget_is_resumed_not_restarted(
    hub: SandboxControl, settings: Settings, limiter_redis: redis.Redis, tmp_path: Path
) -> None:
    list_id, _ = hub.seed_list(segment_contacts(20))
    hub.configure(export_delay=30.0)
    impatient = HubSpotApi(dataclasses.replace(settings, step_lease_seconds=1), limiter_redis)
    source = HubSpotListSource(impatient, list_id, "email", bulk_threshold=5, work_dir=tmp_path)
    with pytest.raises(TransientError) as raised:
        list(source.iter_records())
    assert raised.value.code == "hubspot_export_running"

    hub.configure(export_delay=0.0)
    records = list(source.iter_records())
    assert len(records) == 20
    assert hub.requests_to("POST /crm/v3/exports/export/async") == 1


def test_record_reader_leaves_out_ids_hubspot_does_not_know(hub: SandboxControl, api: HubSpotApi) -> None:
    _, ids = hub.seed_list(segment_contacts(150))
    wanted = [ids[0], "99999999", *ids[1:120], ids[0]]

    records = list(HubSpotRecordReader(api).read_records(wanted, "email"))

    assert [r.record_id for r in records] == ids[:120]  # asked order, each once, the unknown id left out
    assert records[0] == SourceRecord(ids[0], "person0@example.com")
    assert hub.requests_to("POST /crm/v3/objects/contacts/batch/read") == 2


def seed_duplicates(hub: SandboxControl, emails: list[str]) -> list[str]:
    """Contacts outside any list, one per address (a duplicate of a list contact to merge with)."""
    contacts = [{"properties": {"email": email, "firstname": "Dup"}} for email in emails]
    return hub.post("/_sandbox/seed", {"contacts": contacts})["contactIds"]


def test_fates_follow_merged_contacts_and_report_archived_ones(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    writer = HubSpotFlagWriter(api, "email", work_dir=tmp_path)
    writer.prepare()
    _, ids = hub.seed_list([{"email": f"person{i}@example.com"} for i in range(130)])
    duplicates = seed_duplicates(hub, ["person0@example.com", "person1@example.com", "other@example.com"])
    survivors = [hub.merge(ids[0], duplicates[0]), hub.merge(duplicates[1], ids[1])]  # primary, secondary
    other = hub.merge(duplicates[2], ids[2])  # merged into a contact holding another address
    hub.archive(ids[10:115])  # 105: two batch reads of fates
    hub.post("/_sandbox/refusals", {"contactIds": [ids[120]]})

    failures = writer.write(FlagUpdate(i, None, verdict("valid")) for i in ids)
    failures.append(WriteFailure(ids[121], "NOT_CONFIRMED", "HubSpot did not confirm this update"))
    reads_before = hub.requests_to("POST /crm/v3/objects/contacts/batch/read")

    fates = HubSpotRecordReader(api).fates(failures, "email")

    assert {f.record_id: f.code for f in failures}.keys() == {*ids[:3], *ids[10:115], ids[120], ids[121]}
    assert fates[:3] == [
        RecordFate(ids[0], MERGED_INTO, successor_id=survivors[0], successor_value="person0@example.com"),
        RecordFate(ids[1], MERGED_INTO, successor_id=survivors[1], successor_value="person1@example.com"),
        RecordFate(ids[2], MERGED_INTO, successor_id=other, successor_value="other@example.com"),
    ]
    assert fates[3:] == [RecordFate(i, DELETED) for i in ids[10:115]]
    # ids[120] was refused for another reason and ids[121] is still there as itself: not asked of
    # HubSpot / left out. 108 maybe-gone ids: two batch reads of 100 at most.
    assert hub.requests_to("POST /crm/v3/objects/contacts/batch/read") - reads_before == 2
    assert all(f.successor_type is None for f in fates)


def test_fates_of_an_import_s_refused_rows(hub: SandboxControl, api: HubSpotApi, tmp_path: Path) -> None:
    writer = HubSpotFlagWriter(api, "phone", expected_updates=20, bulk_threshold=5, work_dir=tmp_path)
    writer.prepare()
    _, ids = hub.seed_list([{"phone": f"+1 415 555 {i:04d}"} for i in range(20)])
    (duplicate,) = hub.post("/_sandbox/seed", {"contacts": [{"properties": {"phone": "+1 415 555 9999"}}]})[
        "contactIds"
    ]
    survivor = hub.merge(ids[3], duplicate)
    hub.archive([ids[7]])

    failures = writer.write(FlagUpdate(i, None, verdict("valid", is_role=None)) for i in ids)

    assert sorted((f.record_id, f.code) for f in failures) == [
        (ids[3], "INVALID_OBJECT_ID"),
        (ids[7], "INVALID_OBJECT_ID"),
    ]
    assert HubSpotRecordReader(api).fates(failures, "phone") == [
        RecordFate(ids[3], MERGED_INTO, successor_id=survivor, successor_value="+1 415 555 0003"),
        RecordFate(ids[7], DELETED),
    ]
    assert HubSpotRecordReader(api).fates([], "phone") == []


# ---- preparing and writing --------------------------------------------------------------------


def test_prepare_creates_the_group_and_each_missing_property_once(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    writer = HubSpotFlagWriter(api, "email", work_dir=tmp_path)
    writer.prepare()

    assert hub.hubspot_get("/crm/v3/properties/contacts/groups/apexverify")["name"] == "apexverify"
    created = {name: hub.hubspot_get(f"/crm/v3/properties/contacts/{name}") for name in EMAIL_PROPERTIES}
    assert {n: (p["type"], p["fieldType"], p["groupName"]) for n, p in created.items()} == {
        "apexverify_valid": ("bool", "booleancheckbox", "apexverify"),
        "apexverify_wrong": ("bool", "booleancheckbox", "apexverify"),
        "apexverify_is_role": ("bool", "booleancheckbox", "apexverify"),
        "apexverify_is_disposable": ("bool", "booleancheckbox", "apexverify"),
        "apexverify_status": ("enumeration", "select", "apexverify"),
        "apexverify_verified_at": ("datetime", "date", "apexverify"),
    }
    assert [o["value"] for o in created["apexverify_valid"]["options"]] == ["true", "false"]
    assert [o["value"] for o in created["apexverify_status"]["options"]] == [
        "valid",
        "wrong",
        "unknown",
        "invalid_format",
    ]

    writer.prepare()
    HubSpotFlagWriter(api, "email", work_dir=tmp_path).prepare()
    assert hub.requests_to("POST /crm/v3/properties/{objectType}") == len(EMAIL_PROPERTIES)
    assert hub.requests_to("POST /crm/v3/properties/{objectType}/groups") == 1
    assert hub.requests_to("GET /crm/v3/properties/{objectType}") == 3  # one look per prepare

    HubSpotFlagWriter(api, "phone", work_dir=tmp_path).prepare()  # the group exists: 409 is fine
    assert set(hub.state()["properties"]) == {*EMAIL_PROPERTIES, *PHONE_PROPERTIES}


def test_prepare_uses_the_connection_s_field_names(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    renamed = {"apexverify_valid": "acme_email_ok", "apexverify_status": "acme_email_verdict"}
    writer = HubSpotFlagWriter(api, "email", field_names=renamed, work_dir=tmp_path)
    writer.prepare()
    _, ids = hub.seed_list([{"email": "a@example.com"}])

    assert writer.write([FlagUpdate(ids[0], None, verdict("valid"))]) == []

    assert {"acme_email_ok", "acme_email_verdict"} <= set(hub.state()["properties"])
    assert "apexverify_valid" not in hub.state()["properties"]
    flags = hub.contact(ids[0])
    assert (flags["acme_email_ok"], flags["acme_email_verdict"]) == ("true", "valid")


def test_unknown_field_name_is_a_configuration_error(api: HubSpotApi, tmp_path: Path) -> None:
    with pytest.raises(ConnectorError) as raised:
        HubSpotFlagWriter(api, "email", field_names={"apexverify_nope": "x"}, work_dir=tmp_path)
    assert raised.value.code == "invalid_field_names"


def test_rest_write_records_a_207_failure_per_contact_and_writes_the_rest(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    writer = HubSpotFlagWriter(api, "email", work_dir=tmp_path)
    writer.prepare()
    _, ids = hub.seed_list(segment_contacts(3))
    updates = [
        FlagUpdate(ids[0], None, verdict("valid", is_role=True)),
        FlagUpdate("88888888", None, verdict("valid")),
        FlagUpdate(ids[1], None, verdict("wrong", is_role=None, is_disposable=None)),
        FlagUpdate(ids[2], None, verdict("invalid_format")),
    ]

    failures = writer.write(iter(updates))

    assert [(f.record_id, f.code) for f in failures] == [("88888888", "OBJECT_NOT_FOUND")]
    assert "not found" in failures[0].message.lower()
    assert writer.batch_size == 100
    assert hub.requests_to("POST /crm/v3/objects/contacts/batch/update") == 1
    first, second, third = (hub.contact(i) for i in ids)
    assert {name: first.get(name) for name in EMAIL_PROPERTIES} == {
        "apexverify_valid": "true",
        "apexverify_wrong": "false",
        "apexverify_is_role": "true",
        "apexverify_is_disposable": "false",
        "apexverify_status": "valid",
        "apexverify_verified_at": "2025-03-14T09:26:53.589Z",
    }
    assert (second["apexverify_wrong"], second["apexverify_status"]) == ("true", "wrong")
    assert (third["apexverify_valid"], third["apexverify_status"]) == ("false", "invalid_format")
    assert writer.write(iter([])) == []


def test_per_record_rate_limit_and_server_errors_are_transient_failures() -> None:
    """HubSpot's 207 answer as hubspot-api-client reads it: StandardError carries a category and a
    `status` the specs describe as the error's HTTP status (HubSpot mostly sends "error")."""

    def error(record_id: str, category: str, status: str) -> hs_contacts.StandardError:
        return hs_contacts.StandardError(
            status=status, category=category, message="m", context={"ids": [record_id]}, errors=[], links={}
        )

    answer = hs_contacts.BatchResponseSimplePublicObjectWithErrors(
        status="COMPLETE",
        results=[],
        requested_at=VERIFIED_AT,
        started_at=VERIFIED_AT,
        completed_at=VERIFIED_AT,
        errors=[
            error("1", "RATE_LIMITS", "error"),
            error("2", "OBJECT_NOT_FOUND", "error"),
            error("3", "INTERNAL_ERROR", "503"),
            error("4", "VALIDATION_ERROR", "400"),
        ],
    )

    failures = _batch_failures(answer, ["1", "2", "3", "4", "5"])

    assert [(f.record_id, f.code, f.transient) for f in failures] == [
        ("1", "RATE_LIMITS", True),
        ("2", "OBJECT_NOT_FOUND", False),
        ("3", "INTERNAL_ERROR", True),
        ("4", "VALIDATION_ERROR", False),
        ("5", "RATE_LIMITS", True),  # named by no error: the answer's first error stands for it
    ]


def test_phone_sync_writes_only_the_phone_properties(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    writer = HubSpotFlagWriter(api, "phone", work_dir=tmp_path)
    writer.prepare()
    _, ids = hub.seed_list([{"phone": "+1 415 555 0100"}])

    assert writer.write([FlagUpdate(ids[0], None, verdict("valid", is_role=None))]) == []

    flags = {k: v for k, v in hub.contact(ids[0]).items() if k.startswith("apexverify")}
    assert flags == {
        "apexverify_phone_valid": "true",
        "apexverify_phone_wrong": "false",
        "apexverify_phone_status": "valid",
        "apexverify_phone_verified_at": "2025-03-14T09:26:53.589Z",
    }


def test_bulk_write_goes_through_one_import_and_reports_its_error_rows(
    hub: SandboxControl, api: HubSpotApi, tmp_path: Path
) -> None:
    writer = HubSpotFlagWriter(api, "email", expected_updates=25, bulk_threshold=10, work_dir=tmp_path / "w")
    writer.prepare()
    _, ids = hub.seed_list(segment_contacts(24))
    updates = [FlagUpdate(i, None, verdict("wrong" if n % 2 else "valid")) for n, i in enumerate(ids)]
    updates.insert(5, FlagUpdate("77777777", None, verdict("valid")))

    failures = writer.write(u for u in updates)

    assert [(f.record_id, f.code) for f in failures] == [("77777777", "INVALID_OBJECT_ID")]
    assert writer.batch_size > 10_000
    assert hub.requests_to("POST /crm/v3/imports") == 1
    assert hub.requests_to("POST /crm/v3/objects/contacts/batch/update") == 0
    assert hub.state()["imports"] == {"1": "DONE"}
    for n, contact_id in enumerate(ids):
        flags = hub.contact(contact_id)
        assert flags["apexverify_status"] == ("wrong" if n % 2 else "valid")
        assert flags["apexverify_valid"] == ("false" if n % 2 else "true")
        assert flags["apexverify_verified_at"] == "2025-03-14T09:26:53.589Z"
    assert not list((tmp_path / "w").glob("hubspot-import-*"))  # file and marker cleaned up

    assert writer.write(iter([])) == []
    assert hub.requests_to("POST /crm/v3/imports") == 1  # nothing to write, no import


def test_bulk_write_still_running_at_the_poll_budget_resumes_the_same_import(
    hub: SandboxControl, settings: Settings, limiter_redis: redis.Redis, tmp_path: Path
) -> None:
    impatient = HubSpotApi(dataclasses.replace(settings, step_lease_seconds=1), limiter_redis)
    writer = HubSpotFlagWriter(impatient, "email", expected_updates=99, bulk_threshold=1, work_dir=tmp_path)
    writer.prepare()
    _, ids = hub.seed_list(segment_contacts(3))
    updates = [FlagUpdate(i, None, verdict("unknown", is_role=None)) for i in ids]
    hub.configure(import_delay=30.0)

    with pytest.raises(TransientError) as raised:
        writer.write(iter(updates))
    assert raised.value.code == "hubspot_import_running"

    hub.configure(import_delay=0.0)
    assert writer.write(iter(updates)) == []  # the same batch again, as a retried step sends it
    assert hub.requests_to("POST /crm/v3/imports") == 1
    assert hub.contact(ids[2])["apexverify_status"] == "unknown"


# ---- limits and failures -----------------------------------------------------------------------


def test_shared_limiter_keeps_a_burst_from_several_processes_under_the_portal_limit(
    hub: SandboxControl, settings: Settings, limiter_redis: redis.Redis
) -> None:
    # The sandbox's window is HubSpot's 10 s; 30 per window and 60 requests keep the test short.
    hub.configure(rate_limit_per_10s=30)
    list_id, _ = hub.seed_list(segment_contacts(1))
    limited = settings_with(settings, hubspot_rate_limit_per_10s=30)
    workers = [HubSpotApi(limited, redis.Redis(host="127.0.0.1", port=6379, db=14)) for _ in range(4)]
    errors: list[BaseException] = []

    def burst(worker: HubSpotApi) -> None:
        try:
            for _ in range(15):
                worker.call(worker.lists.get_by_id, list_id)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=burst, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    state = hub.state()
    assert sum(w.calls for w in workers) == state["total_requests"] >= 60
    assert state["rate_limited"] < 0.01 * state["total_requests"]
    assert sum(w.rate_limited for w in workers) == state["rate_limited"]


def test_a_429_pauses_the_shared_limiter_and_is_retried(hub: SandboxControl, api: HubSpotApi) -> None:
    list_id, _ = hub.seed_list(segment_contacts(1))
    hub.post("/_sandbox/faults", {"endpoint": "GET /crm/v3/lists/{listId}", "kind": "http_429", "count": 1})

    process_before = dataclasses.replace(PROCESS_COUNTERS)

    answer = api.call(api.lists.get_by_id, list_id)

    assert answer.list.list_id == list_id
    assert (api.calls, api.rate_limited, api.retries) == (2, 1, 1)
    assert PROCESS_COUNTERS.rate_limited == process_before.rate_limited + 1
    assert PROCESS_COUNTERS.calls == process_before.calls + 2


def test_a_daily_429_waits_for_the_next_utc_day(hub: SandboxControl, api: HubSpotApi) -> None:
    hub.configure(daily_limit=0)

    with pytest.raises(TransientError) as raised:
        HubSpotRecordReader(api).read_records(["1001"], "email").__next__()

    assert raised.value.code == "hubspot_daily_limit"
    assert abs(raised.value.retry_after - seconds_until_utc_midnight()) < 60
    assert api.calls == 1


def test_server_errors_are_retried_then_become_a_transient_error(
    hub: SandboxControl, settings: Settings, limiter_redis: redis.Redis
) -> None:
    waits: list[float] = []
    api = HubSpotApi(settings, limiter_redis, sleep=waits.append)
    list_id, _ = hub.seed_list(segment_contacts(1))
    hub.post("/_sandbox/faults", {"endpoint": "any", "kind": "http_502", "count": 2})

    assert api.call(api.lists.get_by_id, list_id).list.list_id == list_id
    assert (api.calls, api.retries, waits) == (3, 2, [1.0, 2.0])

    hub.post("/_sandbox/faults", {"endpoint": "any", "kind": "http_500", "count": 50})
    with pytest.raises(TransientError) as raised:
        api.call(api.lists.get_by_id, list_id)
    assert raised.value.code == "hubspot_unavailable"
    assert max(waits) <= 8.0  # capped backoff


def test_a_refused_token_fails_without_showing_it(
    hub: SandboxControl, settings: Settings, limiter_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "pat-wrong-token-fedcba9876543210"
    api = HubSpotApi(settings_with(settings, hubspot_access_token=wrong), limiter_redis)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ConnectorError) as raised:
        HubSpotFlagWriter(api, "email", work_dir=Path("unused")).prepare()

    assert raised.value.code == "hubspot_unauthorized"
    assert wrong not in str(raised.value) and wrong not in repr(raised.value.to_dict())
    assert all(wrong not in record.getMessage() for record in caplog.records)


def test_an_api_without_a_token_is_a_configuration_error(limiter_redis: redis.Redis) -> None:
    with pytest.raises(ConnectorError) as raised:
        HubSpotApi(Settings(), limiter_redis)
    assert raised.value.code == "hubspot_not_configured"
