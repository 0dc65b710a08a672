"""A whole sync at DEBUG level leaves no API key, token or secret in any log line or record."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests

from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.verify_command import start_file_sync
from tests.conftest import with_settings

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
