"""The HubSpot sandbox's OAuth endpoints and portals, over real HTTP (PLAN's sandbox OAuth contract).

Consent, code exchange, refresh, token info and revoke as the connector's OAuth client meets them;
access tokens that expire (on the clock and on command); each token reading and writing its own
portal, the control endpoints reaching any portal with `?account=`. Requests and answers are
checked against HubSpot's specs (oauth.v1.json among them) as in the other sandbox tests.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputForCreate,
    SimplePublicObjectBatchInputForCreate,
)

from connector.crm.hubspot.client import make_hubspot_client
from connector.sandbox.hubspot import create_app
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.sandbox.test_sandbox_hubspot import export_request

ENV_TOKEN = "pat-na1-env-token"
CLIENT_ID = "sandbox-app-client-id"
CLIENT_SECRET = "sandbox-app-client-secret"
REDIRECT_URI = "http://connector.test/admin/connect/hubspot/callback"
SCOPES = "oauth crm.objects.contacts.read crm.objects.contacts.write"
DEFAULT_PORTAL = 62515
PORTAL_A, PORTAL_B = "1001", "2002"
COUNT_NAMES = {"code_grants", "refreshes", "revoked", "refused_refreshes", "expired_rejections"}


@pytest.fixture
def sandbox(hubspot_specs_dir: Path) -> Iterator[SandboxServer]:
    app = create_app(
        access_token=ENV_TOKEN,
        portal_id=DEFAULT_PORTAL,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        export_delay=0,
        import_delay=0,
        validate_responses=True,
        specs_dir=hubspot_specs_dir,
    )
    server = serve_in_thread(app)
    yield server
    server.stop()


@pytest.fixture
def specs_present(hubspot_specs_dir: Path) -> None:
    if not (hubspot_specs_dir / "oauth.v1.json").exists():
        pytest.skip("HubSpot's OpenAPI specs (shared/specs/hubspot beside the repository) are not here")


# ---- helpers ------------------------------------------------------------------------------


def consent(sandbox: SandboxServer, **params: str) -> requests.Response:
    query = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "scope": SCOPES, "state": "st-1", **params}
    return requests.get(f"{sandbox.url}/oauth/authorize", params=query, allow_redirects=False, timeout=5)


def redirected_to(answer: requests.Response) -> dict[str, str]:
    """The query of the consent page's redirect back to REDIRECT_URI."""
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    return dict(parse_qsl(location.query))


def token_request(sandbox: SandboxServer, **fields: str) -> requests.Response:
    form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **fields}
    return requests.post(f"{sandbox.url}/oauth/v1/token", data=form, timeout=5)


def exchange(sandbox: SandboxServer, code: str, redirect_uri: str = REDIRECT_URI) -> requests.Response:
    return token_request(sandbox, grant_type="authorization_code", code=code, redirect_uri=redirect_uri)


def refresh(sandbox: SandboxServer, refresh_token: str) -> requests.Response:
    return token_request(sandbox, grant_type="refresh_token", refresh_token=refresh_token)


def install(sandbox: SandboxServer, portal: str | None = None) -> dict[str, Any]:
    """Consent (for `portal` when given) and exchange the code: the token endpoint's answer."""
    if portal is not None:
        oauth_control(sandbox, next_account=portal)
    answer = exchange(sandbox, redirected_to(consent(sandbox))["code"])
    assert answer.status_code == 200, answer.text
    return answer.json()


