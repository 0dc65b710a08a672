"""The HubSpot v3 endpoints of the sandbox (contacts, lists, properties, exports, imports).

Auth, rate limits, injected faults and spec validation happen before these views run
(connector/sandbox/hubspot.py); the views do what HubSpot does with a request it accepted, on the
portal its token addresses (`sandbox_state()`, see connector/sandbox/hubspot_accounts.py).
Route parameters keep the specs' camelCase names so that route names equal the specs' path
templates (the sandbox counts requests per route under those names).

Merged and archived contacts, as HubSpot documents them (developer changelog "Updated merge
functionality for contacts and companies"): POST .../contacts/merge makes a NEW record with a new
id; both merged ids point to it from then on, so a read by either (GET by id, batch/read) answers
the merged record under its new id, whose hs_merged_object_ids lists the ids merged into it
(";"-joined). Its property values are the primary's, the secondary's filling what the primary
lacks; it is a member of every list either was in. An archived contact (DELETE .../{contactId},
batch/archive) is not found by reads (batch/read: 207, OBJECT_NOT_FOUND naming it, as for an
unknown id) unless `archived=true` asks for archived records only. Assumptions where HubSpot
documents nothing: a write (batch/update, an import row) naming a merged-away or archived id is
refused as an unknown id is (207 OBJECT_NOT_FOUND with context ids; INVALID_OBJECT_ID), the
alias being followed by reads only; only live ids can be merged (else 404); archiving an id that is
not a live contact does nothing and still answers 204.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Response, g, request, stream_with_context, url_for

from connector.sandbox.hubspot_accounts import account_query, sandbox_state
from connector.sandbox.hubspot_contacts import ALWAYS_RETURNED, DEFAULT_READ_PROPERTIES, MERGED_IDS
from connector.sandbox.hubspot_errors import (
    HubSpotError,
    not_found,
    standard_error,
    validation_error,
)
from connector.sandbox.hubspot_jobs import (
    REFUSAL_MESSAGE,
    ExportTask,
    ImportJob,
    csv_stream,
    export_headers,
    export_row,
    plan_import,
    zip_stream,
)
from connector.sandbox.hubspot_properties import (
    CONTACT_OBJECT_TYPES,
    ValueProblem,
    describe_problems,
    iso_now,
)
from connector.sandbox.hubspot_state import SandboxState

api = Blueprint("hubspot_api", __name__)

BATCH_LIMIT = 100
RECORD_ERRORS_EVERY = 100  # an import that takes a record_errors fault refuses every 100th row
MEMBERSHIPS_LIMIT = 250
# Record ids one memberships/add request takes. HubSpot's v3 reference states no limit (the v1 lists
# API took 500 a request); the connector sends at most 1,000 (connector/crm/hubspot/actions.py).
MEMBERSHIPS_ADD_LIMIT = 100_000
CONTACT_OBJECT_TYPE_ID = "0-1"
EXPORT_CHUNK_ROWS = 1000


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise validation_error("Invalid input JSON: expected an object")
    return body


def _batch_inputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise validation_error("inputs must be a list of objects")
    if len(inputs) > BATCH_LIMIT:
        raise validation_error(f"Too many inputs: {len(inputs)}; a batch takes at most {BATCH_LIMIT}")
    return inputs


def _property_values(raw: Any) -> dict[str, str]:
    """Property values as the strings HubSpot stores (lenient like HubSpot when validation is off)."""
    if not isinstance(raw, dict):
        raise validation_error("properties must be an object of property name to value")
    values = {}
    for name, value in raw.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        values[str(name)] = "" if value is None else str(value)
    return values


def _query_flag(name: str) -> bool:
    return request.args.get(name, "").lower() == "true"


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise validation_error(f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return int(raw)


def _offset_arg(name: str) -> int:
    raw = request.args.get(name, "0")
    if not raw.isdigit():
        raise validation_error(f"{name} {raw!r} is not a paging token this endpoint issued")
    return int(raw)


# ---- contacts -----------------------------------------------------------------------------


def public_contact(
    contact_id: str,
    props: dict[str, str],
    names: Iterable[str],
    with_history: Iterable[str] | None = None,
    archived_at: str | None = None,
) -> dict[str, Any]:
    """SimplePublicObject: the named properties that are set, plus the ones HubSpot always returns."""
    wanted = [*names, *ALWAYS_RETURNED]
    contact: dict[str, Any] = {
        "id": contact_id,
        "properties": {name: props[name] for name in wanted if name in props},
        "createdAt": props["createdate"],
        "updatedAt": props["lastmodifieddate"],
        "archived": archived_at is not None,
    }
    if archived_at is not None:
        contact["archivedAt"] = archived_at
    if with_history:
        contact["propertiesWithHistory"] = {
            name: [{"value": props[name], "timestamp": props["lastmodifieddate"], "sourceType": "API"}]
            for name in with_history
            if name in props
        }
    return contact


def batch_answer(
    results: list[dict], errors: list[dict], started: str, ok_status: int = 200
) -> tuple[dict, int]:
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "requestedAt": started,
        "startedAt": started,
        "completedAt": iso_now(),
    }
    if errors:
        body["errors"] = errors
        body["numErrors"] = len(errors)
        return body, 207
    return body, ok_status


def _find_contact(state: SandboxState, id_property: str, key: str) -> str | None:
    """The live contact a write names (merged-away and archived ids are not followed: see above)."""
    try:
        return state.contacts.find_id(id_property, key)
    except ValueError as exc:
        raise validation_error(str(exc)) from None


def _read_contact(state: SandboxState, id_property: str, key: str, archived: bool) -> str | None:
    """The contact a read by `key` answers: live (a merged-away id answers the record it is now),
    or, when `archived` is asked, archived."""
    if archived:
        return key if id_property == "hs_object_id" and "archivedAt" in state.contacts.fate(key) else None
    if id_property == "hs_object_id":
        return state.contacts.resolve(key)
    return _find_contact(state, id_property, key)


def _archived_at(state: SandboxState, contact_id: str) -> str | None:
    return state.contacts.fate(contact_id).get("archivedAt")


@api.post("/crm/v3/objects/contacts/batch/read")
def batch_read_contacts() -> tuple[dict, int]:
    body = _json_body()
    inputs = _batch_inputs(body)
    names = body.get("properties") or DEFAULT_READ_PROPERTIES
    id_property = body.get("idProperty") or "hs_object_id"
    archived = _query_flag("archived")
    started = iso_now()
    state = sandbox_state()
    results: dict[str, dict] = {}
    missing: list[str] = []
    with state.lock:
        for item in inputs:
            key = str(item.get("id", ""))
            contact_id = _read_contact(state, id_property, key, archived)
            if contact_id is None:
                missing.append(key)
            elif contact_id not in results:  # two ids merged into one record: it is answered once
                props = state.contacts.get(contact_id) or {}
                results[contact_id] = public_contact(
                    contact_id,
                    props,
                    names,
                    body.get("propertiesWithHistory"),
                    _archived_at(state, contact_id),
                )
    errors = []
    if missing:
        message = (
            "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid."
        )
        errors.append(standard_error("OBJECT_NOT_FOUND", message, {"ids": missing}, []))
    return batch_answer(list(results.values()), errors, started)


@api.post("/crm/v3/objects/contacts/batch/update")
def batch_update_contacts() -> tuple[dict, int]:
    inputs = _batch_inputs(_json_body())
    keys = [str(item.get("id", "")) for item in inputs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise validation_error(f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique")
    started = iso_now()
    state = sandbox_state()
    results, errors = [], []
    # An injected record_errors fault: the first contact went away (merged, deleted) meanwhile.
    gone = {keys[0]} if keys and g.get("record_errors") else set()
    with state.lock:
        for item, key in zip(inputs, keys, strict=True):
            contact_id = _find_contact(state, item.get("idProperty") or "hs_object_id", key)
            if contact_id is None or key in gone:
                message = f"Object not found. objectId are usually numeric. (id {key})"
                errors.append({**standard_error("OBJECT_NOT_FOUND", message, {"ids": [key]}, []), "id": key})
                continue
            values = _property_values(item.get("properties"))
            accepted, problems = state.catalog.check_values(values)
            if contact_id in state.refused_ids:
                problems = [_refusal(values)]
            if problems:
                context = {"ids": [key], "propertyName": [p.name for p in problems]}
                details = [p.detail() for p in problems]
                errors.append(
                    {
                        **standard_error("VALIDATION_ERROR", describe_problems(problems), context, details),
                        "id": key,
                    }
                )
                continue
            state.contacts.update(contact_id, accepted, iso_now())
            results.append(public_contact(contact_id, state.contacts.get(contact_id) or {}, accepted))
    return batch_answer(results, errors, started)


@api.post("/crm/v3/objects/contacts/batch/create")
def batch_create_contacts() -> tuple[dict, int]:
    inputs = _batch_inputs(_json_body())
    started = iso_now()
    state = sandbox_state()
    with state.lock:
        checked = []
        for item in inputs:
            accepted, problems = state.catalog.check_values(_property_values(item.get("properties")))
            if problems:
                raise validation_error(describe_problems(problems), errors=[p.detail() for p in problems])
            checked.append(accepted)
        _refuse_existing_emails(state, checked)
        now = iso_now()
        created = [state.contacts.add(values, now) for values in checked]
        results = [
            public_contact(cid, state.contacts.get(cid) or {}, values)
            for cid, values in zip(created, checked, strict=True)
        ]
    return batch_answer(results, [], started, ok_status=201)


def _refusal(values: dict[str, str]) -> ValueProblem:
    """A permanent refusal (POST /_sandbox/refusals), worded as HubSpot words a failed property check."""
    name, value = next(iter(values.items()), ("hs_object_id", ""))
    return ValueProblem(
        name, value, "INVALID_CUSTOM_PROPERTY_VALIDATION", f"{value!r} for {name}: {REFUSAL_MESSAGE}"
    )


def _refuse_existing_emails(state: SandboxState, inputs: list[dict[str, str]]) -> None:
    seen: set[str] = set()
    for values in inputs:
        email = values.get("email", "").strip().lower()
        if not email:
            continue
        existing = state.contacts.find_id("email", email)
        if existing is not None:
            raise HubSpotError(409, "CONFLICT", f"Contact already exists. Existing ID: {existing}")
        if email in seen:
            raise validation_error(f"Duplicate email in batch input: {email}")
        seen.add(email)


@api.get("/crm/v3/objects/contacts/<contactId>")
def get_contact(contactId: str) -> dict:
    names = request.args.getlist("properties") or DEFAULT_READ_PROPERTIES
    id_property = request.args.get("idProperty") or "hs_object_id"
    state = sandbox_state()
    with state.lock:
        contact_id = _read_contact(state, id_property, contactId, _query_flag("archived"))
        props = state.contacts.get(contact_id) if contact_id else None
        archived_at = _archived_at(state, contact_id) if contact_id else None
    if props is None or contact_id is None:
        raise not_found()
    return public_contact(
        contact_id, props, names, request.args.getlist("propertiesWithHistory"), archived_at
    )


@api.delete("/crm/v3/objects/contacts/<contactId>")
def archive_contact(contactId: str) -> tuple[str, int]:
    state = sandbox_state()
    with state.lock:
        state.archive_contact(contactId)
    return "", 204


@api.post("/crm/v3/objects/contacts/batch/archive")
def batch_archive_contacts() -> tuple[str, int]:
    inputs = _batch_inputs(_json_body())
    state = sandbox_state()
    with state.lock:
        for item in inputs:
            state.archive_contact(str(item.get("id", "")))
    return "", 204


@api.post("/crm/v3/objects/contacts/merge")
def merge_contacts() -> dict:
    body = _json_body()
    primary, secondary = str(body.get("primaryObjectId", "")), str(body.get("objectIdToMerge", ""))
    if primary == secondary:
        raise validation_error(f"Cannot merge contact {primary} with itself")
    state = sandbox_state()
    with state.lock:
        gone = [i for i in (primary, secondary) if not state.contacts.exists(i)]
        if gone:
            raise not_found(f"Could not find CONTACT objects with ids {gone}")
        new_id = state.merge_contacts(primary, secondary)
        props = state.contacts.get(new_id) or {}
    return public_contact(new_id, props, [*DEFAULT_READ_PROPERTIES, MERGED_IDS])


# ---- lists --------------------------------------------------------------------------------


@api.get("/crm/v3/lists/<listId>")
def get_list(listId: str) -> dict:
    state = sandbox_state()
    with state.lock:
        found = state.lists.get(listId)
        if found is None:
            raise not_found(f"List does not exist with listId {listId}")
        return {"list": found.to_json()}


@api.get("/crm/v3/lists")
def get_lists() -> dict:
    state = sandbox_state()
    with state.lock:
        found = [state.lists[i].to_json() for i in request.args.getlist("listIds") if i in state.lists]
    return {"lists": found}


@api.get("/crm/v3/lists/object-type-id/<objectTypeId>/name/<listName>")
def get_list_by_name(objectTypeId: str, listName: str) -> dict:
    state = sandbox_state()
    with state.lock:
        for candidate in state.lists.values():
            if objectTypeId == "0-1" and candidate.name == listName:
                return {"list": candidate.to_json()}
    raise not_found(f"List does not exist with name {listName}")


@api.post("/crm/v3/lists/search")
def search_lists() -> dict:
    body = _json_body()
    query = str(body.get("query") or "").lower()
    offset, count = int(body.get("offset") or 0), int(body.get("count") or 20)
    wanted_ids = set(body.get("listIds") or [])
    state = sandbox_state()
    with state.lock:
        matches = [
            found.to_search_json()
            for found in state.lists.values()
            if query in found.name.lower() and (not wanted_ids or found.list_id in wanted_ids)
        ]
    page = matches[offset : offset + count]
    return {
        "lists": page,
        "offset": offset + len(page),
        "hasMore": offset + count < len(matches),
        "total": len(matches),
    }


@api.get("/crm/v3/lists/<listId>/memberships")
def list_memberships(listId: str) -> dict:
    limit = _int_arg("limit", 100, 1, MEMBERSHIPS_LIMIT)
    start = _offset_arg("after")  # `before` (descending pages) is not supported: ignored
    state = sandbox_state()
    with state.lock:
        found = state.lists.get(listId)
        if found is None:
            raise not_found(f"List does not exist with listId {listId}")
        members = found.members
        end = min(start + limit, len(members))
        results = [
            {"recordId": members[i], "membershipTimestamp": found.joined_at(members[i])}
            for i in range(start, end)
        ]
    page: dict[str, Any] = {"results": results, "total": len(members)}
    if end < len(members):
        link = url_for(
            "hubspot_api.list_memberships", listId=listId, after=str(end), limit=limit, _external=True
        )
        page["paging"] = {"next": {"after": str(end), "link": link}}
    return page


def _record_ids(body: Any, limit: int) -> list[str]:
    if not isinstance(body, list) or not all(isinstance(item, str) for item in body):
        raise validation_error("Invalid input JSON: expected an array of record ids (strings)")
    if len(body) > limit:
        raise validation_error(f"Too many record ids: {len(body)}; a request takes at most {limit}")
    return list(dict.fromkeys(body))


@api.put("/crm/v3/lists/<listId>/memberships/add")
def add_memberships(listId: str) -> dict:
    """Add records to a MANUAL or SNAPSHOT list: members already there and unknown records are not added."""
    record_ids = _record_ids(request.get_json(silent=True), MEMBERSHIPS_ADD_LIMIT)
    # An injected record_errors fault: the first record went away (merged, deleted) meanwhile.
    gone = set(record_ids[:1]) if g.get("record_errors") else set()
    state = sandbox_state()
    added, missing = [], []
    with state.lock:
        found = state.lists.get(listId)
        if found is None:
            raise not_found(f"List does not exist with listId {listId}")
        if not found.static:
            raise validation_error(
                f"List {listId} has processingType {found.processing_type}: records can be added only "
                "to MANUAL or SNAPSHOT lists"
            )
        now = iso_now()
        for record_id in record_ids:
            if record_id in gone or not state.contacts.exists(record_id):
                missing.append(record_id)
            elif found.add_member(record_id, now):
                added.append(record_id)
        if added:
            found.version += 1
    return {"recordIdsMissing": missing, "recordIdsRemoved": [], "recordsIdsAdded": added}


@api.post("/crm/v3/lists/records/memberships/batch/read")
def batch_read_record_memberships() -> tuple[dict, int]:
    """The lists each record is a member of."""
    inputs = _batch_inputs(_json_body())
    started = iso_now()
    state = sandbox_state()
    results, missing = [], []
    with state.lock:
        for item in inputs:
            record_id, object_type = str(item.get("recordId", "")), str(item.get("objectTypeId", ""))
            if object_type != CONTACT_OBJECT_TYPE_ID or not state.contacts.exists(record_id):
                missing.append(record_id)
                continue
            memberships = [
                {
                    "listId": found.list_id,
                    "listVersion": found.version,
                    "firstAddedTimestamp": found.joined_at(record_id),
                    "lastAddedTimestamp": found.joined_at(record_id),
                }
                for found in state.lists.values()
                if found.has_member(record_id)
            ]
            results.append(
                {"objectTypeId": object_type, "recordId": record_id, "recordListMemberships": memberships}
            )
    errors = []
    if missing:
        message = "Could not find some records, they may be deleted or not exist. Check that ids are valid."
        errors.append(standard_error("OBJECT_NOT_FOUND", message, {"ids": missing}, []))
    return batch_answer(results, errors, started)


# ---- properties ---------------------------------------------------------------------------


def _require_contacts(object_type: str) -> None:
    if object_type.lower() not in CONTACT_OBJECT_TYPES:
        raise validation_error(
            f"Unable to infer object type from: {object_type} (the sandbox has contacts only)"
        )


@api.get("/crm/v3/properties/<objectType>")
def list_properties(objectType: str) -> dict:
    _require_contacts(objectType)
    state = sandbox_state()
    with state.lock:
        return {"results": [prop.to_json() for prop in state.catalog.properties.values()]}


@api.post("/crm/v3/properties/<objectType>")
def create_property(objectType: str) -> tuple[dict, int]:
    _require_contacts(objectType)
    body = _json_body()
    state = sandbox_state()
    with state.lock:
        return state.catalog.create_property(body, iso_now()).to_json(), 201


@api.get("/crm/v3/properties/<objectType>/<propertyName>")
def get_property(objectType: str, propertyName: str) -> dict:
    _require_contacts(objectType)
    state = sandbox_state()
    with state.lock:
        prop = state.catalog.get(propertyName)
        if prop is None:
            raise not_found(f"Unable to find property with name '{propertyName}' for object type 0-1")
        return prop.to_json()


@api.get("/crm/v3/properties/<objectType>/groups")
def list_property_groups(objectType: str) -> dict:
    _require_contacts(objectType)
    state = sandbox_state()
    with state.lock:
        return {"results": list(state.catalog.groups.values())}


@api.post("/crm/v3/properties/<objectType>/groups")
def create_property_group(objectType: str) -> tuple[dict, int]:
    _require_contacts(objectType)
    body = _json_body()
    state = sandbox_state()
    with state.lock:
        return state.catalog.create_group(body), 201


@api.get("/crm/v3/properties/<objectType>/groups/<groupName>")
def get_property_group(objectType: str, groupName: str) -> dict:
    _require_contacts(objectType)
    state = sandbox_state()
    with state.lock:
        group = state.catalog.groups.get(groupName)
        if group is None:
            raise not_found(f"Unable to find property group with name '{groupName}'")
        return group


# ---- exports ------------------------------------------------------------------------------


@api.post("/crm/v3/exports/export/async")
def start_export() -> tuple[dict, int]:
    body = _json_body()
    if body.get("exportType") != "LIST":
        raise validation_error("The sandbox supports exportType LIST only")
    if str(body.get("objectType", "")).lower() not in CONTACT_OBJECT_TYPES:
        raise validation_error(
            f"objectType {body.get('objectType')!r} not supported: the sandbox exports contacts"
        )
    if body.get("format") != "CSV":
        raise validation_error(f"format {body.get('format')!r} not supported by the sandbox: use CSV")
    options = set(body.get("exportInternalValuesOptions") or [])
    names = [str(n) for n in body.get("objectProperties") or [] if n != "hs_object_id"]
    state = sandbox_state()
    with state.lock:
        unknown = [n for n in names if state.catalog.get(n) is None]
        if unknown:
            raise validation_error(f"Unknown properties for CONTACT: {unknown}")
        source = state.lists.get(str(body.get("listId")))
        if source is None:
            raise not_found(f"List does not exist with listId {body.get('listId')}")
        task = ExportTask(
            task_id=state.new_task_id(),
            name=str(body.get("exportName") or f"list-{source.list_id}"),
            list_id=source.list_id,
            property_names=names,
            headers=export_headers(state.catalog, names, internal_names="NAMES" in options),
            member_ids=source.members,
            option_labels="VALUES" not in options,
            zipped=state.config.export_zip,
            download_token=secrets.token_urlsafe(16),
        )
        state.exports[task.task_id] = task
    status_url = url_for("hubspot_api.export_status", taskId=task.task_id, _external=True)
    return {"id": task.task_id, "links": {"status": status_url}}, 202


def _export_task(state: SandboxState, task_id: str) -> ExportTask:
    task = state.exports.get(task_id)
    if task is None:
        raise not_found(f"No export task with id {task_id}")
    return task


@api.get("/crm/v3/exports/export/async/tasks/<taskId>/status")
def export_status(taskId: str) -> dict:
    state = sandbox_state()
    with state.lock:
        task = _export_task(state, taskId)
        status = task.status(time.time(), state.config.export_delay)
    body: dict[str, Any] = {
        "status": status,
        "requestedAt": task.requested_iso,
        "startedAt": task.requested_iso,
        "completedAt": task.completed_iso or task.requested_iso,
        "links": {},
    }
    if status == "COMPLETE":
        body["result"] = _export_file_url(state, task)
    return body


def _export_file_url(state: SandboxState, task: ExportTask) -> str:
    """The pre-signed link: on this sandbox, or on the configured stand-in for HubSpot's file host
    (with `?account=` when the export is another portal's than the default one)."""
    path = url_for("hubspot_api.download_export", token=task.download_token, file_name=task.file_name)
    path += account_query()
    return (state.config.export_file_origin or request.host_url).rstrip("/") + path


@api.get("/crm/v3/exports/export/<exportId>")
def get_export(exportId: str) -> dict:
    state = sandbox_state()
    with state.lock:
        task = _export_task(state, exportId)
        status = task.status(time.time(), state.config.export_delay)
    return {
        "id": task.task_id,
        "exportName": task.name,
        "exportState": {"COMPLETE": "DONE", "PENDING": "ENQUEUED"}.get(status, status),
        "exportType": "LIST",
        "objectType": "CONTACT",
        "objectProperties": task.property_names,
        "recordCount": len(task.member_ids),
        "createdAt": task.requested_iso,
        "updatedAt": task.completed_iso or task.requested_iso,
    }


# HubSpot hands out a pre-signed file URL that needs no token; this route stands in for it.
@api.get("/_sandbox/exports/<token>/<file_name>")
def download_export(token: str, file_name: str) -> Response:
    state = sandbox_state()
    with state.lock:
        state.export_downloads.append(
            {"host": request.host, "authorization": "Authorization" in request.headers}
        )
        task = next((t for t in state.exports.values() if t.download_token == token), None)
        ready = task is not None and task.completed_iso is not None and task.file_name == file_name
    if not ready or task is None:
        return Response("not found", status=404, mimetype="text/plain")
    chunks = csv_stream(task.headers, _export_row_batches(state, task))
    if task.zipped:
        chunks = zip_stream(task.file_name.removesuffix(".zip") + ".csv", chunks)
    mimetype = "application/zip" if task.zipped else "text/csv"
    response = Response(stream_with_context(chunks), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{task.file_name}"'
    return response


def _export_row_batches(state: SandboxState, task: ExportTask) -> Iterator[list[list[str]]]:
    # The lock is taken per chunk, so a million-row download does not stall the API.
    for start in range(0, len(task.member_ids), EXPORT_CHUNK_ROWS):
        ids = task.member_ids[start : start + EXPORT_CHUNK_ROWS]
        with state.lock:
            yield [export_row(state.catalog, task, cid, state.contacts.get(cid) or {}) for cid in ids]


# ---- imports ------------------------------------------------------------------------------


@api.post("/crm/v3/imports")
def start_import() -> dict:
    raw_request = request.form.get("importRequest")
    upload = request.files.get("files")
    if raw_request is None or upload is None:
        raise validation_error("A multipart body with an importRequest field and a files file is required")
    try:
        import_request = json.loads(raw_request)
    except ValueError as exc:
        raise validation_error(f"importRequest is not valid JSON: {exc}") from None
    if not isinstance(import_request, dict):
        raise validation_error("importRequest must be a JSON object")
    content = upload.read()
    state = sandbox_state()
    with state.lock:
        plan = plan_import(import_request, upload.filename or "", state.catalog)
        import_id = state.new_import_id()
        job = ImportJob(import_id, str(100000 + int(import_id)), plan, import_request, content)
        if g.get("record_errors"):
            job.refuse_every = RECORD_ERRORS_EVERY
        state.imports[import_id] = job
        return job.to_json()


def _import_job(state: SandboxState, import_id: str) -> ImportJob:
    job = state.imports.get(import_id)
    if job is None:
        raise not_found(f"No import with id {import_id}")
    return job


@api.get("/crm/v3/imports/<importId>")
def get_import(importId: str) -> dict:
    state = sandbox_state()
    with state.lock:
        return _import_job(state, importId).to_json()


@api.get("/crm/v3/imports/<importId>/errors")
def import_errors(importId: str) -> dict:
    limit = _int_arg("limit", 100, 1, 1000)
    start = _offset_arg("after")
    with_message, with_row = _query_flag("includeErrorMessage"), _query_flag("includeRowData")
    state = sandbox_state()
    with state.lock:
        errors = _import_job(state, importId).errors
        page = [_import_error_view(e, with_message, with_row) for e in errors[start : start + limit]]
        total = len(errors)
    body: dict[str, Any] = {"results": page}
    if start + limit < total:
        body["paging"] = {"next": {"after": str(start + limit)}}
    return body


def _import_error_view(error: dict[str, Any], with_message: bool, with_row: bool) -> dict[str, Any]:
    view = dict(error)
    if not with_message:
        view.pop("errorMessage", None)
    if not with_row:
        view["sourceData"] = {**error["sourceData"], "rowData": []}
    return view
