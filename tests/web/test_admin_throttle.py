"""The admin sign-in throttle over HTTP: per client address (behind trusted proxies only), for all
addresses together, with Redis down, and the refusal to serve the admin with a short token.

The throttle's counts live in the test Redis (emptied between tests); the Redis-down cases use a
client on a port nobody listens on, so the connector falls back to its in-process counts.
"""

from __future__ import annotations

import re

import pytest
import requests

from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.web.admin_auth import FAILED_AUTH_PER_MINUTE, FAILED_AUTH_PER_MINUTE_ALL
from tests.conftest import with_settings

TOKEN = "test-admin-token"
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
WRONG = {"Authorization": "Bearer not-the-admin-token"}


def syncs(web: SandboxServer, headers: dict[str, str], forwarded_for: str | None = None) -> requests.Response:
    if forwarded_for is not None:
        headers = {**headers, "X-Forwarded-For": forwarded_for}
    return requests.get(f"{web.url}/admin/syncs", headers=headers, timeout=5)


def fail_until_throttled(web: SandboxServer, forwarded_for: str | None = None) -> None:
    codes = [syncs(web, WRONG, forwarded_for).status_code for _ in range(FAILED_AUTH_PER_MINUTE)]
    assert codes == [401] * FAILED_AUTH_PER_MINUTE
    assert syncs(web, WRONG, forwarded_for).status_code == 429


def test_a_throttled_client_is_refused_even_with_the_right_token(web: SandboxServer) -> None:
    assert syncs(web, RIGHT).status_code == 200  # successes cost nothing
    fail_until_throttled(web)
    refused = syncs(web, RIGHT)
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_attempts"
    assert 0 < int(refused.headers["Retry-After"]) <= 60


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_buy_a_new_budget(web: SandboxServer) -> None:
    codes = [
        syncs(web, WRONG, forwarded_for=f"198.51.100.{n}").status_code for n in range(FAILED_AUTH_PER_MINUTE)
    ]
    assert codes == [401] * FAILED_AUTH_PER_MINUTE
    assert syncs(web, RIGHT, forwarded_for="203.0.113.77").status_code == 429


@pytest.fixture
def behind_one_proxy(runtime: Runtime) -> Runtime:
    return with_settings(runtime, trusted_proxy_count=1)


def test_behind_a_trusted_proxy_each_client_address_has_its_own_budget(
    behind_one_proxy: Runtime, web: SandboxServer
) -> None:
    fail_until_throttled(web, forwarded_for="203.0.113.1")
    # What the client itself put in front of the proxy's entry does not change who it is.
    assert syncs(web, RIGHT, forwarded_for="198.51.100.9, 203.0.113.1").status_code == 429
    assert syncs(web, RIGHT, forwarded_for="203.0.113.2").status_code == 200
    assert syncs(web, RIGHT, forwarded_for="203.0.113.1, 203.0.113.2").status_code == 200


def test_failures_from_many_addresses_share_one_global_budget(
    behind_one_proxy: Runtime, web: SandboxServer
) -> None:
    addresses = FAILED_AUTH_PER_MINUTE_ALL // FAILED_AUTH_PER_MINUTE
    for n in range(addresses):  # each address stays within its own budget
        for _ in range(FAILED_AUTH_PER_MINUTE):
            assert syncs(web, WRONG, forwarded_for=f"10.0.{n}.1").status_code == 401
    fresh = syncs(web, RIGHT, forwarded_for="192.0.2.200")  # never failed, right token: still waits
    assert fresh.status_code == 429 and fresh.json()["error"] == "too_many_attempts"


def test_with_redis_down_the_throttle_still_holds(redis_down: SandboxServer) -> None:
    assert syncs(redis_down, RIGHT).status_code == 200
    fail_until_throttled(redis_down)
    assert syncs(redis_down, RIGHT).status_code == 429

    form = requests.Session()
    csrf = re.search(
        r'name="csrf_token" value="([^"]+)"', form.get(f"{redis_down.url}/admin/ops/sign-in").text
    )
    page = form.post(
        f"{redis_down.url}/admin/ops/sign-in", data={"token": TOKEN, "csrf_token": csrf.group(1)}
    )
    assert page.status_code == 429  # the ops page's sign-in shares the in-process counts


@pytest.fixture
def short_token(runtime: Runtime) -> Runtime:
    return with_settings(runtime, admin_token="fifteen-chars-x")


def test_an_admin_token_under_16_characters_turns_the_admin_off_and_says_why(
    short_token: Runtime, web: SandboxServer
) -> None:
    api = syncs(web, {"Authorization": "Bearer fifteen-chars-x"})
    assert api.status_code == 503 and api.json()["error"] == "admin_token_too_short"
    assert "shorter than 16 characters" in api.json()["message"]
    for path in ("/admin/", "/admin/ops/sign-in"):
        page = requests.get(f"{web.url}{path}", timeout=5)
        assert page.status_code == 503 and "shorter than 16 characters" in page.text
        assert "fifteen-chars-x" not in page.text and "Set-Cookie" not in page.headers
