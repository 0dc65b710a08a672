"""The admin API over HTTP, as an operator drives it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from openpyxl import load_workbook

from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.verify_command import start_file_sync
from tests.conftest import with_settings

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


def test_failed_sign_ins_are_throttled(web: SandboxServer) -> None:
    codes = [requests.get(f"{web.url}/admin/syncs", headers={"Authorization": "Bearer x"}).status_code
             for _ in range(25)]  # fmt: skip
    assert codes[:20] == [401] * 20 and codes[-1] == 429
    assert requests.get(f"{web.url}/admin/syncs", headers=AUTH, timeout=5).status_code == 200


@pytest.fixture
def no_admin_token(runtime: Runtime) -> Runtime:
    return with_settings(runtime, admin_token=None)


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
    assert again.status_code == 409 and again.json()["error"] == "not_failed"


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
