"""The CRMs' OAuth clients (crm/hubspot/oauth.py, crm/salesforce/oauth.py) against the sandboxes, over HTTP.

Consent (the sandbox's page redirects straight back with a code), code exchange, refresh and revoke;
the account each grant is for is the one the sandbox consented for (`next_account`), learnt from
the CRM; errors are clear and never carry a code, token or secret; a CRM that does not answer is a
TransientError. The API clients are then pointed at the granted account through `Account.tokens`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import requests

from connector.config import Settings
from connector.crm.base import Account, OAuthApp, OAuthGrant, RefreshRefused
from connector.crm.hubspot import CRM as HUBSPOT
from connector.crm.hubspot.oauth import OAUTH as HUBSPOT_OAUTH
from connector.crm.hubspot.oauth import SCOPES
from connector.crm.salesforce import CRM as SALESFORCE
from connector.crm.salesforce.oauth import OAUTH as SALESFORCE_OAUTH
from connector.crm.salesforce.oauth import org_of_identity
from connector.errors import ConfigError, ConnectorError, TransientError
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN, REDIS_TEST_URL, settings_with
from tests.connections_support import HS_CLIENT_ID, HS_CLIENT_SECRET, SF_CLIENT_ID, SF_CLIENT_SECRET

REDIRECT = "https://connector.example.com/admin/connect/hubspot/callback"
SF_REDIRECT = "https://connector.example.com/admin/connect/salesforce/callback"


# ---- settings (the sandboxes are hubspot_app and salesforce_app, tests/connections_support.py) ----


def hubspot_settings(url: str, **changes: Any) -> Settings:
    app = {"hubspot_client_id": HS_CLIENT_ID, "hubspot_client_secret": HS_CLIENT_SECRET}
    return settings_with(Settings(), hubspot_base_url=url, hubspot_auth_url=url, **{**app, **changes})


def salesforce_settings(url: str, **changes: Any) -> Settings:
    app = {"salesforce_client_id": SF_CLIENT_ID, "salesforce_client_secret": SF_CLIENT_SECRET}
    return settings_with(Settings(), salesforce_login_url=url, **{**app, **changes})


def control(url: str, path: str, body: dict[str, Any] | None = None, account: str | None = None) -> Any:
    params = {"account": account} if account else None
    if body is None:
        answer = requests.get(url + path, params=params, timeout=10)
    else:
        answer = requests.post(url + path, json=body, params=params, timeout=30)
    answer.raise_for_status()
    return answer.json()


def consent(authorize_url: str) -> dict[str, str]:
    """Follow the consent page's redirect back: the callback's query arguments."""
    answer = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def hubspot_install(settings: Settings, url: str, portal: str) -> OAuthGrant:
    control(url, "/_sandbox/oauth", {"next_account": portal})
    state = secrets.token_urlsafe(16)
    back = consent(HUBSPOT_OAUTH.authorize_url(settings, REDIRECT, state, None))
    assert back["state"] == state
    return HUBSPOT_OAUTH.exchange_code(settings, back["code"], REDIRECT, None)


def salesforce_install(settings: Settings, url: str, org: str) -> OAuthGrant:
    control(url, "/_sandbox/oauth", {"next_account": org})
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(16)
    back = consent(SALESFORCE_OAUTH.authorize_url(settings, SF_REDIRECT, state, challenge))
    assert back["state"] == state
    return SALESFORCE_OAUTH.exchange_code(settings, back["code"], SF_REDIRECT, verifier)


class HeldTokens:
    """A TokenSource kept in memory (crm/tokens.py's StoredTokens keeps them in the database)."""

    def __init__(self, app: OAuthApp, settings: Settings, grant: OAuthGrant) -> None:
        self.app = app
        self.settings = settings
        self.token = grant.access_token
        self.refresh_token = grant.refresh_token or ""
        self.refreshes = 0

    def access_token(self) -> str:
        return self.token

    def refresh(self, refused: str) -> str:
        if refused == self.token:
            self.token = self.app.refresh(self.settings, self.refresh_token).access_token
            self.refreshes += 1
        return self.token


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def shows_no_secret(error: Exception, *values: str | None) -> bool:
    text = f"{error} {getattr(error, 'message', '')}"
    return not any(value and value in text for value in values)


# ---- the registrations ----------------------------------------------------------------------------


def test_each_crm_registers_its_oauth_app_and_account_forms() -> None:
    assert HUBSPOT.oauth is HUBSPOT_OAUTH and not HUBSPOT_OAUTH.pkce and not HUBSPOT.routes_by_secret
    assert SALESFORCE.oauth is SALESFORCE_OAUTH and SALESFORCE_OAUTH.pkce and SALESFORCE.routes_by_secret
    assert SALESFORCE.same_account("00D5g000004ABCDEAV") == SALESFORCE.same_account("00D5g000004ABCD")
    assert HUBSPOT.same_account(" 62515 ") == "62515"
    env = settings_with(Settings(), hubspot_access_token="pat", salesforce_instance_url="https://x.example")
    assert HUBSPOT.env_configured(env) and not HUBSPOT.env_configured(Settings())
    assert not SALESFORCE.env_configured(env)  # an instance URL without a session or client credentials
    assert SALESFORCE.env_configured(settings_with(env, salesforce_access_token="00D!s"))


def test_missing_names_the_unset_app_variables() -> None:
    assert (
        HUBSPOT_OAUTH.missing(Settings())
        == "HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET are not set (the HubSpot app)"
    )
    assert HUBSPOT_OAUTH.missing(settings_with(Settings(), hubspot_client_secret="s")) == (
        "HUBSPOT_CLIENT_ID is not set (the HubSpot app)"
    )
    assert "SALESFORCE_CLIENT_SECRET" in (SALESFORCE_OAUTH.missing(Settings()) or "")
    assert SALESFORCE_OAUTH.missing(salesforce_settings("https://login.example")) is None
    with pytest.raises(ConfigError) as refused:
        HUBSPOT_OAUTH.refresh(Settings(), "some-refresh-token")
    assert refused.value.code == "hubspot_oauth_not_configured"


def test_authorize_urls_carry_the_contract() -> None:
    settings = hubspot_settings("https://hub.example")
    url = urlsplit(HUBSPOT_OAUTH.authorize_url(settings, REDIRECT, "st4te", None))
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc, url.path) == ("https", "hub.example", "/oauth/authorize")
    assert query["client_id"] == [HS_CLIENT_ID] and query["redirect_uri"] == [REDIRECT]
    assert query["state"] == ["st4te"] and query["scope"] == [" ".join(SCOPES)]
    assert HUBSPOT_OAUTH.authorize_url(Settings(), REDIRECT, "s", None).startswith(
        "https://app.hubspot.com/oauth/authorize?"
    )
    sf = urlsplit(
        SALESFORCE_OAUTH.authorize_url(salesforce_settings("https://login.example"), SF_REDIRECT, "s", "ch")
    )
    sf_query = parse_qs(sf.query)
    assert sf.path == "/services/oauth2/authorize" and sf_query["response_type"] == ["code"]
    assert sf_query["code_challenge"] == ["ch"] and sf_query["code_challenge_method"] == ["S256"]
    assert SALESFORCE_OAUTH.authorize_url(Settings(), SF_REDIRECT, "s", "c").startswith(
        "https://login.salesforce.com/services/oauth2/authorize?"
    )


