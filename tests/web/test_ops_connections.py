"""The ops page's connections and OAuth installs, over HTTP against the CRM sandboxes' OAuth servers.

A signed-in `requests` session plays the browser (the consent pages redirect straight back); the
Chromium run of the same flows is tests/system/test_oauth_installs.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from connector.models import Connection
from connector.runtime import Runtime
from connector.sandbox.salesforce_ids import to_18
from connector.sandbox.server import SandboxServer, serve_in_thread
from connector.secretbox import require_secret_box
from tests.conftest import with_settings

TOKEN = "test-admin-token"
SECRET_KEY = Fernet.generate_key().decode()
HUBSPOT_CLIENT = ("hs-client-id-ops", "hs-client-secret-ops-0001")
SALESFORCE_CLIENT = ("sf-consumer-key-ops", "sf-consumer-secret-ops-0001")
PORTAL_A, PORTAL_B = "8001", "8002"
ORG_A = to_18("00D5g00000ORGAA")


@pytest.fixture
def hubspot_oauth() -> Iterator[SandboxServer]:
    from connector.sandbox.hubspot import create_app

    server = serve_in_thread(create_app(client_id=HUBSPOT_CLIENT[0], client_secret=HUBSPOT_CLIENT[1]))
    yield server
    server.stop()


@pytest.fixture
def salesforce_oauth() -> Iterator[SandboxServer]:
    from connector.sandbox.salesforce import create_app

    server = serve_in_thread(create_app(client_id=SALESFORCE_CLIENT[0], client_secret=SALESFORCE_CLIENT[1]))
    yield server
    server.stop()


def oauth_settings(hubspot: SandboxServer, salesforce: SandboxServer) -> dict[str, object]:
    return {
        "hubspot_base_url": hubspot.url, "hubspot_auth_url": hubspot.url,
        "hubspot_client_id": HUBSPOT_CLIENT[0], "hubspot_client_secret": HUBSPOT_CLIENT[1],
        "salesforce_login_url": salesforce.url,
        "salesforce_client_id": SALESFORCE_CLIENT[0], "salesforce_client_secret": SALESFORCE_CLIENT[1],
    }  # fmt: skip


@pytest.fixture
def oauth_runtime(runtime: Runtime, hubspot_oauth: SandboxServer, salesforce_oauth: SandboxServer) -> Runtime:
    return with_settings(runtime, secret_key=SECRET_KEY, **oauth_settings(hubspot_oauth, salesforce_oauth))


@pytest.fixture
def keyless_runtime(
    runtime: Runtime, hubspot_oauth: SandboxServer, salesforce_oauth: SandboxServer
) -> Runtime:
    return with_settings(runtime, secret_key=None, **oauth_settings(hubspot_oauth, salesforce_oauth))


@pytest.fixture
def app_unset(runtime: Runtime) -> Runtime:
    return with_settings(runtime, secret_key=SECRET_KEY)


def signed_in(web: SandboxServer) -> requests.Session:
    client = requests.Session()
    csrf = csrf_of(client.get(f"{web.url}/admin/ops/sign-in", timeout=5).text)
    answer = client.post(f"{web.url}/admin/ops/sign-in", data={"token": TOKEN, "csrf_token": csrf}, timeout=5)
    assert answer.ok and answer.url == f"{web.url}/admin/"
    return client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def next_account(sandbox: SandboxServer, account: str) -> None:
    requests.post(
        f"{sandbox.url}/_sandbox/oauth", json={"next_account": account}, timeout=5
    ).raise_for_status()


def oauth_counts(sandbox: SandboxServer, account: str) -> dict[str, int]:
    answer = requests.get(f"{sandbox.url}/_sandbox/oauth", params={"account": account}, timeout=5)
    answer.raise_for_status()
    return answer.json()


def install(client: requests.Session, web: SandboxServer, crm: str) -> requests.Response:
    """Connect → the sandbox's consent page → the callback → the connection's page."""
    return client.get(f"{web.url}/admin/connect/{crm}", timeout=10)


def connect(client: requests.Session, web: SandboxServer, crm: str = "hubspot") -> requests.Response:
    """The Connect button's answer itself (its redirect to the consent page not followed)."""
    return client.get(f"{web.url}/admin/connect/{crm}", allow_redirects=False, timeout=5)


def callback_url(client: requests.Session, web: SandboxServer, crm: str) -> str:
    """The URL the consent page sends the browser back to, not yet visited."""
    consent = connect(client, web, crm)
    assert consent.status_code == 302, consent.text
    back = requests.get(consent.headers["Location"], allow_redirects=False, timeout=5)
    assert back.status_code == 302, back.text
    return back.headers["Location"]


