"""HubSpot's OAuth endpoints, as the sandbox serves them (one server stands for app.hubspot.com too).

- GET /oauth/authorize?client_id&redirect_uri&scope&state: the consent page, which consents at
  once: 302 to `redirect_uri?code=<code>&state=<state>` for the portal POST /_sandbox/oauth's
  `next_account` names (default: the default portal), or `?error=access_denied&state=` once after
  `deny_next`. An unknown client_id (HUBSPOT_CLIENT_ID when set) or no redirect_uri: a 400 page.
- POST /oauth/v1/token (form; specs/hubspot/oauth.v1.json): grant_type=authorization_code
  (client_id, client_secret, redirect_uri, code) or refresh_token (client_id, client_secret,
  refresh_token) -> {"access_token", "refresh_token", "expires_in", "token_type": "bearer",
  "token_use": "access_token", "hub_id", "user_id", "scopes"}; refused -> 400 {"status":
  "BAD_AUTH_CODE" | "BAD_REFRESH_TOKEN" | "BAD_CLIENT_ID" | "BAD_REDIRECT_URI" | "BAD_GRANT_TYPE",
  "message", "correlationId", "category" (= status)}.
- GET /oauth/v1/access-tokens/<token>: its portal (`hub_id`), user, scopes, seconds left
  (`expires_in`, 0 once expired); unknown -> 404 OBJECT_NOT_FOUND.
- GET /oauth/v1/refresh-tokens/<token>: its portal, user, scopes, client_id; unknown or
  deleted -> 404.
- DELETE /oauth/v1/refresh-tokens/<token>: 204, and the token is refused from then on; unknown
  -> 404.

Requests and answers under /oauth/v1/ are checked against the specs like the API's
(connector/sandbox/hubspot.py); the bookkeeping is connector/sandbox/hubspot_tokens.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import Blueprint, Response, current_app, redirect, request
from flask.typing import ResponseReturnValue
from markupsafe import escape

from connector.sandbox.hubspot_errors import not_found
from connector.sandbox.hubspot_tokens import (
    APP_ID,
    USER,
    USER_ID,
    Grant,
    Issued,
    OAuthAuthority,
    OAuthRefusal,
)

oauth = Blueprint("hubspot_oauth", __name__)


def oauth_authority() -> OAuthAuthority:
    return current_app.extensions["hubspot_oauth"]


def with_query(url: str, params: dict[str, str]) -> str:
    """`url` with `params` added to the query it already has."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    return urlunsplit(parts._replace(query=query))


@oauth.get("/oauth/authorize")
def authorize() -> ResponseReturnValue:
    client_id = request.args.get("client_id", "")
    redirect_uri = request.args.get("redirect_uri", "")
    problem = oauth_authority().consent_problem(client_id, redirect_uri)
    if problem is not None:
        page = f"<html><body><h1>Authorization failed</h1><p>{escape(problem)}</p></body></html>"
        return Response(page, status=400, mimetype="text/html")
    scopes = tuple(request.args.get("scope", "").split())
    code = oauth_authority().authorize(client_id, redirect_uri, scopes)
    params = {"code": code} if code is not None else {"error": "access_denied"}
    if "state" in request.args:
        params["state"] = request.args["state"]
    return redirect(with_query(redirect_uri, params), 302)


@oauth.post("/oauth/v1/token")
def token() -> ResponseReturnValue:
    # HubSpot takes client_secret and refresh_token in the query too (the spec declares both).
    fields = {**request.args.to_dict(), **request.form.to_dict()}
    try:
        issued = oauth_authority().token(fields)
    except OAuthRefusal as refusal:
        return refusal.body(), 400
    return _token_answer(issued)


def _token_answer(issued: Issued) -> dict[str, Any]:
    """The spec's AccessTokenResponse."""
    return {
        "access_token": issued.access_token,
        "refresh_token": issued.refresh_token,
        "expires_in": issued.expires_in,
        "token_type": "bearer",
        "token_use": "access_token",
        "hub_id": int(issued.grant.account),
        "user_id": USER_ID,
        "scopes": list(issued.grant.scopes),
    }


def _token_info(token: str, grant: Grant, **extra: Any) -> dict[str, Any]:
    return {
        "token": token,
        "user": USER,
        "user_id": USER_ID,
        "hub_id": int(grant.account),
        "hub_domain": f"portal-{grant.account}.sandbox.hubspot.local",
        "scopes": list(grant.scopes),
        **extra,
    }


@oauth.get("/oauth/v1/access-tokens/<token>")
def access_token_info(token: str) -> ResponseReturnValue:
    authority = oauth_authority()
    held = authority.access(token)
    if held is None:
        raise not_found("access token not found")
    expires_in = authority.seconds_left(held)
    return _token_info(token, held.grant, token_type="access", expires_in=expires_in, app_id=APP_ID)


@oauth.get("/oauth/v1/refresh-tokens/<token>")
def refresh_token_info(token: str) -> ResponseReturnValue:
    held = oauth_authority().refresh_token(token)
    if held is None or held.revoked:
        raise not_found("refresh token not found")
    return _token_info(token, held.grant, token_type="refresh", client_id=held.grant.client_id)


@oauth.delete("/oauth/v1/refresh-tokens/<token>")
def delete_refresh_token(token: str) -> ResponseReturnValue:
    if not oauth_authority().revoke(token):
        raise not_found("refresh token not found")
    return Response(status=204)
