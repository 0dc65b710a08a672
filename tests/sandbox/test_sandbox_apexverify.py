"""The ApexVerify sandbox, driven over real HTTP the way the connector and the documentation use it."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
import requests

from connector.sandbox.apexverify import ApexVerifySandboxOptions, create_app
from connector.sandbox.apexverify_verdicts import is_global_cache_hit
from connector.sandbox.server import SandboxServer, serve_in_thread

API_DOC = Path(__file__).resolve().parents[3] / "shared" / "apexverify-api.md"
TINY = 0.05

EMAILS = [
    "alice@example.com",
    "info@company.org",
    "bob@mailinator.com",
    "carol@gmail.com",
    "dave@catchall-corp.com",
    "bounce.back@example.com",
    "unknown.user@example.com",
    "error.smtp@example.com",
    "not-an-email",
    "alice@example.com",
]
WELL_FORMED_EMAILS = sorted(set(EMAILS) - {"not-an-email"})


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = ApexVerifySandboxOptions(api_key=None, parse_delay=TINY, verify_delay=TINY)
    server = serve_in_thread(create_app(options))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(sandbox: SandboxServer) -> None:
    requests.post(f"{sandbox.url}/_sandbox/reset", timeout=5).raise_for_status()


class Api:
    """A thin ApexVerify client for one API key."""

    def __init__(self, base: str, key: str | None = "key-alpha") -> None:
        self.base = base
        self.headers = {"X-Api-Key": key} if key is not None else {}

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.base + path, headers=self.headers, timeout=10, **kwargs)

    def upload(
        self, lines: list[str] | bytes, kind: str = "email", country: str = "US", **fields
    ) -> requests.Response:
        data = lines if isinstance(lines, bytes) else "\n".join(lines).encode()
        form = {"name": "Test batch", "type": kind, "target_country": country, **fields}
        return self.call("POST", "/v1/batch", files={"file": ("contacts.txt", data, "text/plain")}, data=form)

    def new_batch(self, lines: list[str], kind: str = "email", country: str = "US", **parameters) -> str:
        answer = self.upload(lines, kind, country)
        assert answer.status_code == 200, answer.text
        uuid = answer.json()["batch_uuid"]
        self.configure(
            uuid, {"type": kind, "target_country": country, "use_global_cache": False, **parameters}
        )
        return uuid

    def configure(self, uuid: str, body: dict) -> requests.Response:
        return self.call("PUT", f"/v1/batch/{uuid}", json=body)

    def parse(self, uuid: str) -> requests.Response:
        return self.call("PATCH", f"/v1/batch/{uuid}")

    def details(self, uuid: str) -> dict:
        answer = self.call("GET", f"/v1/batch/{uuid}/details")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def launch(self, uuid: str) -> requests.Response:
        return self.call("POST", f"/v1/batch/{uuid}")

    def status(self, uuid: str) -> str:
        answer = self.call("GET", f"/v1/batch/{uuid}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["batch_uuid"] == uuid
        return answer.json()["status"]

    def export(self, uuid: str, **params) -> requests.Response:
        return self.call("GET", f"/v1/batch/{uuid}/export", params=params)

    def wait_for(self, uuid: str, status: str) -> None:
        deadline = time.monotonic() + 5
        while self.status(uuid) != status:
            assert time.monotonic() < deadline, f"batch never reached {status}"
            time.sleep(0.01)

    def ready_batch(self, lines: list[str], kind: str = "email", country: str = "US", **parameters) -> str:
        uuid = self.new_batch(lines, kind, country, **parameters)
        assert self.parse(uuid).json() == {"status": "ok"}
        self.wait_for(uuid, "ready_for_verification")
        return uuid

    def done_batch(self, lines: list[str], kind: str = "email", country: str = "US", **parameters) -> str:
        uuid = self.ready_batch(lines, kind, country, **parameters)
        assert self.launch(uuid).json() == {"status": "ok"}
        self.wait_for(uuid, "verification_done")
        return uuid


@pytest.fixture
def api(sandbox: SandboxServer) -> Api:
    return Api(sandbox.url)


def knob(sandbox: SandboxServer, path: str, body: dict | None = None, method: str = "POST") -> dict:
    answer = requests.request(method, f"{sandbox.url}/_sandbox/{path}", json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def sandbox_state(sandbox: SandboxServer) -> dict:
    return knob(sandbox, "state", method="GET")


def assert_error(answer: requests.Response, http_status: int) -> None:
    assert answer.status_code == http_status, answer.text
    body = answer.json()
    assert body["status"] == "error"
    assert body["message"]


# --- the lifecycle ----------------------------------------------------------------------------


def test_email_lifecycle_answers_every_step_as_documented(api: Api) -> None:
    upload = api.upload(EMAILS, description="Imported from HubSpot")
    assert upload.status_code == 200
    body = upload.json()
    assert body["status"] == "ok"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["created_at"])
    uuid = body["batch_uuid"]

    configure = api.configure(
        uuid,
        {"type": "email", "target_country": "US", "target_audience": 17, "target_market_industry": 46,
         "target_objective": 6, "use_global_cache": False, "max_account_cache_backoff": 60},
    )  # fmt: skip
    assert configure.status_code == 200
    assert configure.json() == {"message": "Success"}
    assert api.parse(uuid).json() == {"status": "ok"}
    api.wait_for(uuid, "ready_for_verification")

    pending = api.details(uuid)
    assert pending["status"] == "ready_for_verification"
    assert pending["name"] == "Test batch"
    assert pending["description"] == "Imported from HubSpot"
    assert pending["parameters"]["target_audience"] == 17
    assert pending["parameters"]["max_account_cache_backoff"] == 60
    assert pending["found_content"] == {"valid_email": 8, "wrong_email": 1, "duplicate_email": 1}
    assert pending["found_cost"] == {
        "total_email_cost": 8,
        "net_email_cost": 8.0,
        "email_cache_account_return": 0.0,
        "email_cache_global_return": 0.0,
    }
    assert "stats" not in pending

    assert api.launch(uuid).json() == {"status": "ok"}
    api.wait_for(uuid, "verification_done")
    final = api.details(uuid)
    assert final["stats"] == {
        "total_verification": 8,
        "total_verification_valid": 3,  # alice, info (role), carol (free)
        "total_verification_wrong": 1,  # bounce.back
        "total_verification_unknown": 4,  # disposable, catch-all, unknown.*, error.*
        "total_verification_duplicate": 1,
        "total_verification_account_cache": 0,
        "total_verification_global_cache": 0,
    }
    assert final["found_content"] == pending["found_content"]

    results = api.export(uuid, format="json").json()
    assert set(results) == {*WELL_FORMED_EMAILS, "statistics"}
    assert results["statistics"] == final["stats"]
    assert results["alice@example.com"] == {
        "email": "alice@example.com", "valid": True, "wrong": False, "unknown": False, "quality": "good",
        "result": "ok", "is_syntax_error": False, "is_free": False, "is_role": False, "is_disposable": False,
        "is_catch_all": False,
    }  # fmt: skip
    assert results["info@company.org"]["is_role"] and results["info@company.org"]["quality"] == "risky"
    assert (
        results["bob@mailinator.com"]["is_disposable"] and results["bob@mailinator.com"]["quality"] == "bad"
    )
    assert results["carol@gmail.com"]["is_free"] and results["carol@gmail.com"]["valid"]
    assert results["dave@catchall-corp.com"]["is_catch_all"] and results["dave@catchall-corp.com"]["unknown"]
    assert results["bounce.back@example.com"]["wrong"]
    assert results["bounce.back@example.com"]["result"] == "invalid"
    assert results["unknown.user@example.com"]["result"] == "unknown"
    assert results["error.smtp@example.com"]["result"] == "error"


def test_phone_lifecycle_verdicts_follow_the_documented_result_shape(api: Api) -> None:
    phones = ["+6591234567", "+14155550100", "+12025550189", "+442079460958", "2025550123", "12345"]
    uuid = api.done_batch(phones, kind="phone", country="US")
    details = api.details(uuid)
    assert details["found_content"] == {"valid_phone": 5, "wrong_phone": 1, "duplicate_phone": 0}
    assert details["found_cost"]["total_phone_cost"] == 5
    assert details["found_cost"]["net_phone_cost"] == 5.0
    assert details["stats"]["total_verification_valid"] == 3
    assert details["stats"]["total_verification_wrong"] == 1
    assert details["stats"]["total_verification_unknown"] == 1

    results = api.export(uuid, format="json", include_statistics="false").json()
    assert set(results) == set(phones) - {"12345"}
    assert results["+6591234567"] == {
        "phone": "+6591234567", "valid": True, "wrong": False, "unknown": False, "type": "mobile",
        "status": "live", "is_syntax_error": False, "is_ported": False, "current_network_mcc": "525",
        "current_network_mnc": "01", "operator": "Singtel",
    }  # fmt: skip
    assert results["+14155550100"]["status"] == "dead" and results["+14155550100"]["wrong"]
    assert results["+12025550189"]["status"] == "inconclusive" and results["+12025550189"]["unknown"]
    assert results["+442079460958"]["type"] == "landline" and results["+442079460958"]["operator"] is None
    assert results["2025550123"]["valid"]  # a national number, read with the target country


def test_kept_malformed_phone_is_reported_as_bad_format(api: Api) -> None:
    uuid = api.done_batch(
        ["+6591234567", "12345"], kind="phone", country="SG", remove_wrong_phone_format=False
    )
    results = api.export(uuid, format="json").json()
    assert results["12345"]["is_syntax_error"] and results["12345"]["wrong"]
    assert results["12345"]["type"] == "bad_format"
    assert results["12345"]["status"] == "not_applicable"


# --- upload and parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbfalice@example.com\n",
        b"alice@example.com\x00\n",
        b"caf\xe9@example.com\n",
        b"",
        b"\n  \n",
    ],
    ids=["bom", "nul", "not-utf8", "empty", "blank-lines"],
)
def test_unreadable_files_are_a_parse_error(api: Api, sandbox: SandboxServer, content: bytes) -> None:
    answer = api.upload(content)
    assert answer.status_code == 200
    assert answer.json() == {"status": "parse_error"}
    assert sandbox_state(sandbox)["batches"] == []


@pytest.mark.parametrize(
    "fields",
    [
        {"name": ""},
        {"name": "x" * 256},
        {"type": "fax"},
        {"target_country": "ZZ"},
        {"target_country": "USA"},
        {"target_country": ""},
        {"description": "d" * 2049},
    ],
)
def test_upload_validates_its_fields(api: Api, fields: dict) -> None:
    assert_error(api.upload(["alice@example.com"], **fields), 400)


def test_upload_without_file_is_a_400(api: Api) -> None:
    answer = api.call("POST", "/v1/batch", data={"name": "n", "type": "email", "target_country": "US"})
    assert_error(answer, 400)


@pytest.mark.parametrize(
    "body",
    [
        {"target_country": "US"},
        {"type": "email"},
        {"type": "sms", "target_country": "US"},
        {"type": "email", "target_country": "XX"},
        {"type": "email", "target_country": "US", "target_audience": 24},
        {"type": "email", "target_country": "US", "target_audience": 0},
        {"type": "email", "target_country": "US", "target_market_industry": 116},
        {"type": "email", "target_country": "US", "target_objective": 17},
        {"type": "email", "target_country": "US", "target_objective": "6"},
        {"type": "email", "target_country": "US", "max_account_cache_backoff": 181},
        {"type": "email", "target_country": "US", "max_global_cache_backoff": 0},
        {"type": "email", "target_country": "US", "use_account_cache": "yes"},
        {"type": "email", "target_country": "US", "use_global_cache": 1},
        {"type": "email", "target_country": "US", "remove_duplicate": None},
        {"type": "email", "target_country": "US", "target_audience": True},
        {"type": "email", "target_country": "US", "colour": "blue"},
        ["not", "an", "object"],
    ],
)
def test_put_validates_every_parameter(api: Api, body: object) -> None:
    uuid = api.upload(["alice@example.com"]).json()["batch_uuid"]
    assert_error(api.configure(uuid, body), 400)


def test_remove_options_change_found_content(api: Api) -> None:
    lines = ["a@example.com", "b@example.com", "a@example.com", "broken", "c@example.com"]
    uuid = api.ready_batch(lines)
    assert api.details(uuid)["found_content"] == {"valid_email": 3, "wrong_email": 1, "duplicate_email": 1}

    for parameters, expected in [
        ({"remove_duplicate": False}, {"valid_email": 4, "wrong_email": 1, "duplicate_email": 0}),
        ({"remove_wrong_email_format": False}, {"valid_email": 4, "wrong_email": 0, "duplicate_email": 1}),
    ]:
        api.configure(
            uuid, {"type": "email", "target_country": "US", "use_global_cache": False, **parameters}
        )
        assert api.parse(uuid).json() == {"status": "ok"}
        api.wait_for(uuid, "ready_for_verification")
        assert api.details(uuid)["found_content"] == expected
        assert api.details(uuid)["found_cost"]["total_email_cost"] == expected["valid_email"]


def test_account_cache_refunds_half_a_credit_for_values_verified_before(api: Api) -> None:
    first = ["a@example.com", "b@example.com", "c@example.com"]
    api.done_batch(first)
    second = api.done_batch([*first, "d@example.com"])
    details = api.details(second)
    assert details["found_cost"] == {
        "total_email_cost": 4,
        "net_email_cost": 2.5,
        "email_cache_account_return": 1.5,
        "email_cache_global_return": 0.0,
    }
    assert details["stats"]["total_verification_account_cache"] == 3

    # Another key has its own history.
    other = Api(api.base, "key-beta").ready_batch(first)
    assert Api(api.base, "key-beta").details(other)["found_cost"]["email_cache_account_return"] == 0.0

    # Switching the account cache off removes the refund.
    third = api.ready_batch(first, use_account_cache=False)
    assert api.details(third)["found_cost"]["net_email_cost"] == 3.0


def test_global_cache_hits_a_fixed_share_of_values(api: Api) -> None:
    values = [f"person{i}@example.com" for i in range(200)]
    hits = sum(is_global_cache_hit(v) for v in values)
    assert 0 < hits < 60
    uuid = api.ready_batch(values, use_global_cache=True)
    cost = api.details(uuid)["found_cost"]
    assert cost["email_cache_global_return"] == hits / 2
    assert cost["net_email_cost"] == 200 - hits / 2


# --- launching ----------------------------------------------------------------------------------


def test_launch_before_parsing_finishes_is_not_ready(api: Api, sandbox: SandboxServer) -> None:
    uuid = api.new_batch(["alice@example.com"])
    assert api.status(uuid) == "parsing_content"  # never parsed
    assert api.launch(uuid).json() == {"status": "not_ready_for_verification"}

    knob(sandbox, "config", {"parse_delay": 30})
    assert api.parse(uuid).json() == {"status": "ok"}
    assert api.status(uuid) == "parsing_content"
    base = api.details(uuid)
    assert set(base) == {
        "batch_uuid",
        "name",
        "description",
        "status",
        "created_at",
        "updated_at",
        "parameters",
    }
    assert api.launch(uuid).json() == {"status": "not_ready_for_verification"}

    knob(sandbox, "config", {"parse_delay": 0})
    api.parse(uuid)  # re-parse with the new delay
    api.wait_for(uuid, "ready_for_verification")
    assert api.launch(uuid).json() == {"status": "ok"}
    assert sandbox_state(sandbox)["batches"][0]["parse_count"] == 2


def test_repeated_launches_charge_once(api: Api, sandbox: SandboxServer) -> None:
    knob(sandbox, "config", {"verify_delay": 30, "credits": 100})
    uuid = api.ready_batch(["a@example.com", "b@example.com"])
    assert api.launch(uuid).json() == {"status": "ok"}
    assert api.status(uuid) == "verification_ongoing"
    assert api.details(uuid)["status"] == "verification_ongoing"
    assert "found_cost" in api.details(uuid)
    for _ in range(3):
        assert api.launch(uuid).json() == {"status": "verification_already_ongoing"}
    assert_error(api.export(uuid, format="json"), 409)
    assert_error(api.parse(uuid), 409)
    assert_error(api.configure(uuid, {"type": "email", "target_country": "US"}), 409)

    state = sandbox_state(sandbox)
    assert state["credits"] == 98.0
    assert state["launches"] == 1
    assert state["charges"] == 1
    assert state["batches"][0]["launch_count"] == 1
    assert state["batches"][0]["charged"] == 2.0


def test_launch_after_done_is_already_done(api: Api, sandbox: SandboxServer) -> None:
    uuid = api.done_batch(["a@example.com"])
    assert api.launch(uuid).json() == {"status": "verification_already_done"}
    assert sandbox_state(sandbox)["charges"] == 1


def test_insufficient_credits_is_a_402_until_topped_up(api: Api, sandbox: SandboxServer) -> None:
    knob(sandbox, "config", {"credits": 2})
    uuid = api.ready_batch([f"p{i}@example.com" for i in range(5)])
    answer = api.launch(uuid)
    assert answer.status_code == 402
    assert answer.json() == {"status": "error", "message": "insufficient credits"}
    assert api.status(uuid) == "ready_for_verification"
    assert sandbox_state(sandbox)["charges"] == 0

    assert knob(sandbox, "config", {"add_credits": 10})["credits"] == 12.0
    assert api.launch(uuid).json() == {"status": "ok"}
    state = sandbox_state(sandbox)
    assert state["credits"] == 7.0
    assert state["charges"] == 1


# --- auth, privacy, rate limits ---------------------------------------------------------------


def test_missing_key_is_a_401(api: Api) -> None:
    uuid = api.upload(["a@example.com"]).json()["batch_uuid"]
    for key in (None, ""):
        stranger = Api(api.base, key)
        assert_error(stranger.upload(["a@example.com"]), 401)
        assert_error(stranger.call("GET", f"/v1/batch/{uuid}"), 401)


def test_configured_key_refuses_other_keys() -> None:
    server = serve_in_thread(create_app(ApexVerifySandboxOptions(api_key="the-real-key")))
    try:
        assert_error(Api(server.url, "a-wrong-key").upload(["a@example.com"]), 401)
        assert Api(server.url, "the-real-key").upload(["a@example.com"]).json()["status"] == "ok"
    finally:
        server.stop()


def test_api_key_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APEXVERIFY_API_KEY", "from-env")
    assert ApexVerifySandboxOptions().api_key == "from-env"
    monkeypatch.delenv("APEXVERIFY_API_KEY")
    assert ApexVerifySandboxOptions().api_key is None


def test_another_keys_batch_does_not_exist(api: Api) -> None:
    uuid = api.done_batch(["a@example.com"])
    other = Api(api.base, "key-beta")
    for method, path in [
        ("GET", f"/v1/batch/{uuid}"),
        ("GET", f"/v1/batch/{uuid}/details"),
        ("PATCH", f"/v1/batch/{uuid}"),
        ("POST", f"/v1/batch/{uuid}"),
        ("GET", f"/v1/batch/{uuid}/export?format=json"),
    ]:
        assert_error(other.call(method, path), 404)
    assert_error(other.configure(uuid, {"type": "email", "target_country": "US"}), 404)
    assert_error(api.call("GET", "/v1/batch/00000000-0000-0000-0000-000000000000"), 404)


def test_rate_limit_answers_429_with_retry_after(api: Api, sandbox: SandboxServer) -> None:
    knob(sandbox, "config", {"rate_limit_per_minute": 3})
    uuid = api.upload(["a@example.com"]).json()["batch_uuid"]
    assert api.status(uuid) == "parsing_content"
    assert api.status(uuid) == "parsing_content"
    limited = api.call("GET", f"/v1/batch/{uuid}")
    assert limited.status_code == 429
    assert limited.json() == {"status": "error", "message": "rate limit exceeded"}
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert Api(api.base, "key-beta").call("GET", f"/v1/batch/{uuid}").status_code == 404  # own budget

    state = sandbox_state(sandbox)
    assert state["rate_limited"] == 1
    assert state["requests"]["GET /v1/batch/{uuid}"] == 4
    assert state["requests"]["POST /v1/batch"] == 1


# --- exports ----------------------------------------------------------------------------------


def test_export_json_options(api: Api) -> None:
    uuid = api.done_batch(["a@example.com", "info@example.com", "bounce@example.com"])
    answer = api.export(uuid, format="json")
    assert answer.headers["Content-Type"].startswith("application/json")
    assert "statistics" in answer.json()

    without_stats = api.export(uuid, format="json", include_statistics="false").json()
    assert set(without_stats) == {"a@example.com", "info@example.com", "bounce@example.com"}

    reduced = api.export(uuid, format="json", include_details="false", include_statistics="false").json()
    assert reduced == {
        "a@example.com": {"valid": True, "wrong": False, "unknown": False},
        "info@example.com": {"valid": True, "wrong": False, "unknown": False},
        "bounce@example.com": {"valid": False, "wrong": True, "unknown": False},
    }

    assert_error(api.export(uuid), 400)
    assert_error(api.export(uuid, format="csv"), 400)
    assert_error(api.export(uuid, format="json", include_details="maybe"), 400)


def test_export_json_streams_large_batches_as_valid_json(api: Api) -> None:
    values = [f"user{i}@example.com" for i in range(5000)]
    uuid = api.done_batch(values)
    results = api.export(uuid, format="json").json()
    assert len(results) == 5001
    assert results["statistics"]["total_verification"] == 5000


def test_export_xlsx_has_summary_then_results(api: Api) -> None:
    uuid = api.done_batch(["a@example.com", "info@example.com", "bounce@example.com"])
    answer = api.export(uuid, format="xlsx")
    assert answer.status_code == 200
    assert (
        answer.headers["Content-Type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    workbook = openpyxl.load_workbook(io.BytesIO(answer.content), read_only=True)
    assert workbook.sheetnames == ["Summary", "Results"]
    summary = dict(workbook["Summary"].iter_rows(min_row=2, values_only=True))
    assert summary["batch_uuid"] == uuid
    assert summary["total_verification"] == 3
    rows = list(workbook["Results"].iter_rows(values_only=True))
    assert rows[0][:4] == ("email", "valid", "wrong", "unknown")
    by_email = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert set(by_email) == {"a@example.com", "info@example.com", "bounce@example.com"}
    assert by_email["info@example.com"]["is_role"] is True
    assert by_email["bounce@example.com"]["result"] == "invalid"


# --- fault injection and knobs ------------------------------------------------------------------


def test_http_faults_hit_the_next_matching_calls(api: Api, sandbox: SandboxServer) -> None:
    uuid = api.upload(["a@example.com"]).json()["batch_uuid"]
    knob(sandbox, "faults", {"endpoint": "status", "kind": "http_503", "count": 2})
    knob(sandbox, "faults", {"endpoint": "any", "kind": "http_429"})
    assert api.call("GET", f"/v1/batch/{uuid}").status_code == 503
    assert api.call("GET", f"/v1/batch/{uuid}").status_code == 503
    limited = api.call("GET", f"/v1/batch/{uuid}/details")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert api.status(uuid) == "parsing_content"

    knob(sandbox, "faults", {"endpoint": "launch", "kind": "http_500", "count": 5})
    assert knob(sandbox, "faults", method="DELETE") == {"faults": []}
    assert api.launch(uuid).status_code == 200


def test_json_error_and_parse_error_faults(api: Api, sandbox: SandboxServer) -> None:
    knob(sandbox, "faults", {"endpoint": "upload", "kind": "parse_error"})
    assert api.upload(["a@example.com"]).json() == {"status": "parse_error"}
    uuid = api.new_batch(["a@example.com"])
    knob(sandbox, "faults", {"endpoint": "parse", "kind": "parse_error"})
    assert api.parse(uuid).json() == {"status": "parse_error"}
    knob(sandbox, "faults", {"endpoint": "launch", "kind": "json_error"})
    answer = api.launch(uuid)
    assert answer.status_code == 200
    assert answer.json() == {"status": "error"}


def test_internal_error_fault_breaks_the_batch_until_reparsed(api: Api, sandbox: SandboxServer) -> None:
    uuid = api.new_batch(["a@example.com"])
    knob(sandbox, "faults", {"endpoint": "parse", "kind": "internal_error"})
    assert api.parse(uuid).json() == {"status": "ok"}
    assert api.status(uuid) == "internal_error"
    details = api.details(uuid)
    assert details["status"] == "internal_error"
    assert "found_content" not in details
    assert api.launch(uuid).json() == {"status": "not_ready_for_verification"}

    api.parse(uuid)
    api.wait_for(uuid, "ready_for_verification")
    knob(sandbox, "faults", {"endpoint": "status", "kind": "internal_error"})
    assert api.status(uuid) == "internal_error"


def test_timeout_fault_holds_the_answer_back(api: Api, sandbox: SandboxServer) -> None:
    knob(sandbox, "config", {"timeout_fault_seconds": 1.0})
    uuid = api.upload(["a@example.com"]).json()["batch_uuid"]
    knob(sandbox, "faults", {"endpoint": "status", "kind": "timeout"})
    with pytest.raises(requests.Timeout):
        requests.get(f"{api.base}/v1/batch/{uuid}", headers=api.headers, timeout=0.2)
    assert api.status(uuid) == "parsing_content"


def test_error_rate_is_deterministic_from_the_seed(api: Api, sandbox: SandboxServer) -> None:
    def codes() -> list[int]:
        knob(sandbox, "config", {"error_rate": 0.5})
        return [api.call("GET", "/v1/batch/unknown").status_code for _ in range(20)]

    first = codes()
    assert set(first) == {404, 503}
    knob(sandbox, "reset")
    assert codes() == first


def test_knobs_validate_their_input(sandbox: SandboxServer) -> None:
    for path, body in [
        ("config", {"error_rate": 2}),
        ("config", {"rate_limit_per_minute": 0}),
        ("config", {"speed": 1}),
        ("faults", {"endpoint": "upload", "kind": "explode"}),
        ("faults", {"endpoint": "nowhere", "kind": "http_500"}),
        ("faults", {"endpoint": "upload", "kind": "http_500", "count": 0}),
    ]:
        assert_error(requests.post(f"{sandbox.url}/_sandbox/{path}", json=body, timeout=5), 400)


def test_reset_forgets_everything(api: Api, sandbox: SandboxServer) -> None:
    api.done_batch(["a@example.com"])
    knob(sandbox, "config", {"credits": 5, "parse_delay": 3})
    knob(sandbox, "reset")
    state = sandbox_state(sandbox)
    assert state["batches"] == [] and state["launches"] == 0 and state["requests"] == {}
    assert state["credits"] == 1_000_000
    assert knob(sandbox, "config", {})["parse_delay"] == TINY


def test_state_shows_batches_without_their_keys(api: Api, sandbox: SandboxServer) -> None:
    uuid = api.done_batch(["a@example.com", "b@example.com"])
    [batch] = sandbox_state(sandbox)["batches"]
    assert batch == {
        "batch_uuid": uuid, "api_key_suffix": "lpha", "name": "Test batch", "type": "email",
        "status": "verification_done", "rows": 2, "launch_count": 1, "charged": 2.0, "parse_count": 1,
    }  # fmt: skip


# --- the command line and the documentation's script -----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_command_serves_the_sandbox() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from connector.cli import main; main()", "sandbox", "apexverify",
         "--port", str(port), "--parse-delay", "0.25", "--credits", "42", "--api-key", "cli-key"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                config = requests.post(f"{base}/_sandbox/config", json={}, timeout=1).json()
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, "sandbox did not start"
                time.sleep(0.05)
        assert config["parse_delay"] == 0.25
        assert config["credits"] == 42.0
        assert Api(base, "cli-key").upload(["a@example.com"]).json()["status"] == "ok"
        assert_error(Api(base, "other").upload(["a@example.com"]), 401)
    finally:
        process.terminate()
        process.wait(timeout=10)


def end_to_end_script() -> str:
    text = API_DOC.read_text(encoding="utf-8")
    section = text.split("## Complete workflow: end-to-end example", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, "no bash block under the end-to-end heading"
    return match.group(1)


@pytest.mark.skipif(not API_DOC.exists(), reason=f"the API documentation is not at {API_DOC}")
def test_the_documentations_end_to_end_script_runs_against_the_sandbox(tmp_path: Path) -> None:
    options = ApexVerifySandboxOptions(api_key="doc-key", parse_delay=TINY, verify_delay=0.0)
    server = serve_in_thread(create_app(options))
    try:
        script = end_to_end_script()
        script = re.sub(r"^API_KEY=.*$", 'API_KEY="doc-key"', script, count=1, flags=re.MULTILINE)
        script = re.sub(r"^BASE=.*$", f'BASE="{server.url}"', script, count=1, flags=re.MULTILINE)
        (tmp_path / "workflow.sh").write_text(script)
        (tmp_path / "contacts.txt").write_text("\n".join(EMAILS) + "\n")
        run = subprocess.run(
            ["bash", "workflow.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
    finally:
        server.stop()

    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) - {"statistics"} == set(WELL_FORMED_EMAILS)
    assert results["statistics"]["total_verification"] == len(WELL_FORMED_EMAILS)
    assert results["alice@example.com"]["valid"] and results["alice@example.com"]["quality"] == "good"
    assert results["info@company.org"]["is_role"]
    assert results["bounce.back@example.com"]["wrong"]
    assert results["dave@catchall-corp.com"]["unknown"]
    workbook = openpyxl.load_workbook(tmp_path / "results.xlsx", read_only=True)
    assert workbook.sheetnames[0] == "Summary"
