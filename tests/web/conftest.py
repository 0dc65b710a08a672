"""Fixtures shared by the tests of the connector's web app (admin API, ops page, webhooks, metrics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import redis

from connector.ratelimit import forget_windows
from connector.runtime import Runtime, set_runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.conftest import with_settings


@pytest.fixture
def no_admin_token(runtime: Runtime) -> Runtime:
    return with_settings(runtime, admin_token=None)


@pytest.fixture
def redis_down(runtime: Runtime) -> Iterator[SandboxServer]:
    """The connector's app with a Redis nobody listens on (port 1). The in-process counts it falls
    back to (the sign-in throttle's) start empty and are emptied afterwards."""
    from connector.web import create_app

    forget_windows()
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    server = serve_in_thread(create_app(runtime=dataclasses.replace(runtime, redis=dead)))
    yield server
    server.stop()
    set_runtime(runtime)
    forget_windows()


# The fuzzed app's webhook secrets: deliveries signed with them reach the parsers.
FUZZ_SECRET = "fuzz-secret-value"
FUZZ_TOKEN = "fuzz-flow-token"
FUZZ_ORG = "00D5g000004FUZZ"


@pytest.fixture
def fuzz_runtime(runtime: Runtime) -> Runtime:
    """Both webhooks configured, so a signed fuzz delivery reaches the parsers and an unsigned one
    gets 401 rather than the 503 of an unconfigured webhook."""
    return with_settings(
        runtime,
        hubspot_client_secret=FUZZ_SECRET,
        salesforce_org_id=FUZZ_ORG,
        salesforce_webhook_token=FUZZ_TOKEN,
    )
