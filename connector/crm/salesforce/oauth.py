"""Salesforce's OAuth app (the connected app): web-server flow with PKCE, refresh, revoke (`OAUTH`).

Consent at `$SALESFORCE_LOGIN_URL/services/oauth2/authorize` (`code_challenge_method=S256`); the code
is exchanged, and sessions refreshed, at `$SALESFORCE_LOGIN_URL/services/oauth2/token`; a token is
revoked at `.../services/oauth2/revoke`. The org is learnt from the answer's identity URL
(`…/id/<org id>/<user id>`) and the API host from its `instance_url`, never from the browser.
Salesforce does not say when a session ends: the connector refreshes on INVALID_SESSION_ID
(salesforce/api.py). A refused refresh token (`invalid_grant`) is a RefreshRefused.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode, urlsplit

from connector.config import Settings
from connector.crm.base import OAuthApp, OAuthGrant, RefreshRefused
from connector.crm.oauth_calls import TokenAnswer, send
from connector.crm.salesforce.settings import SalesforceSettings
from connector.errors import ConfigError, ConnectorError
from connector.logs import add_secret

SERVICE = "Salesforce"
CODE = "salesforce_oauth"
SETTING = "SALESFORCE_LOGIN_URL"
# `api` for REST and Bulk API 2.0, `refresh_token` for a refresh token at all.
SCOPES = ("api", "refresh_token")
REFUSED_REFRESH = "invalid_grant"
# What the revoke endpoint answers for a token it does not know (already revoked): nothing left to do.
UNKNOWN_TOKEN = ("unsupported_token_type", "invalid_token", REFUSED_REFRESH)
ORG_ID = re.compile(r"00D[0-9A-Za-z]{12}(?:[0-9A-Za-z]{3})?")


def missing(settings: Settings) -> str | None:
    own = settings.section(SalesforceSettings)
    unset = [
        name
        for name, value in (
            ("SALESFORCE_CLIENT_ID", own.client_id),
            ("SALESFORCE_CLIENT_SECRET", own.client_secret),
        )
        if not value
    ]
    if not unset:
        return None
    return (
        f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set (the Salesforce connected app)"
    )


def authorize_url(settings: Settings, redirect_uri: str, state: str, code_challenge: str | None) -> str:
    own = settings.section(SalesforceSettings)
    if not code_challenge:
        raise ValueError("a Salesforce install needs a PKCE code challenge")
    query = urlencode(
        {
            "response_type": "code",
            "client_id": own.client_id or "",
            "redirect_uri": redirect_uri,
            "scope": " ".join(SCOPES),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        },
        quote_via=quote,
    )
    return f"{own.login_url.rstrip('/')}/services/oauth2/authorize?{query}"


def exchange_code(settings: Settings, code: str, redirect_uri: str, code_verifier: str | None) -> OAuthGrant:
    own = _app(settings)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": own.client_id or "",
        "client_secret": own.client_secret or "",
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier or "",
    }
    answer = _token_request(own, form, secrets=(own.client_secret, code, code_verifier))
    if answer.status != 200:
        raise ConnectorError(
            f"{CODE}_refused",
            f"Salesforce refused the authorization code ({_error(answer)}): start the install again",
        )
    if not answer.text("refresh_token"):
        raise ConnectorError(
            f"{CODE}_no_refresh_token",
            "Salesforce gave no refresh token: allow the connected app the refresh_token scope",
        )
    return _grant(own, answer)


def refresh(settings: Settings, refresh_token: str) -> OAuthGrant:
    own = _app(settings)
    if not refresh_token:
        raise RefreshRefused("salesforce_refresh_refused", "the connection holds no Salesforce refresh token")
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": own.client_id or "",
        "client_secret": own.client_secret or "",
    }
    answer = _token_request(own, form, secrets=(own.client_secret, refresh_token))
    if answer.status == 200:
        return _grant(own, answer, refreshing=True)
    if answer.status in (400, 401) and answer.says("error", default="") == REFUSED_REFRESH:
        raise RefreshRefused(
            "salesforce_refresh_refused", f"Salesforce refused the refresh token ({_error(answer)})"
        )
    raise ConnectorError(f"{CODE}_refused", f"Salesforce refused the session refresh ({_error(answer)})")


def revoke(settings: Settings, refresh_token: str) -> None:
    """Revoke the refresh token (and the sessions it issued); an unknown one counts as revoked."""
    own = settings.section(SalesforceSettings)
    if not refresh_token:
        return
    answer = send(
        "POST",
        f"{own.login_url.rstrip('/')}/services/oauth2/revoke",
        service=SERVICE,
        setting=SETTING,
        code=CODE,
        data={"token": refresh_token},
        secrets=(refresh_token,),
    )
    gone = answer.status == 400 and answer.says("error", default="") in UNKNOWN_TOKEN
    if answer.status != 200 and not gone:
        raise ConnectorError(
            f"{CODE}_revoke_refused", f"Salesforce refused to revoke the token ({_error(answer)})"
        )


def _app(settings: Settings) -> SalesforceSettings:
    why = missing(settings)
    if why is not None:
        raise ConfigError("salesforce_oauth_not_configured", why)
    return settings.section(SalesforceSettings)


def _token_request(
    own: SalesforceSettings, form: dict[str, str], secrets: tuple[str | None, ...]
) -> TokenAnswer:
    return send(
        "POST",
        f"{own.login_url.rstrip('/')}/services/oauth2/token",
        service=SERVICE,
        setting=SETTING,
        code=CODE,
        data=form,
        secrets=secrets,
    )


def _grant(own: SalesforceSettings, answer: TokenAnswer, *, refreshing: bool = False) -> OAuthGrant:
    access_token = answer.text("access_token")
    if not access_token:
        raise ConnectorError(f"{CODE}_unreadable", "Salesforce's token answer has no access token")
    refresh_token = answer.text("refresh_token")
    add_secret(access_token, refresh_token)
    instance_url = _instance_url(own, answer.text("instance_url"))
    if instance_url is None and not refreshing:
        raise ConnectorError(f"{CODE}_unreadable", "Salesforce's token answer has no instance_url")
    org_id = "" if refreshing else org_of_identity(answer.text("id"))
    return OAuthGrant(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=None,  # Salesforce does not say: a session ends by policy or inactivity
        account_id=org_id,
        account_name=urlsplit(instance_url).hostname if instance_url else None,
        instance_url=instance_url,
    )


def org_of_identity(identity_url: str | None) -> str:
    """The org id of an identity URL, `https://login.salesforce.com/id/<org id>/<user id>`."""
    parts = [part for part in urlsplit(identity_url or "").path.split("/") if part]
    if len(parts) >= 3 and parts[-3] == "id" and ORG_ID.fullmatch(parts[-2]):
        return parts[-2]
    raise ConnectorError(f"{CODE}_unreadable", "Salesforce's token answer names no org (its identity URL)")


def _instance_url(own: SalesforceSettings, raw: str | None) -> str | None:
    """The org's API host as answered: an http(s) origin; https when the login URL is https."""
    if raw is None:
        return None
    parts = urlsplit(raw)
    secure = urlsplit(own.login_url).scheme == "https"
    allowed = ("https",) if secure else ("https", "http")
    if parts.scheme not in allowed or not parts.hostname or "@" in parts.netloc:
        raise ConnectorError(f"{CODE}_unreadable", "Salesforce's token answer has an unusable instance_url")
    return f"{parts.scheme}://{parts.netloc}"


def _error(answer: TokenAnswer) -> str:
    code = answer.says("error", "errorCode", default=f"HTTP {answer.status}")
    description = answer.says("error_description", "message", default="")
    return f"{code}: {description}" if description else code


OAUTH = OAuthApp(
    missing=missing,
    authorize_url=authorize_url,
    pkce=True,
    exchange_code=exchange_code,
    refresh=refresh,
    revoke=revoke,
)