def connections(runtime: Runtime) -> list[Connection]:
    with runtime.session() as session:
        found = list(session.scalars(select(Connection).order_by(Connection.id)))
        for row in found:
            session.expunge(row)
    return found


def oauth_connections(runtime: Runtime) -> list[Connection]:
    return [c for c in connections(runtime) if c.auth == "oauth"]


def connection_id_of(page: requests.Response) -> int:
    found = re.fullmatch(r".*/admin/ops/connections/(\d+)", page.url)
    assert found, page.url
    return int(found.group(1))


# --- The table and the install buttons ---------------------------------------------------------


def test_the_connections_page_is_in_the_nav_and_offers_each_oauth_crm(
    oauth_runtime: Runtime, web: SandboxServer
) -> None:
    client = signed_in(web)
    home = client.get(f"{web.url}/admin/", timeout=5).text
    assert 'href="/admin/ops/connections"' in home
    page = client.get(f"{web.url}/admin/ops/connections", timeout=5)
    assert page.status_code == 200
    assert 'href="/admin/connect/hubspot"' in page.text and "Connect HubSpot" in page.text
    assert 'href="/admin/connect/salesforce"' in page.text and "Connect Salesforce" in page.text
    assert "cannot be connected" not in page.text


def test_the_pages_need_a_signed_in_session(oauth_runtime: Runtime, web: SandboxServer) -> None:
    for path in ("/admin/ops/connections", "/admin/ops/connections/1", "/admin/connect/hubspot",
                 "/admin/connect/hubspot/callback?code=x&state=y"):  # fmt: skip
        answer = requests.get(f"{web.url}{path}", allow_redirects=False, timeout=5)
        assert answer.status_code == 302 and answer.headers["Location"] == "/admin/ops/sign-in", path


def test_connect_without_the_secret_key_answers_503_and_says_why(
    keyless_runtime: Runtime, web: SandboxServer
) -> None:
    client = signed_in(web)
    listing = client.get(f"{web.url}/admin/ops/connections", timeout=5).text
    assert "CONNECTOR_SECRET_KEY" in listing
    answer = connect(client, web)
    assert answer.status_code == 503
    assert "CONNECTOR_SECRET_KEY" in answer.text and 'href="/admin/ops/connections"' in answer.text


def test_connect_without_the_app_configured_answers_503(app_unset: Runtime, web: SandboxServer) -> None:
    answer = connect(signed_in(web), web)
    assert answer.status_code == 503 and "HUBSPOT_CLIENT_ID" in answer.text


def test_an_unknown_crm_is_404(oauth_runtime: Runtime, web: SandboxServer) -> None:
    client = signed_in(web)
    for path in ("/admin/connect/nosuchcrm", "/admin/connect/file", "/admin/connect/nosuchcrm/callback"):
        assert client.get(f"{web.url}{path}", allow_redirects=False, timeout=5).status_code == 404, path


def test_connect_redirects_to_the_consent_page_with_the_public_callback_url(
    runtime: Runtime, hubspot_oauth: SandboxServer, salesforce_oauth: SandboxServer
) -> None:
    from connector.web import create_app

    public = "https://connector.example.com"
    changed = with_settings(runtime, secret_key=SECRET_KEY, public_base_url=public,
                            **oauth_settings(hubspot_oauth, salesforce_oauth))  # fmt: skip
    web = serve_in_thread(create_app(runtime=changed))
    try:
        client = signed_in(web)
        for crm, sandbox, path in (
            ("hubspot", hubspot_oauth, "/oauth/authorize"),
            ("salesforce", salesforce_oauth, "/services/oauth2/authorize"),
        ):
            answer = connect(client, web, crm)
            assert answer.status_code == 302
            location = urlsplit(answer.headers["Location"])
            assert f"{location.scheme}://{location.netloc}{location.path}" == sandbox.url + path
            query = parse_qs(location.query)
            assert query["redirect_uri"] == [f"{public}/admin/connect/{crm}/callback"]
            assert len(query["state"][0]) >= 16
        # One binding per session: connecting twice keeps the same session value.
        cookie = client.cookies.get("connector_ops")
        connect(client, web)
        assert client.cookies.get("connector_ops") == cookie
    finally:
        web.stop()


# --- Installs ----------------------------------------------------------------------------------


