"""The admin API: list and inspect syncs, retry / cancel / approve them, download their results;
segments; the CRM connections (list, inspect, disconnect)."""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from flask import Blueprint, Response, jsonify, request, stream_with_context
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select
from werkzeug.wsgi import wrap_file

from connector.errors import ConnectorError, InputError, NotFoundError
from connector.models import Sync, SyncBatch, SyncContact, SyncStatus, SyncTransition
from connector.pipeline.actions import refused_actions
from connector.pipeline.connections import connection_json, disconnect, get_connection, list_connections
from connector.pipeline.segments import (
    create_segment,
    delete_segment,
    get_segment,
    list_segments,
    plan_segment,
    segment_json,
    sync_segment,
    update_segment,
)
from connector.pipeline.syncs import approve_sync, cancel_sync, retry_sync
from connector.pipeline.write_back import MOVED_REASONS
from connector.results import iter_verdicts, json_chunks, write_xlsx
from connector.states import RESULT_STATES
from connector.web.admin_auth import TooManyAttempts, token_accepted
from connector.web.context import ROW_ID, current_runtime, public_base_url

admin = Blueprint("admin", __name__, url_prefix="/admin")
MAX_LIMIT = 500
MAX_ID = 2**63 - 1  # ids are BIGINT: a larger one in a URL or cursor matches nothing, and must not reach SQL
WRITE_FAILURES_SHOWN = 1000


class Unauthorized(ConnectorError):
    http_status = 401


@admin.errorhandler(TooManyAttempts)
def too_many_attempts(error: TooManyAttempts) -> ResponseReturnValue:
    return jsonify(error.to_dict()), 429, {"Retry-After": str(math.ceil(error.retry_after))}


@admin.errorhandler(Unauthorized)
def unauthorized(error: Unauthorized) -> ResponseReturnValue:
    return jsonify(error.to_dict()), 401, {"WWW-Authenticate": 'Bearer realm="admin"'}


@admin.before_request
def require_admin_token() -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""  # the scheme name is case-insensitive
    if not token_accepted(current_runtime(), token):  # 503 while the admin is off, 429 while throttled
        raise Unauthorized("unauthorized", "send Authorization: Bearer <ADMIN_TOKEN>")


@admin.get("/syncs")
def list_syncs() -> ResponseReturnValue:
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    with current_runtime().session() as session:
        page, next_cursor = page_of_syncs(session, limit)
        body = [sync_json(session, s) for s in page]
    return jsonify({"syncs": body, "next_cursor": next_cursor})


def page_of_syncs(session: Any, limit: int) -> tuple[list[Sync], str | None]:
    """Syncs newest first, filtered by the request's status / segment_id / cursor; and the next cursor."""
    query = select(Sync).order_by(Sync.id.desc()).limit(limit + 1)
    if status := request.args.get("status"):
        if status not in {s.value for s in SyncStatus}:
            raise InputError(
                "invalid_status", f"status must be one of {', '.join(s.value for s in SyncStatus)}"
            )
        query = query.where(Sync.status == status)
    if request.args.get("segment_id"):
        query = query.where(Sync.segment_id == _int_arg("segment_id", 0, 1, MAX_ID))
    if cursor := request.args.get("cursor"):
        query = query.where(Sync.id < _decode_cursor(cursor))
    syncs = list(session.scalars(query))
    page = syncs[:limit]
    return page, (_encode_cursor(page[-1].id) if len(syncs) > limit else None)


@admin.get("/syncs/<int(max=9223372036854775807):sync_id>")
def show_sync(sync_id: int) -> ResponseReturnValue:
    with current_runtime().session() as session:
        sync = get_sync(session, sync_id)
        return jsonify(sync_detail_json(session, sync))


@admin.post("/syncs/<int(max=9223372036854775807):sync_id>/retry")
def retry(sync_id: int) -> ResponseReturnValue:
    return _after_action(retry_sync(current_runtime(), sync_id).id)


@admin.post("/syncs/<int(max=9223372036854775807):sync_id>/cancel")
def cancel(sync_id: int) -> ResponseReturnValue:
    return _after_action(cancel_sync(current_runtime(), sync_id).id)


@admin.post("/syncs/<int(max=9223372036854775807):sync_id>/approve")
def approve(sync_id: int) -> ResponseReturnValue:
    return _after_action(approve_sync(current_runtime(), sync_id).id)


