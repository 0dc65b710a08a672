"""The ops page: a small server-rendered UI over the admin actions, signed in with the admin token.

A blueprint of its own (the JSON admin API owns /admin/syncs and /admin/segments with its bearer
check): the syncs table is /admin/, everything else lives under /admin/ops/. Sign-in keeps a
signed Flask session cookie; every POST form carries a Flask-WTF CSRF token checked here, not
by a global CSRFProtect, so webhooks and the bearer-token API are untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import generate_csrf, validate_csrf
from markupsafe import escape
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException
from wtforms import ValidationError

from connector.alert_targets import configured_targets
from connector.config import Settings
from connector.crm.registry import crm_named
from connector.errors import ConnectorError
from connector.models import Sync, SyncStatus
from connector.pipeline.alerts import send_test_alert
from connector.pipeline.segments import list_segments, plan_segment, segment_json, sync_segment
from connector.pipeline.syncs import approve_sync, cancel_sync, retry_sync
from connector.states import RESULT_STATES, RUNNABLE_STATES, TERMINAL_STATES
from connector.web.admin import (
    get_sync,
    page_of_syncs,
    results_response,
    sync_detail_json,
    sync_json,
)
from connector.web.admin_auth import TooManyAttempts, configured_admin_token, token_accepted
from connector.web.context import ROW_ID, current_runtime
from connector.web.ops_connections import connections

log = logging.getLogger(__name__)

ops = Blueprint("ops", __name__, url_prefix="/admin", template_folder="templates")
# Connections and OAuth installs (ops_connections.py): nested, so every hook and handler here applies.
ops.register_blueprint(connections)
SESSION_LIFETIME = timedelta(hours=12)
PAGE_SIZE = 50
REFRESH_SECONDS = 5
WRITE_FAILURES_ON_PAGE = 100
PUBLIC_ENDPOINTS = frozenset({"ops.sign_in_form", "ops.sign_in"})
ACTIONS = {"retry": retry_sync, "cancel": cancel_sync, "approve": approve_sync}
SESSION_KEY_LABEL = b"apexverify-connector/ops-session/v1"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def init_ops_page(app: Flask, settings: Settings) -> None:
    """Session settings and the ops blueprint; the app's only user of Flask sessions."""
    app.secret_key = session_secret(settings.admin_token)
    app.session_interface = ProxyAwareSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="connector_ops",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_HTTPONLY=True,
        # Lax, not Strict: a link to a sync pasted in chat still opens signed in; every change
        # is a POST with a CSRF token, so Lax's cross-site GETs change nothing.
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # The 12 h limit counts from sign-in (see _signed_in), not from the last auto-refresh.
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.register_blueprint(ops)


def session_secret(admin_token: str | None) -> bytes | None:
    """Flask's SECRET_KEY, derived from the admin token.

    No new setting to configure, the same key in every gunicorn worker, and a new token signs
    every session out. None (sessions off) when the admin is off.
    """
    if not admin_token:
        return None
    return hmac.new(admin_token.encode(), SESSION_KEY_LABEL, hashlib.sha256).digest()


