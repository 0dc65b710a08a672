"""A local HubSpot: the endpoints the connector uses, with HubSpot's auth, limits and errors.

`connector sandbox hubspot --port 8102` serves it; tests use `create_app()` with
`serve_in_thread`. It holds many portals (connector/sandbox/hubspot_accounts.py): the default
one (`portal_id`: HUBSPOT_PORTAL_ID, else 62515) and any other, created empty when first named.
Every API request (under /crm/, and the Communication Preferences v4 endpoints under
/communication-preferences/, connector/sandbox/hubspot_subscriptions.py) goes through, in order:

1. the portal: an access token this sandbox issued by OAuth addresses the portal it was issued
   for; any other token the default portal;
2. counting (per "<METHOD> <route>", route = the spec's path template), in that portal;
3. auth: `Authorization: Bearer <token>`, the token being an unexpired OAuth access token, or
   HUBSPOT_ACCESS_TOKEN at create time (any non-empty token when unset); else 401
   INVALID_AUTHENTICATION, or 401 EXPIRED_AUTHENTICATION for an OAuth token that has expired;
4. the portal's rate limits (rolling 10 s window, daily count); else 429 with HubSpot's
   RATE_LIMIT body. Every answer carries the X-HubSpot-RateLimit-* headers;
5. the portal's injected faults (POST /_sandbox/faults; `record_errors` is left to the endpoint);
6. the OpenAPI specs (`validate_requests`): a request the specs do not allow gets 400
   VALIDATION_ERROR with one `errors` entry per problem;
7. the endpoint itself (connector/sandbox/hubspot_api.py), on that portal's data.

The OAuth endpoints (connector/sandbox/hubspot_oauth.py) are checked against the specs too (under
/oauth/v1/; the default portal's validate_* settings apply). With `validate_responses` on, the
sandbox also checks its own JSON answers against the specs and answers 500 when one does not
conform (HubSpot's 429 body is exempt: it is not the spec's Error). The control endpoints, which
act on the portal `?account=` names, are described in connector/sandbox/hubspot_control.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
from flask import Flask, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from connector.sandbox.hubspot_accounts import ACCOUNT_ARG, Portals, portal_key, sandbox_state, use_account
from connector.sandbox.hubspot_api import api
from connector.sandbox.hubspot_control import control
from connector.sandbox.hubspot_errors import HubSpotError, error_body, rate_limit_body
from connector.sandbox.hubspot_oauth import oauth, oauth_authority
from connector.sandbox.hubspot_state import SandboxConfig, SandboxState
from connector.sandbox.hubspot_subscriptions import subscriptions
from connector.sandbox.hubspot_tokens import AccessToken, OAuthAuthority
from connector.sandbox.openapi_check import SPECS_DIR_ENV, OpenApiChecker, load_checker
from connector.sandbox.server import serve_forever

API_PREFIXES = ("/crm/", "/communication-preferences/")
OAUTH_API_PREFIX = "/oauth/v1/"
CONTROL_PREFIX = "/_sandbox/"
MISSING_AUTH = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more "
    "details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
WRONG_AUTH = "The OAuth token used to make this call is invalid or has expired."
EXPIRED_AUTH = "The OAuth token used to make this call expired {minutes} minute(s) ago."


def create_app(
    *,
    access_token: str | None = None,
    portal_id: int | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    rate_limit_per_10s: int = 100,
    daily_limit: int = 10_000_000,
    export_delay: float = 1.0,
    import_delay: float = 1.0,
    validate_requests: bool = True,
    validate_responses: bool = False,
    export_zip: bool = False,
    specs_dir: Path | None = None,
) -> Flask:
    """The sandbox app. `access_token` defaults to HUBSPOT_ACCESS_TOKEN (read now, not per request),
    and addresses the default portal, `portal_id` (default HUBSPOT_PORTAL_ID, else 62515).
    `client_id` / `client_secret`: the OAuth app's (default HUBSPOT_CLIENT_ID / HUBSPOT_CLIENT_SECRET;
    unset: any client is accepted).

    `specs_dir` holds HubSpot's OpenAPI specs (`../shared/specs/hubspot` beside the repository), which
    `validate_requests` and `validate_responses` check against; default HUBSPOT_SPECS_DIR, and with
    neither nothing is checked.
    """
    config = SandboxConfig(
        rate_limit_per_10s=rate_limit_per_10s,
        daily_limit=daily_limit,
        export_delay=export_delay,
        import_delay=import_delay,
        validate_requests=validate_requests,
        validate_responses=validate_responses,
        export_zip=export_zip,
        portal_id=portal_id or _env_portal_id(),
        access_token=access_token or os.environ.get("HUBSPOT_ACCESS_TOKEN") or None,
    )
    app = Flask("hubspot_sandbox")
    app.url_map.strict_slashes = False  # HubSpot takes /crm/v3/imports/ (the client's spelling) too
    default = app.extensions["hubspot_sandbox"] = SandboxState(config)  # the default portal's
    app.extensions["hubspot_portals"] = Portals(default)
    app.extensions["hubspot_oauth"] = OAuthAuthority(
        str(config.portal_id),
        client_id or os.environ.get("HUBSPOT_CLIENT_ID") or None,
        client_secret or os.environ.get("HUBSPOT_CLIENT_SECRET") or None,
    )
    app.extensions["hubspot_openapi"] = load_checker(specs_dir)
    for blueprint in (api, subscriptions, control, oauth):
        app.register_blueprint(blueprint)
    app.before_request(_admit_request)
    app.after_request(_finish_response)
    app.register_error_handler(HubSpotError, _hubspot_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


RULE_VARIABLE = re.compile(r"<(?:[^:>]+:)?([^>]+)>")


def _env_portal_id() -> int:
    return int(portal_key(os.environ.get("HUBSPOT_PORTAL_ID") or SandboxConfig.portal_id))


def _checker() -> OpenApiChecker | None:
    return current_app.extensions["hubspot_openapi"]


def _route_name() -> str:
    """'<METHOD> <route>', the route written like the specs' path templates."""
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    return f"{request.method} " + RULE_VARIABLE.sub(r"{\1}", rule)


