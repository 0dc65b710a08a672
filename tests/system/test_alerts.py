"""Alerts, end to end: real receivers get each alert once, signed, and carrying no secret or contact.

Three targets run on loopback: an HTTP receiver that checks `X-Connector-Signature`, a Slack-shaped
receiver, and an aiosmtpd server that requires STARTTLS (a self-signed certificate made here) and
a login. Syncs run through the real job chain against the ApexVerify and HubSpot sandboxes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import types
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from playwright.sync_api import Page
from sqlalchemy import select, update

from connector.crm.hubspot.webhook import sign
from connector.models import Alert, Sync, SyncStatus, SyncTransition, utcnow
from connector.pipeline.alerts import (
    deliver_due_alerts,
    enqueue_delivery,
    raise_alert,
    raise_paused_long_alerts,
)
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.runner import fail_sync
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from connector.verify_command import start_file_sync
from tests.conftest import API_KEY, HUBSPOT_SECRET, with_settings
from tests.processes import free_port, kill, start_worker, wait_for, worker_env
from tests.web.test_ops_page import sign_in

WEBHOOK_SECRET = "alert-webhook-secret-0001"
SLACK_PATH = "/services/T000/B000/slack-url-secret-0001"
SMTP_USER, SMTP_PASSWORD = "alerts", "smtp-password-0001"
PUBLIC_BASE_URL = "https://connector.example.com"
SECRETS = (WEBHOOK_SECRET, "slack-url-secret-0001", SMTP_PASSWORD, API_KEY, "test-admin-token")
EMAIL_LIKE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


class Receiver:
    """An HTTP server on loopback that records every POST and answers `status`."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd handler: keeps each message delivered."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:  # noqa: N802
        self.messages.append(bytes(envelope.content or b""))
        return "250 OK"


def accept_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class Targets:
    def __init__(self, webhook: Receiver, slack: Receiver, mailbox: Mailbox, env: dict[str, str]) -> None:
        self.webhook, self.slack, self.mailbox, self.env = webhook, slack, mailbox, env

    def bodies(self) -> dict[str, list[Any]]:
        """What each target received: the webhook's JSON, Slack's JSON, the emails as text."""
        return {
            "webhook": [json.loads(r["body"]) for r in self.webhook.received],
            "slack": [json.loads(r["body"]) for r in self.slack.received],
            "email": [_email_text(m) for m in self.mailbox.messages],
        }

    def everything_received(self) -> str:
        raw = [r["body"] for r in (*self.webhook.received, *self.slack.received)] + self.mailbox.messages
        return "\n".join(part.decode(errors="replace") for part in raw)


def _email_text(raw: bytes) -> str:
    message = message_from_bytes(raw, policy=policy.default)
    body = message.get_body()
    assert body is not None
    return f"Subject: {message['Subject']}\nTo: {message['To']}\n\n{body.get_content().replace(chr(13), '')}"


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[Targets]:
    cert, key = self_signed_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    mailbox = Mailbox()
    port = free_port()
    smtp = Controller(
        mailbox, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True,
        authenticator=accept_login, auth_require_tls=True,
    )  # fmt: skip
    smtp.start()
    webhook, slack = Receiver(), Receiver()
    env = {
        "ALERT_WEBHOOK_URL": f"{webhook.url}/alerts",
        "ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ALERT_SLACK_WEBHOOK_URL": f"{slack.url}{SLACK_PATH}",
        "ALERT_EMAIL_TO": "ops@example.com",
        "SMTP_URL": f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}",
        "SMTP_CA_FILE": str(cert),
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
    }
    yield Targets(webhook, slack, mailbox, env)
    webhook.stop()
    slack.stop()
    smtp.stop()


def alerting(runtime: Runtime, targets: Targets) -> Runtime:
    env = targets.env
    return with_settings(
        runtime, alert_webhook_url=env["ALERT_WEBHOOK_URL"], alert_webhook_secret=WEBHOOK_SECRET,
        alert_slack_webhook_url=env["ALERT_SLACK_WEBHOOK_URL"], alert_email_to=env["ALERT_EMAIL_TO"],
        smtp_url=env["SMTP_URL"], smtp_ca_file=env["SMTP_CA_FILE"], public_base_url=PUBLIC_BASE_URL,
    )  # fmt: skip