class ProxyAwareSessionInterface(SecureCookieSessionInterface):
    """Marks the session cookie Secure when the browser reached us over HTTPS, directly or via a proxy.

    Not werkzeug's ProxyFix (create_app installs it for the client address only): its X-Forwarded-Proto
    handling would rewrite request.url for the whole app, and webhook signature checks read it
    (PUBLIC_BASE_URL is their documented knob); only this flag needs the original scheme. A forged
    X-Forwarded-Proto can only make the sender's own cookie Secure, so trusting it here is harmless.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return request.is_secure or forwarded == "https"


@ops.before_request
def require_sign_in() -> ResponseReturnValue | None:
    configured_admin_token(current_runtime().settings)  # 503 while the admin is off
    if request.endpoint not in PUBLIC_ENDPOINTS and not _signed_in():
        return redirect(url_for("ops.sign_in_form"))
    if request.method == "POST":  # every form, the sign-in one too (login CSRF)
        _check_csrf()
    return None


def _signed_in() -> bool:
    signed_in_at = session.get("signed_in_at")
    if isinstance(signed_in_at, bool) or not isinstance(signed_in_at, int | float):
        return False
    return 0 <= time.time() - signed_in_at < SESSION_LIFETIME.total_seconds()


def _check_csrf() -> None:
    try:
        validate_csrf(request.form.get("csrf_token"), time_limit=int(SESSION_LIFETIME.total_seconds()))
    except ValidationError as error:
        abort(400, description=f"{error} Reload the page and try again; nothing was changed.")


@ops.after_request
def page_headers(response: Response) -> Response:
    # No script runs on these pages: an injected one is blocked even if escaping ever failed.
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")  # no clickjacking of the action buttons
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@ops.after_request
def redact_secrets(response: Response) -> Response:
    """Defense in depth: a secret echoed into stored text (a CRM error message, say) shows as ***.

    Secrets shorter than 8 characters are left alone: replacing them would mangle the markup.
    """
    if response.mimetype != "text/html" or response.is_streamed:
        return response
    html = response.get_data(as_text=True)
    for secret in current_runtime().settings.secrets():
        if len(secret) >= 8:
            html = html.replace(secret, "***").replace(str(escape(secret)), "***")
    response.set_data(html)
    return response


@ops.context_processor
def page_helpers() -> dict[str, Any]:
    return {"csrf_token": generate_csrf, "signed_in": _signed_in(), "when": _when, "credits": _credits}


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "—"


def _credits(value: Any) -> str:
    return f"{float(value):,.2f}".rstrip("0").rstrip(".") if isinstance(value, int | float) else "—"


# --- Signing in and out ------------------------------------------------------------------------


@ops.get("/ops/sign-in")
def sign_in_form() -> ResponseReturnValue:
    if _signed_in():
        return redirect(url_for("ops.syncs_table"))
    return render_template("ops_sign_in.html")


@ops.post("/ops/sign-in")
def sign_in() -> ResponseReturnValue:
    # Shares the admin API's throttle: TooManyAttempts (429), even for the right token, while it holds.
    if not token_accepted(current_runtime(), request.form.get("token", "")):
        return render_template("ops_sign_in.html", refused=True), 401
    session.clear()  # a fresh CSRF token for the signed-in session
    session.permanent = True
    session["signed_in_at"] = time.time()
    return redirect(url_for("ops.syncs_table"))


@ops.post("/ops/sign-out")
def sign_out() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("ops.sign_in_form"))


# --- Syncs -------------------------------------------------------------------------------------


@ops.get("/")
def syncs_table() -> ResponseReturnValue:
    with current_runtime().session() as db:
        page, next_cursor = page_of_syncs(db, PAGE_SIZE)
        syncs = [sync_json(db, s) for s in page]
    filters = {name: request.args.get(name) or None for name in ("status", "segment_id")}
    return render_template(
        "ops_syncs.html",
        syncs=syncs,
        next_cursor=next_cursor,
        filters=filters,
        statuses=[s.value for s in SyncStatus],
        alert_targets=configured_targets(current_runtime().settings),
        **_refresh(True),
    )


@ops.get(f"/ops/syncs/<{ROW_ID}:sync_id>")
def sync_page(sync_id: int) -> ResponseReturnValue:
    with current_runtime().session() as db:
        sync = get_sync(db, sync_id)
        detail = sync_detail_json(db, sync)
        has_results = sync.data_purged_at is None and sync.status in RESULT_STATES
    status = SyncStatus(detail["status"])
    can = {
        "retry": status == SyncStatus.FAILED,
        # The same action: a completed sync's refused writes are written again from its verdicts.
        "retry_writes": status == SyncStatus.COMPLETED and bool((detail["counts"] or {}).get("write_failed")),
        "cancel": status not in TERMINAL_STATES,
        "approve": status == SyncStatus.AWAITING_APPROVAL,
    }
    return render_template(
        "ops_sync.html",
        sync=detail,
        of_crm=crm_named(detail.get("crm")) is not None,  # a file sync's source is no connection page
        can=can,
        has_results=has_results,
        failures_shown=WRITE_FAILURES_ON_PAGE,
        **_refresh(status in RUNNABLE_STATES),  # a settled sync has nothing new to show
    )


@ops.post(f"/ops/syncs/<{ROW_ID}:sync_id>/<any(retry, cancel, approve):action>")
def sync_action(sync_id: int, action: str) -> ResponseReturnValue:
    try:
        sync = ACTIONS[action](current_runtime(), sync_id)
    except ConnectorError as error:  # e.g. SyncStateError: another operator got there first
        flash(error.message, "error")
    else:
        flash(f"Sync {sync_id}: {action} done; it is now {sync.status}.", "ok")
    return redirect(url_for("ops.sync_page", sync_id=sync_id))


@ops.get(f"/ops/syncs/<{ROW_ID}:sync_id>/results.<any(json, xlsx):fmt>")
def download_results(sync_id: int, fmt: str) -> ResponseReturnValue:
    return results_response(sync_id, fmt)


def _refresh(wanted: bool) -> dict[str, Any]:
    """Auto-refresh (every few seconds) unless turned off with ?refresh=0."""
    enabled = request.args.get("refresh") != "0"
    return {"refresh_seconds": REFRESH_SECONDS if wanted and enabled else None, "refresh_enabled": enabled}


# --- Alerts ------------------------------------------------------------------------------------


@ops.post("/ops/alerts/test")
def test_alert() -> ResponseReturnValue:
    """Send a sample alert to every configured target now, and say per target how it went."""
    results = send_test_alert(current_runtime().settings)
    if not results:
        flash(
            "No alert target is configured: set ALERT_WEBHOOK_URL (and ALERT_WEBHOOK_SECRET), "
            "ALERT_SLACK_WEBHOOK_URL, or ALERT_EMAIL_TO with SMTP_URL.",
            "error",
        )
    for target, problem in results.items():
        if problem is None:
            flash(f"Test alert sent to {target}.", "ok")
        else:
            flash(f"Test alert not sent to {target}: {problem}", "error")
    return redirect(url_for("ops.syncs_table", refresh=0))


# --- Segments ----------------------------------------------------------------------------------


@ops.get("/ops/segments")
def segments_page() -> ResponseReturnValue:
    with current_runtime().session() as db:
        segments = list_segments(db)
        last_syncs = _last_syncs(db, [s.id for s in segments])
        rows = [segment_json(s) for s in segments]
    return render_template("ops_segments.html", segments=rows, last_syncs=last_syncs)


def _last_syncs(db: Any, segment_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The newest sync of each segment: {segment_id: {"id": …, "status": …}}."""
    if not segment_ids:
        return {}
    newest = select(func.max(Sync.id)).where(Sync.segment_id.in_(segment_ids)).group_by(Sync.segment_id)
    rows = db.execute(select(Sync.segment_id, Sync.id, Sync.status).where(Sync.id.in_(newest)))
    return {segment_id: {"id": sync_id, "status": status} for segment_id, sync_id, status in rows}


