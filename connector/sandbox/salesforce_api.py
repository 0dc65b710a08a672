"""The Salesforce REST endpoints of the sandbox: versions, resources, limits, SOQL query (with
cursor paging), describe, single records (read, update, delete), sObject Collections updates and
creates (campaign members only: salesforce_members.py).

Deleting a record (DELETE .../sobjects/<object>/<id>, "204 No Content" as Salesforce's REST
API answers a DELETE) moves it to the recycle bin, a contact's or lead's campaign memberships
with it: queries leave it out, queryAll shows it with IsDeleted true, reading it is 404 and
updating it is refused, both ENTITY_IS_DELETED; so is deleting it again. An id that names no
record of the object is 404 NOT_FOUND.

Auth, the daily allocation, faults and the version check happen before these run
(connector/sandbox/salesforce.py); every function here runs for an admitted request.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from connector.sandbox.salesforce_members import MEMBER, Taken, apply_member_insert, plan_member_insert
from connector.sandbox.salesforce_schema import coerce_json, describe, to_json
from connector.sandbox.salesforce_soql import BoundQuery, SoqlError, compile_query
from connector.sandbox.salesforce_state import (
    QueryCursor,
    SalesforceError,
    SandboxState,
    not_found,
    sandbox_state,
)
from connector.sandbox.salesforce_writes import (
    PlannedWrite,
    WriteError,
    apply,
    find_record,
    plan_update,
    rolled_back,
)

api = Blueprint("salesforce_api", __name__, url_prefix="/services/data")

OLDEST_VERSION = 31
LATEST_VERSION = 64
QUERY_BATCH = 2000
MIN_QUERY_BATCH = 200
COLLECTION_LIMIT = 200
SEASONS = ("Winter", "Spring", "Summer")


def supported_version(version: str) -> bool:
    major, dot, minor = version.partition(".")
    return dot == "." and minor == "0" and major.isdigit() and OLDEST_VERSION <= int(major) <= LATEST_VERSION


def _release_label(major: int) -> str:
    """Salesforce's release names: 59.0 is Winter '24, 60.0 Spring '24, 61.0 Summer '24, ..."""
    cycle, season = divmod(major - 59, 3)
    return f"{SEASONS[season]} '{24 + cycle:02d}"


@api.get("/")
def versions() -> ResponseReturnValue:
    return jsonify(
        [
            {"label": _release_label(major), "url": f"/services/data/v{major}.0", "version": f"{major}.0"}
            for major in range(OLDEST_VERSION, LATEST_VERSION + 1)
        ]
    )


@api.get("/v<version>/")
def resources(version: str) -> ResponseReturnValue:
    base = f"/services/data/v{version}"
    names = ("sobjects", "query", "queryAll", "limits", "composite", "jobs")
    return jsonify({name: f"{base}/{name}" for name in names})


@api.get("/v<version>/limits")
def limits(version: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        limit, used = state.config.daily_api_limit, state.api_usage
        query_jobs = len(state.query_jobs)
    return jsonify(
        {
            "DailyApiRequests": {"Max": limit, "Remaining": max(0, limit - used)},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000 - query_jobs},
            "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
        }
    )


# ---- SOQL ----


def bound_query(state: SandboxState, text: str | None) -> BoundQuery:
    if not text:
        raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
    try:
        return compile_query(text, state.schema)
    except SoqlError as error:
        raise SalesforceError(400, error.code, error.message) from None


@api.get("/v<version>/query")
def query(version: str) -> ResponseReturnValue:
    return _first_page(version, "query", include_deleted=False)


@api.get("/v<version>/queryAll")
def query_all(version: str) -> ResponseReturnValue:
    return _first_page(version, "queryAll", include_deleted=True)


@api.get("/v<version>/query/<locator>")
@api.get("/v<version>/queryAll/<locator>")
def query_more(version: str, locator: str) -> ResponseReturnValue:
    cursor_id, _, offset = locator.partition("-")
    state = sandbox_state()
    with state.lock:
        cursor = state.cursors.get(cursor_id)
        if cursor is None or not offset.isdigit() or int(offset) > len(cursor.serials):
            raise SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return jsonify(_page(state, cursor, cursor_id, int(offset)))


def _first_page(version: str, endpoint: str, *, include_deleted: bool) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        bound = bound_query(state, request.args.get("q"))
        serials = bound.run(state.store, include_deleted=include_deleted)
        if bound.is_count:
            return jsonify({"totalSize": len(serials), "done": True, "records": []})
        cursor = QueryCursor(bound, serials, version, endpoint, _batch_size())
        cursor_id = state.open_cursor(cursor) if len(serials) > cursor.batch_size else ""
        return jsonify(_page(state, cursor, cursor_id, 0))


def _batch_size() -> int:
    """Sforce-Query-Options: batchSize=n (200 to 2000; Salesforce's default is 2000)."""
    options = request.headers.get("Sforce-Query-Options", "")
    for option in options.split(","):
        name, _, value = option.strip().partition("=")
        if name == "batchSize" and value.isdigit():
            return max(MIN_QUERY_BATCH, min(QUERY_BATCH, int(value)))
    return QUERY_BATCH


def _page(state: SandboxState, cursor: QueryCursor, cursor_id: str, offset: int) -> dict[str, Any]:
    end = offset + cursor.batch_size
    bound, store = cursor.query, state.store
    records = [
        bound.record_json(store.view(s, bound.needed), cursor.version) for s in cursor.serials[offset:end]
    ]
    page: dict[str, Any] = {"totalSize": len(cursor.serials), "done": end >= len(cursor.serials)}
    if not page["done"]:
        path = f"/services/data/v{cursor.version}/{cursor.endpoint}/{cursor_id}-{end}"
        page["nextRecordsUrl"] = state.config.next_records_url_prefix + path
    page["records"] = records
    return page


# ---- sObjects ----


@api.get("/v<version>/sobjects")
def describe_global(version: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        names = state.schema.names()
    sobjects = [
        {
            "name": name,
            "label": name,
            "queryable": True,
            "updateable": True,
            "urls": {
                "sobject": f"/services/data/v{version}/sobjects/{name}",
                "describe": f"/services/data/v{version}/sobjects/{name}/describe",
            },
        }
        for name in names
    ]
    return jsonify({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects})


@api.get("/v<version>/sobjects/<object_name>/describe")
def describe_object(version: str, object_name: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        schema = state.schema.object(object_name)
        if schema is None:
            raise not_found()
        return jsonify(describe(schema, version))


@api.get("/v<version>/sobjects/<object_name>/<record_id>")
def get_record(version: str, object_name: str, record_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        schema, record_id, serial = _live_record(state, object_name, record_id)
        names = _requested_fields(schema.fields, request.args.get("fields"))
        values = state.store.values(serial, names)
    url = f"/services/data/v{version}/sobjects/{schema.name}/{record_id}"
    return jsonify(
        {"attributes": {"type": schema.name, "url": url}, **{n: to_json(v) for n, v in values.items()}}
    )


def _requested_fields(fields: dict[str, Any], wanted: str | None) -> list[str]:
    if not wanted:
        return list(fields)
    by_lower = {name.lower(): name for name in fields}
    names = []
    for name in wanted.split(","):
        canonical = by_lower.get(name.strip().lower())
        if canonical is None:
            raise SalesforceError(400, "INVALID_FIELD", f"No such column '{name.strip()}' on sobject")
        names.append(canonical)
    return names


@api.delete("/v<version>/sobjects/<object_name>/<record_id>")
def delete_record(version: str, object_name: str, record_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        _, _, serial = _live_record(state, object_name, record_id)
        state.store.delete(serial)
    return "", 204


def _live_record(state: Any, object_name: str, record_id: str) -> tuple[Any, str, int]:
    """(object schema, record id as stored, serial) of a record not deleted; 404 NOT_FOUND for an
    unknown object or id, 404 ENTITY_IS_DELETED for one in the recycle bin (the caller holds the lock)."""
    schema = state.schema.object(object_name)
    if schema is None:
        raise not_found()
    found = find_record(state, schema.name, record_id)
    if isinstance(found, WriteError):
        raise not_found()
    stored_id, serial = found
    if serial in state.store.deleted:
        raise SalesforceError(404, "ENTITY_IS_DELETED", "entity is deleted")
    return schema, stored_id, serial


@api.patch("/v<version>/sobjects/<object_name>/<record_id>")
def update_record(version: str, object_name: str, record_id: str) -> ResponseReturnValue:
    body = _json_body()
    if not isinstance(body, dict):
        raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    state = sandbox_state()
    with state.lock:
        schema = state.schema.object(object_name)
        if schema is None:
            raise not_found()
        plan = plan_update(
            state, schema.name, record_id, _field_values(state, schema.name, body), coerce_json
        )
        if plan.record_id is None and plan.errors[0].code == "INVALID_CROSS_REFERENCE_KEY":
            raise not_found()
        if not plan.ok:
            errors = [
                {"message": e.message, "errorCode": e.code, "fields": list(e.fields)} for e in plan.errors
            ]
            return jsonify(errors), 400
        apply(state, plan)
    return "", 204


# ---- sObject Collections ----


def _collection_records() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The body of an sObject Collections request and its records (at most 200)."""
    body = _json_body()
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body needs a list of records")
    if len(records) > COLLECTION_LIMIT:
        raise SalesforceError(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        )
    return body, records


@api.patch("/v<version>/composite/sobjects")
def update_collection(version: str) -> ResponseReturnValue:
    body, records = _collection_records()
    state = sandbox_state()
    with state.lock:
        plans = [_plan_collection_record(state, record) for record in records]
        if body.get("allOrNone") is True and not all(plan.ok for plan in plans):
            return jsonify([_save_result(p if not p.ok else rolled_back(p)) for p in plans])
        for plan in plans:
            if plan.ok:
                apply(state, plan)
    return jsonify([_save_result(plan) for plan in plans])


@api.post("/v<version>/composite/sobjects")
def create_collection(version: str) -> ResponseReturnValue:
    """Creates, in order (a later record may duplicate an earlier one); only CampaignMember is creatable."""
    body, records = _collection_records()
    state = sandbox_state()
    with state.lock:
        taken: Taken = set()
        plans = [_plan_collection_insert(state, record, taken) for record in records]
        if body.get("allOrNone") is True and not all(plan.ok for plan in plans):
            return jsonify([_save_result(p if not p.ok else rolled_back(p)) for p in plans])
        for plan in plans:
            if plan.ok:
                apply_member_insert(state, plan)
    return jsonify([_save_result(plan) for plan in plans])


def _plan_collection_insert(state: SandboxState, record: dict[str, Any], taken: Taken) -> PlannedWrite:
    object_name, fields = _typed_fields(state, record)
    if object_name != MEMBER:
        raise SalesforceError(
            400, "INVALID_TYPE", f"The sandbox creates {MEMBER} records only, not {object_name}"
        )
    raw_id = next((value for name, value in fields.items() if name.lower() == "id"), None)
    values = _field_values(state, object_name, fields)
    return plan_member_insert(state, {**values, "Id": raw_id}, coerce_json, taken)


def _plan_collection_record(state: SandboxState, record: dict[str, Any]) -> PlannedWrite:
    object_name, fields = _typed_fields(state, record)
    record_id = next((value for name, value in fields.items() if name.lower() == "id"), None)
    return plan_update(state, object_name, record_id, _field_values(state, object_name, fields), coerce_json)


def _typed_fields(state: SandboxState, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The canonical object name a collection record's attributes give, and its fields."""
    attributes = record.get("attributes")
    type_name = attributes.get("type") if isinstance(attributes, dict) else None
    if not isinstance(type_name, str):
        raise SalesforceError(400, "JSON_PARSER_ERROR", "Each record needs attributes with its type")
    schema = state.schema.object(type_name)
    if schema is None:
        raise SalesforceError(400, "INVALID_TYPE", f"sObject type '{type_name}' is not supported.")
    return schema.name, {name: value for name, value in record.items() if name != "attributes"}


def _field_values(state: SandboxState, object_name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The body's fields under their canonical names, Id left out; an unknown one fails the request."""
    schema = state.schema.object(object_name)
    assert schema is not None
    values = {}
    for name, value in fields.items():
        if name.lower() == "id":
            continue
        found = schema.field(name)
        if found is None:
            raise SalesforceError(
                400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {object_name}"
            )
        values[found.name] = value
    return values


def _save_result(plan: PlannedWrite) -> dict[str, Any]:
    result: dict[str, Any] = {"id": plan.record_id} if plan.record_id else {}
    result.update({"success": plan.ok, "errors": [error.to_json() for error in plan.errors]})
    return result


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON")
    return body
