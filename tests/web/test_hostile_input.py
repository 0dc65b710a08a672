"""Hostile requests get clear 4xx JSON answers and change nothing."""

from __future__ import annotations

import pytest
import requests

from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import with_settings


@pytest.fixture
def small_limit_runtime(runtime: Runtime) -> Runtime:
    return with_settings(
        runtime,
        max_request_bytes=64 * 1024,
        hubspot_client_secret="x" * 16,
        salesforce_org_id="00D5g000004ABCD",
        salesforce_webhook_token="t" * 16,
    )


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/webhooks/hubspot", "application/json"), ("/webhooks/salesforce?token=" + "t" * 16, "text/xml")],
)
def test_bodies_over_the_size_limit_get_413(
    small_limit_runtime: Runtime, web: SandboxServer, path: str, content_type: str
) -> None:
    response = requests.post(
        f"{web.url}{path}", data=b"x" * (65 * 1024), headers={"Content-Type": content_type}, timeout=5
    )
    assert response.status_code == 413
    assert response.json()["error"] == "request_entity_too_large"