def emails_file(path: Path, count: int, prefix: str) -> Path:
    path.write_text("".join(f"{prefix}{n}@example.com\n" for n in range(count)), encoding="utf-8")
    return path


def apexverify_config(runtime: Runtime, **config: float) -> None:
    url = f"{runtime.settings.apexverify_base_url}/_sandbox/config"
    requests.post(url, json=config, timeout=5).raise_for_status()


def hubspot_list_sync_with_refused_writes(runtime: Runtime, hubspot: SandboxServer, contacts: int) -> int:
    """A list of `contacts` whose first flag write HubSpot refuses (207), triggered by a signed webhook."""
    spec = {"contacts": contacts, "list_name": "alerts", "duplicate_every": 0, "malformed_every": 0,
            "missing_email_every": 0, "seed": 5}  # fmt: skip
    seeded = requests.post(f"{hubspot.url}/_sandbox/seed", json={"generate": spec}, timeout=10)
    list_id = seeded.json()["listId"]
    fault = {"endpoint": "POST /crm/v3/objects/contacts/batch/update", "kind": "record_errors", "count": 1}
    requests.post(f"{hubspot.url}/_sandbox/faults", json=fault, timeout=5).raise_for_status()
    from connector.web import create_app

    web = serve_in_thread(create_app(runtime=runtime))
    try:
        body = json.dumps({"listId": str(list_id), "type": "email"}).encode()
        stamp = str(int(time.time() * 1000))
        url = f"{web.url}/webhooks/hubspot"
        signed_url = f"{PUBLIC_BASE_URL}/webhooks/hubspot"  # HubSpot signs the public URL
        headers = {"X-HubSpot-Signature-v3": sign(HUBSPOT_SECRET, "POST", signed_url, body, stamp),
                   "X-HubSpot-Request-Timestamp": stamp, "Content-Type": "application/json"}  # fmt: skip
        assert requests.post(url, data=body, headers=headers, timeout=10).json() == {"accepted": 1}
    finally:
        web.stop()
    with runtime.session() as session:
        return session.scalars(select(Sync.id).where(Sync.crm != "file")).one()


def alert_rows(runtime: Runtime) -> list[Alert]:
    with runtime.session() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


def history(runtime: Runtime, sync_id: int) -> list[str]:
    with runtime.session() as session:
        return list(
            session.scalars(
                select(SyncTransition.to_status)
                .where(SyncTransition.sync_id == sync_id)
                .order_by(SyncTransition.id)
            )
        )


