"""README's "Adding a CRM", proven: a toy CRM from the test tree, registered with one call, is
served by the admin API, the OpenAPI document, the webhook route and the pipeline, and a segment
sync runs through it end to end (ApexVerify sandbox over HTTP, no file involved)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from connector.crm.registry import CRMS, register
from connector.models import SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import with_settings
from tests.crm import toy_crm

AUTH = {"Authorization": "Bearer test-admin-token"}
TOKEN = "toy-webhook-token-0001"


@pytest.fixture
def toy_runtime(runtime: Runtime) -> Iterator[Runtime]:
    register(toy_crm.CRM)
    toy_crm.RECORDS.clear()
    toy_crm.RECORDS.update(
        {
            "t1": {"list": "vip", "email": "ada@example.com"},
            "t2": {"list": "vip", "email": "bounce@example.com"},
            "t3": {"list": "vip", "email": "not-an-email"},
            "t4": {"list": "other", "email": "grace@example.com"},
        }
    )
    yield with_settings(runtime, toy_account="acme", toy_webhook_token=TOKEN)
    del CRMS["toy"]


def test_a_registered_toy_crm_syncs_a_segment_end_to_end(toy_runtime: Runtime, web: SandboxServer) -> None:
    document = requests.get(f"{web.url}/openapi.json", timeout=5).json()
    segment_schema = document["components"]["schemas"]["SegmentInput"]["properties"]
    assert "toy" in segment_schema["crm"]["enum"] and "toy_list" in segment_schema["kind"]["enum"]
    assert "/webhooks/toy" in document["paths"]

    created = requests.post(
        f"{web.url}/admin/segments",
        json={"crm": "toy", "kind": "toy_list", "ref": "vip", "type": "email", "reverify_after_days": 0},
        headers=AUTH,
        timeout=5,
    )
    assert created.status_code == 201, created.text
    started = requests.post(f"{web.url}/admin/segments/{created.json()['id']}/sync", headers=AUTH, timeout=5)
    assert started.status_code == 202, started.text

    sync = drive_until_settled(toy_runtime, started.json()["id"], tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    assert sync.crm == "toy" and (sync.source["kind"], sync.source["ref"]) == ("toy_list", "vip")
    flags = {record_id: record.get("flags") for record_id, record in toy_crm.RECORDS.items()}
    assert flags["t1"] == {"status": "valid", "valid": True, "wrong": False}
    assert flags["t2"] == {"status": "wrong", "valid": False, "wrong": True}
    assert flags["t3"] == {"status": "invalid_format", "valid": False, "wrong": True}
    assert flags["t4"] is None  # not in the segment


def test_the_toy_crms_webhook_is_routed_and_authenticated(toy_runtime: Runtime, web: SandboxServer) -> None:
    url = f"{web.url}/webhooks/toy"
    refused = requests.post(url, json={"list": "vip"}, headers={"X-Toy-Token": "wrong"}, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"] == "token_invalid"

    accepted = requests.post(url, json={"list": "vip"}, headers={"X-Toy-Token": TOKEN}, timeout=5)

    assert accepted.status_code == 200 and accepted.json() == {"accepted": 1}
    listed = requests.get(f"{web.url}/admin/syncs", headers=AUTH, timeout=5).json()["syncs"]
    assert [(s["crm"], s["source"]["kind"], s["trigger"]) for s in listed] == [("toy", "toy_list", "webhook")]


def test_a_crm_not_registered_has_no_webhook(runtime: Runtime, web: SandboxServer) -> None:
    answer = requests.post(f"{web.url}/webhooks/toy", json={}, timeout=5)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
