"""A local Salesforce: the REST query, describe, sObject Collections and Bulk API 2.0 endpoints the
connector uses, with Salesforce's auth, OAuth flows, API allocation and error answers, for several
orgs (salesforce_orgs.py).

`connector sandbox salesforce --port 8103` serves it; tests use `create_app()` with
`serve_in_thread`. Every request under /services/data/vXX.X/ goes through, in order:

1. the org: the one an OAuth access token was issued for; for any other session id, the default
   org (SALESFORCE_ORG_ID, else 00DDn0000000001). Every route then uses that org's state only;
2. counting (per "<METHOD> <route>" in that org, route = the URL rule, e.g.
   GET /services/data/v{version}/query);
3. auth: `Authorization: Bearer <session id>`. For the default org, the session id is
   SALESFORCE_ACCESS_TOKEN at create time (any non-empty one when unset) or one issued by the
   client-credentials grant, not expired (POST /_sandbox/config {"expire_token": true}). An OAuth
   access token must be neither expired (token_ttl_seconds, or POST /_sandbox/oauth
   {"expire_tokens": true}) nor revoked. Else 401 INVALID_SESSION_ID "Session expired or invalid";
4. the API version (31.0 to 64.0); else 404 NOT_FOUND;
5. the org's daily API allocation: each request counts; once it is used up, 403
   REQUEST_LIMIT_EXCEEDED. Every answer carries `Sforce-Limit-Info: api-usage=N/M`;
6. injected faults (POST /_sandbox/faults);
7. the endpoint (salesforce_api.py: REST; salesforce_bulk.py: Bulk API 2.0).

/services/oauth2/ (authorize, token, revoke: salesforce_oauth.py) is counted in the org the request
concerns. GET /services/data/ (the versions list) needs no auth, as on Salesforce. The control
endpoints under /_sandbox/ act on the org `?account=<org id>` names (the default org when absent);
they are described in connector/sandbox/salesforce_control.py.
"""

from __future__ import annotations

import os
import re

import click
from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, HTTPException

from connector.sandbox.salesforce_api import api, supported_version
from connector.sandbox.salesforce_bulk import advance_jobs, bulk
from connector.sandbox.salesforce_control import control
from connector.sandbox.salesforce_ids import to_18
from connector.sandbox.salesforce_oauth import oauth, requested_org
from connector.sandbox.salesforce_orgs import OrgDirectory, Session, org_directory
from connector.sandbox.salesforce_state import (
    SalesforceError,
    SandboxConfig,
    SandboxState,
    not_found,
    sandbox_state,
)
from connector.sandbox.server import serve_forever

API_PREFIX = "/services/data"
OAUTH_PREFIX = "/services/oauth2/"
CONTROL_PREFIX = "/_sandbox/"
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
    app.extensions["salesforce_sandbox"] = OrgDirectory(config)
    app.register_blueprint(api)
    app.register_blueprint(bulk)
    app.register_blueprint(control)
    app.register_blueprint(oauth)
    app.before_request(_admit_request)
    app.after_request(_add_limit_info)
    app.register_error_handler(SalesforceError, _salesforce_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _route_name() -> str:
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    return f"{request.method} " + RULE_VARIABLE.sub(r"{\1}", rule)


def _admit_request() -> None:
    session = _choose_org()
    if not request.path.startswith((API_PREFIX, OAUTH_PREFIX)):
        return
    state = session.state
    route = _route_name()
    with state.lock:
        state.request_counts[route] += 1
    if not _needs_session():
        return
    if not session.good:
        raise SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")
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


def _needs_session() -> bool:
    """Every API request but the versions list (GET /services/data/) needs a session."""
    return request.path.startswith(API_PREFIX) and request.path.rstrip("/") != API_PREFIX


def _choose_org() -> Session:
    """Find the org the request addresses; `sandbox_state()` answers it from here on."""
    directory = org_directory()
    g.salesforce_org = directory.default
    session = _session(directory)
    g.salesforce_org = session.state
    return session


def _session(directory: OrgDirectory) -> Session:
    if _needs_session():
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return directory.session(token.strip() if scheme.lower() in ("bearer", "oauth") else "")
    if request.path.startswith(OAUTH_PREFIX):
        return Session(requested_org(directory))
    if request.path.startswith(CONTROL_PREFIX):
        return Session(_account_state(directory))
    return Session(directory.default)


def _account_state(directory: OrgDirectory) -> SandboxState:
    """The org a control request's `?account=` names (15 or 18 characters); 400 when it names none."""
    try:
        return directory.account(request.args.get("account"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _add_limit_info(response: Response) -> Response:
    if request.path.startswith(API_PREFIX + "/v"):
        state = sandbox_state()
        with state.lock:
            response.headers["Sforce-Limit-Info"] = state.limit_info()
    return response


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
