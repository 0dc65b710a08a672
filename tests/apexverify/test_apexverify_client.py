"""The ApexVerify client over real HTTP.

Two servers: a scripted stand-in (below) for answers the sandbox cannot produce on demand
(a 409 launch outcome, a 401, a truncated download, ...), and the ApexVerify sandbox for the
lifecycle and its fault injection. Waits are recorded by a fake `sleep`, never measured.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import tracemalloc
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import redis
import requests
from flask import Flask, Response, request

from connector.apexverify import (
    ApexVerifyClient,
    ApexVerifyError,
    BatchDetails,
    BatchStatus,
    LaunchOutcome,
    iter_export_records,
)
from connector.config import Settings
from connector.errors import TransientError
from connector.ratelimit import RateLimiter
from connector.sandbox.apexverify import ApexVerifySandboxOptions, create_app
from connector.sandbox.server import SandboxServer, serve_in_thread

API_KEY = "av-test-key-7f3c9d1e5b"
BATCH = "0b9f6a52-3c1d-4e8f-9a7b-5d2c1e0f4a6b"


class RecordingSleep:
    """Stands in for time.sleep: remembers each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# --- a scripted stand-in for ApexVerify ---------------------------------------------------------

Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]] | Callable[[], Response]


@dataclass
class ScriptedApi:
    """Answers each (method, path) from a script; the last scripted answer repeats."""

    answers: dict[tuple[str, str], list[Answer]] = field(default_factory=lambda: defaultdict(list))
    seen: list[dict[str, Any]] = field(default_factory=list)

    def script(self, method: str, path: str, *answers: Answer) -> None:
        self.answers[(method, path)].extend(answers)

    def app(self) -> Flask:
        app = Flask("scripted-apexverify")
        methods = ["GET", "POST", "PUT", "PATCH"]
        app.add_url_rule("/<path:path>", "answer", lambda path: self._answer("/" + path), methods=methods)
        return app

    def _answer(self, path: str) -> Response:
        self.seen.append(self._describe_request(path))
        queue = self.answers[(request.method, path)]
        if not queue:
            return Response(json.dumps({"message": "not scripted"}), 418, mimetype="application/json")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if callable(answer):
            return answer()
        status, body, headers = (*answer, {}) if len(answer) == 2 else answer
        text = body if isinstance(body, str) else json.dumps(body)
        return Response(text, status, headers=headers, mimetype="application/json")

    @staticmethod
    def _describe_request(path: str) -> dict[str, Any]:
        seen: dict[str, Any] = {"method": request.method, "path": path, "headers": dict(request.headers)}
        if path == "/v1/batch" and request.method == "POST":
            seen["form"] = request.form.to_dict()
            upload = request.files.get("file")
            seen["file"] = upload.read() if upload else None
            seen["filename"] = upload.filename if upload else None
        elif request.is_json:
            seen["json"] = request.get_json()
        seen["args"] = request.args.to_dict()
        return seen


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[tuple[ScriptedApi, SandboxServer]]:
    api = ScriptedApi()
    server = serve_in_thread(api.app())
    yield api, server
    server.stop()


@pytest.fixture
def scripted(scripted_server) -> tuple[ScriptedApi, SandboxServer]:
    api, server = scripted_server
    api.answers.clear()
    api.seen.clear()
    return api, server


def make_client(url: str, **kwargs: Any) -> tuple[ApexVerifyClient, RecordingSleep]:
    sleep = RecordingSleep()
    kwargs.setdefault("timeout", 5.0)
    return ApexVerifyClient(url, API_KEY, sleep=sleep, **kwargs), sleep


# --- answers mapped -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (200, {"status": "error"}, "apexverify_error"),
        (200, {"status": "parse_error"}, "parse_error"),
        (200, {"status": "internal_error"}, "apexverify_internal_error"),
        (400, {"status": "parse_error"}, "parse_error"),
        (200, "<html>proxy page</html>", "apexverify_error"),
        (200, {"status": "something_new"}, "apexverify_error"),
        (401, {"message": "invalid key"}, "apexverify_unauthorized"),
        (403, {"message": "forbidden"}, "apexverify_unauthorized"),
        (404, {"message": "no such batch"}, "batch_not_found"),
        (422, {"detail": [{"loc": ["body"], "msg": "field required"}]}, "invalid_request"),
        (409, {"status": "error", "message": "batch already launched"}, "invalid_request"),
    ],
)
def test_parse_maps_each_answer_to_a_permanent_error(scripted, status, body, code) -> None:
    api, server = scripted
    api.script("PATCH", f"/v1/batch/{BATCH}", (status, body))
    client, sleep = make_client(server.url)

    with pytest.raises(ApexVerifyError) as caught:
        client.parse(BATCH)

    assert caught.value.code == code
    assert len(api.seen) == 1, "permanent answers are not retried"
    assert sleep.waits == []


