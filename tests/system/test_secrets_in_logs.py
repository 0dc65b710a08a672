"""A whole sync at DEBUG level leaves no API key, token or secret in any log line or record.

Nor does a webhook delivery: Salesforce outbound messages carry the webhook secret in their URL
(`?token=`), which the app's logs, /metrics and gunicorn's access and error logs must not repeat.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests

from connector.crm.salesforce.settings import SalesforceSettings
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.verify_command import start_file_sync
from tests.conftest import with_settings
from tests.processes import connector_env, start_web
from tests.web.test_webhooks_salesforce import ORG_18, notification, outbound_message

SECRETS = {
    "hubspot_access_token": "pat-na1-secret-token-777",
    "hubspot_client_secret": "hubspot-client-secret-888",
    "salesforce_access_token": "00Dsalesforce!session-999",
    "salesforce_webhook_token": "flow-token-secret-000",
    "admin_token": "admin-token-secret-111",
}


def test_no_secret_reaches_the_logs(
    runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = with_settings(runtime, **SECRETS)
    caplog.set_level(logging.DEBUG)
    source = tmp_path / "in.txt"
    source.write_text("a@example.com\nnot-an-email\n", encoding="utf-8")
    base = runtime.settings.apexverify_base_url
    requests.post(
        f"{base}/_sandbox/faults", json={"endpoint": "status", "kind": "http_503", "count": 2}, timeout=5
    )

    sync = drive_until_settled(runtime, start_file_sync(runtime, source, type_="email", country="US").id)

    assert sync.status == "completed"
    secrets = [runtime.settings.apexverify_api_key or "", *SECRETS.values()]
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked in a log record from {record.name}"
    assert caplog.records, "the sync logged nothing at DEBUG: the test would prove nothing"


def test_the_formatter_redacts_secrets_that_reach_it() -> None:
    from connector.logs import RedactingJsonFormatter

    formatter = RedactingJsonFormatter(["super-secret-key"])
    record = logging.makeLogRecord({"msg": "calling with super-secret-key", "levelname": "INFO", "name": "x"})
    record.header = "X-Api-Key: super-secret-key"
    line = formatter.format(record)
    assert "super-secret-key" not in line and line.count("***") == 2


WEBHOOK_TOKEN = SECRETS["salesforce_webhook_token"]
# Guesses a forger might send: the logs must not collect them either (one may be a real secret).
GUESSES = ("guessed-token-4242", WEBHOOK_TOKEN[:-1] + "X")


def deliver_outbound_messages(url: str) -> None:
    """One accepted outbound message, one with a wrong token, one from another org, one Flow callout."""
    good = outbound_message(notification("04lLOG1", "0035g00000LOGLOG1", Email="log@example.com"), org=ORG_18)
    foreign = outbound_message(notification("04lLOG2", "0035g00000LOGLOG2"), org="00D5g000004ZZZZEAV")
    xml = {"Content-Type": "text/xml"}
    endpoint = f"{url}/webhooks/salesforce"
    answers = [
        requests.post(f"{endpoint}?token={WEBHOOK_TOKEN}", data=good, headers=xml, timeout=10),
        *(requests.post(f"{endpoint}?token={g}", data=good, headers=xml, timeout=10) for g in GUESSES),
        requests.post(f"{endpoint}?token={WEBHOOK_TOKEN}", data=foreign, headers=xml, timeout=10),
        requests.post(endpoint, json={"records": []}, headers={"X-Connector-Token": GUESSES[0]}, timeout=10),
    ]
    assert [a.status_code for a in answers] == [200, 401, 401, 403, 401]


@pytest.fixture
def webhook_runtime(runtime: Runtime) -> Runtime:
    return with_settings(runtime, **SECRETS, salesforce_org_id=ORG_18[:15])


def test_the_webhook_token_reaches_no_log_record_and_no_metric(
    webhook_runtime: Runtime, web: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    deliver_outbound_messages(web.url)
    metrics = requests.get(f"{web.url}/metrics", timeout=5).text

    assert 'connector_webhook_events_total{result="rejected_401",source="salesforce"} 3.0' in metrics
    for secret in (WEBHOOK_TOKEN, *GUESSES):
        assert secret not in metrics
        for record in caplog.records:
            text = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
            assert secret not in text, f"{secret!r} leaked in a log record from {record.name}"


@pytest.mark.parametrize(
    "gunicorn_args",
    [
        # An operator turns the access log on with gunicorn's default format (request line, referer).
        "--access-logfile - --error-logfile - --log-level debug",
        # Or with a format that prints the query string, the token header and the raw URI.
        "--access-logfile - --log-level debug --access-logformat "
        "'%(r)s q=%(q)s h=%({x-connector-token}i)s e=%({raw_uri}e)s f=%(f)s'",
    ],
)
def test_gunicorn_as_the_procfile_runs_it_logs_no_webhook_token(
    webhook_runtime: Runtime, tmp_path: Path, gunicorn_args: str
) -> None:
    org_id = webhook_runtime.settings.section(SalesforceSettings).org_id or ""
    env = connector_env(
        webhook_runtime, LOG_LEVEL="DEBUG", GUNICORN_CMD_ARGS=gunicorn_args,
        SALESFORCE_ORG_ID=org_id, SALESFORCE_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
    )  # fmt: skip
    log_path = tmp_path / "web.log"
    web = start_web(env, log_path, workers=1)
    try:
        deliver_outbound_messages(web.url)
        referer = {"Referer": f"{web.url}/?token={WEBHOOK_TOKEN}"}
        requests.get(f"{web.url}/healthz?token={GUESSES[0]}", headers=referer, timeout=5)
    finally:
        web.kill()
    logged = log_path.read_text(encoding="utf-8", errors="replace")
    assert "/webhooks/salesforce?token=***" in logged, logged[-2000:]  # the access log was on
    for secret in (WEBHOOK_TOKEN, *GUESSES):
        assert secret not in logged, f"{secret!r} leaked into gunicorn's log"