def _admit_request() -> ResponseReturnValue | None:
    """Before every view: pick the portal the request addresses, and admit it as HubSpot would."""
    if request.path.startswith(CONTROL_PREFIX):
        return _choose_control_account()
    if request.path.startswith(OAUTH_API_PREFIX):
        return _admit_oauth_request()
    if request.path.startswith(API_PREFIXES):
        return _admit_api_request()
    return None


def _choose_control_account() -> ResponseReturnValue | None:
    try:
        use_account(request.args.get(ACCOUNT_ARG))
    except ValueError as exc:
        return jsonify({"error": str(exc)}), 400
    return None


def _admit_oauth_request() -> ResponseReturnValue | None:
    state = sandbox_state()  # the default portal: its validate_* settings cover the OAuth endpoints
    with state.lock:
        validate = state.config.validate_requests
        g.validate_responses = state.config.validate_responses
    return _check_against_spec(validate)


def _admit_api_request() -> ResponseReturnValue | None:
    token = _bearer_token()
    access = oauth_authority().access(token) if token else None
    state = use_account(access.grant.account if access is not None else None)
    route = _route_name()
    with state.lock:
        state.total_requests += 1
        state.request_counts[route] += 1
    refusal = _check_auth(state, token, access)
    if refusal is not None:
        return refusal
    return _admit_to_portal(state, route)


def _admit_to_portal(state: SandboxState, route: str) -> ResponseReturnValue | None:
    """The portal's rate limits, injected faults and the specs, then its jobs move on."""
    with state.lock:
        policy = state.admit()
        fault = None if policy else state.faults.take(route)
        if policy or fault == "http_429":
            state.rate_limited += 1
        validate = state.config.validate_requests
        g.validate_responses = state.config.validate_responses
    if policy:
        return jsonify(rate_limit_body(policy, state.rate_group)), 429
    if fault == "record_errors":
        # Not an error answer: the endpoint runs and refuses some of the request's records itself.
        g.record_errors = True
    elif fault:
        return _fault_response(fault, state)
    refusal = _check_against_spec(validate)
    if refusal is not None:
        return refusal
    with state.lock:
        state.advance_jobs()
    return None


def _bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _check_auth(state: SandboxState, token: str, access: AccessToken | None) -> ResponseReturnValue | None:
    """None when `token` may call the API: an unexpired OAuth token (`access`), or the env token."""
    if not token:
        return jsonify(error_body("INVALID_AUTHENTICATION", MISSING_AUTH)), 401
    if access is not None:
        return _refuse_expired(oauth_authority(), access)
    expected = state.config.access_token
    if expected is not None and token != expected:
        return jsonify(error_body("INVALID_AUTHENTICATION", WRONG_AUTH)), 401
    return None


