"""The OAuth endpoints of the Salesforce sandbox, under /services/oauth2/ (forms in, JSON out):

- GET authorize?response_type=code&client_id&redirect_uri&state&code_challenge&code_challenge_method=S256
  [&scope]: the consent page, which at once redirects (302) to `redirect_uri?code=<code>&state=<state>`
  for the org POST /_sandbox/oauth {"next_account"} names (the default org unless named). It
  redirects with `error`, `error_description` (and `state`) instead for: unsupported_response_type
  ("response type not supported"), invalid_request ("missing required code challenge"; "invalid code
  challenge method": only S256 is), access_denied ("end-user denied authorization", once after
  {"deny_next": true}). A client_id other than SALESFORCE_CLIENT_ID (when set) or a redirect_uri that
  is not an absolute http(s) URL answer 400 {"error": "invalid_client_id" | "redirect_uri_missing",
  "error_description"} and do not redirect.
- POST token, by grant_type (client_id and client_secret as form fields or HTTP Basic, checked
  against SALESFORCE_CLIENT_ID / SALESFORCE_CLIENT_SECRET when set, else any non-empty ones):
  - client_credentials: a session for the default org, which expires only by POST /_sandbox/config
    {"expire_token": true};
  - authorization_code (code, redirect_uri, code_verifier): tokens for the code's org;
  - refresh_token (refresh_token): a new access token for the refresh token's org, which keeps its
    refresh token (Salesforce does not rotate them).
  Answer: {"access_token", "refresh_token" (code grants, when the scope asked for is absent or has
  refresh_token, offline_access or full), "instance_url" (this sandbox's URL), "id": "<this sandbox's
  URL>/id/<18-char org id>/<18-char user id>", "token_type": "Bearer", "issued_at" (epoch ms),
  "signature" (base64 HMAC-SHA256 of id + issued_at keyed by the client secret), "scope" (code and
  refresh grants)}. OAuth access tokens expire `token_ttl_seconds` after issue (7200 unless set).
  Errors, 400 {"error", "error_description"}: unsupported_grant_type ("grant type not supported");
  invalid_client_id ("client identifier invalid"); invalid_client ("invalid client credentials");
  invalid_grant with "expired authorization code" (unknown, used — any exchange attempt uses a code
  up — or older than 15 minutes), "authentication failure" (code issued to another client),
  "redirect_uri must match configuration", "invalid code verifier", or "expired access/refresh token"
  (refresh token unknown, revoked, or of another client).
- POST revoke (token=<refresh or access token>): 200 with an empty body. A revoked refresh token is
  refused from then on, and so are the access tokens it issued; a revoked access token is refused.
  An unknown token: 400 {"error": "unsupported_token_type", "error_description": "this token type is
  not supported"}.

The controls (POST/GET /_sandbox/oauth) are in salesforce_control.py, the memory in
salesforce_tokens.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, jsonify, redirect, request
from flask.typing import ResponseReturnValue

from connector.sandbox.salesforce_orgs import OrgDirectory, org_directory
from connector.sandbox.salesforce_state import SandboxState
from connector.sandbox.salesforce_tokens import DEFAULT_SCOPE, GrantRefused, Issued, access_token_for

oauth = Blueprint("salesforce_oauth", __name__, url_prefix="/services/oauth2")


def requested_org(directory: OrgDirectory) -> SandboxState:
    """The org an OAuth request concerns: the next consent's, or the org of the code or token it names."""
    if request.path.rstrip("/").endswith("/authorize"):
        with directory.lock:
            return directory.org(directory.oauth.next_account)
    form = request.form
    return directory.holder_of(form.get("code") or form.get("refresh_token") or form.get("token") or "")


def _oauth_error(code: str, description: str) -> tuple[Response, int]:
    return jsonify({"error": code, "error_description": description}), 400


@oauth.errorhandler(GrantRefused)
def _grant_refused(exc: GrantRefused) -> ResponseReturnValue:
    return _oauth_error("invalid_grant", str(exc))


def _matches(given: str, expected: str | None) -> bool:
    """A non-empty value equal to the configured one (any, when none is configured)."""
    return bool(given) and (expected is None or hmac.compare_digest(given.encode(), expected.encode()))


# ---- consent ----


