"""/metrics reports what every process did: syncs by state, API calls, credits, webhooks, step times."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from connector.crm.hubspot.webhook import sign
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.verify_command import start_file_sync
from tests.conftest import with_settings


def samples(web: SandboxServer) -> dict[tuple[str, tuple], float]:
    response = requests.get(f"{web.url}/metrics", timeout=5)
    assert response.status_code == 200
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_after_a_sync_and_webhooks(runtime: Runtime, tmp_path: Path) -> None:
    runtime = with_settings(runtime, hubspot_client_secret="s3cret-value", hubspot_portal_id="1")
    from connector.sandbox.server import serve_in_thread
    from connector.web import create_app

    web = serve_in_thread(create_app(runtime=runtime))
    try:
        source = tmp_path / "in.txt"
        source.write_text("a@example.com\nb@example.com\n", encoding="utf-8")
        drive_until_settled(runtime, start_file_sync(runtime, source, type_="email", country="US").id)
        body = json.dumps(
            [
                {
                    "eventId": 1,
                    "objectId": 5,
                    "occurredAt": 1,
                    "portalId": 1,
                    "subscriptionType": "contact.creation",
                }
            ]
        ).encode()
        for _ in range(2):
            stamp = str(int(time.time() * 1000))
            url = f"{web.url}/webhooks/hubspot"
            headers = {
                "X-HubSpot-Signature-v3": sign("s3cret-value", "POST", url, body, stamp),
                "X-HubSpot-Request-Timestamp": stamp,
                "Content-Type": "application/json",
            }
            requests.post(url, data=body, headers=headers, timeout=5).raise_for_status()
        requests.post(f"{web.url}/webhooks/hubspot", data=b"[]", timeout=5)  # unsigned: rejected

        found = samples(web)
    finally:
        web.stop()

    assert found[("connector_syncs", (("status", "completed"),))] == 1
    assert found[("connector_api_calls_total", (("outcome", "ok"), ("service", "apexverify")))] >= 6
    assert found[("connector_credits_spent_total", ())] > 0
    assert found[("connector_webhook_events_total", (("result", "accepted"), ("source", "hubspot")))] == 1
    assert found[("connector_webhook_events_total", (("result", "duplicate"), ("source", "hubspot")))] == 1
    assert found[("connector_webhook_events_total", (("result", "rejected_401"), ("source", "hubspot")))] == 1
    assert found[("connector_step_duration_seconds_count", (("step", "verifying"),))] == 1


def test_metrics_content_type_and_counters_before_anything_counted(web: SandboxServer) -> None:
    response = requests.get(f"{web.url}/metrics", timeout=5)
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    # A fresh deployment: unlabelled counters are there, at zero, before the first count.
    assert "connector_credits_spent_total 0.0" in response.text.splitlines()
    assert samples(web)[("connector_credits_spent_total", ())] == 0