def _refuse_expired(authority: OAuthAuthority, access: AccessToken) -> ResponseReturnValue | None:
    overdue = authority.expired_for(access)
    if overdue is None:
        return None
    authority.count_expired_rejection(access)
    message = EXPIRED_AUTH.format(minutes=int(overdue // 60))
    return jsonify(error_body("EXPIRED_AUTHENTICATION", message)), 401


def _fault_response(kind: str, state: SandboxState) -> Response | tuple[Response, int]:
    if kind == "http_429":
        return jsonify(rate_limit_body("TEN_SECONDLY_ROLLING", state.rate_group)), 429
    if kind == "http_502":
        # HubSpot's edge answers a bad gateway with an HTML page, not JSON.
        return Response(
            "<html><body><h1>502 Bad Gateway</h1></body></html>", status=502, mimetype="text/html"
        )
    return jsonify(error_body("INTERNAL_ERROR", "internal error")), 500


def _check_against_spec(validate: bool) -> tuple[Response, int] | None:
    checker = _checker()
    g.operation = None
    if checker is None or not (validate or g.validate_responses):
        return None
    is_form = request.mimetype == "multipart/form-data"
    check = checker.check_request(
        request.method,
        request.path,
        query={name: request.args.getlist(name) for name in request.args},
        content_type=request.content_type,
        body=b"" if is_form else request.get_data(cache=True),
        form_fields=[*request.form.keys(), *request.files.keys()] if is_form else (),
    )
    g.operation = check.operation
    if validate and not check.ok:
        details = [{"message": p.message, "in": p.location} for p in check.problems]
        message = "Invalid request (checked against HubSpot's OpenAPI spec): " + "; ".join(
            map(str, check.problems)
        )
        return jsonify(error_body("VALIDATION_ERROR", message, errors=details)), 400
    return None


def _finish_response(response: Response) -> Response:
    """API answers get the portal's rate limit headers; API and OAuth answers may be checked."""
    if request.path.startswith(API_PREFIXES):
        state = sandbox_state()
        with state.lock:
            response.headers.update(state.rate_headers())
    elif not request.path.startswith(OAUTH_API_PREFIX):
        return response
    return _check_response(response)


def _check_response(response: Response) -> Response:
    operation = g.get("operation")
    checker = _checker()
    if not (g.get("validate_responses") and operation and checker) or response.status_code in (429, 502):
        return response
    problems = checker.check_response(operation, response.status_code, response.mimetype, response.get_data())
    if not problems:
        return response
    message = f"The sandbox's answer to {operation.name} breaks the spec: " + "; ".join(map(str, problems))
    broken = jsonify(error_body("SANDBOX_RESPONSE_INVALID", message))
    broken.status_code = 500
    return broken


def _hubspot_error(exc: HubSpotError) -> tuple[Response, int]:
    return jsonify(exc.body()), exc.status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if request.path.startswith((*API_PREFIXES, OAUTH_API_PREFIX)):
        category = {404: "OBJECT_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "VALIDATION_ERROR")
        return jsonify(error_body(category, exc.description or exc.name)), status
    return jsonify({"error": exc.description or exc.name}), status


@click.command("hubspot")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8102, show_default=True, type=int)
@click.option("--rate-limit-per-10s", default=100, show_default=True, type=int)
@click.option("--daily-limit", default=10_000_000, show_default=True, type=int)
@click.option(
    "--export-delay", default=1.0, show_default=True, type=float, help="Seconds until an export is COMPLETE."
)
@click.option(
    "--import-delay", default=1.0, show_default=True, type=float, help="Seconds until an import is DONE."
)
@click.option(
    "--validate/--no-validate", default=True, show_default=True, help="Check requests against the specs."
)
@click.option("--export-zip", is_flag=True, help="Serve export files zipped, as HubSpot does for large ones.")
@click.option(
    "--generate", "generate_count", default=0, type=int, help="Generate this many contacts (one list)."
)
@click.option(
    "--specs-dir",
    envvar=SPECS_DIR_ENV,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help=f"HubSpot's OpenAPI specs, to check requests against (default: ${SPECS_DIR_ENV}; none: no checks).",
)
def command(
    host: str,
    port: int,
    rate_limit_per_10s: int,
    daily_limit: int,
    export_delay: float,
    import_delay: float,
    validate: bool,
    export_zip: bool,
    generate_count: int,
    specs_dir: Path | None,
) -> None:
    """Serve the HubSpot sandbox (token: HUBSPOT_ACCESS_TOKEN, any when unset)."""
    app = create_app(
        rate_limit_per_10s=rate_limit_per_10s,
        daily_limit=daily_limit,
        export_delay=export_delay,
        import_delay=import_delay,
        validate_requests=validate,
        export_zip=export_zip,
        specs_dir=specs_dir,
    )
    if validate and app.extensions["hubspot_openapi"] is None:
        click.echo(
            f"requests are not checked against HubSpot's OpenAPI specs: give --specs-dir or {SPECS_DIR_ENV}"
        )
    if generate_count:
        with app.test_client() as client:
            answer = client.post("/_sandbox/seed", json={"generate": {"contacts": generate_count}}).get_json()
        click.echo(f"generated {generate_count} contacts in list {answer['listId']}")
    click.echo(f"HubSpot sandbox on http://{host}:{port}")
    serve_forever(app, host, port)
