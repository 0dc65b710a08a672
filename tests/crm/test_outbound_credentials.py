"""Credentials go only where they belong: to the configured ApexVerify, HubSpot and Salesforce URLs.

Over real HTTP with the real clients. "Elsewhere" is a second local server on another port (another
origin) that records every request it gets; the assertion is that it got none, or none carrying a
credential. Redirects come from a small stub standing where the service's base URL points; foreign
nextRecordsUrl values and export links on another host come from the sandboxes' own knobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask, Response, request

from connector.apexverify import ApexVerifyClient
from connector.config import Settings
from connector.crm.hubspot.api import HubSpotApi
from connector.crm.hubspot.bulk import _download, export_list_rows
from connector.crm.salesforce.api import SalesforceApi
from connector.crm.salesforce.client import make_salesforce
from connector.crm.salesforce.records import rest_rows
from connector.errors import ConnectorError, TransientError
from connector.models import SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.conftest import HUBSPOT_TOKEN, SALESFORCE_SESSION, settings_with
from tests.crm.test_salesforce_end_to_end import only_sync, start_campaign_sync

API_KEY = "av-outbound-test-key-0001"
SALESFORCE_TOKEN = "00Doutbound!session-token"
CLIENT_ID = "3MVG9-outbound-client"
CLIENT_SECRET = "outbound-client-secret-0001"


@dataclass
class Stub:
    """Records every request; answers 307 to `redirect_to` + the path when set, else 200 `{}`."""

    redirect_to: str | None = None
    url: str = ""  # where it is served, once it is
    seen: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Flask:
        app = Flask("outbound-stub")
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        app.add_url_rule("/", "root", lambda: self._answer(""), methods=methods)
        app.add_url_rule("/<path:path>", "any", self._answer, methods=methods)
        return app

    def _answer(self, path: str) -> Response:
        body = request.get_data(as_text=True)
        self.seen.append(
            {"method": request.method, "path": f"/{path}", "headers": dict(request.headers), "body": body}
        )
        if self.redirect_to is not None:
            return Response("", 307, headers={"Location": f"{self.redirect_to}/{path}"})
        return Response("{}", 200, mimetype="application/json")


@pytest.fixture
def elsewhere() -> Iterator[tuple[Stub, SandboxServer]]:
    """Another origin: it must never be asked anything by a request that carries credentials."""
    stub = Stub()
    server = serve_in_thread(stub.app())
    yield stub, server
    server.stop()


@pytest.fixture(params=["to_another_host", "to_the_same_host"])
def redirecting(request: pytest.FixtureRequest, elsewhere: tuple[Stub, SandboxServer]) -> Iterator[Stub]:
    """A base URL that answers every request with a redirect: to `elsewhere`, or to itself."""
    stub = Stub()
    server = serve_in_thread(stub.app())
    stub.url = server.url
    stub.redirect_to = elsewhere[1].url if request.param == "to_another_host" else f"{server.url}/moved"
    yield stub
    server.stop()


def assert_refused_redirect(error: pytest.ExceptionInfo, stub: Stub, elsewhere: Stub, setting: str) -> None:
    assert error.value.code == "redirect_refused" and not isinstance(error.value, TransientError)
    assert "307" in error.value.message and setting in error.value.message
    assert len(stub.seen) == 1  # asked once; the redirect was not followed, not even to the same host
    assert elsewhere.seen == []


# ---- redirects --------------------------------------------------------------------------------


def test_apexverify_redirects_are_not_followed_with_the_api_key(
    redirecting: Stub, elsewhere: tuple[Stub, SandboxServer]
) -> None:
    client = ApexVerifyClient(redirecting.url, API_KEY, timeout=5.0, sleep=lambda _: None)
    with pytest.raises(ConnectorError) as error:
        client.status("0b9f6a52-3c1d-4e8f-9a7b-5d2c1e0f4a6b")
    assert_refused_redirect(error, redirecting, elsewhere[0], "APEXVERIFY_BASE_URL")
    assert redirecting.seen[0]["headers"]["X-Api-Key"] == API_KEY  # it did go to the configured URL


@pytest.fixture
def limiter_redis(redis_connection: redis.Redis) -> redis.Redis:
    return redis_connection  # HubSpotApi's shared rate limiter (the test Redis, or fakeredis)


def test_hubspot_redirects_are_not_followed_with_the_token(
    redirecting: Stub, elsewhere: tuple[Stub, SandboxServer], limiter_redis: redis.Redis
) -> None:
    settings = settings_with(Settings(), hubspot_access_token=HUBSPOT_TOKEN, hubspot_base_url=redirecting.url)
    api = HubSpotApi(settings, limiter_redis, sleep=lambda _: None)
    with pytest.raises(ConnectorError) as error:
        api.call(api.properties.get_all, "contacts")
    assert_refused_redirect(error, redirecting, elsewhere[0], "HUBSPOT_BASE_URL")
    assert redirecting.seen[0]["headers"]["Authorization"] == f"Bearer {HUBSPOT_TOKEN}"


def test_salesforce_redirects_are_not_followed_with_the_session(
    redirecting: Stub, elsewhere: tuple[Stub, SandboxServer], tmp_path: Path
) -> None:
    settings = settings_with(
        Settings(), salesforce_instance_url=redirecting.url, salesforce_access_token=SALESFORCE_TOKEN
    )
    with pytest.raises(ConnectorError) as error:
        SalesforceApi(settings, sleep=lambda _: None).query("SELECT Id FROM Contact")
    assert_refused_redirect(error, redirecting, elsewhere[0], "SALESFORCE_INSTANCE_URL")


def test_the_salesforce_token_request_does_not_follow_a_redirect_with_the_client_secret(
    redirecting: Stub, elsewhere: tuple[Stub, SandboxServer]
) -> None:
    settings = settings_with(
        Settings(),
        salesforce_instance_url=redirecting.url,
        salesforce_client_id=CLIENT_ID,
        salesforce_client_secret=CLIENT_SECRET,
    )
    with pytest.raises(ConnectorError) as error:
        SalesforceApi(settings, sleep=lambda _: None).query("SELECT Id FROM Contact")
    assert_refused_redirect(error, redirecting, elsewhere[0], "SALESFORCE_INSTANCE_URL")
    assert redirecting.seen[0]["path"] == "/services/oauth2/token"


def test_a_salesforce_session_sends_nothing_off_the_instance(
    elsewhere: tuple[Stub, SandboxServer],
) -> None:
    sf = make_salesforce("http://127.0.0.1:9", session_id=SALESFORCE_TOKEN)
    with pytest.raises(ConnectorError) as error:
        sf.session.get(f"{elsewhere[1].url}/services/data/v62.0/query", headers={"Authorization": "Bearer x"})
    assert error.value.code == "untrusted_url" and elsewhere[0].seen == []


# ---- Salesforce nextRecordsUrl ----------------------------------------------------------------


@pytest.fixture
def salesforce(salesforce_sandbox: SandboxServer, tmp_path: Path) -> SalesforceApi:
    generated = {"generate": {"campaign_members": 2100, "lead_ratio": 0.0}}  # two REST pages of contacts
    requests.post(f"{salesforce_sandbox.url}/_sandbox/seed", json=generated, timeout=60).raise_for_status()
    settings = settings_with(
        Settings(), salesforce_instance_url=salesforce_sandbox.url, salesforce_access_token=SALESFORCE_SESSION
    )
    return SalesforceApi(settings, sleep=lambda _: None)


def next_records_url_prefix(sandbox: SandboxServer, prefix: str) -> None:
    answer = requests.post(
        f"{sandbox.url}/_sandbox/config", json={"next_records_url_prefix": prefix}, timeout=5
    )
    answer.raise_for_status()


@pytest.mark.parametrize(
    "prefix",
    ["@{elsewhere}", "//{elsewhere}", "http://{elsewhere}", "@evil.example", "https://evil.example", "/x/.."],
)
def test_a_next_records_url_off_the_instance_is_refused_and_never_requested(
    salesforce: SalesforceApi,
    salesforce_sandbox: SandboxServer,
    elsewhere: tuple[Stub, SandboxServer],
    prefix: str,
) -> None:
    next_records_url_prefix(
        salesforce_sandbox, prefix.format(elsewhere=elsewhere[1].url.removeprefix("http://"))
    )
    with pytest.raises(ConnectorError) as error:
        list(rest_rows(salesforce, "SELECT Id, Email FROM Contact"))
    assert error.value.code == "untrusted_url" and not isinstance(error.value, TransientError)
    assert "nextRecordsUrl" in error.value.message
    assert elsewhere[0].seen == []


def test_a_next_records_url_on_the_instance_is_followed(salesforce: SalesforceApi) -> None:
    assert len(list(rest_rows(salesforce, "SELECT Id, Email FROM Contact"))) > 2000  # the second page too


def test_a_sync_whose_org_answers_a_foreign_next_records_url_fails_without_asking_that_host(
    sf_runtime: Runtime,
    salesforce_sandbox: SandboxServer,
    web: SandboxServer,
    elsewhere: tuple[Stub, SandboxServer],
) -> None:
    next_records_url_prefix(salesforce_sandbox, "@" + elsewhere[1].url.removeprefix("http://"))
    start_campaign_sync(salesforce_sandbox, web, {"campaign_members": 2100, "lead_ratio": 0.3})

    sync = drive_until_settled(sf_runtime, only_sync(sf_runtime), tick_seconds=0.1)

    assert (sync.status, sync.failed_step, sync.error_code) == (
        SyncStatus.FAILED,
        "exporting",
        "untrusted_url",
    )
    assert elsewhere[0].seen == []


# ---- HubSpot export files ---------------------------------------------------------------------


@pytest.fixture
def hubspot(hubspot_sandbox: SandboxServer, limiter_redis: redis.Redis) -> HubSpotApi:
    settings = settings_with(
        Settings(),
        hubspot_access_token=HUBSPOT_TOKEN,
        hubspot_base_url=hubspot_sandbox.url,
        poll_initial_seconds=0.05,
        poll_max_seconds=0.1,
    )
    return HubSpotApi(settings, limiter_redis)


def export_a_list(sandbox: SandboxServer, api: HubSpotApi, work_dir: Path) -> list[dict[str, str]]:
    contacts = [{"properties": {"email": f"p{n}@example.com"}} for n in range(5)]
    ids = requests.post(f"{sandbox.url}/_sandbox/seed", json={"contacts": contacts}, timeout=5).json()[
        "contactIds"
    ]
    seeded = {"lists": [{"name": "Export me", "contactIds": ids}]}
    list_id = requests.post(f"{sandbox.url}/_sandbox/seed", json=seeded, timeout=5).json()["listIds"][0]
    return list(export_list_rows(api, list_id, ["email"], work_dir=work_dir))


def export_downloads(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()["export_downloads"]


def test_an_export_link_on_another_host_is_fetched_without_the_token(
    hubspot_sandbox: SandboxServer, hubspot: HubSpotApi, tmp_path: Path
) -> None:
    # HubSpot's pre-signed links point to its file host: here the sandbox again, reached as "localhost".
    file_host = hubspot_sandbox.url.replace("127.0.0.1", "localhost")
    requests.post(f"{hubspot_sandbox.url}/_sandbox/config", json={"export_file_origin": file_host}, timeout=5)

    rows = export_a_list(hubspot_sandbox, hubspot, tmp_path)

    assert sorted(row["email"] for row in rows) == [f"p{n}@example.com" for n in range(5)]
    host = file_host.removeprefix("http://")
    assert export_downloads(hubspot_sandbox) == [{"host": host, "authorization": False}]


def test_an_export_link_on_the_api_host_is_fetched_with_the_token(
    hubspot_sandbox: SandboxServer, hubspot: HubSpotApi, tmp_path: Path
) -> None:
    assert len(export_a_list(hubspot_sandbox, hubspot, tmp_path)) == 5
    host = hubspot_sandbox.url.removeprefix("http://")
    assert export_downloads(hubspot_sandbox) == [{"host": host, "authorization": True}]


def test_an_export_link_on_the_api_host_that_redirects_is_refused(
    elsewhere: tuple[Stub, SandboxServer], limiter_redis: redis.Redis, tmp_path: Path
) -> None:
    stub = Stub(redirect_to=elsewhere[1].url)
    server = serve_in_thread(stub.app())
    try:
        api = HubSpotApi(
            settings_with(Settings(), hubspot_access_token=HUBSPOT_TOKEN, hubspot_base_url=server.url),
            limiter_redis,
        )
        with pytest.raises(ConnectorError) as error:
            _download(api, f"{server.url}/exports/file.csv", tmp_path / "file.csv")
    finally:
        server.stop()
    assert error.value.code == "redirect_refused" and len(stub.seen) == 1
    assert stub.seen[0]["headers"]["Authorization"] == f"Bearer {HUBSPOT_TOKEN}"
    assert elsewhere[0].seen == [] and not (tmp_path / "file.csv").exists()