@ops.post(f"/ops/segments/<{ROW_ID}:segment_id>/sync")
def sync_now(segment_id: int) -> ResponseReturnValue:
    try:
        sync = sync_segment(current_runtime(), segment_id, "admin")
    except ConnectorError as error:
        flash(error.message, "error")
        return redirect(url_for("ops.segments_page"))
    flash(f"Segment {segment_id}: sync {sync.id} is {sync.status}.", "ok")
    return redirect(url_for("ops.sync_page", sync_id=sync.id))


@ops.post(f"/ops/segments/<{ROW_ID}:segment_id>/plan")
def plan_now(segment_id: int) -> ResponseReturnValue:
    """A plan of the segment: its sync stops before launch with what it would send and cost."""
    try:
        sync = plan_segment(current_runtime(), segment_id)
    except ConnectorError as error:  # segment_busy: another sync of the segment runs
        flash(error.message, "error")
        return redirect(url_for("ops.segments_page"))
    flash(f"Segment {segment_id}: plan {sync.id} is {sync.status}; it stops before the launch.", "ok")
    return redirect(url_for("ops.sync_page", sync_id=sync.id))


# --- Error pages (HTML here; the app's handlers answer JSON for the API) -----------------------


@ops.errorhandler(TooManyAttempts)
def too_many_attempts(error: TooManyAttempts) -> ResponseReturnValue:
    return _error_page(429, error.message), 429, {"Retry-After": str(math.ceil(error.retry_after))}


@ops.errorhandler(ConnectorError)
def connector_error(error: ConnectorError) -> ResponseReturnValue:
    return _error_page(error.http_status, error.message), error.http_status


@ops.errorhandler(HTTPException)
def http_error(error: HTTPException) -> ResponseReturnValue:
    code = error.code or 500
    return _error_page(code, error.description or error.name), code


@ops.errorhandler(Exception)
def unexpected(error: Exception) -> ResponseReturnValue:
    log.exception("unhandled_error")
    return _error_page(500, "Unexpected server error; the details are in the web process's log."), 500


def _error_page(code: int, message: str) -> str:
    return render_template("ops_error.html", code=code, message=message)