def test_two_portals_install_and_the_same_portal_again_updates_its_connection(
    oauth_runtime: Runtime, web: SandboxServer, hubspot_oauth: SandboxServer
) -> None:
    client = signed_in(web)
    next_account(hubspot_oauth, PORTAL_A)
    first = install(client, web, "hubspot")
    assert first.status_code == 200 and first.history[-1].status_code == 303
    assert f"HubSpot {PORTAL_A}: connected." in first.text
    next_account(hubspot_oauth, PORTAL_B)
    second = install(client, web, "hubspot")
    next_account(hubspot_oauth, PORTAL_A)
    again = install(client, web, "hubspot")
    assert f"HubSpot {PORTAL_A}: reconnected." in again.text
    assert connection_id_of(again) == connection_id_of(first) != connection_id_of(second)

    stored = oauth_connections(oauth_runtime)
    assert sorted(c.external_id for c in stored) == [PORTAL_A, PORTAL_B]
    assert all(c.status == "connected" and c.credentials for c in stored)
    listing = client.get(f"{web.url}/admin/ops/connections", timeout=5).text
    for connection in stored:
        assert f'data-connection-id="{connection.id}"' in listing
        assert f"{web.url}/webhooks/hubspot" in listing
    assert "webhook-secret" not in first.text  # HubSpot deliveries are signed with the app's secret


def test_a_new_org_shows_its_webhook_secret_once(
    oauth_runtime: Runtime, web: SandboxServer, salesforce_oauth: SandboxServer
) -> None:
    client = signed_in(web)
    next_account(salesforce_oauth, ORG_A)
    page = install(client, web, "salesforce")
    assert page.status_code == 200, page.text
    secret = re.search(r'id="new-webhook-secret">([^<]+)<', page.text)
    assert secret, page.text
    shown = secret.group(1)
    assert f"{web.url}/webhooks/salesforce?token={shown}" in page.text
    (stored,) = oauth_connections(oauth_runtime)
    assert stored.webhook_secret_digest == hashlib.sha256(shown.encode()).hexdigest()
    assert all(shown not in value for value in client.cookies.values())  # not in the session cookie
    assert all(shown not in r.headers.get("Location", "") for r in page.history)  # nor in a URL

    again = client.get(page.url, timeout=5)
    assert again.status_code == 200 and shown not in again.text and "new-webhook-secret" not in again.text


def test_the_connection_page_shows_its_segments(oauth_runtime: Runtime, web: SandboxServer) -> None:
    from connector.pipeline.segments import create_segment

    client = signed_in(web)
    page = install(client, web, "hubspot")
    connection_id = connection_id_of(page)
    segment = create_segment(
        oauth_runtime,
        {
            "crm": "hubspot",
            "kind": "hubspot_list",
            "ref": "77",
            "type": "email",
            "connection_id": connection_id,
        },
    )
    shown = client.get(page.url, timeout=5).text
    assert f'data-segment-id="{segment.id}"' in shown
    listed = client.get(f"{web.url}/admin/ops/segments", timeout=5).text
    assert f'href="/admin/ops/connections/{connection_id}">#{connection_id}</a>' in listed


def test_the_secret_waits_for_its_own_page_and_is_never_in_a_redirect(
    oauth_runtime: Runtime, web: SandboxServer
) -> None:
    client = signed_in(web)
    done = client.get(callback_url(client, web, "salesforce"), allow_redirects=False, timeout=10)
    assert done.status_code == 303 and re.fullmatch(r"/admin/ops/connections/\d+", done.headers["Location"])
    (stored,) = oauth_connections(oauth_runtime)
    other = client.get(f"{web.url}/admin/ops/connections", timeout=5).text  # another page first
    assert "new-webhook-secret" not in other
    page = client.get(f"{web.url}{done.headers['Location']}", timeout=5).text
    secret = re.search(r'id="new-webhook-secret">([^<]+)<', page)
    assert secret and hashlib.sha256(secret.group(1).encode()).hexdigest() == stored.webhook_secret_digest
    assert secret.group(1) not in done.headers.get("Set-Cookie", "")


# --- Refused callbacks -------------------------------------------------------------------------


def assert_refused(answer: requests.Response, runtime: Runtime, before: int, words: str) -> None:
    assert answer.status_code == 400, answer.text
    assert words in answer.text.lower(), answer.text
    assert 'href="/admin/ops/connections"' in answer.text
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(Connection)) == before


