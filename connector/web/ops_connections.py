"""The ops page's connections: the table, one connection's page, disconnect, and OAuth installs.

A blueprint nested in the ops one (connector/web/ops.py), so the sign-in check, the CSRF check of
every POST, the page headers, the secret redaction and the HTML error pages apply here unchanged.

Installs: `GET /admin/connect/<crm>` sends the browser to the CRM's consent page with a `state`
that pipeline/connections.py keeps bound to a random value of this signed-in session (the
binding), and the CRM sends it back to `GET /admin/connect/<crm>/callback`. That is a top-level
GET navigation, so the session cookie (SameSite=Lax) comes along. A new connection's webhook
secret is shown once: it waits, sealed with CONNECTOR_SECRET_KEY, in Redis for a few minutes under
a reference kept in the session, and the first render of the connection's page takes it out of
both. It never goes into a URL, a cookie, a flash message or a log line.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from connector.crm.registry import CRMS, crm_named
from connector.errors import ConfigError, ConnectorError, TransientError
from connector.models import Segment
from connector.pipeline.connections import (
    begin_install,
    connection_json,
    disconnect,
    finish_install,
    get_connection,
    install_unavailable,
    list_connections,
    oauth_crm,
)
from connector.pipeline.segments import segment_json
from connector.runtime import Runtime
from connector.secretbox import require_secret_box
from connector.web.context import ROW_ID, current_runtime, public_base_url

log = logging.getLogger(__name__)

connections = Blueprint("connections", __name__)
BINDING_KEY = "oauth_binding"  # the session's install binding (pipeline/connections.py keeps state by it)
ONCE_KEY = "new_webhook_secret"  # {"connection_id": id, "ref": reference of the sealed secret in Redis}
ONCE_TTL_SECONDS = 600  # a secret nobody came to see is gone after this
ONCE_REDIS_PREFIX = "connector:ops_once:"


# --- Installs ----------------------------------------------------------------------------------


@connections.get("/connect/<name>")
def connect(name: str) -> ResponseReturnValue:
    runtime = current_runtime()
    crm, _ = oauth_crm(name)  # NotFoundError (404) for a CRM not installed by OAuth
    try:
        consent_url = begin_install(runtime, crm.name, _binding(), _redirect_uri(crm.name))
    except ConnectorError as error:  # ConfigError (503): the app's variables or CONNECTOR_SECRET_KEY unset
        return _install_error(error, error.http_status)
    return redirect(consent_url, code=302)


@connections.get("/connect/<name>/callback")
def callback(name: str) -> ResponseReturnValue:
    runtime = current_runtime()
    crm, _ = oauth_crm(name)
    binding = session.get(BINDING_KEY)
    try:
        installed = finish_install(
            runtime, crm.name, binding if isinstance(binding, str) else "", request.args.to_dict()
        )
    except ConnectorError as error:  # InstallRefused: denied, forged or replayed state, code refused
        return _install_error(error, _callback_status(error))
    connection = installed.connection  # finish_install logged it
    if installed.webhook_secret:
        _keep_once(runtime, connection.id, installed.webhook_secret)
    done = "connected" if installed.created else "reconnected"
    flash(f"{crm.label} {connection.external_id}: {done}.", "ok")
    return redirect(url_for(".connection_page", connection_id=connection.id), code=303)


def _binding() -> str:
    """The session's binding: made once per signed-in session (signing in clears the session)."""
    binding = session.get(BINDING_KEY)
    if not isinstance(binding, str) or len(binding) < 32:
        binding = session[BINDING_KEY] = secrets.token_urlsafe(32)
    return binding


def _redirect_uri(crm_name: str) -> str:
    """Where the CRM sends the browser back: under PUBLIC_BASE_URL, else the URL this request came to."""
    return public_base_url() + url_for(".callback", name=crm_name)


def _callback_status(error: ConnectorError) -> int:
    if isinstance(error, TransientError):
        return 502  # the CRM did not answer: trying again may work
    if isinstance(error, ConfigError):
        return 503
    return 400