@oauth.get("/authorize")
def authorize() -> ResponseReturnValue:
    args = request.args
    client_id, redirect_uri = args.get("client_id", ""), args.get("redirect_uri", "")
    if not _matches(client_id, org_directory().template.client_id):
        return _oauth_error("invalid_client_id", "client identifier invalid")
    target = urlsplit(redirect_uri)
    if target.scheme not in ("http", "https") or not target.netloc:
        return _oauth_error("redirect_uri_missing", "redirect_uri must be an absolute http(s) URL")
    refusal = _consent_refusal()
    if refusal is not None:
        return _back(redirect_uri, error=refusal[0], error_description=refusal[1], state=args.get("state"))
    directory = org_directory()
    with directory.lock:
        code = directory.oauth.new_code(
            client_id, redirect_uri, args["code_challenge"], args.get("scope") or DEFAULT_SCOPE
        )
    return _back(redirect_uri, code=code, state=args.get("state"))


def _consent_refusal() -> tuple[str, str] | None:
    """Why the consent redirects back with an error (a planned denial is used up here), if it does."""
    args = request.args
    if args.get("response_type") != "code":
        return "unsupported_response_type", "response type not supported"
    if not args.get("code_challenge"):
        return "invalid_request", "missing required code challenge"
    if args.get("code_challenge_method", "S256") != "S256":
        return "invalid_request", "invalid code challenge method"
    directory = org_directory()
    with directory.lock:
        if directory.oauth.take_denial():
            return "access_denied", "end-user denied authorization"
    return None


def _back(redirect_uri: str, **params: str | None) -> ResponseReturnValue:
    query = urlencode({name: value for name, value in params.items() if value is not None})
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return redirect(f"{redirect_uri}{separator}{query}", code=302)


# ---- tokens ----


@oauth.post("/token")
def issue_token() -> ResponseReturnValue:
    grant = GRANTS.get(request.form.get("grant_type", ""))
    if grant is None:
        return _oauth_error("unsupported_grant_type", "grant type not supported")
    client_id, client_secret = request.form.get("client_id", ""), request.form.get("client_secret", "")
    if request.authorization is not None and request.authorization.type == "basic":
        client_id = request.authorization.username or client_id
        client_secret = request.authorization.password or client_secret
    template = org_directory().template
    if not _matches(client_id, template.client_id):
        return _oauth_error("invalid_client_id", "client identifier invalid")
    if not _matches(client_secret, template.client_secret):
        return _oauth_error("invalid_client", "invalid client credentials")
    return grant(client_id, client_secret)


def _client_credentials_grant(client_id: str, client_secret: str) -> Response:
    """A session for the default org, kept with the configured one (expired by /_sandbox/config)."""
    state = org_directory().default
    token = access_token_for(state.config.org_id)
    with state.lock:
        state.tokens.issued.add(token)
    return jsonify(_answer(state, token, client_secret))


def _code_grant(client_id: str, client_secret: str) -> Response:
    form = request.form
    directory = org_directory()
    with directory.lock:
        issued = directory.oauth.redeem(
            form.get("code", ""), client_id, form.get("redirect_uri", ""), form.get("code_verifier", "")
        )
    return _issued_answer(directory, issued, client_secret)


def _refresh_grant(client_id: str, client_secret: str) -> Response:
    directory = org_directory()
    with directory.lock:
        issued = directory.oauth.renew(request.form.get("refresh_token", ""), client_id)
    return _issued_answer(directory, issued, client_secret)


GRANTS: dict[str, Callable[[str, str], Response]] = {
    "client_credentials": _client_credentials_grant,
    "authorization_code": _code_grant,
    "refresh_token": _refresh_grant,
}


def _issued_answer(directory: OrgDirectory, issued: Issued, client_secret: str) -> Response:
    state = directory.org(issued.org_id)
    return jsonify(
        _answer(
            state, issued.access_token, client_secret, refresh_token=issued.refresh_token, scope=issued.scope
        )
    )


def _answer(
    state: SandboxState,
    token: str,
    client_secret: str,
    *,
    refresh_token: str | None = None,
    scope: str | None = None,
) -> dict[str, Any]:
    """Salesforce's token answer; the identity URL names the org and its user in 18 characters."""
    instance_url = request.host_url.rstrip("/")
    identity = f"{instance_url}/id/{state.config.org_id}/{state.user_id}"
    issued_at = str(int(time.time() * 1000))
    signature = hmac.new(client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
    answer: dict[str, Any] = {"access_token": token}
    if refresh_token is not None:
        answer["refresh_token"] = refresh_token
    answer.update(
        instance_url=instance_url,
        id=identity,
        token_type="Bearer",
        issued_at=issued_at,
        signature=base64.b64encode(signature).decode(),
    )
    if scope is not None:
        answer["scope"] = scope
    return answer


# ---- revocation ----


@oauth.post("/revoke")
def revoke() -> ResponseReturnValue:
    directory = org_directory()
    with directory.lock:
        revoked = directory.oauth.revoke(request.form.get("token", ""))
    if not revoked:
        return _oauth_error("unsupported_token_type", "this token type is not supported")
    return Response(status=200)