def test_the_hubspot_scopes_cover_every_call_the_connector_makes(hubspot_specs_dir: Path) -> None:
    """Each operation the connector calls accepts one of the scopes asked for (HubSpot's specs)."""
    import json

    contacts, lists, properties = (
        "/crm/v3/objects/contacts/batch",
        "/crm/v3/lists/{listId}",
        "/crm/v3/properties",
    )
    used = {
        "contacts.v3.json": [("post", f"{contacts}/read"), ("post", f"{contacts}/update")],
        "lists.v3.json": [("get", lists), ("get", f"{lists}/memberships")],
        "properties.v3.json": [
            ("get", f"{properties}/{{objectType}}"),
            ("post", f"{properties}/{{objectType}}"),
            ("post", f"{properties}/{{objectType}}/groups"),
        ],
        "exports.v3.json": [
            ("post", "/crm/v3/exports/export/async"),
            ("get", "/crm/v3/exports/export/async/tasks/{taskId}/status"),
        ],
        "imports.v3.json": [
            ("post", "/crm/v3/imports"),
            ("get", "/crm/v3/imports/{importId}"),
            ("get", "/crm/v3/imports/{importId}/errors"),
        ],
    }
    for name, operations in used.items():
        spec = json.loads((hubspot_specs_dir / name).read_text())
        for method, path in operations:
            security = spec["paths"][path][method].get("security", spec.get("security", []))
            accepted = {
                scope for requirement in security for scopes in requirement.values() for scope in scopes
            }
            assert accepted & set(SCOPES), (name, method, path)


# ---- HubSpot --------------------------------------------------------------------------------------