def oauth_control(sandbox: SandboxServer, account: str | None = None, **body: Any) -> dict[str, Any]:
    answer = requests.post(f"{sandbox.url}/_sandbox/oauth", params=_account(account), json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def oauth_counts(sandbox: SandboxServer, account: str | None = None) -> dict[str, int]:
    answer = requests.get(f"{sandbox.url}/_sandbox/oauth", params=_account(account), timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _account(account: str | None) -> dict[str, str]:
    return {} if account is None else {"account": account}


def seed(sandbox: SandboxServer, account: str | None, *emails: str) -> list[str]:
    contacts = [{"properties": {"email": email}} for email in emails]
    url = f"{sandbox.url}/_sandbox/seed"
    answer = requests.post(url, params=_account(account), json={"contacts": contacts}, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["contactIds"]


def get_contact(sandbox: SandboxServer, token: str, contact_id: str) -> requests.Response:
    return requests.get(
        f"{sandbox.url}/crm/v3/objects/contacts/{contact_id}",
        params={"properties": "email"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )


def emails_in(sandbox: SandboxServer, account: str | None) -> list[str]:
    url = f"{sandbox.url}/_sandbox/contacts"
    answer = requests.get(url, params={**_account(account), "property": "email"}, timeout=5).json()
    return [contact["properties"]["email"] for contact in answer["contacts"]]


def refused(answer: requests.Response, status: str) -> None:
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["status"] == status and body["category"] == status
    assert body["message"] and body["correlationId"]


# ---- consent ------------------------------------------------------------------------------


def test_the_consent_page_redirects_straight_back_with_a_code_and_the_state(sandbox: SandboxServer) -> None:
    back = redirected_to(consent(sandbox, redirect_uri=f"{REDIRECT_URI}?from=ops", state="xyz"))
    assert back["state"] == "xyz" and back["from"] == "ops" and back["code"]

    another = redirected_to(consent(sandbox))["code"]
    assert another != back["code"]

    foreign = consent(sandbox, client_id="someone-else")
    assert foreign.status_code == 400 and foreign.headers["Content-Type"].startswith("text/html")
    assert "client_id" in foreign.text
    assert consent(sandbox, redirect_uri="").status_code == 400


def test_deny_next_redirects_back_once_with_access_denied(sandbox: SandboxServer) -> None:
    assert oauth_control(sandbox, deny_next=True)["deny_next"] is True

    assert redirected_to(consent(sandbox, state="s-2")) == {"error": "access_denied", "state": "s-2"}
    assert "code" in redirected_to(consent(sandbox))
    assert oauth_counts(sandbox)["code_grants"] == 0


# ---- the token endpoint -------------------------------------------------------------------


def test_a_code_is_exchanged_once_for_tokens_of_the_default_portal(sandbox: SandboxServer) -> None:
    code = redirected_to(consent(sandbox))["code"]
    refused(exchange(sandbox, code, redirect_uri="http://elsewhere.test/callback"), "BAD_REDIRECT_URI")

    answer = exchange(sandbox, code)  # a refused attempt does not use the code up
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 1800
    assert tokens["hub_id"] == DEFAULT_PORTAL
    assert tokens["access_token"] and tokens["refresh_token"]

    refused(exchange(sandbox, code), "BAD_AUTH_CODE")  # single use
    refused(exchange(sandbox, "never-issued"), "BAD_AUTH_CODE")
    assert oauth_counts(sandbox)["code_grants"] == 1

    # The token addresses the default portal, as the env token does.
    (contact_id,) = seed(sandbox, None, "ann@acme.com")
    read = get_contact(sandbox, tokens["access_token"], contact_id)
    assert read.json()["properties"]["email"] == "ann@acme.com"
    assert get_contact(sandbox, ENV_TOKEN, contact_id).status_code == 200


def test_the_token_endpoint_checks_the_app_and_the_codes_age(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = redirected_to(consent(sandbox))["code"]
    other_app = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    refused(token_request(sandbox, **other_app, client_id="someone-else"), "BAD_CLIENT_ID")
    refused(token_request(sandbox, **other_app, client_secret="wrong"), "BAD_CLIENT_ID")
    refused(token_request(sandbox, grant_type="client_credentials"), "BAD_GRANT_TYPE")

    authority = sandbox.app.extensions["hubspot_oauth"]
    monkeypatch.setattr(authority, "clock", lambda: time.time() + 601)  # a code lives 10 minutes
    refused(exchange(sandbox, code), "BAD_AUTH_CODE")


def test_a_refresh_issues_a_new_access_token_and_keeps_the_refresh_token(sandbox: SandboxServer) -> None:
    tokens = install(sandbox)
    (contact_id,) = seed(sandbox, None, "ann@acme.com")

    issued = []
    for _ in range(2):
        answer = refresh(sandbox, tokens["refresh_token"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["refresh_token"] == tokens["refresh_token"]
        assert answer.json()["hub_id"] == DEFAULT_PORTAL
        issued.append(answer.json()["access_token"])
    assert len({tokens["access_token"], *issued}) == 3
    assert all(get_contact(sandbox, token, contact_id).status_code == 200 for token in issued)

    refused(refresh(sandbox, "not-a-refresh-token"), "BAD_REFRESH_TOKEN")
    assert oauth_counts(sandbox) == {
        "code_grants": 1,
        "refreshes": 2,
        "revoked": 0,
        "refused_refreshes": 0,
        "expired_rejections": 0,
    }


# ---- expiry -------------------------------------------------------------------------------


def test_expire_tokens_makes_the_api_answer_401_until_a_refresh(sandbox: SandboxServer) -> None:
    tokens = install(sandbox)
    (contact_id,) = seed(sandbox, None, "ann@acme.com")
    assert get_contact(sandbox, tokens["access_token"], contact_id).status_code == 200

    assert oauth_control(sandbox, expire_tokens=True)["expired_tokens"] == 1
    expired = get_contact(sandbox, tokens["access_token"], contact_id)
    assert expired.status_code == 401
    body = expired.json()
    assert (body["status"], body["category"]) == ("error", "EXPIRED_AUTHENTICATION")
    assert body["message"].startswith("The OAuth token used to make this call expired")
    assert get_contact(sandbox, ENV_TOKEN, contact_id).status_code == 200  # the env token never expires

    fresh = refresh(sandbox, tokens["refresh_token"]).json()["access_token"]
    assert get_contact(sandbox, fresh, contact_id).status_code == 200
    counts = oauth_counts(sandbox)
    assert (counts["expired_rejections"], counts["refreshes"]) == (1, 1)


def test_access_tokens_expire_on_the_clock_after_the_ttl(sandbox: SandboxServer) -> None:
    assert oauth_control(sandbox, token_ttl_seconds=0.8)["token_ttl_seconds"] == 0.8
    tokens = install(sandbox)
    assert tokens["expires_in"] == 1  # whole seconds, rounded up
    (contact_id,) = seed(sandbox, None, "ann@acme.com")
    assert get_contact(sandbox, tokens["access_token"], contact_id).status_code == 200

    time.sleep(0.9)
    assert get_contact(sandbox, tokens["access_token"], contact_id).status_code == 401
    info = requests.get(f"{sandbox.url}/oauth/v1/access-tokens/{tokens['access_token']}", timeout=5)
    assert info.json()["expires_in"] == 0
    assert oauth_counts(sandbox)["expired_rejections"] == 1


# ---- revoking -----------------------------------------------------------------------------


def test_a_deleted_refresh_token_is_refused(sandbox: SandboxServer) -> None:
    tokens = install(sandbox)
    url = f"{sandbox.url}/oauth/v1/refresh-tokens/{tokens['refresh_token']}"
    assert requests.get(url, timeout=5).json()["hub_id"] == DEFAULT_PORTAL

    deleted = requests.delete(url, timeout=5)
    assert deleted.status_code == 204 and deleted.content == b""
    refused(refresh(sandbox, tokens["refresh_token"]), "BAD_REFRESH_TOKEN")
    assert requests.get(url, timeout=5).status_code == 404
    assert requests.delete(f"{sandbox.url}/oauth/v1/refresh-tokens/unknown", timeout=5).status_code == 404

    counts = oauth_counts(sandbox)
    assert (counts["revoked"], counts["refused_refreshes"]) == (1, 1)


def test_revoke_refresh_tokens_refuses_one_portals_tokens_until_it_installs_again(
    sandbox: SandboxServer,
) -> None:
    a, b = install(sandbox, PORTAL_A), install(sandbox, PORTAL_B)

    assert oauth_control(sandbox, PORTAL_B, revoke_refresh_tokens=True)["revoked_refresh_tokens"] == 1
    refused(refresh(sandbox, b["refresh_token"]), "BAD_REFRESH_TOKEN")
    assert refresh(sandbox, a["refresh_token"]).status_code == 200

    again = install(sandbox, PORTAL_B)
    assert refresh(sandbox, again["refresh_token"]).status_code == 200
    assert oauth_counts(sandbox, PORTAL_B) == {
        "code_grants": 2,
        "refreshes": 1,
        "revoked": 0,  # DELETEs through the API only
        "refused_refreshes": 1,
        "expired_rejections": 0,
    }
    assert oauth_counts(sandbox, PORTAL_A)["refreshes"] == 1


# ---- portals ------------------------------------------------------------------------------


def test_each_token_reads_and_writes_its_own_portal_only(sandbox: SandboxServer) -> None:
    a, b = install(sandbox, PORTAL_A), install(sandbox, PORTAL_B)
    assert (a["hub_id"], b["hub_id"]) == (int(PORTAL_A), int(PORTAL_B))

    (in_b,) = seed(sandbox, PORTAL_B, "bea@portal-b.com")
    assert get_contact(sandbox, b["access_token"], in_b).json()["properties"]["email"] == "bea@portal-b.com"
    assert get_contact(sandbox, a["access_token"], in_b).status_code == 404
    assert get_contact(sandbox, ENV_TOKEN, in_b).status_code == 404  # the default portal

    # Writes through the real client land in the token's portal.
    new = SimplePublicObjectBatchInputForCreate(properties={"email": "al@portal-a.com"}, associations=[])
    created = make_hubspot_client(sandbox.url, a["access_token"]).crm.contacts.batch_api.create(
        BatchInputSimplePublicObjectBatchInputForCreate(inputs=[new])
    )
    assert len(created.results) == 1
    assert emails_in(sandbox, PORTAL_A) == ["al@portal-a.com"]
    assert emails_in(sandbox, PORTAL_B) == ["bea@portal-b.com"]
    assert emails_in(sandbox, None) == []

    state_b = requests.get(f"{sandbox.url}/_sandbox/state", params={"account": PORTAL_B}, timeout=5).json()
    assert state_b["requests"] == {"GET /crm/v3/objects/contacts/{contactId}": 1}  # B's token's
    assert state_b["config"]["portal_id"] == int(PORTAL_B)


def test_token_info_names_the_portal(sandbox: SandboxServer) -> None:
    tokens = install(sandbox, PORTAL_B)

    info = requests.get(f"{sandbox.url}/oauth/v1/access-tokens/{tokens['access_token']}", timeout=5)
    assert info.status_code == 200, info.text
    body = info.json()
    assert body["hub_id"] == int(PORTAL_B) and body["token"] == tokens["access_token"]
    assert body["token_type"] == "access" and 1790 <= body["expires_in"] <= 1800
    assert body["scopes"] == SCOPES.split() and body["user"] and body["app_id"]

    unknown = requests.get(f"{sandbox.url}/oauth/v1/access-tokens/not-a-token", timeout=5)
    assert unknown.status_code == 404 and unknown.json()["category"] == "OBJECT_NOT_FOUND"


def test_oauth_counts_are_kept_per_portal(sandbox: SandboxServer) -> None:
    install(sandbox, PORTAL_A)
    oauth_control(sandbox, PORTAL_A, expire_tokens=True)

    assert oauth_counts(sandbox, PORTAL_A)["code_grants"] == 1
    assert oauth_counts(sandbox, PORTAL_B) == dict.fromkeys(COUNT_NAMES, 0)
    assert oauth_counts(sandbox) == dict.fromkeys(COUNT_NAMES, 0)  # the default portal
    assert oauth_control(sandbox, PORTAL_B, expire_tokens=True)["expired_tokens"] == 0


def test_control_endpoints_act_on_the_portal_account_names(sandbox: SandboxServer) -> None:
    b = install(sandbox, PORTAL_B)
    config = requests.post(
        f"{sandbox.url}/_sandbox/config",
        params={"account": PORTAL_B},
        json={"rate_limit_per_10s": 1},
        timeout=5,
    )
    assert config.json()["config"]["rate_limit_per_10s"] == 1
    (in_b,) = seed(sandbox, PORTAL_B, "bea@portal-b.com")
    assert get_contact(sandbox, b["access_token"], in_b).status_code == 200
    assert get_contact(sandbox, b["access_token"], in_b).status_code == 429  # B's own limit
    assert get_contact(sandbox, ENV_TOKEN, "1").status_code == 404  # the default portal is not limited

    reset = requests.post(f"{sandbox.url}/_sandbox/reset", params={"account": PORTAL_B}, timeout=5)
    assert reset.status_code == 200 and emails_in(sandbox, PORTAL_B) == []

    bad = requests.get(f"{sandbox.url}/_sandbox/state", params={"account": "acme"}, timeout=5)
    assert bad.status_code == 400 and "portal id" in bad.json()["error"]
    for body in ({"next_account": "acme"}, {"token_ttl_seconds": 0}, {"deny_next": "yes"}, {"expire": True}):
        assert requests.post(f"{sandbox.url}/_sandbox/oauth", json=body, timeout=5).status_code == 400, body


def test_an_export_in_another_portal_links_to_that_portals_file(sandbox: SandboxServer) -> None:
    b = install(sandbox, PORTAL_B)
    ids = seed(sandbox, PORTAL_B, *(f"b{n}@portal-b.com" for n in range(3)))
    list_id = requests.post(
        f"{sandbox.url}/_sandbox/seed",
        params={"account": PORTAL_B},
        json={"lists": [{"name": "B list", "contactIds": ids}]},
        timeout=5,
    ).json()["listIds"][0]

    exports = make_hubspot_client(sandbox.url, b["access_token"]).crm.exports.public_exports_api
    task = exports.start(public_export_request=export_request(list_id, ["email"], ["NAMES"]))
    link = exports.get_status(int(task.id)).result
    assert link.endswith(f"?account={PORTAL_B}")

    rows = list(csv.DictReader(io.StringIO(requests.get(link, timeout=5).text)))
    assert sorted(row["email"] for row in rows) == [f"b{n}@portal-b.com" for n in range(3)]


# ---- the specs ----------------------------------------------------------------------------


@pytest.mark.usefixtures("specs_present")
def test_oauth_requests_are_checked_against_the_spec(sandbox: SandboxServer) -> None:
    bad_grant = token_request(sandbox, grant_type="password")
    assert bad_grant.status_code == 400
    assert bad_grant.json()["category"] == "VALIDATION_ERROR" and "grant_type" in bad_grant.json()["message"]

    twice = requests.post(
        f"{sandbox.url}/oauth/v1/token", data=[("grant_type", "refresh_token")] * 2, timeout=5
    )
    assert twice.status_code == 400 and "more than once" in twice.json()["message"]

    unknown_query = requests.post(
        f"{sandbox.url}/oauth/v1/token",
        params={"scope": "x"},
        data={"grant_type": "refresh_token"},
        timeout=5,
    )
    assert unknown_query.status_code == 400 and "unknown query parameter" in unknown_query.json()["message"]