@admin.get("/syncs/<int(max=9223372036854775807):sync_id>/results")
def results(sync_id: int) -> ResponseReturnValue:
    return results_response(sync_id, request.args.get("format", "json"))


def results_response(sync_id: int, fmt: str) -> Response:
    """The sync's verdicts as a download: JSON streamed, XLSX from a temporary file (shared with ops)."""
    if fmt not in ("json", "xlsx"):
        raise InputError("invalid_format", "format must be json or xlsx")
    runtime = current_runtime()
    with runtime.session() as session:
        sync = get_sync(session, sync_id)
        if sync.data_purged_at is not None:
            raise ResultsPurged(
                "results_purged", "this sync's values were deleted after the retention period"
            )
        if sync.status not in RESULT_STATES:
            raise NoResultsYet(
                "no_results", f"sync {sync_id} is {sync.status}; results come after verification"
            )
    filename = f"sync-{sync_id}-results.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if fmt == "xlsx":
        mimetype = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        body = wrap_file(request.environ, _xlsx_file(sync_id))
        return Response(body, mimetype=mimetype, headers=headers, direct_passthrough=True)
    return Response(stream_with_context(_json_chunks(sync_id)), mimetype="application/json", headers=headers)


def _xlsx_file(sync_id: int) -> IO[bytes]:
    """The sheet in a temporary file, removed when the response that sends it closes it."""
    sheet = tempfile.TemporaryFile()  # noqa: SIM115 - handed over to the response, which closes it
    try:
        with current_runtime().session() as session:
            write_xlsx(iter_verdicts(session, sync_id), sheet)
    except BaseException:
        sheet.close()
        raise
    sheet.seek(0)
    return sheet


class NoResultsYet(ConnectorError):
    http_status = 409


class ResultsPurged(ConnectorError):
    http_status = 410  # gone for good: DATA_RETENTION_DAYS passed


def _json_chunks(sync_id: int) -> Iterator[str]:
    with current_runtime().session() as session:
        yield from json_chunks(iter_verdicts(session, sync_id))


def _after_action(sync_id: int) -> tuple[Response, int]:
    with current_runtime().session() as session:
        return jsonify(sync_json(session, get_sync(session, sync_id))), 202


def get_sync(session: Any, sync_id: int) -> Sync:
    sync = session.get(Sync, sync_id)
    if sync is None:
        raise NotFoundError("sync_not_found", f"sync {sync_id} does not exist")
    return sync


def sync_json(session: Any, sync: Sync) -> dict[str, Any]:
    batch_uuids = session.scalars(
        select(SyncBatch.batch_uuid)
        .where(SyncBatch.sync_id == sync.id, SyncBatch.batch_uuid.is_not(None))
        .order_by(SyncBatch.seq)
    ).all()
    return {
        "id": sync.id,
        "name": sync.name,
        "status": sync.status,
        "segment_id": sync.segment_id,
        "connection_id": sync.connection_id,
        "trigger": sync.trigger,
        "crm": sync.crm,
        "type": sync.type,
        "target_country": sync.target_country,
        "parameters": sync.parameters,
        "source": sync.source,  # what the sync reads: file, coalesced webhooks, or a CRM segment
        "failed_step": sync.failed_step,
        "error_code": sync.error_code,
        "error_message": sync.error_message,
        "pause_reason": sync.pause_reason,
        "paused_until": _iso(sync.paused_until),
        "created_at": _iso(sync.created_at),
        "updated_at": _iso(sync.updated_at),
        "completed_at": _iso(sync.completed_at),
        "counts": sync.counts or {},
        "cost": sync.cost or {},
        "max_net_cost": sync.max_net_cost,
        "batch_uuids": list(batch_uuids),
        # What a launch would do (contacts, values, cost, actions), for the operator to approve; null
        # for a sync that never stopped before its launch.
        "plan": sync.plan,
        "actions": sync.actions or [],  # the segment's verdict actions when the sync started
    }