def test_a_forged_state_is_refused_and_nothing_is_stored(oauth_runtime: Runtime, web: SandboxServer) -> None:
    client = signed_in(web)
    connect(client, web)  # a real state exists
    before = len(connections(oauth_runtime))
    forged = client.get(f"{web.url}/admin/connect/hubspot/callback?code=abc&state=forged-state", timeout=5)
    assert_refused(forged, oauth_runtime, before, "not valid")


def test_a_replayed_callback_url_is_refused(oauth_runtime: Runtime, web: SandboxServer) -> None:
    client = signed_in(web)
    url = callback_url(client, web, "hubspot")
    assert client.get(url, timeout=10).status_code == 200
    before = len(connections(oauth_runtime))
    assert_refused(client.get(url, timeout=10), oauth_runtime, before, "not valid")


def test_a_state_from_another_session_is_refused(oauth_runtime: Runtime, web: SandboxServer) -> None:
    url = callback_url(signed_in(web), web, "salesforce")
    before = len(connections(oauth_runtime))
    assert_refused(signed_in(web).get(url, timeout=10), oauth_runtime, before, "not valid")


def test_denied_consent_is_refused(
    oauth_runtime: Runtime, web: SandboxServer, hubspot_oauth: SandboxServer
) -> None:
    client = signed_in(web)
    requests.post(
        f"{hubspot_oauth.url}/_sandbox/oauth", json={"deny_next": True}, timeout=5
    ).raise_for_status()
    before = len(connections(oauth_runtime))
    assert_refused(install(client, web, "hubspot"), oauth_runtime, before, "not granted")


# --- Disconnect and reconnect ------------------------------------------------------------------


def test_disconnect_needs_the_csrf_token_and_revokes_at_the_crm(
    oauth_runtime: Runtime, web: SandboxServer, hubspot_oauth: SandboxServer
) -> None:
    client = signed_in(web)
    next_account(hubspot_oauth, PORTAL_B)
    page = install(client, web, "hubspot")
    connection_id = connection_id_of(page)
    url = f"{web.url}/admin/ops/connections/{connection_id}/disconnect"
    assert f'action="/admin/ops/connections/{connection_id}/disconnect"' in page.text

    refused = client.post(url, data={"csrf_token": "forged"}, allow_redirects=False, timeout=5)
    assert refused.status_code == 400 and oauth_counts(hubspot_oauth, PORTAL_B)["revoked"] == 0

    done = client.post(url, data={"csrf_token": csrf_of(page.text)}, timeout=10)
    assert done.status_code == 200 and done.url == page.url
    assert "is disconnected" in done.text and 'data-status="disconnected"' in done.text
    assert "/disconnect" not in done.text  # no second Disconnect button
    assert oauth_counts(hubspot_oauth, PORTAL_B)["revoked"] == 1
    (stored,) = oauth_connections(oauth_runtime)
    assert stored.status == "disconnected" and stored.credentials is None


def test_a_connection_needing_reauth_offers_reconnect(oauth_runtime: Runtime, web: SandboxServer) -> None:
    client = signed_in(web)
    page = install(client, web, "hubspot")
    connection_id = connection_id_of(page)
    with oauth_runtime.session() as session, session.begin():
        row = session.get_one(Connection, connection_id)
        row.status, row.last_error = "needs_reauth", "HubSpot refused the refresh token <b>x</b>"
    detail = client.get(page.url, timeout=5).text
    listing = client.get(f"{web.url}/admin/ops/connections", timeout=5).text
    for html in (detail, listing):
        assert 'href="/admin/connect/hubspot">Reconnect</a>' in html
        assert "refused the refresh token &lt;b&gt;x&lt;/b&gt;" in html


def test_no_page_shows_a_token(
    oauth_runtime: Runtime, web: SandboxServer, salesforce_oauth: SandboxServer
) -> None:
    client = signed_in(web)
    pages = [install(client, web, "hubspot"), install(client, web, "salesforce")]
    pages += [client.get(f"{web.url}/admin/ops/connections", timeout=5)]
    pages += [client.get(p.url, timeout=5) for p in pages[:2]]
    box = require_secret_box(oauth_runtime.settings)
    tokens = []
    for connection in oauth_connections(oauth_runtime):
        assert connection.credentials
        sealed = box.open(connection.credentials)
        tokens += [sealed["access_token"], sealed["refresh_token"]]
    assert len(tokens) == 4 and all(tokens)
    for page in pages:
        for secret in (*tokens, SECRET_KEY, HUBSPOT_CLIENT[1], SALESFORCE_CLIENT[1], TOKEN):
            assert secret not in page.text