def test_hubspot_install_refresh_and_revoke(hubspot_app: SandboxServer) -> None:
    settings = hubspot_settings(hubspot_app.url)
    grant = hubspot_install(settings, hubspot_app.url, "70001")
    assert grant.account_id == "70001" and grant.refresh_token and grant.expires_at
    info = requests.get(f"{hubspot_app.url}/oauth/v1/access-tokens/{grant.access_token}", timeout=10).json()
    assert str(info["hub_id"]) == "70001"
    assert set(SCOPES) <= set(info["scopes"])

    renewed = HUBSPOT_OAUTH.refresh(settings, grant.refresh_token or "")
    assert renewed.access_token != grant.access_token and renewed.expires_at
    assert renewed.refresh_token in (None, grant.refresh_token)  # HubSpot keeps the refresh token

    HUBSPOT_OAUTH.revoke(settings, grant.refresh_token or "")
    HUBSPOT_OAUTH.revoke(settings, grant.refresh_token or "")  # already gone: nothing to do
    with pytest.raises(RefreshRefused) as refused:
        HUBSPOT_OAUTH.refresh(settings, grant.refresh_token or "")
    assert refused.value.code == "hubspot_refresh_refused" and "BAD_REFRESH_TOKEN" in refused.value.message
    assert shows_no_secret(refused.value, grant.refresh_token, HS_CLIENT_SECRET)
    counts = control(hubspot_app.url, "/_sandbox/oauth", account="70001")
    assert (counts["code_grants"], counts["refreshes"], counts["revoked"]) == (1, 1, 1)


def test_hubspot_code_is_single_use_and_refusals_show_no_secret(hubspot_app: SandboxServer) -> None:
    settings = hubspot_settings(hubspot_app.url)
    control(hubspot_app.url, "/_sandbox/oauth", {"next_account": "70002"})
    code = consent(HUBSPOT_OAUTH.authorize_url(settings, REDIRECT, "s", None))["code"]
    HUBSPOT_OAUTH.exchange_code(settings, code, REDIRECT, None)
    with pytest.raises(ConnectorError) as replayed:
        HUBSPOT_OAUTH.exchange_code(settings, code, REDIRECT, None)
    assert replayed.value.code == "hubspot_oauth_refused" and "BAD_AUTH_CODE" in replayed.value.message
    assert shows_no_secret(replayed.value, code, HS_CLIENT_SECRET)

    wrong_secret = hubspot_settings(hubspot_app.url, hubspot_client_secret="not-the-app-secret")
    other = consent(HUBSPOT_OAUTH.authorize_url(settings, REDIRECT, "s", None))["code"]
    with pytest.raises(ConnectorError) as refused:
        HUBSPOT_OAUTH.exchange_code(wrong_secret, other, REDIRECT, None)
    assert not isinstance(refused.value, TransientError)
    assert shows_no_secret(refused.value, other, "not-the-app-secret")


def test_hubspot_denied_consent_comes_back_as_an_error(hubspot_app: SandboxServer) -> None:
    control(hubspot_app.url, "/_sandbox/oauth", {"deny_next": True})
    back = consent(HUBSPOT_OAUTH.authorize_url(hubspot_settings(hubspot_app.url), REDIRECT, "st", None))
    assert back == {"error": "access_denied", "state": "st"}


def test_hubspot_portal_from_the_token_info_when_the_answer_has_no_hub_id(hubspot_app: SandboxServer) -> None:
    from connector.crm.hubspot.oauth import _token_portal
    from connector.crm.hubspot.settings import HubSpotSettings

    settings = hubspot_settings(hubspot_app.url)
    grant = hubspot_install(settings, hubspot_app.url, "70003")
    portal, _domain = _token_portal(settings.section(HubSpotSettings), grant.access_token)
    assert portal == "70003"
    with pytest.raises(ConnectorError) as unknown:
        _token_portal(settings.section(HubSpotSettings), "not-a-token-we-issued")
    assert "not-a-token-we-issued" not in str(unknown.value)


def test_a_crm_that_does_not_answer_is_transient() -> None:
    dead = closed_port_url()
    with pytest.raises(TransientError) as hub:
        HUBSPOT_OAUTH.refresh(hubspot_settings(dead), "refresh-token-value")
    assert hub.value.code == "hubspot_oauth_unavailable"
    with pytest.raises(TransientError) as sf:
        SALESFORCE_OAUTH.exchange_code(salesforce_settings(dead), "code-value", SF_REDIRECT, "verifier")
    assert sf.value.code == "salesforce_oauth_unavailable"


