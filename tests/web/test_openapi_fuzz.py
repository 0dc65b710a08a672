"""schemathesis over /openapi.json against the live app: no 5xx, and every answer fits the schema."""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer


def test_openapi_document_is_served(web: SandboxServer) -> None:
    document = requests.get(f"{web.url}/openapi.json", timeout=5).json()
    assert document["openapi"].startswith("3.") and "/admin/syncs/{sync_id}/retry" in document["paths"]


def test_schemathesis_finds_no_5xx_and_no_schema_violations(
    fuzz_runtime: Runtime, web: SandboxServer
) -> None:
    schema = schemathesis.openapi.from_url(f"{web.url}/openapi.json")
    schema.config.update(headers={"Authorization": "Bearer test-admin-token"})
    failures = []
    calls = []
    for operation in schema.get_all_operations():
        operation = operation.ok()
        strategy = operation.as_strategy()

        @settings(max_examples=15, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=strategy)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=web.url, headers={"Authorization": "Bearer test-admin-token"})
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code, response.text[:200]))
            else:
                case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])

        check()
    assert failures == []
    assert len(calls) > 100 and any(code < 300 for code in calls)  # it really exercised the API