def test_a_400_carries_the_servers_message(scripted) -> None:
    api, server = scripted
    api.script("PUT", f"/v1/batch/{BATCH}", (400, {"message": "target_country must be ISO2"}))
    client, _ = make_client(server.url)

    with pytest.raises(ApexVerifyError) as caught:
        client.configure(BATCH, {"type": "email", "target_country": "USA"})

    assert caught.value.code == "invalid_request"
    assert "target_country must be ISO2" in caught.value.message


def test_configure_sends_the_parameters_and_accepts_a_message_answer(scripted) -> None:
    api, server = scripted
    api.script("PUT", f"/v1/batch/{BATCH}", (200, {"message": "Success"}))
    client, _ = make_client(server.url)

    client.configure(BATCH, {"type": "phone", "target_country": "SG", "use_global_cache": False})

    assert api.seen[0]["json"] == {"type": "phone", "target_country": "SG", "use_global_cache": False}
    assert api.seen[0]["headers"]["X-Api-Key"] == API_KEY


def test_configure_refuses_parameters_without_type_or_country(scripted) -> None:
    _, server = scripted
    client, _ = make_client(server.url)

    with pytest.raises(ApexVerifyError) as caught:
        client.configure(BATCH, {"type": "email"})

    assert caught.value.code == "invalid_request"
    assert "target_country" in caught.value.message


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, {"status": "ok"}, LaunchOutcome.OK),
        (200, {"status": "not_ready_for_verification"}, LaunchOutcome.NOT_READY),
        (409, {"status": "verification_already_ongoing"}, LaunchOutcome.ALREADY_ONGOING),
        (400, {"status": "verification_already_done"}, LaunchOutcome.ALREADY_DONE),
    ],
)
def test_launch_outcomes_are_read_whatever_the_http_code(scripted, status, body, outcome) -> None:
    api, server = scripted
    api.script("POST", f"/v1/batch/{BATCH}", (status, body))
    client, _ = make_client(server.url)

    assert client.launch(BATCH) is outcome


def test_details_are_read_for_each_response_shape(scripted) -> None:
    api, server = scripted
    found_cost = {"total_phone_cost": 12, "net_phone_cost": 0.0, "phone_cache_account_return": 12}
    api.script(
        "GET",
        f"/v1/batch/{BATCH}/details",
        (200, {"status": "parsing_content", "parameters": {"type": "phone"}}),
        (
            200,
            {
                "status": "ready_for_verification",
                "found_content": {"valid_phone": 12},
                "found_cost": found_cost,
            },
        ),
    )
    client, _ = make_client(server.url)

    parsing = client.details(BATCH)
    ready = client.details(BATCH)

    assert parsing == BatchDetails(BatchStatus.PARSING_CONTENT, None, None, None)
    assert parsing.net_cost is None
    assert ready.status is BatchStatus.READY_FOR_VERIFICATION
    assert ready.found_content == {"valid_phone": 12}
    assert ready.net_cost == 0.0, "a zero cost is a cost, not a missing one"
    assert ready.total_cost == 12.0


def test_status_returns_internal_error_as_a_status(scripted) -> None:
    api, server = scripted
    api.script("GET", f"/v1/batch/{BATCH}", (200, {"status": "internal_error"}))
    client, _ = make_client(server.url)

    assert client.status(BATCH) is BatchStatus.INTERNAL_ERROR


# --- retries ------------------------------------------------------------------------------------