def test_hubspot_api_uses_the_installed_portals_token(hubspot_app: SandboxServer) -> None:
    from connector.crm.hubspot.api import HubSpotApi

    settings = hubspot_settings(hubspot_app.url)
    grant = hubspot_install(settings, hubspot_app.url, "70004")
    seed = {"lists": [{"listId": "41", "name": "B", "contactIds": []}]}
    control(hubspot_app.url, "/_sandbox/seed", seed, "70004")
    tokens = HeldTokens(HUBSPOT_OAUTH, settings, grant)
    limiter = redis.Redis.from_url(REDIS_TEST_URL)
    api = HubSpotApi(settings, limiter, account=Account(connection_id=9, external_id="70004", tokens=tokens))
    assert api.limiter.key == "connector:ratelimit:hubspot:70004"  # each portal its own 100 per 10 s
    assert api.call(api.lists.get_by_id, "41").list.name == "B"
    # The env portal has no list 41: the OAuth token reached portal 70004 only.
    env_api = HubSpotApi(settings_with(settings, hubspot_access_token=HUBSPOT_TOKEN), limiter)
    with pytest.raises(ConnectorError):
        env_api.call(env_api.lists.get_by_id, "41")


# ---- Salesforce -----------------------------------------------------------------------------------


def test_salesforce_install_refresh_and_revoke(salesforce_app: SandboxServer) -> None:
    settings = salesforce_settings(salesforce_app.url)
    org = "00D5g000004OTHEEA4"
    grant = salesforce_install(settings, salesforce_app.url, org)
    assert grant.account_id == org and grant.refresh_token
    assert grant.instance_url == salesforce_app.url and grant.expires_at is None

    renewed = SALESFORCE_OAUTH.refresh(settings, grant.refresh_token or "")
    assert renewed.access_token != grant.access_token and renewed.account_id == ""

    SALESFORCE_OAUTH.revoke(settings, grant.refresh_token or "")
    SALESFORCE_OAUTH.revoke(settings, grant.refresh_token or "")  # already gone: nothing to do
    with pytest.raises(RefreshRefused) as refused:
        SALESFORCE_OAUTH.refresh(settings, grant.refresh_token or "")
    assert refused.value.code == "salesforce_refresh_refused" and "invalid_grant" in refused.value.message
    assert shows_no_secret(refused.value, grant.refresh_token, SF_CLIENT_SECRET)
    counts = control(salesforce_app.url, "/_sandbox/oauth", account=org)
    assert (counts["code_grants"], counts["refreshes"]) == (1, 1) and counts["revoked"] >= 1


def test_salesforce_exchange_needs_the_pkce_verifier(salesforce_app: SandboxServer) -> None:
    settings = salesforce_settings(salesforce_app.url)
    _verifier, challenge = pkce()
    code = consent(SALESFORCE_OAUTH.authorize_url(settings, SF_REDIRECT, "s", challenge))["code"]
    with pytest.raises(ConnectorError) as refused:
        SALESFORCE_OAUTH.exchange_code(settings, code, SF_REDIRECT, "a-verifier-of-another-install")
    assert refused.value.code == "salesforce_oauth_refused" and "invalid_grant" in refused.value.message
    assert shows_no_secret(refused.value, code, SF_CLIENT_SECRET, "a-verifier-of-another-install")


def test_salesforce_org_comes_from_the_identity_url() -> None:
    assert org_of_identity("https://login.salesforce.com/id/00D5g000004ABCDEAV/0055g00000AAAAAAAA") == (
        "00D5g000004ABCDEAV"
    )
    for wrong in (None, "https://login.salesforce.com/id/005xx/abc", "https://x/id/", "00D5g000004ABCDEAV"):
        with pytest.raises(ConnectorError):
            org_of_identity(wrong)


def test_salesforce_api_reaches_the_installed_org(salesforce_app: SandboxServer) -> None:
    from connector.crm.salesforce.api import SalesforceApi

    settings = salesforce_settings(salesforce_app.url)
    org = "00D5g000004THIREA4"
    grant = salesforce_install(settings, salesforce_app.url, org)
    control(salesforce_app.url, "/_sandbox/seed", {"contacts": [{"Email": "b@example.com"}]}, org)
    tokens = HeldTokens(SALESFORCE_OAUTH, settings, grant)
    account = Account(connection_id=3, external_id=org, tokens=tokens, instance_url=grant.instance_url)
    api = SalesforceApi(settings, sleep=lambda _: None, account=account)
    rows = api.query("SELECT Id, Email FROM Contact")["records"]
    assert [row["Email"] for row in rows] == ["b@example.com"]
    with pytest.raises(ConfigError):
        SalesforceApi(settings, account=Account(connection_id=3, external_id=org, tokens=tokens))