def test_each_target_gets_each_alert_once_signed_and_without_secrets(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, targets: Targets, tmp_path: Path
) -> None:
    runtime = alerting(hubspot_runtime, targets)

    # 1. A launch refused for lack of credits.
    apexverify_config(runtime, credits=1)
    broke = start_file_sync(
        runtime, emails_file(tmp_path / "a.txt", 10, "credit"), type_="email", country="US"
    )
    broke = drive_until_settled(runtime, broke.id, tick_seconds=0.05)
    assert (broke.status, broke.error_code) == (SyncStatus.FAILED, "insufficient_credits")
    apexverify_config(runtime, add_credits=100_000)

    # 2. A batch over its budget.
    costly = start_file_sync(
        runtime, emails_file(tmp_path / "b.txt", 30, "budget"), type_="email", country="US", max_net_cost=1
    )
    costly = drive_until_settled(runtime, costly.id, tick_seconds=0.05)
    assert costly.status == SyncStatus.AWAITING_APPROVAL

    # 3. One write in ten refused by the CRM: 10 % is over the 5 % threshold.
    listed = hubspot_list_sync_with_refused_writes(runtime, hubspot_sandbox, contacts=10)
    listed_sync = drive_until_settled(runtime, listed, tick_seconds=0.05)
    assert listed_sync.status == SyncStatus.COMPLETED, (listed_sync.error_code, listed_sync.error_message)
    assert (listed_sync.counts["write_failed"], listed_sync.counts["verified"]) == (1, 9)

    # Delivered by the job each raise enqueued, run by the same in-process worker.
    expected = [("sync_failed", broke.id), ("awaiting_approval", costly.id), ("write_failures_high", listed)]
    bodies = targets.bodies()
    assert [(b["kind"], b["sync_id"]) for b in bodies["webhook"]] == expected
    assert bodies["webhook"][0] == {
        "kind": "sync_failed",
        "sync_id": broke.id,
        "status": "failed",
        "error_code": "insufficient_credits",
        "message": bodies["webhook"][0]["message"],
        "url": f"{PUBLIC_BASE_URL}/admin/ops/syncs/{broke.id}",
    }
    assert "insufficient" in bodies["webhook"][0]["message"]
    assert "1 of 10" in bodies["webhook"][2]["message"]
    for request in targets.webhook.received:
        expected_signature = hmac.new(WEBHOOK_SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Connector-Signature"] == f"sha256={expected_signature}"
        assert request["path"] == "/alerts"
    assert len(bodies["slack"]) == 3 and all(
        request["path"] == SLACK_PATH for request in targets.slack.received
    )
    for kind, sync_id in expected:
        assert any(f"*{kind} · sync {sync_id}" in body["text"] for body in bodies["slack"])
    assert len(bodies["email"]) == 3
    for (kind, sync_id), text in zip(expected, bodies["email"], strict=True):
        assert f"{kind} · sync {sync_id}" in text and "To: ops@example.com" in text
        assert f"kind: {kind}\nsync_id: {sync_id}\n" in text
    assert all(row.delivered_at is not None and row.next_attempt_at is None for row in alert_rows(runtime))

    # A restarted worker, the cron tick, and the steps' alerts raised again: nothing is sent twice.
    enqueue_delivery(runtime)
    drive_until_settled(runtime, broke.id, tick_seconds=0.05)  # works the queue: the delivery job
    assert deliver_due_alerts(runtime) == 0
    with runtime.session() as session:
        for sync_id, kind in ((broke.id, "sync_failed"), (costly.id, "awaiting_approval")):
            assert not raise_alert(
                session, kind, settings=runtime.settings, sync=session.get_one(Sync, sync_id)
            )
    assert deliver_due_alerts(runtime) == 0
    assert [len(v) for v in targets.bodies().values()] == [3, 3, 3]

    # No token, key, secret or contact value reached any target.
    received = targets.everything_received()
    assert not [secret for secret in SECRETS if secret in received]
    assert set(EMAIL_LIKE.findall(received)) <= {"ops@example.com", "apexverify-connector@localhost"}


def test_a_delivery_job_stops_taking_alerts_while_a_target_hangs(runtime: Runtime, tmp_path: Path) -> None:
    """A target that accepts connections and never answers costs ALERT_TIMEOUT_SECONDS a try: the job
    (on a worker that also runs steps) stops picking alerts after its budget and leaves the rest due."""
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(50)  # the kernel completes the connections; nobody ever reads or answers
        slow = with_settings(
            runtime, alert_webhook_url=f"http://127.0.0.1:{hanging.getsockname()[1]}/hook",
            alert_webhook_secret=WEBHOOK_SECRET, alert_timeout_seconds=0.3,
        )  # fmt: skip
        for n in range(8):
            sync = start_file_sync(
                slow, emails_file(tmp_path / f"c{n}.txt", 1, f"h{n}-"), type_="email", country="US"
            )
            fail_sync(slow, sync.id, None, SyncStatus.EXPORTING, "insufficient_credits", "no credits")

        assert deliver_due_alerts(slow, budget_seconds=0.5) == 0

    tries = [row.deliveries["webhook"]["attempts"] for row in alert_rows(slow)]
    assert len(tries) == 8 and 1 <= sum(tries) < 8, tries
    assert all(row.next_attempt_at is not None for row in alert_rows(slow))


def test_a_quoted_error_message_loses_its_emails_phones_and_credentials(
    runtime: Runtime, targets: Targets, tmp_path: Path
) -> None:
    runtime = alerting(runtime, targets)
    sync = start_file_sync(runtime, emails_file(tmp_path / "c.txt", 2, "quoted"), type_="email", country="US")
    message = (
        "CRM refused jane.doe@example.com (+1 415 555 2671) at https://crm.example/x?access_token=abc123"
        f"&page=2 with key {API_KEY}"
    )
    fail_sync(runtime, sync.id, None, SyncStatus.WRITING_BACK, "crm_error", message)

    assert deliver_due_alerts(runtime) == 3
    quoted = targets.bodies()["webhook"][0]["message"]
    assert "[email]" in quoted and "[number]" in quoted and "access_token=***" in quoted
    received = targets.everything_received()
    for leaked in ("jane.doe", "555 2671", "abc123", API_KEY):
        assert leaked not in received


def test_an_unreachable_target_neither_delays_nor_fails_the_sync_and_is_retried_later(
    runtime: Runtime, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/alerts"
    runtime = with_settings(runtime, alert_webhook_url=closed, alert_webhook_secret=WEBHOOK_SECRET)
    apexverify_config(runtime, credits=1)
    started = time.monotonic()
    sync = start_file_sync(runtime, emails_file(tmp_path / "d.txt", 5, "closed"), type_="email", country="US")
    sync = drive_until_settled(runtime, sync.id, tick_seconds=0.05)
    elapsed = time.monotonic() - started

    assert (sync.status, sync.error_code) == (SyncStatus.FAILED, "insufficient_credits")
    assert history(runtime, sync.id) == [
        "pending", "exporting", "uploading", "configuring", "parsing", "ready", "launching", "failed",
    ]  # fmt: skip
    assert elapsed < 30
    [row] = alert_rows(runtime)
    webhook = row.deliveries["webhook"]
    assert (row.kind, webhook["state"], webhook["attempts"]) == ("sync_failed", "pending", 1)
    assert webhook["error"].startswith("alert_target_unreachable") and "/alerts" not in webhook["error"]
    assert row.next_attempt_at is not None and row.next_attempt_at > utcnow() + dt.timedelta(seconds=15)
    assert deliver_due_alerts(runtime) == 0  # not due yet: no hammering
    with runtime.session() as session:
        assert session.get_one(Alert, row.id).deliveries["webhook"]["attempts"] == 1


def test_a_target_that_comes_back_gets_the_alert_once(
    runtime: Runtime, targets: Targets, tmp_path: Path
) -> None:
    runtime = alerting(runtime, targets)
    targets.webhook.status = 503
    sync = start_file_sync(runtime, emails_file(tmp_path / "e.txt", 2, "back"), type_="email", country="US")
    fail_sync(runtime, sync.id, None, SyncStatus.LAUNCHING, "insufficient_credits", "no credits")
    assert deliver_due_alerts(runtime) == 2  # Slack and email took it; the webhook answered 503
    [row] = alert_rows(runtime)
    assert row.deliveries["webhook"]["state"] == "pending" and row.delivered_at is None

    targets.webhook.status = 200
    with runtime.session() as session:  # the retry is due
        session.execute(update(Alert).values(next_attempt_at=utcnow()))
    assert deliver_due_alerts(runtime) == 1
    assert [len(v) for v in targets.bodies().values()] == [2, 1, 1]  # the webhook: the 503 and the retry
    assert deliver_due_alerts(runtime) == 0


def test_a_sync_paused_too_long_is_alerted_once(runtime: Runtime, targets: Targets, tmp_path: Path) -> None:
    runtime = alerting(runtime, targets)
    sync = start_file_sync(runtime, emails_file(tmp_path / "f.txt", 2, "paused"), type_="email", country="US")
    with runtime.session() as session:
        session.execute(
            update(Sync)
            .where(Sync.id == sync.id)
            .values(
                pause_reason="apexverify_unavailable: 503", paused_since=utcnow() - dt.timedelta(minutes=20)
            )
        )
    assert raise_paused_long_alerts(runtime) == 0  # 20 minutes is under ALERT_PAUSE_MINUTES (30)
    with runtime.session() as session:
        session.execute(
            update(Sync).where(Sync.id == sync.id).values(paused_since=utcnow() - dt.timedelta(minutes=31))
        )
    assert raise_paused_long_alerts(runtime) == 1
    assert raise_paused_long_alerts(runtime) == 0
    deliver_due_alerts(runtime)
    [body] = targets.bodies()["webhook"]
    assert (body["kind"], body["sync_id"], body["error_code"]) == (
        "sync_paused_long",
        sync.id,
        "apexverify_unavailable",
    )


def test_nothing_is_recorded_without_a_target(runtime: Runtime, tmp_path: Path) -> None:
    sync = start_file_sync(runtime, emails_file(tmp_path / "g.txt", 2, "none"), type_="email", country="US")
    fail_sync(runtime, sync.id, None, SyncStatus.LAUNCHING, "insufficient_credits", "no credits")
    assert alert_rows(runtime) == []


@pytest.mark.slow
def test_a_worker_killed_and_restarted_sends_no_duplicate(
    runtime: Runtime, targets: Targets, tmp_path: Path
) -> None:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("a worker process needs a real Redis server")
    runtime = alerting(runtime, targets)
    sync = start_file_sync(runtime, emails_file(tmp_path / "h.txt", 2, "worker"), type_="email", country="US")
    fail_sync(runtime, sync.id, None, SyncStatus.LAUNCHING, "insufficient_credits", "no credits")  # enqueues
    env = worker_env(runtime, **targets.env)

    def delivered() -> bool:
        return all(row.delivered_at is not None for row in alert_rows(runtime))

    first = start_worker(env, tmp_path / "worker1.log")
    try:
        wait_for(delivered, 60, "the worker to deliver the alert and record it")
    finally:
        kill(first)
    enqueue_delivery(runtime)  # as if the job were found again after the restart
    second = start_worker(env, tmp_path / "worker2.log")
    try:
        wait_for(lambda: runtime.queue().count == 0, 30, "the second worker to take the job")
        time.sleep(1)
    finally:
        kill(second)
    assert [len(v) for v in targets.bodies().values()] == [1, 1, 1]


# --- The ops page's test button ------------------------------------------------------------------


def signed_in(url: str) -> requests.Session:
    client = requests.Session()
    form = client.get(f"{url}/admin/ops/sign-in", timeout=5).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf is not None
    client.post(
        f"{url}/admin/ops/sign-in", data={"token": "test-admin-token", "csrf_token": csrf.group(1)}, timeout=5
    )
    return client


def press_test_button(url: str) -> requests.Response:
    client = signed_in(url)
    page = client.get(f"{url}/admin/", timeout=5).text
    csrf = re.search(r'id="test-alert".*?name="csrf_token" value="([^"]+)"', page, re.S)
    assert csrf is not None
    return client.post(f"{url}/admin/ops/alerts/test", data={"csrf_token": csrf.group(1)}, timeout=30)


def test_the_test_button_sends_a_sample_to_every_target(runtime: Runtime, targets: Targets) -> None:
    from connector.web import create_app

    runtime = alerting(runtime, targets)
    web = serve_in_thread(create_app(runtime=runtime))
    try:
        client = signed_in(web.url)
        assert (
            client.post(
                f"{web.url}/admin/ops/alerts/test", data={"csrf_token": "forged"}, timeout=5
            ).status_code
            == 400
        )
        assert targets.bodies() == {"webhook": [], "slack": [], "email": []}
        answer = press_test_button(web.url)
    finally:
        web.stop()
    assert answer.status_code == 200
    for target in ("webhook", "slack", "email"):
        assert f"Test alert sent to {target}." in answer.text
    bodies = targets.bodies()
    assert bodies["webhook"] == [
        {"kind": "test", "sync_id": None, "status": "test", "error_code": None,
         "message": bodies["webhook"][0]["message"], "url": f"{PUBLIC_BASE_URL}/admin/"}
    ]  # fmt: skip
    assert len(bodies["slack"]) == len(bodies["email"]) == 1
    assert alert_rows(runtime) == []  # a test is sent, not recorded


def test_the_test_button_says_what_failed_and_when_nothing_is_configured(runtime: Runtime) -> None:
    from connector.web import create_app

    web = serve_in_thread(create_app(runtime=runtime))
    try:
        nothing = press_test_button(web.url)
    finally:
        web.stop()
    assert "No alert target is configured" in nothing.text

    closed = with_settings(runtime, alert_slack_webhook_url=f"http://127.0.0.1:{free_port()}{SLACK_PATH}")
    web = serve_in_thread(create_app(runtime=closed))
    try:
        failed = press_test_button(web.url)
    finally:
        web.stop()
    assert "Test alert not sent to slack" in failed.text and "alert_target" not in failed.text
    assert "slack-url-secret" not in failed.text


def test_the_alert_test_button_in_the_browser(runtime: Runtime, targets: Targets, page: Page) -> None:
    from connector.web import create_app

    web = serve_in_thread(create_app(runtime=alerting(runtime, targets)))
    try:
        sign_in(page, web)
        assert "webhook, slack, email" in page.locator("#test-alert").inner_text()
        page.get_by_role("button", name="Send test alert").click()
        for target in ("webhook", "slack", "email"):
            assert page.get_by_text(f"Test alert sent to {target}.").is_visible()
    finally:
        web.stop()
    bodies = targets.bodies()
    assert [len(bodies[t]) for t in ("webhook", "slack", "email")] == [1, 1, 1]
    assert bodies["webhook"][0]["kind"] == "test"


# --- A connection's loss of access ---------------------------------------------------------------


def test_each_loss_of_a_connections_access_is_alerted_once(
    installs: Runtime, hubspot_app: SandboxServer, targets: Targets
) -> None:
    from connector.pipeline.drive import DriveStopped
    from connector.pipeline.segments import create_segment, sync_segment
    from tests.connections_support import PORTAL_B, install
    from tests.system.test_connection_reauth import revoke_when_verifying, seed_list

    runtime = alerting(installs, targets)
    connection = install(runtime, hubspot_app, "hubspot", PORTAL_B).connection
    list_id, _ = seed_list(hubspot_app, PORTAL_B)
    segment = create_segment(
        runtime,
        {
            "crm": "hubspot",
            "kind": "hubspot_list",
            "ref": list_id,
            "type": "email",
            "connection_id": connection.id,
        },
    )

    def lose_access(at_once: bool = False) -> int:
        """A sync whose connection's refresh token is revoked mid-way (or before it starts)."""
        revoke = revoke_when_verifying(hubspot_app)
        sync = sync_segment(runtime, segment.id, trigger="admin")
        if at_once:  # the list was just verified: this sync sends nothing, so it is never verifying
            revoke(types.SimpleNamespace(status="verifying"))
        with pytest.raises(DriveStopped):
            drive_until_settled(runtime, sync.id, on_tick=revoke, tick_seconds=0.05, max_wait=3)
        deliver_due_alerts(runtime)
        return sync.id

    first = lose_access()
    [body] = targets.bodies()["webhook"]
    assert body == {
        "kind": "connection_needs_reauth", "connection_id": connection.id, "status": "needs_reauth",
        "error_code": "connection_needs_reauth", "message": body["message"],
        "url": f"{PUBLIC_BASE_URL}/admin/ops/connections/{connection.id}",
    }  # fmt: skip

    install(runtime, hubspot_app, "hubspot", PORTAL_B)  # access back; the paused sync finishes
    assert drive_until_settled(runtime, first, tick_seconds=0.05, max_wait=30).status == "completed"
    assert len(targets.bodies()["webhook"]) == 1

    lose_access(at_once=True)  # lost again: a new alert
    assert [b["kind"] for b in targets.bodies()["webhook"]] == ["connection_needs_reauth"] * 2
    assert [len(v) for v in targets.bodies().values()] == [2, 2, 2]