def sync_detail_json(session: Any, sync: Sync) -> dict[str, Any]:
    history = session.scalars(
        select(SyncTransition).where(SyncTransition.sync_id == sync.id).order_by(SyncTransition.id)
    ).all()
    failed = select(SyncContact).where(SyncContact.sync_id == sync.id, SyncContact.outcome == "write_failed")
    failures = session.scalars(failed.order_by(SyncContact.id).limit(WRITE_FAILURES_SHOWN)).all()
    total_failures = session.scalar(select(func.count()).select_from(failed.subquery()))
    moved = select(SyncContact).where(SyncContact.sync_id == sync.id, SyncContact.reason.in_(MOVED_REASONS))
    return {
        **sync_json(session, sync),
        "history": [
            {"from_status": t.from_status, "to_status": t.to_status, "at": _iso(t.at), "note": t.note}
            for t in history
        ],
        "write_failures": [
            {
                "record_id": c.record_id,
                "object_type": c.object_type,
                "reason": c.reason,
                "error_message": c.error_message,
            }
            for c in failures
        ],
        "write_failures_total": total_failures,
        # Contacts whose record was merged or converted before write-back: the record their flags
        # went onto (`written_to`), or why none was written.
        "moved_records": [
            {
                "record_id": c.record_id,
                "object_type": c.object_type,
                "reason": c.reason,
                "written_to": c.written_to,
                "message": c.error_message,
            }
            for c in session.scalars(moved.order_by(SyncContact.id).limit(WRITE_FAILURES_SHOWN))
        ],
        # Verdict actions the CRM refused (their total is counts.actions_failed).
        "action_failures": refused_actions(session, sync.id, WRITE_FAILURES_SHOWN),
    }


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InputError("invalid_parameter", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InputError("invalid_parameter", f"{name} must be from {low} to {high}")
    return value


def _encode_cursor(sync_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{sync_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        sync_id = int(text.removeprefix("id:"))
    except (ValueError, UnicodeDecodeError):
        sync_id = 0
    if not 1 <= sync_id <= MAX_ID:
        raise InputError("invalid_cursor", "cursor is not one this API gave out")
    return sync_id


@admin.get("/segments")
def all_segments() -> ResponseReturnValue:
    with current_runtime().session() as session:
        return jsonify({"segments": [segment_json(s) for s in list_segments(session)]})


@admin.post("/segments")
def add_segment() -> ResponseReturnValue:
    segment = create_segment(current_runtime(), _json_body())
    return jsonify(segment_json(segment)), 201


@admin.get("/segments/<int(max=9223372036854775807):segment_id>")
def show_segment(segment_id: int) -> ResponseReturnValue:
    with current_runtime().session() as session:
        return jsonify(segment_json(get_segment(session, segment_id)))


@admin.patch("/segments/<int(max=9223372036854775807):segment_id>")
def change_segment(segment_id: int) -> ResponseReturnValue:
    return jsonify(segment_json(update_segment(current_runtime(), segment_id, _json_body())))


@admin.delete("/segments/<int(max=9223372036854775807):segment_id>")
def remove_segment(segment_id: int) -> ResponseReturnValue:
    delete_segment(current_runtime(), segment_id)
    return "", 204


@admin.post("/segments/<int(max=9223372036854775807):segment_id>/sync")
def start_segment(segment_id: int) -> ResponseReturnValue:
    return _after_action(sync_segment(current_runtime(), segment_id, "admin").id)


@admin.post("/segments/<int(max=9223372036854775807):segment_id>/plan")
def plan_segment_sync(segment_id: int) -> ResponseReturnValue:
    """A sync that stops before launch with its plan; 409 segment_busy while another sync runs."""
    return _after_action(plan_segment(current_runtime(), segment_id).id)


@admin.get("/connections")
def all_connections() -> ResponseReturnValue:
    base = public_base_url()
    return jsonify({"connections": [connection_json(c, base) for c in list_connections(current_runtime())]})


@admin.get(f"/connections/<{ROW_ID}:connection_id>")
def show_connection(connection_id: int) -> ResponseReturnValue:
    return jsonify(connection_json(get_connection(current_runtime(), connection_id), public_base_url()))


@admin.delete(f"/connections/<{ROW_ID}:connection_id>")
def remove_connection(connection_id: int) -> ResponseReturnValue:
    """Disconnect: revoke at the CRM, forget the tokens, stop the schedules (409 for an env connection)."""
    runtime = current_runtime()
    get_connection(runtime, connection_id)  # 404 for the file source's row too
    return jsonify(connection_json(disconnect(runtime, connection_id), public_base_url()))


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InputError("malformed_json", "expected a JSON object body")
    return body
