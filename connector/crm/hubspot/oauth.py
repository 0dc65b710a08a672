"""HubSpot's OAuth app: the install consent URL, the code exchange, refresh and revoke (`OAUTH`).

The consent page is `$HUBSPOT_AUTH_URL/oauth/authorize`; tokens come from
`$HUBSPOT_BASE_URL/oauth/v1/token` (specs/hubspot/oauth.v1.json): an access token of 30 minutes
and a refresh token that does not change when it is used. The portal is learnt from the token
answer's `hub_id`, or else from the token's own info (`GET /oauth/v1/access-tokens/<token>`),
never from the browser. A refresh token HubSpot refuses (`BAD_REFRESH_TOKEN`: revoked, app
uninstalled) is a RefreshRefused: the connection needs a new install.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode

from connector.config import Settings
from connector.crm.base import OAuthApp, OAuthGrant, RefreshRefused
from connector.crm.hubspot.settings import HubSpotSettings
from connector.crm.oauth_calls import TokenAnswer, send
from connector.errors import ConfigError, ConnectorError
from connector.logs import add_secret

# What the connector's calls need, by the scopes HubSpot's specs name for them: contacts read
# (batch read, webhooks' contact events) and write (batch update), lists read (list size and
# memberships), contact property definitions (the flag properties and their group), imports and
# exports (the bulk paths). `oauth` is required of every OAuth app.
SCOPES = (
    "oauth",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.lists.read",
    "crm.schemas.contacts.write",
    "crm.import",
    "crm.export",
)
SERVICE = "HubSpot"
CODE = "hubspot_oauth"
REFUSED_REFRESH = "BAD_REFRESH_TOKEN"


def missing(settings: Settings) -> str | None:
    own = settings.section(HubSpotSettings)
    unset = [
        name
        for name, value in (
            ("HUBSPOT_CLIENT_ID", own.client_id),
            ("HUBSPOT_CLIENT_SECRET", own.client_secret),
        )
        if not value
    ]
    if not unset:
        return None
    return f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set (the HubSpot app)"


def authorize_url(settings: Settings, redirect_uri: str, state: str, code_challenge: str | None) -> str:
    own = settings.section(HubSpotSettings)
    query = urlencode(
        {
            "client_id": own.client_id or "",
            "redirect_uri": redirect_uri,
            "scope": " ".join(SCOPES),
            "state": state,
        },
        quote_via=quote,
    )
    return f"{own.auth_url.rstrip('/')}/oauth/authorize?{query}"


def exchange_code(settings: Settings, code: str, redirect_uri: str, code_verifier: str | None) -> OAuthGrant:
    own = _app(settings)
    form = {
        "grant_type": "authorization_code",
        "client_id": own.client_id or "",
        "client_secret": own.client_secret or "",
        "redirect_uri": redirect_uri,
        "code": code,
    }
    answer = _token_request(own, form, secrets=(own.client_secret, code))
    if answer.status != 200:
        raise ConnectorError(
            f"{CODE}_refused",
            f"HubSpot refused the authorization code ({_error(answer)}): start the install again",
        )
    grant = _grant(answer, refresh_required=True)
    hub_id = _hub_id(answer.body.get("hub_id"))
    name = None
    if hub_id is None:
        hub_id, name = _token_portal(own, grant.access_token)
    return OAuthGrant(
        access_token=grant.access_token,
        refresh_token=grant.refresh_token,
        expires_at=grant.expires_at,
        account_id=hub_id,
        account_name=name,
    )


def refresh(settings: Settings, refresh_token: str) -> OAuthGrant:
    own = _app(settings)
    if not refresh_token:
        raise RefreshRefused("hubspot_refresh_refused", "the connection holds no HubSpot refresh token")
    form = {
        "grant_type": "refresh_token",
        "client_id": own.client_id or "",
        "client_secret": own.client_secret or "",
        "refresh_token": refresh_token,
    }
    answer = _token_request(own, form, secrets=(own.client_secret, refresh_token))
    if answer.status == 200:
        return _grant(answer, refresh_required=False)
    status = answer.says("status", "error", default="")
    if answer.status in (400, 401) and status == REFUSED_REFRESH:
        raise RefreshRefused(
            "hubspot_refresh_refused", f"HubSpot refused the refresh token ({_error(answer)})"
        )
    raise ConnectorError(f"{CODE}_refused", f"HubSpot refused the token refresh ({_error(answer)})")


def revoke(settings: Settings, refresh_token: str) -> None:
    """Delete the refresh token at HubSpot; one HubSpot no longer knows counts as revoked."""
    own = settings.section(HubSpotSettings)
    if not refresh_token:
        return
    answer = send(
        "DELETE",
        f"{own.base_url.rstrip('/')}/oauth/v1/refresh-tokens/{quote(refresh_token, safe='')}",
        service=SERVICE,
        setting="HUBSPOT_BASE_URL",
        code=CODE,
        secrets=(refresh_token,),
    )
    gone = answer.status == 404 or answer.says("status", default="") == REFUSED_REFRESH
    if answer.status not in (200, 204) and not gone:
        raise ConnectorError(
            f"{CODE}_revoke_refused", f"HubSpot refused to revoke the token ({_error(answer)})"
        )


def _app(settings: Settings) -> HubSpotSettings:
    own = settings.section(HubSpotSettings)
    why = missing(settings)
    if why is not None:
        raise ConfigError("hubspot_oauth_not_configured", why)
    return own


def _token_request(
    own: HubSpotSettings, form: dict[str, str], secrets: tuple[str | None, ...]
) -> TokenAnswer:
    return send(
        "POST",
        f"{own.base_url.rstrip('/')}/oauth/v1/token",
        service=SERVICE,
        setting="HUBSPOT_BASE_URL",
        code=CODE,
        data=form,
        secrets=secrets,
    )


def _grant(answer: TokenAnswer, *, refresh_required: bool) -> OAuthGrant:
    access_token = answer.text("access_token")
    refresh_token = answer.text("refresh_token")
    if not access_token or (refresh_required and not refresh_token):
        raise ConnectorError(f"{CODE}_unreadable", "HubSpot's token answer has no access or refresh token")
    add_secret(access_token, refresh_token)
    return OAuthGrant(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=_expires_at(answer.body.get("expires_in")),
        account_id="",
    )


def _expires_at(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        return time.time() + float(raw)
    except ValueError:
        return None


def _hub_id(raw: Any) -> str | None:
    text = str(raw).strip() if raw is not None and not isinstance(raw, bool) else ""
    return text if text.isdigit() else None


def _token_portal(own: HubSpotSettings, access_token: str) -> tuple[str, str | None]:
    """(portal id, its domain) from the access token's own info, when the token answer had no hub_id."""
    answer = send(
        "GET",
        f"{own.base_url.rstrip('/')}/oauth/v1/access-tokens/{quote(access_token, safe='')}",
        service=SERVICE,
        setting="HUBSPOT_BASE_URL",
        code=CODE,
        secrets=(access_token,),
    )
    hub_id = _hub_id(answer.body.get("hub_id")) if answer.status == 200 else None
    if hub_id is None:
        raise ConnectorError(
            f"{CODE}_unreadable", f"HubSpot did not say which portal the token is for ({_error(answer)})"
        )
    return hub_id, answer.text("hub_domain")


def _error(answer: TokenAnswer) -> str:
    status = answer.says("status", "category", "error", default=f"HTTP {answer.status}")
    message = answer.says("message", "error_description", default="")
    return f"{status}: {message}" if message else status


OAUTH = OAuthApp(
    missing=missing,
    authorize_url=authorize_url,
    pkce=False,
    exchange_code=exchange_code,
    refresh=refresh,
    revoke=revoke,
)
