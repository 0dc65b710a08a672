"""The admin API over HTTP, as an operator drives it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import requests
from openpyxl import load_workbook
from sqlalchemy import update

from connector.models import Connection, Sync, SyncContact, SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.verify_command import start_file_sync

AUTH = {"Authorization": "Bearer test-admin-token"}


def file_sync(
    runtime: Runtime, tmp_path: Path, lines: list[str], name: str = "in.txt", **options: object
) -> int:
    source = tmp_path / name
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return drive_until_settled(
        runtime, start_file_sync(runtime, source, type_="email", country="US", **options).id
    ).id


@pytest.mark.parametrize(
    "header", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-admin-token"}]
)
def test_admin_needs_the_bearer_token(web: SandboxServer, header: dict) -> None:
    response = requests.get(f"{web.url}/admin/syncs", headers=header, timeout=5)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_bearer_scheme_name_is_case_insensitive(web: SandboxServer) -> None:
    lower = {"Authorization": "bearer test-admin-token"}
    assert requests.get(f"{web.url}/admin/syncs", headers=lower, timeout=5).status_code == 200


def test_failed_sign_ins_are_throttled(web: SandboxServer) -> None:
    codes = [requests.get(f"{web.url}/admin/syncs", headers={"Authorization": "Bearer x"}).status_code
             for _ in range(25)]  # fmt: skip
    assert codes[:20] == [401] * 20 and codes[-1] == 429
    refused = requests.get(f"{web.url}/admin/syncs", headers={"Authorization": "Bearer x"}, timeout=5)
    assert refused.json()["error"] == "too_many_attempts" and 0 < int(refused.headers["Retry-After"]) <= 60
    # The throttle is asked before the token is compared: while it holds, the right token is refused too.
    right = requests.get(f"{web.url}/admin/syncs", headers=AUTH, timeout=5)
    assert right.status_code == 429 and right.json()["error"] == "too_many_attempts"


def test_admin_is_off_without_a_token(no_admin_token: Runtime, web: SandboxServer) -> None:
    response = requests.get(f"{web.url}/admin/syncs", headers=AUTH, timeout=5)
    assert response.status_code == 503 and response.json()["error"] == "admin_disabled"


def test_listing_filters_and_pages_with_a_cursor(
    runtime: Runtime, web: SandboxServer, tmp_path: Path
) -> None:
    ids = [file_sync(runtime, tmp_path, [f"p{n}@example.com"], name=f"{n}.txt") for n in range(7)]
    seen, cursor = [], None
    while True:
        params = {"limit": 3, "status": "completed", **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{web.url}/admin/syncs", params=params, headers=AUTH, timeout=5).json()
        seen += [s["id"] for s in page["syncs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    first = requests.get(f"{web.url}/admin/syncs", params={"limit": 1}, headers=AUTH, timeout=5).json()[
        "syncs"
    ][0]
    for field in ("id", "status", "segment_id", "trigger", "crm", "type", "failed_step", "error_code",
                  "error_message", "created_at", "updated_at", "counts", "cost", "batch_uuids"):  # fmt: skip
        assert field in first
    bad = requests.get(f"{web.url}/admin/syncs", params={"status": "bogus"}, headers=AUTH, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_status"
    assert requests.get(f"{web.url}/admin/syncs", params={"cursor": "%%"}, headers=AUTH).status_code == 400


def test_failed_sync_is_retried_over_http_and_charges_once(
    runtime: Runtime, web: SandboxServer, tmp_path: Path
) -> None:
    base = runtime.settings.apexverify_base_url
    requests.post(f"{base}/_sandbox/config", json={"credits": 1}, timeout=5).raise_for_status()
    sync_id = file_sync(runtime, tmp_path, [f"r{n}@example.com" for n in range(5)])
    detail = requests.get(f"{web.url}/admin/syncs/{sync_id}", headers=AUTH, timeout=5).json()
    assert (detail["status"], detail["failed_step"], detail["error_code"]) == (
        "failed", "launching", "insufficient_credits",
    )  # fmt: skip
    assert [h["to_status"] for h in detail["history"]][-1] == "failed"

    requests.post(f"{base}/_sandbox/config", json={"add_credits": 100}, timeout=5).raise_for_status()
    answer = requests.post(f"{web.url}/admin/syncs/{sync_id}/retry", headers=AUTH, timeout=5)
    assert answer.status_code == 202 and answer.json()["status"] == "launching"
    assert drive_until_settled(runtime, sync_id).status == "completed"
    assert requests.get(f"{base}/_sandbox/state", timeout=5).json()["charges"] == 1
    again = requests.post(f"{web.url}/admin/syncs/{sync_id}/retry", headers=AUTH, timeout=5)
    assert again.status_code == 409 and again.json()["error"] == "nothing_to_retry"


def test_approve_and_cancel(runtime: Runtime, web: SandboxServer, tmp_path: Path) -> None:
    costly = file_sync(
        runtime, tmp_path, [f"a{n}@example.com" for n in range(10)], name="a.txt", max_net_cost=1
    )
    assert requests.post(f"{web.url}/admin/syncs/{costly}/approve", headers=AUTH).status_code == 202
    assert drive_until_settled(runtime, costly).status == "completed"
    assert requests.post(f"{web.url}/admin/syncs/{costly}/approve", headers=AUTH).status_code == 409

    waiting = file_sync(
        runtime, tmp_path, [f"b{n}@example.com" for n in range(10)], name="b.txt", max_net_cost=1
    )
    answer = requests.post(f"{web.url}/admin/syncs/{waiting}/cancel", headers=AUTH, timeout=5)
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    assert requests.get(f"{web.url}/admin/syncs/999999", headers=AUTH).status_code == 404


def test_results_as_json_and_xlsx(runtime: Runtime, web: SandboxServer, tmp_path: Path) -> None:
    sync_id = file_sync(runtime, tmp_path, ["ok@example.com", "=HYPERLINK(1)@evil.com"])
    as_json = requests.get(
        f"{web.url}/admin/syncs/{sync_id}/results", params={"format": "json"}, headers=AUTH
    )
    assert as_json.json()["ok@example.com"]["status"] == "valid"

    as_xlsx = requests.get(
        f"{web.url}/admin/syncs/{sync_id}/results", params={"format": "xlsx"}, headers=AUTH
    )
    rows = list(load_workbook(io.BytesIO(as_xlsx.content)).active.values)
    assert rows[0][:2] == ("value", "status")
    assert {r[0] for r in rows[1:]} == {"ok@example.com", "'=hyperlink(1)@evil.com"}
    bad = requests.get(f"{web.url}/admin/syncs/{sync_id}/results", params={"format": "csv"}, headers=AUTH)
    assert bad.status_code == 400


def test_sign_in_still_works_while_redis_is_down(redis_down: SandboxServer) -> None:
    # The failed-attempt throttle lives in Redis; losing it must not lock operators out.
    assert requests.get(f"{redis_down.url}/admin/syncs", headers=AUTH, timeout=5).status_code == 200
    refused = requests.get(f"{redis_down.url}/admin/syncs", headers={"Authorization": "Bearer x"}, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


def test_a_forged_cursor_is_refused_not_a_server_error(web: SandboxServer) -> None:
    beyond_bigint = base64.urlsafe_b64encode(b"id:99999999999999999999").decode()
    for cursor in (beyond_bigint, base64.urlsafe_b64encode(b"id:-5").decode(), "not-a-cursor"):
        answer = requests.get(f"{web.url}/admin/syncs", params={"cursor": cursor}, headers=AUTH, timeout=5)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_cursor", cursor


def test_detail_lists_write_failures_up_to_a_cap_with_their_total(
    runtime: Runtime, web: SandboxServer, tmp_path: Path
) -> None:
    sync_id = file_sync(runtime, tmp_path, ["w@example.com"])
    with runtime.session() as session:  # as a CRM writer records the records it refused
        session.add_all(
            SyncContact(
                sync_id=sync_id,
                record_id=f"00Q{n:012d}",
                object_type="Lead",
                value="w@example.com",
                outcome="write_failed",
                reason="CANNOT_UPDATE_CONVERTED_LEAD",
                error_message="cannot reference converted lead",
            )
            for n in range(1005)
        )
    detail = requests.get(f"{web.url}/admin/syncs/{sync_id}", headers=AUTH, timeout=5).json()
    assert detail["write_failures_total"] == 1005 and len(detail["write_failures"]) == 1000
    assert detail["write_failures"][0] == {
        "record_id": "00Q000000000000", "object_type": "Lead", "reason": "CANNOT_UPDATE_CONVERTED_LEAD",
        "error_message": "cannot reference converted lead",
    }  # fmt: skip
    steps = [(h["from_status"], h["to_status"]) for h in detail["history"]]
    assert steps[0][1] == "pending" and steps[-1] == ("writing_back", "completed")
    assert all(h["at"].endswith("+00:00") for h in detail["history"])


LIST_SEGMENT = {"crm": "hubspot", "kind": "hubspot_list", "ref": "42", "type": "email"}


def add_segment(web: SandboxServer, body: dict) -> requests.Response:
    return requests.post(f"{web.url}/admin/segments", json=body, headers=AUTH, timeout=5)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"max_net_cost": "NaN"}, "invalid_max_net_cost"),
        ({"max_net_cost": "Infinity"}, "invalid_max_net_cost"),
        ({"parameters": []}, "invalid_parameters"),
        ({"schedule": "0 3 * * * 30"}, "invalid_schedule"),
        ({"schedule": "@reboot"}, "invalid_schedule"),
        ({"reverify_after_days": 3651}, "invalid_reverify_after_days"),
        ({"target_country": "ZZ"}, "invalid_country"),
        ({"name": "n" * 256}, "invalid_name"),
        ({"object": "Lead"}, "invalid_object"),
        ({"crm": "salesforce", "kind": "salesforce_campaign", "ref": "701000000000001"}, "invalid_object"),
    ],
)
def test_segment_fields_are_checked_one_by_one(web: SandboxServer, change: dict, code: str) -> None:
    # Raw text, so NaN and Infinity reach the server as the bare tokens its JSON parser accepts.
    body = json.dumps({**LIST_SEGMENT, **change}).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    answer = requests.post(
        f"{web.url}/admin/segments", data=body, timeout=5,
        headers={**AUTH, "Content-Type": "application/json"},
    )  # fmt: skip
    assert answer.status_code == 400 and answer.json()["error"] == code


@pytest.mark.parametrize("body", ["[1]", "null", "{", '"x"'])
def test_segment_bodies_must_be_json_objects(web: SandboxServer, body: str) -> None:
    segment_id = add_segment(web, LIST_SEGMENT).json()["id"]
    headers = {**AUTH, "Content-Type": "application/json"}
    for method, url in (("POST", "/admin/segments"), ("PATCH", f"/admin/segments/{segment_id}")):
        answer = requests.request(method, f"{web.url}{url}", data=body, headers=headers, timeout=5)
        assert answer.status_code == 400 and answer.json()["error"] == "malformed_json"


def test_a_segment_answers_with_its_fields_and_its_sync_reads_it(web: SandboxServer) -> None:
    fields = {
        **LIST_SEGMENT,
        "schedule": "0  3 * * *",
        "parameters": {"use_global_cache": False},
        "reverify_after_days": 7,
        "max_net_cost": 250,
        "name": "newsletter",
        "target_country": "de",
    }
    segment = add_segment(web, fields).json()
    assert {k: segment[k] for k in fields} == {**fields, "schedule": "0 3 * * *", "target_country": "DE"}
    assert segment["object"] is None

    started = requests.post(f"{web.url}/admin/segments/{segment['id']}/sync", headers=AUTH, timeout=5)
    assert started.status_code == 202
    sync = started.json()
    assert sync["source"] == {"kind": "hubspot_list", "ref": "42", "object": None}
    assert (sync["segment_id"], sync["trigger"], sync["status"]) == (segment["id"], "admin", "pending")
    assert (sync["parameters"], sync["max_net_cost"], sync["target_country"]) == (
        {"use_global_cache": False}, 250, "DE",
    )  # fmt: skip
    listed = requests.get(f"{web.url}/admin/syncs", params={"segment_id": segment["id"]}, headers=AUTH)
    assert [s["id"] for s in listed.json()["syncs"]] == [sync["id"]]
    too_soon = requests.get(f"{web.url}/admin/syncs/{sync['id']}/results", headers=AUTH, timeout=5)
    assert too_soon.status_code == 409 and too_soon.json()["error"] == "no_results"


def test_a_segment_waiting_for_approval_is_not_synced_twice(runtime: Runtime, web: SandboxServer) -> None:
    segment_id = add_segment(web, LIST_SEGMENT).json()["id"]
    url = f"{web.url}/admin/segments/{segment_id}/sync"
    first = requests.post(url, headers=AUTH, timeout=5).json()["id"]
    with runtime.session() as session:  # as the cost check leaves a sync over its budget
        session.execute(update(Sync).values(status=SyncStatus.AWAITING_APPROVAL))
    assert requests.post(url, headers=AUTH, timeout=5).json()["id"] == first
    with runtime.session() as session:
        session.execute(update(Sync).values(status=SyncStatus.COMPLETED))
    assert requests.post(url, headers=AUTH, timeout=5).json()["id"] != first


def test_a_segment_moved_to_salesforce_syncs_through_the_salesforce_connection(
    runtime: Runtime, web: SandboxServer
) -> None:
    segment_id = add_segment(web, LIST_SEGMENT).json()["id"]
    moved = requests.patch(
        f"{web.url}/admin/segments/{segment_id}", headers=AUTH, timeout=5,
        json={"crm": "salesforce", "kind": "salesforce_soql", "object": "Lead", "ref": "LeadSource = 'Web'"},
    )  # fmt: skip
    assert moved.status_code == 200 and moved.json()["ref"] == "LeadSource = 'Web'"
    started = requests.post(f"{web.url}/admin/segments/{segment_id}/sync", headers=AUTH, timeout=5)
    sync_id = started.json()["id"]
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        assert (sync.crm, session.get_one(Connection, sync.connection_id).crm) == ("salesforce", "salesforce")
        assert sync.source == {"kind": "salesforce_soql", "ref": "LeadSource = 'Web'", "object": "Lead"}

    assert requests.delete(f"{web.url}/admin/segments/{segment_id}", headers=AUTH).status_code == 204
    for method in ("GET", "PATCH", "DELETE"):
        gone = requests.request(method, f"{web.url}/admin/segments/{segment_id}", json={}, headers=AUTH)
        assert gone.status_code == 404 and gone.json()["error"] == "segment_not_found"
    assert requests.post(f"{web.url}/admin/segments/{segment_id}/sync", headers=AUTH).status_code == 404
    assert requests.get(f"{web.url}/admin/segments", headers=AUTH).json()["segments"] == []
