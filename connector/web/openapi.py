"""GET /openapi.json: the connector's HTTP API described as OpenAPI 3.0."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from connector.crm.registry import CRMS, record_objects, segment_kinds
from connector.models import SyncStatus

openapi = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "error")
NULLABLE_STRING = {"type": "string", "nullable": True}
SYNC_ID = {
    "name": "sync_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}
SEGMENT_ID = {
    "name": "segment_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
ADMIN_ERRORS = {"401": ERROR, "404": ERROR, "429": ERROR, "503": ERROR}

PLAN = {
    "type": "object",
    "description": "what approving the sync would do; it stopped in awaiting_approval before any launch",
    "required": ["contacts", "distinct_values", "skipped_recent", "to_send", "estimated_cost"],
    "properties": {
        "contacts": {"type": "integer"},
        "distinct_values": {"type": "integer"},
        "skipped_recent": {"type": "integer", "description": "contacts skipped as recently verified"},
        "to_send": {"type": "integer", "description": "values in the batches uploaded"},
        "estimated_cost": {"type": "number", "description": "net credits, as ApexVerify's parse reported"},
        "actions": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "per verdict action, the contacts it would touch at most",
        },
    },
}
SYNC = {
    "type": "object",
    "required": [
        "id",
        "status",
        "segment_id",
        "connection_id",
        "trigger",
        "crm",
        "type",
        "failed_step",
        "error_code",
        "error_message",
        "created_at",
        "updated_at",
        "counts",
        "cost",
        "batch_uuids",
    ],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in SyncStatus]},
        "segment_id": {"type": "integer", "nullable": True},
        "connection_id": {"type": "integer"},
        "trigger": {"type": "string", "enum": ["webhook", "schedule", "admin", "cli"]},
        "crm": {"type": "string"},
        "type": {"type": "string", "enum": ["email", "phone"]},
        "failed_step": NULLABLE_STRING,
        "error_code": NULLABLE_STRING,
        "error_message": NULLABLE_STRING,
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "counts": {"type": "object"},
        "cost": {"type": "object"},
        "batch_uuids": {"type": "array", "items": {"type": "string"}},
        "source": {"type": "object"},
        "plan": {**PLAN, "nullable": True},
        "actions": {"type": "array", "items": {"type": "object"}},
    },
}
SEGMENT_FIELDS: dict[str, dict[str, Any]] = {
    "crm": {"type": "string"},  # enums from the CRM registry: see segment_fields()
    "kind": {"type": "string"},
    "ref": {"type": "string"},
    "object": {"type": "string", "nullable": True},
    "type": {"type": "string", "enum": ["email", "phone"]},
    "parameters": {"type": "object"},
    "schedule": NULLABLE_STRING,
    "reverify_after_days": {"type": "integer"},
    "max_net_cost": {"type": "number", "nullable": True},
    "name": NULLABLE_STRING,
    "target_country": NULLABLE_STRING,
    "actions": {"type": "array", "items": {"type": "object"}},
    # Required on input when the CRM has several live connections; the only one otherwise.
    "connection_id": {"type": "integer", "minimum": 1, "nullable": True},
}
CONNECTION_ID = {
    "name": "connection_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}
CONNECTION_FIELDS = ["id", "crm", "external_id", "name", "auth", "status", "last_error", "created_at",
                     "updated_at", "webhook_url"]  # fmt: skip
CONNECTION = {
    "type": "object",
    "required": CONNECTION_FIELDS,
    "properties": {
        "id": {"type": "integer"},
        "crm": {"type": "string"},
        "external_id": {"type": "string", "description": "portal id / org id"},
        "name": {"type": "string"},
        "auth": {"type": "string", "enum": ["env", "oauth"]},
        "status": {"type": "string", "enum": ["connected", "needs_reauth", "disconnected"]},
        "last_error": NULLABLE_STRING,
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "webhook_url": {"type": "string", "description": "where the CRM sends this connection's webhooks"},
    },
}


def _admin(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {**responses, **ADMIN_ERRORS},
        **extra,
    }


def document() -> dict[str, Any]:
    sync_action = {"parameters": [SYNC_ID]}
    return {
        "openapi": "3.0.3",
        "info": {"title": "ApexVerify CRM Connector", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "Sync": SYNC,
                "SyncDetail": {
                    "allOf": [
                        _ref("Sync"),
                        {
                            "type": "object",
                            "required": ["history", "write_failures", "action_failures", "moved_records"],
                            "properties": {
                                "history": {"type": "array"},
                                "write_failures": {"type": "array"},
                                "action_failures": {"type": "array"},
                                "moved_records": {"type": "array"},
                            },
                        },
                    ]
                },
                "Segment": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "integer"}, **segment_fields()},
                },
                "SegmentInput": {"type": "object", "properties": segment_fields()},
                "Connection": CONNECTION,
            },
        },
        "paths": {
            "/healthz": {
                "get": {"summary": "process is up", "responses": {"200": _json({"type": "object"}, "up")}}
            },
            "/readyz": {
                "get": {
                    "summary": "database and Redis reachable",
                    "responses": {
                        "200": _json({"type": "object"}, "ready"),
                        "503": _json({"type": "object"}, "not ready"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            **webhook_paths(),
            "/admin/syncs": {
                "get": _admin(
                    "list syncs, newest first",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["syncs", "next_cursor"],
                                "properties": {
                                    "syncs": {"type": "array", "items": _ref("Sync")},
                                    "next_cursor": NULLABLE_STRING,
                                },
                            },
                            "a page",
                        ),
                        "400": ERROR,
                    },
                    parameters=[
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {"name": "segment_id", "in": "query", "schema": {"type": "integer"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                )
            },
            "/admin/syncs/{sync_id}": {
                "get": _admin(
                    "one sync with history and write failures",
                    {"200": _json(_ref("SyncDetail"), "the sync")},
                    **sync_action,
                )
            },
            **{
                f"/admin/syncs/{{sync_id}}/{action}": {
                    "post": _admin(
                        summary, {"202": _json(_ref("Sync"), "accepted"), "409": ERROR}, **sync_action
                    )
                }
                for action, summary in (
                    (
                        "retry",
                        "resume a failed sync at its failed step, or write a completed sync's failed "
                        "writes again from its stored verdicts (no upload, no credits); 409 when there "
                        "is nothing to retry",
                    ),
                    ("cancel", "cancel a sync"),
                    ("approve", "approve a sync over budget, or a plan: launch its batches"),
                )
            },
            "/admin/syncs/{sync_id}/results": {
                "get": _admin(
                    "the verdicts of a sync",
                    {
                        "200": {
                            "description": "JSON keyed by value, or XLSX",
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {},
                            },
                        },
                        "400": ERROR,
                        "409": ERROR,
                        "410": ERROR,
                    },
                    parameters=[
                        SYNC_ID,
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["json", "xlsx"]},
                        },
                    ],
                )
            },
            "/admin/segments": {
                "get": _admin(
                    "list segments",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["segments"],
                                "properties": {"segments": {"type": "array", "items": _ref("Segment")}},
                            },
                            "every segment not deleted",
                        )
                    },
                ),
                "post": _admin(
                    "create a segment",
                    {"201": _json(_ref("Segment"), "created"), "400": ERROR},
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": _ref("SegmentInput")}},
                    },
                ),
            },
            "/admin/segments/{segment_id}": {
                "get": _admin(
                    "one segment", {"200": _json(_ref("Segment"), "the segment")}, parameters=[SEGMENT_ID]
                ),
                "patch": _admin(
                    "change a segment",
                    {"200": _json(_ref("Segment"), "changed"), "400": ERROR},
                    parameters=[SEGMENT_ID],
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": _ref("SegmentInput")}},
                    },
                ),
                "delete": _admin(
                    "delete a segment", {"204": {"description": "deleted"}}, parameters=[SEGMENT_ID]
                ),
            },
            "/admin/segments/{segment_id}/sync": {
                "post": _admin(
                    "start a sync of the segment",
                    {
                        "202": _json(_ref("Sync"), "started, or the source's sync still unsettled"),
                        "409": ERROR,
                    },
                    parameters=[SEGMENT_ID],
                )
            },
            "/admin/segments/{segment_id}/plan": {
                "post": _admin(
                    "plan a sync of the segment: export, upload and parse, then await approval",
                    {
                        "202": _json(_ref("Sync"), "started, or the segment's plan still unapproved"),
                        "409": _json(_ref("Error"), "segment_busy: another sync of the segment is unsettled"),
                    },
                    parameters=[SEGMENT_ID],
                )
            },
            "/admin/connections": {
                "get": _admin(
                    "list the CRM connections (portals, orgs)",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["connections"],
                                "properties": {"connections": {"type": "array", "items": _ref("Connection")}},
                            },
                            "every connection, oldest first",
                        )
                    },
                )
            },
            "/admin/connections/{connection_id}": {
                "get": _admin(
                    "one connection",
                    {"200": _json(_ref("Connection"), "the connection")},
                    parameters=[CONNECTION_ID],
                ),
                "delete": _admin(
                    "disconnect: revoke the refresh token at the CRM, forget the tokens, stop the schedules",
                    {
                        "200": _json(_ref("Connection"), "disconnected"),
                        "409": _json(_ref("Error"), "an env connection: remove its environment variables"),
                    },
                    parameters=[CONNECTION_ID],
                ),
            },
        },
    }


@openapi.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return jsonify(document())


def segment_fields() -> dict[str, Any]:
    """A segment's fields, with the CRMs, kinds and objects the registry holds now."""
    enums: dict[str, list[str]] = {
        "crm": list(CRMS),
        "kind": list(segment_kinds()),
        "object": record_objects(),
    }
    return {
        name: {**schema, "enum": enums[name]} if name in enums else schema
        for name, schema in SEGMENT_FIELDS.items()
    }


def webhook_paths() -> dict[str, Any]:
    """/webhooks/<crm> for every CRM that sends webhooks, as its entry in the registry describes it."""
    paths: dict[str, Any] = {}
    for crm in CRMS.values():
        if crm.read_webhook is None:
            continue
        operation = dict(crm.webhook_openapi)
        errors = {str(status): ERROR for status in crm.webhook_errors}
        operation["responses"] = {**operation.get("responses", {}), **errors}
        paths[f"/webhooks/{crm.name}"] = {"post": operation}
    return paths