def test_server_errors_are_retried_with_capped_growing_backoff(scripted) -> None:
    api, server = scripted
    api.script(
        "GET",
        f"/v1/batch/{BATCH}",
        *[(503, {"message": "down"})] * 5,
        (200, {"status": "verification_ongoing"}),
    )
    client, sleep = make_client(server.url, max_attempts=6, backoff_cap=4.0)

    assert client.status(BATCH) is BatchStatus.VERIFICATION_ONGOING

    assert len(api.seen) == 6
    ceilings = [1, 2, 4, 4, 4]
    assert len(sleep.waits) == 5
    for wait, ceiling in zip(sleep.waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_exhausted_retries_raise_a_transient_error_with_the_last_wait(scripted) -> None:
    api, server = scripted
    api.script("GET", f"/v1/batch/{BATCH}/details", (500, "oops"))
    client, sleep = make_client(server.url, max_attempts=3)

    with pytest.raises(TransientError) as caught:
        client.details(BATCH)

    assert caught.value.code == "apexverify_unavailable"
    assert len(api.seen) == 3
    assert len(sleep.waits) == 2, "no sleep after the last attempt"
    assert 2 <= caught.value.retry_after <= 4


def test_a_retry_after_longer_than_the_cap_is_left_to_the_caller(scripted) -> None:
    api, server = scripted
    api.script("GET", f"/v1/batch/{BATCH}", (429, {"message": "slow down"}, {"Retry-After": "120"}))
    client, sleep = make_client(server.url, backoff_cap=60.0)

    with pytest.raises(TransientError) as caught:
        client.status(BATCH)

    assert caught.value.code == "apexverify_rate_limited"
    assert caught.value.retry_after == 120
    assert sleep.waits == [] and len(api.seen) == 1


def test_upload_is_resent_when_no_connection_could_be_made(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client, sleep = make_client(f"http://127.0.0.1:{closed_port}", max_attempts=3)
    calls: list[tuple[str, int | None]] = []
    client.on_call = lambda endpoint, status: calls.append((endpoint, status))

    with pytest.raises(TransientError) as caught:
        client.upload(_write(tmp_path / "a.txt", "a@example.com\n"), **_EMAIL_UPLOAD)

    assert caught.value.code == "apexverify_unavailable"
    assert calls == [("upload", None)] * 3
    assert len(sleep.waits) == 2


def test_a_truncated_export_download_is_retried_and_never_left_half_written(scripted, tmp_path) -> None:
    api, server = scripted
    export = {"a@example.com": {"email": "a@example.com", "valid": True}}
    full = json.dumps(export)

    def truncated() -> Response:
        # Declares the whole length but sends half: the client sees the connection end early.
        return Response([full[: len(full) // 2]], 200, headers={"Content-Length": str(len(full))})

    api.script("GET", f"/v1/batch/{BATCH}/export", truncated, (200, export))
    client, sleep = make_client(server.url)
    dest = tmp_path / "exports" / "results.json"

    assert client.download_json_export(BATCH, dest) == dest

    assert json.loads(dest.read_text()) == export
    assert len(api.seen) == 2 and len(sleep.waits) == 1
    assert sorted(p.name for p in dest.parent.iterdir()) == ["results.json"]
    assert api.seen[0]["args"] == {"format": "json", "include_details": "true", "include_statistics": "true"}


def test_an_error_answer_in_place_of_an_export_is_an_error_not_a_file(scripted, tmp_path) -> None:
    api, server = scripted
    api.script("GET", f"/v1/batch/{BATCH}/export", (200, {"status": "error"}))
    client, _ = make_client(server.url)

    with pytest.raises(ApexVerifyError) as json_error:
        client.download_json_export(BATCH, tmp_path / "results.json")
    with pytest.raises(ApexVerifyError) as xlsx_error:
        client.download_xlsx_export(BATCH, tmp_path / "results.xlsx")

    assert json_error.value.code == xlsx_error.value.code == "apexverify_error"
    assert list(tmp_path.iterdir()) == []


# --- upload -------------------------------------------------------------------------------------

_EMAIL_UPLOAD = {"name": "Q2 leads", "type": "email", "target_country": "US"}
_EMAIL_PARAMETERS = {"type": "email", "target_country": "US", "use_global_cache": False}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_upload_sends_the_form_and_the_file_with_a_content_length(scripted, tmp_path) -> None:
    api, server = scripted
    api.script(
        "POST",
        "/v1/batch",
        (200, {"status": "ok", "batch_uuid": BATCH, "created_at": "2026-04-06T10:00:00Z"}),
    )
    client, _ = make_client(server.url)
    contacts = _write(tmp_path / "contacts.txt", "alice@example.com\nbob@example.org\n")

    batch_uuid = client.upload(contacts, description="from HubSpot — list 12", **_EMAIL_UPLOAD)

    assert batch_uuid == BATCH
    seen = api.seen[0]
    assert seen["form"] == {**_EMAIL_UPLOAD, "description": "from HubSpot — list 12"}
    assert seen["file"] == contacts.read_bytes() and seen["filename"] == "contacts.txt"
    assert int(seen["headers"]["Content-Length"]) > contacts.stat().st_size
    assert "Transfer-Encoding" not in seen["headers"]


def _count_one_upload(listener: socket.socket, received: list[int]) -> None:
    """Answer one HTTP request after counting its body bytes, keeping none of them.

    A bare socket rather than Werkzeug: its server buffers large bodies, and tracemalloc would
    count that against the client.
    """
    conn, _ = listener.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        head, _, body_start = head.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
        total = len(body_start)
        while total < length and (chunk := conn.recv(64 * 1024)):
            total += len(chunk)
        received.append(total)
        answer = json.dumps({"status": "ok", "batch_uuid": BATCH}).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode()
            + answer
        )


def test_upload_streams_the_file_instead_of_reading_it_whole(tmp_path) -> None:
    big = tmp_path / "big.txt"
    with big.open("w") as out:
        for i in range(1_000_000):
            out.write(f"contact{i:07d}@example.com\n")
    received: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_count_one_upload, args=(listener, received), daemon=True)
        server.start()
        client, _ = make_client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=30.0)
        tracemalloc.start()
        batch_uuid = client.upload(big, **_EMAIL_UPLOAD)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        server.join(timeout=10)

    assert batch_uuid == BATCH
    assert received[0] > big.stat().st_size
    assert peak < big.stat().st_size / 20


def test_a_reply_without_batch_uuid_is_an_error(scripted, tmp_path) -> None:
    api, server = scripted
    api.script("POST", "/v1/batch", (200, {"status": "ok"}))
    client, _ = make_client(server.url)

    with pytest.raises(ApexVerifyError) as caught:
        client.upload(_write(tmp_path / "a.txt", "a@example.com\n"), **_EMAIL_UPLOAD)

    assert caught.value.code == "apexverify_error"


# --- secrets, logs, metrics ---------------------------------------------------------------------


def test_the_api_key_stays_out_of_repr_logs_and_errors(scripted, caplog) -> None:
    api, server = scripted
    api.script("GET", f"/v1/batch/{BATCH}", (503, "down"))
    api.script("PATCH", f"/v1/batch/{BATCH}", (401, {"message": "bad key"}))
    client, _ = make_client(server.url, max_attempts=2)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(TransientError) as transient:
        client.status(BATCH)
    with pytest.raises(ApexVerifyError) as permanent:
        client.parse(BATCH)

    assert API_KEY not in repr(client) and "api_key=<set>" in repr(client)
    for text in (str(transient.value), repr(transient.value), str(permanent.value), caplog.text):
        assert API_KEY not in text
    for record in caplog.records:
        assert API_KEY not in json.dumps(record.__dict__, default=str)


def test_each_attempt_is_logged_and_counted(scripted, caplog) -> None:
    api, server = scripted
    api.script("GET", f"/v1/batch/{BATCH}", (502, "bad gateway"), (200, {"status": "verification_done"}))
    client, _ = make_client(server.url)
    calls: list[tuple[str, int | None]] = []
    client.on_call = lambda endpoint, status: calls.append((endpoint, status))
    caplog.set_level(logging.DEBUG, logger="connector.apexverify")

    client.status(BATCH)

    assert calls == [("status", 502), ("status", 200)]
    records = [r for r in caplog.records if r.name == "connector.apexverify"]
    assert [(r.http_method, r.path_template, r.http_status, r.attempt) for r in records] == [
        ("GET", "/v1/batch/{uuid}", 502, 1),
        ("GET", "/v1/batch/{uuid}", 200, 2),
    ]
    assert all(isinstance(r.elapsed_ms, int) for r in records)


def test_from_settings_shares_the_limiter_and_reads_the_timeout() -> None:
    settings = Settings(
        apexverify_base_url="http://apexverify.invalid",
        apexverify_api_key=API_KEY,
        apexverify_rate_limit_per_minute=42,
        apexverify_timeout_seconds=7.5,
    )
    connection = redis.Redis(db=15)

    client = ApexVerifyClient.from_settings(settings, connection)

    assert client.timeout == 7.5 and client.base_url == "http://apexverify.invalid"
    assert client.limiter is not None
    assert (client.limiter.key, client.limiter.limit, client.limiter.period) == (
        "connector:ratelimit:apexverify",
        42,
        60,
    )
    assert ApexVerifyClient.from_settings(settings, None).limiter is None


# --- reading exports ----------------------------------------------------------------------------


def test_iter_export_records_yields_records_and_skips_statistics(tmp_path) -> None:
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            {
                "statistics": {"total_verification": 2, "total_verification_valid": 1},
                "alice@example.com": {
                    "email": "alice@example.com",
                    "valid": True,
                    "wrong": False,
                    "score": 0.5,
                },
                "+6591234567": {"phone": "+6591234567", "valid": False, "current_network_mcc": None},
                "summary": {"note": "not a record"},
                "count": 2,
            }
        )
    )

    records = list(iter_export_records(export))

    assert records == [
        ("alice@example.com", {"email": "alice@example.com", "valid": True, "wrong": False, "score": 0.5}),
        ("+6591234567", {"phone": "+6591234567", "valid": False, "current_network_mcc": None}),
    ]
    assert type(records[0][1]["score"]) is float and type(records[0][1]["valid"]) is bool