def _install_error(error: ConnectorError, status: int) -> ResponseReturnValue:
    log.warning("connection_install_refused", extra={"error_code": error.code, "status": status})
    page = render_template(
        "ops_error.html",
        code=status,
        message=error.message,
        back_url=url_for(".connections_page"),
        back_label="Back to the connections",
    )
    return page, status


# --- The webhook secret, shown once ------------------------------------------------------------


def _keep_once(runtime: Runtime, connection_id: int, secret: str) -> None:
    ref = secrets.token_urlsafe(24)
    sealed = require_secret_box(runtime.settings).seal({"connection_id": connection_id, "secret": secret})
    runtime.redis.set(_once_key(ref), sealed, ex=ONCE_TTL_SECONDS)
    session[ONCE_KEY] = {"connection_id": connection_id, "ref": ref}


def _take_once(runtime: Runtime, connection_id: int) -> str | None:
    """The new webhook secret of this connection if it waits to be shown, and then never again."""
    kept = session.get(ONCE_KEY)
    if not isinstance(kept, dict) or kept.get("connection_id") != connection_id:
        return None
    session.pop(ONCE_KEY, None)
    ref = kept.get("ref")
    sealed = runtime.redis.getdel(_once_key(ref)) if isinstance(ref, str) else None
    if not sealed:
        return None  # expired (ONCE_TTL_SECONDS) or shown already
    document = require_secret_box(runtime.settings).open(
        sealed.decode() if isinstance(sealed, bytes) else str(sealed)
    )
    secret = document.get("secret")
    return secret if document.get("connection_id") == connection_id and isinstance(secret, str) else None


def _once_key(ref: str) -> str:
    return ONCE_REDIS_PREFIX + hashlib.sha256(ref.encode()).hexdigest()


# --- Pages -------------------------------------------------------------------------------------


@connections.get("/ops/connections")
def connections_page() -> ResponseReturnValue:
    runtime = current_runtime()
    base = public_base_url()
    rows = [_row(connection_json(c, base)) for c in list_connections(runtime)]
    installable = [
        {"name": crm.name, "label": crm.label, "unavailable": install_unavailable(runtime, crm.name)}
        for crm in CRMS.values()
        if crm.oauth is not None
    ]
    return render_template("ops_connections.html", connections=rows, installable=installable)


@connections.get(f"/ops/connections/<{ROW_ID}:connection_id>")
def connection_page(connection_id: int) -> ResponseReturnValue:
    runtime = current_runtime()
    detail = _row(connection_json(get_connection(runtime, connection_id), public_base_url()))
    with runtime.session() as db:
        query = (
            select(Segment)
            .where(Segment.connection_id == connection_id, Segment.deleted_at.is_(None))
            .order_by(Segment.id)
        )
        segments = [segment_json(s) for s in db.scalars(query)]
    new_secret = _take_once(runtime, connection_id)
    crm = crm_named(detail["crm"])
    secret_url = None
    if new_secret and crm is not None and crm.routes_by_secret and detail.get("webhook_url"):
        secret_url = f"{detail['webhook_url']}?{urlencode({'token': new_secret})}"
    return render_template(
        "ops_connection.html",
        connection=detail,
        segments=segments,
        new_secret=new_secret,
        secret_url=secret_url,
        routes_by_secret=bool(crm and crm.routes_by_secret),
        can_disconnect=detail.get("auth") == "oauth" and detail.get("status") != "disconnected",
    )


@connections.post(f"/ops/connections/<{ROW_ID}:connection_id>/disconnect")
def disconnect_connection(connection_id: int) -> ResponseReturnValue:
    try:
        connection = disconnect(current_runtime(), connection_id)
    except ConnectorError as error:
        flash(error.message, "error")
    else:
        flash(f"Connection {connection_id} ({connection.external_id}) is disconnected.", "ok")
    return redirect(url_for(".connection_page", connection_id=connection_id))


def _row(found: dict[str, Any]) -> dict[str, Any]:
    """A connection's JSON with what the templates add: the CRM's label, the reconnect link."""
    crm = crm_named(found.get("crm"))
    installable = crm is not None and crm.oauth is not None
    return {
        **found,
        "crm_label": crm.label if crm else found.get("crm"),
        "connect_url": url_for(".connect", name=found["crm"]) if installable else None,
    }
