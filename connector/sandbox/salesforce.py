"""A local Salesforce: the REST query, describe, sObject Collections and Bulk API 2.0 endpoints the
connector uses, with Salesforce's auth, API allocation and error answers.

`connector sandbox salesforce --port 8103` serves it; tests use `create_app()` with
`serve_in_thread`. Every request under /services/data/vXX.X/ goes through, in order:

1. counting (per "<METHOD> <route>", route = the URL rule, e.g. GET /services/data/v{version}/query);
2. auth: `Authorization: Bearer <session id>`, the session id being SALESFORCE_ACCESS_TOKEN at
   create time (any non-empty one when unset) or one issued by POST /services/oauth2/token, and
   not expired (POST /_sandbox/config {"expire_token": true}); else 401 INVALID_SESSION_ID;
3. the API version (31.0 to 64.0); else 404 NOT_FOUND;
4. the daily API allocation: each request counts; once it is used up, 403 REQUEST_LIMIT_EXCEEDED.
   Every answer carries `Sforce-Limit-Info: api-usage=N/M`;
5. injected faults (POST /_sandbox/faults);
6. the endpoint (salesforce_api.py: REST; salesforce_bulk.py: Bulk API 2.0).

POST /services/oauth2/token does the OAuth client-credentials flow: client_id and client_secret
(form fields or HTTP Basic) are checked against SALESFORCE_CLIENT_ID / SALESFORCE_CLIENT_SECRET
when those are set. GET /services/data/ (the versions list) needs no auth, as on Salesforce.
The control endpoints are described in connector/sandbox/salesforce_control.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time

import click
from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from connector.sandbox.salesforce_api import api, supported_version
from connector.sandbox.salesforce_bulk import advance_jobs, bulk
from connector.sandbox.salesforce_control import control
from connector.sandbox.salesforce_ids import KEY_PREFIXES, make_id, to_18
from connector.sandbox.salesforce_state import (
    SalesforceError,
    SandboxConfig,
    SandboxState,
    not_found,
    sandbox_state,
)
from connector.sandbox.server import serve_forever

API_PREFIX = "/services/data"
TOKEN_PATH = "/services/oauth2/token"
RULE_VARIABLE = re.compile(r"<(?:[^:>]+:)?([^>]+)>")
FAULT_ANSWERS = {
    "http_500": (
        500,
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact support: 1930233582-1 (-1)",
    ),
    "http_503": (503, "SERVER_UNAVAILABLE", "The server is temporarily unable to handle the request."),
    "request_limit": (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    # Same errorCode, but the org's concurrent long-running request limit: it clears in seconds.
    "concurrent_limit": (403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."),
}


def create_app(
    *,
    access_token: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    daily_api_limit: int = 100_000,
    bulk_delay: float = 1.0,
    org_id: str | None = None,
) -> Flask:
    """The sandbox app; credentials default to the SALESFORCE_* environment (read now, not per request)."""
    config = SandboxConfig(
        access_token=access_token or os.environ.get("SALESFORCE_ACCESS_TOKEN") or None,
        client_id=client_id or os.environ.get("SALESFORCE_CLIENT_ID") or None,
        client_secret=client_secret or os.environ.get("SALESFORCE_CLIENT_SECRET") or None,
        daily_api_limit=daily_api_limit,
        bulk_delay=bulk_delay,
    )
    configured_org = to_18(org_id or os.environ.get("SALESFORCE_ORG_ID") or "")
    if configured_org:
        config.org_id = configured_org
    app = Flask("salesforce_sandbox")
    app.url_map.strict_slashes = False  # simple-salesforce asks for query/ and limits/ with the slash
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's own
    app.json.sort_keys = False  # keep Salesforce's field order
    app.extensions["salesforce_sandbox"] = SandboxState(config)
    app.register_blueprint(api)
    app.register_blueprint(bulk)
    app.register_blueprint(control)
    app.add_url_rule(TOKEN_PATH, "oauth_token", _issue_token, methods=["POST"])
    app.before_request(_admit_request)
    app.after_request(_add_limit_info)
    app.register_error_handler(SalesforceError, _salesforce_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _route_name() -> str:
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    return f"{request.method} " + RULE_VARIABLE.sub(r"{\1}", rule)


def _admit_request() -> None:
    if not request.path.startswith((API_PREFIX, TOKEN_PATH)):
        return
    state = sandbox_state()
    route = _route_name()
    with state.lock:
        state.request_counts[route] += 1
    if request.path.rstrip("/") in (API_PREFIX, TOKEN_PATH):
        return
    _check_session(state)
    version = (request.view_args or {}).get("version")
    if version is not None and not supported_version(version):
        raise not_found()
    with state.lock:
        if not state.admit():
            raise SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        fault = state.faults.take(route)
        advance_jobs(state)
    if fault:
        raise SalesforceError(*FAULT_ANSWERS[fault])


def _check_session(state: SandboxState) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    with state.lock:
        good = scheme.lower() in ("bearer", "oauth") and state.tokens.accepts(token.strip())
    if not good:
        raise SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")


def _add_limit_info(response: Response) -> Response:
    if request.path.startswith(API_PREFIX + "/v"):
        state = sandbox_state()
        with state.lock:
            response.headers["Sforce-Limit-Info"] = state.limit_info()
    return response


def _issue_token() -> Response | tuple[Response, int]:
    """OAuth 2.0 client credentials: a new session id for the client, with the instance URL."""
    form = request.form
    if form.get("grant_type") != "client_credentials":
        return _oauth_error("unsupported_grant_type", "grant type not supported")
    client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
    if request.authorization is not None and request.authorization.type == "basic":
        client_id = request.authorization.username or client_id
        client_secret = request.authorization.password or client_secret
    state = sandbox_state()
    with state.lock:
        expected_id, expected_secret = state.config.client_id, state.config.client_secret
        org_id = state.config.org_id
        if not client_id or (expected_id is not None and not hmac.compare_digest(client_id, expected_id)):
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if not client_secret or (
            expected_secret is not None and not hmac.compare_digest(client_secret, expected_secret)
        ):
            return _oauth_error("invalid_client", "invalid client credentials")
        token = f"{org_id[:15]}!{secrets.token_urlsafe(48)}"
        state.tokens.issued.add(token)
    instance_url = request.host_url.rstrip("/")
    identity = f"{instance_url}/id/{org_id}/{make_id(KEY_PREFIXES['User'], 1)}"
    issued_at = str(int(time.time() * 1000))
    signature = hmac.new(client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
    return jsonify(
        {
            "access_token": token,
            "instance_url": instance_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": base64.b64encode(signature).decode(),
        }
    )


def _oauth_error(code: str, description: str) -> tuple[Response, int]:
    return jsonify({"error": code, "error_description": description}), 400


def _salesforce_error(exc: SalesforceError) -> tuple[Response, int]:
    return jsonify(exc.body()), exc.status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if not request.path.startswith("/services/"):
        return jsonify({"error": exc.description or exc.name}), status
    if status == 404:
        return jsonify(not_found().body()), 404
    if status == 405:
        allowed = ",".join(sorted(getattr(exc, "valid_methods", None) or []))
        body = [
            {
                "errorCode": "METHOD_NOT_ALLOWED",
                "message": f"HTTP Method '{request.method}' not allowed. Allowed are {allowed}",
            }
        ]
        return jsonify(body), 405
    return jsonify([{"errorCode": "UNKNOWN_EXCEPTION", "message": exc.description or exc.name}]), status


@click.command("salesforce")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8103, show_default=True, type=int)
@click.option("--daily-api-limit", default=100_000, show_default=True, type=int)
@click.option(
    "--bulk-delay",
    default=1.0,
    show_default=True,
    type=float,
    help="Seconds until a Bulk API 2.0 job completes.",
)
@click.option(
    "--generate", "generate_count", default=0, type=int, help="Generate a campaign of this many members."
)
def command(host: str, port: int, daily_api_limit: int, bulk_delay: float, generate_count: int) -> None:
    """Serve the Salesforce sandbox (session id: SALESFORCE_ACCESS_TOKEN, any when unset)."""
    app = create_app(daily_api_limit=daily_api_limit, bulk_delay=bulk_delay)
    if generate_count:
        with app.test_client() as client:
            answer = client.post(
                "/_sandbox/seed", json={"generate": {"campaign_members": generate_count}}
            ).get_json()
        click.echo(f"generated {generate_count} campaign members in campaign {answer['campaign_id']}")
    click.echo(f"Salesforce sandbox on http://{host}:{port}")
    serve_forever(app, host, port)