def test_iter_export_records_memory_stays_flat_on_a_large_export(tmp_path) -> None:
    export = tmp_path / "export.json"
    with export.open("w") as out:
        out.write("{")
        for i in range(200_000):
            email = f"user{i}@example.com"
            record = {"email": email, "valid": i % 3 == 0, "wrong": i % 3 == 1, "unknown": i % 3 == 2}
            out.write(f"{json.dumps(email)}: {json.dumps(record)}, ")
        out.write('"statistics": {"total_verification": 200000}}')

    tracemalloc.start()
    count = 0
    valid = 0
    for _, record in iter_export_records(export):
        count += 1
        valid += record["valid"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert count == 200_000 and valid == 66_667
    assert peak < export.stat().st_size / 20


# --- against the ApexVerify sandbox ---------------------------------------------------------------


@dataclass
class Sandbox:
    server: SandboxServer

    @property
    def url(self) -> str:
        return self.server.url

    def knob(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = requests.request(method, f"{self.url}/_sandbox/{path}", json=body, timeout=5)
        answer.raise_for_status()
        return answer.json()

    def fault(self, endpoint: str, kind: str, count: int = 1) -> None:
        self.knob("POST", "faults", {"endpoint": endpoint, "kind": kind, "count": count})

    def batch(self, batch_uuid: str) -> dict[str, Any]:
        return next(b for b in self.knob("GET", "state")["batches"] if b["batch_uuid"] == batch_uuid)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    options = ApexVerifySandboxOptions(
        api_key=API_KEY, parse_delay=0.0, verify_delay=0.0, credits=1_000, timeout_fault_seconds=2.0
    )
    server = serve_in_thread(create_app(options))
    yield Sandbox(server)
    server.stop()


@pytest.fixture
def limiter_connection() -> Iterator[redis.Redis]:
    connection = redis.Redis(db=15)
    yield connection
    # Only our own keys: other tests may share db 15.
    for key in connection.scan_iter("connector:ratelimit:test-apexverify-*"):
        connection.delete(key)


def _test_limiter(connection: redis.Redis, limit: int, period: float, **kwargs: Any) -> RateLimiter:
    return RateLimiter(connection, f"test-apexverify-{uuid.uuid4().hex}", limit, period, **kwargs)


def _ready_batch(client: ApexVerifyClient, path: Path, parameters: dict[str, Any]) -> str:
    batch_uuid = client.upload(
        path, name="sync 1", type=parameters["type"], target_country=parameters["target_country"]
    )
    client.configure(batch_uuid, parameters)
    client.parse(batch_uuid)
    return batch_uuid


def test_email_lifecycle_from_upload_to_export(sandbox, tmp_path) -> None:
    client, _ = make_client(sandbox.url)
    contacts = _write(
        tmp_path / "emails.txt",
        "alice@example.com\ninfo@company.org\nbounce@example.com\nnot-an-email\nalice@example.com\n",
    )
    parameters = {"type": "email", "target_country": "US", "use_global_cache": False}

    batch_uuid = _ready_batch(client, contacts, parameters)
    ready = client.details(batch_uuid)
    outcome = client.launch(batch_uuid)
    status = client.status(batch_uuid)
    done = client.details(batch_uuid)
    export = client.download_json_export(batch_uuid, tmp_path / "out" / "results.json")
    workbook = client.download_xlsx_export(batch_uuid, tmp_path / "out" / "results.xlsx")

    assert ready.status is BatchStatus.READY_FOR_VERIFICATION
    assert ready.found_content == {"valid_email": 3, "wrong_email": 1, "duplicate_email": 1}
    assert ready.net_cost == ready.total_cost == 3.0
    assert outcome is LaunchOutcome.OK and status is BatchStatus.VERIFICATION_DONE
    assert done.stats is not None and done.stats["total_verification_valid"] == 2
    records = dict(iter_export_records(export))
    assert sorted(records) == ["alice@example.com", "bounce@example.com", "info@company.org"]
    assert records["info@company.org"]["is_role"] is True
    assert records["bounce@example.com"]["wrong"] is True
    assert openpyxl.load_workbook(workbook, read_only=True).sheetnames == ["Summary", "Results"]
    state = sandbox.knob("GET", "state")
    assert state["credits"] == 997.0 and sandbox.batch(batch_uuid)["charged"] == 3.0


def test_phone_lifecycle_from_upload_to_export(sandbox, tmp_path) -> None:
    client, _ = make_client(sandbox.url)
    phones = _write(tmp_path / "phones.txt", "+6591234567\n+6591234560\n12\n")

    batch_uuid = _ready_batch(client, phones, {"type": "phone", "target_country": "SG"})
    ready = client.details(batch_uuid)
    assert client.launch(batch_uuid) is LaunchOutcome.OK
    assert client.status(batch_uuid) is BatchStatus.VERIFICATION_DONE
    records = dict(iter_export_records(client.download_json_export(batch_uuid, tmp_path / "phones.json")))

    assert ready.found_content == {"valid_phone": 2, "wrong_phone": 1, "duplicate_phone": 0}
    assert ready.net_cost is not None and ready.net_cost <= ready.total_cost == 2.0
    assert records["+6591234567"]["valid"] is True and records["+6591234567"]["operator"] == "Singtel"
    assert records["+6591234560"]["status"] == "dead"
    assert sandbox.batch(batch_uuid)["charged"] == ready.net_cost


def test_sandbox_parse_errors_on_upload_and_parse(sandbox, tmp_path) -> None:
    client, _ = make_client(sandbox.url)
    with_bom = tmp_path / "bom.txt"
    with_bom.write_bytes(b"\xef\xbb\xbfalice@example.com\n")
    good = _write(tmp_path / "good.txt", "alice@example.com\n")

    with pytest.raises(ApexVerifyError) as on_upload:
        client.upload(with_bom, **_EMAIL_UPLOAD)
    batch_uuid = client.upload(good, **_EMAIL_UPLOAD)
    sandbox.fault("parse", "parse_error")
    with pytest.raises(ApexVerifyError) as on_parse:
        client.parse(batch_uuid)

    assert on_upload.value.code == on_parse.value.code == "parse_error"


def test_sandbox_json_error_answers_are_permanent_errors(sandbox, tmp_path) -> None:
    client, sleep = make_client(sandbox.url)
    batch_uuid = _ready_batch(client, _write(tmp_path / "a.txt", "alice@example.com\n"), _EMAIL_PARAMETERS)
    client.launch(batch_uuid)
    sandbox.fault("details", "json_error")
    sandbox.fault("export", "json_error")

    with pytest.raises(ApexVerifyError) as on_details:
        client.details(batch_uuid)
    with pytest.raises(ApexVerifyError) as on_export:
        client.download_json_export(batch_uuid, tmp_path / "results.json")

    assert on_details.value.code == on_export.value.code == "apexverify_error"
    assert not (tmp_path / "results.json").exists()
    assert sleep.waits == []


def test_launch_before_parsing_is_not_ready(sandbox, tmp_path) -> None:
    client, _ = make_client(sandbox.url)
    batch_uuid = client.upload(_write(tmp_path / "a.txt", "alice@example.com\n"), **_EMAIL_UPLOAD)

    assert client.status(batch_uuid) is BatchStatus.PARSING_CONTENT
    assert client.launch(batch_uuid) is LaunchOutcome.NOT_READY
    assert sandbox.batch(batch_uuid)["launch_count"] == 0


def test_a_second_launch_is_already_ongoing_and_charges_once(sandbox, tmp_path) -> None:
    sandbox.knob("POST", "config", {"verify_delay": 600})
    client, _ = make_client(sandbox.url)
    batch_uuid = _ready_batch(client, _write(tmp_path / "a.txt", "alice@example.com\n"), _EMAIL_PARAMETERS)

    assert client.launch(batch_uuid) is LaunchOutcome.OK
    assert client.launch(batch_uuid) is LaunchOutcome.ALREADY_ONGOING
    assert client.status(batch_uuid) is BatchStatus.VERIFICATION_ONGOING
    assert sandbox.batch(batch_uuid)["launch_count"] == 1


def test_a_launch_after_completion_is_already_done(sandbox, tmp_path) -> None:
    client, _ = make_client(sandbox.url)
    batch_uuid = _ready_batch(client, _write(tmp_path / "a.txt", "alice@example.com\n"), _EMAIL_PARAMETERS)

    assert client.launch(batch_uuid) is LaunchOutcome.OK
    assert client.launch(batch_uuid) is LaunchOutcome.ALREADY_DONE
    assert sandbox.knob("GET", "state")["charges"] == 1


def test_an_internal_error_during_parsing_shows_in_the_status(sandbox, tmp_path) -> None:
    client, _ = make_client(sandbox.url)
    batch_uuid = client.upload(_write(tmp_path / "a.txt", "alice@example.com\n"), **_EMAIL_UPLOAD)
    sandbox.fault("parse", "internal_error")

    client.parse(batch_uuid)

    assert client.status(batch_uuid) is BatchStatus.INTERNAL_ERROR
    assert client.details(batch_uuid).status is BatchStatus.INTERNAL_ERROR
    assert client.launch(batch_uuid) is LaunchOutcome.NOT_READY


def test_insufficient_credits_then_top_up_launches_and_charges_once(sandbox, tmp_path) -> None:
    sandbox.knob("POST", "config", {"credits": 0})
    client, sleep = make_client(sandbox.url)
    batch_uuid = _ready_batch(
        client, _write(tmp_path / "a.txt", "alice@example.com\nbob@example.org\n"), _EMAIL_PARAMETERS
    )

    with pytest.raises(ApexVerifyError) as caught:
        client.launch(batch_uuid)
    sandbox.knob("POST", "config", {"add_credits": 10})
    outcome = client.launch(batch_uuid)

    assert caught.value.code == "insufficient_credits" and sleep.waits == []
    assert outcome is LaunchOutcome.OK
    state = sandbox.knob("GET", "state")
    assert state["charges"] == 1 and state["credits"] == 8.0
    assert sandbox.batch(batch_uuid)["charged"] == 2.0


def test_unknown_batch_bad_parameters_and_bad_key(sandbox, caplog) -> None:
    client, _ = make_client(sandbox.url)
    intruder = ApexVerifyClient(sandbox.url, "av-wrong-key-0000", sleep=RecordingSleep())
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ApexVerifyError) as not_found:
        client.status(BATCH)
    with pytest.raises(ApexVerifyError) as bad_country:
        client.configure(BATCH, {"type": "email", "target_country": "ZZZ"})
    with pytest.raises(ApexVerifyError) as bad_key:
        intruder.status(BATCH)

    assert not_found.value.code == "batch_not_found"
    assert bad_country.value.code == "invalid_request" and "target_country" in bad_country.value.message
    assert bad_key.value.code == "apexverify_unauthorized"
    for text in (caplog.text, str(bad_key.value), repr(intruder)):
        assert API_KEY not in text and "av-wrong-key-0000" not in text


def test_a_burst_of_429s_is_absorbed_honouring_retry_after(sandbox, tmp_path) -> None:
    client, sleep = make_client(sandbox.url)
    calls: list[tuple[str, int | None]] = []
    client.on_call = lambda endpoint, status: calls.append((endpoint, status))
    batch_uuid = client.upload(_write(tmp_path / "a.txt", "alice@example.com\n"), **_EMAIL_UPLOAD)
    sandbox.fault("status", "http_429", count=3)

    assert client.status(batch_uuid) is BatchStatus.PARSING_CONTENT

    assert sleep.waits == [1.0, 1.0, 1.0]
    assert calls[1:] == [("status", 429)] * 3 + [("status", 200)]
    assert sandbox.knob("GET", "state")["rate_limited"] == 3


def test_a_429_pauses_the_shared_limiter_for_every_process(sandbox, limiter_connection) -> None:
    limiter = _test_limiter(limiter_connection, limit=100, period=60)
    client, _ = make_client(sandbox.url, limiter=limiter, max_attempts=1)
    sandbox.fault("status", "http_429")

    with pytest.raises(TransientError) as caught:
        client.status(BATCH)

    assert caught.value.code == "apexverify_rate_limited" and caught.value.retry_after == 1.0
    assert limiter.try_acquire() > 0, "another process would now have to wait"


def test_server_errors_are_retried_until_they_pass_or_attempts_run_out(sandbox, tmp_path) -> None:
    client, sleep = make_client(sandbox.url, max_attempts=3)
    contacts = _write(tmp_path / "a.txt", "alice@example.com\n")
    sandbox.fault("upload", "http_503", count=2)
    batch_uuid = client.upload(contacts, **_EMAIL_UPLOAD)
    sandbox.fault("configure", "http_500", count=5)

    with pytest.raises(TransientError) as caught:
        client.configure(batch_uuid, _EMAIL_PARAMETERS)

    assert len(sandbox.knob("GET", "state")["batches"]) == 1, "a 503 created no batch"
    assert caught.value.code == "apexverify_unavailable"
    assert len(sleep.waits) == 4
    assert sandbox.knob("GET", "state")["requests"]["PUT /v1/batch/{uuid}"] == 3


def test_a_read_timeout_on_upload_is_not_resent_but_gets_are(sandbox, tmp_path) -> None:
    client, sleep = make_client(sandbox.url, timeout=0.5)
    contacts = _write(tmp_path / "a.txt", "alice@example.com\n")
    sandbox.fault("upload", "timeout")

    with pytest.raises(TransientError) as caught:
        client.upload(contacts, **_EMAIL_UPLOAD)
    assert caught.value.code == "apexverify_unavailable"
    assert "may have acted" in caught.value.message
    assert sleep.waits == []
    assert sandbox.knob("GET", "state")["requests"]["POST /v1/batch"] == 1

    batch_uuid = client.upload(contacts, **_EMAIL_UPLOAD)
    sandbox.fault("status", "timeout")
    assert client.status(batch_uuid) is BatchStatus.PARSING_CONTENT
    assert len(sleep.waits) == 1
    assert sandbox.knob("GET", "state")["requests"]["GET /v1/batch/{uuid}"] == 2


def test_the_shared_limiter_makes_the_sixth_call_wait(sandbox, limiter_connection, tmp_path) -> None:
    limiter_waits: list[float] = []

    def sleep_and_record(seconds: float) -> None:
        limiter_waits.append(seconds)
        time.sleep(seconds)

    unlimited, _ = make_client(sandbox.url)
    batch_uuid = unlimited.upload(_write(tmp_path / "a.txt", "alice@example.com\n"), **_EMAIL_UPLOAD)
    limiter = _test_limiter(limiter_connection, limit=5, period=1.0, sleep=sleep_and_record)
    client, _ = make_client(sandbox.url, limiter=limiter)

    for _ in range(5):
        client.status(batch_uuid)
    assert limiter_waits == []
    client.status(batch_uuid)

    assert limiter_waits, "the sixth call had to wait for a slot"
    assert sandbox.knob("GET", "state")["requests"]["GET /v1/batch/{uuid}"] == 6
