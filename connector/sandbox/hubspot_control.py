"""The HubSpot sandbox's control endpoints under /_sandbox/ (JSON, no auth): seed, inspect, configure.

Each takes `?account=<portal id>` and acts on that portal (absent: the default portal; a portal
not seen before is created empty; not a number: 400). The OAuth settings are the sandbox's own.

- POST /_sandbox/seed: {"contacts": [{"id"?: str, "properties": {...}}],
  "lists": [{"listId"?: str, "name": str, "contactIds": [...], "processingType"?: "MANUAL" (default) |
  "SNAPSHOT" | "DYNAMIC"}], "unsubscribed": [addresses already unsubscribed from all email],
  "generate": {"contacts": n, "list_name", "duplicate_every", "malformed_every",
  "missing_email_every", "seed"}} -> the new ids; "generate" adds n deterministic contacts and
  a list of them (its id is the answer's "listId"). Seeded values are stored as given, unchecked.
- GET /_sandbox/contacts/<id>: all properties of one contact, archived and merged-away ones too
  (then with "archivedAt", or "mergedInto": the record it is now). Contacts are merged and archived
  through HubSpot's own endpoints (POST /crm/v3/objects/contacts/merge, DELETE
  /crm/v3/objects/contacts/{contactId}, POST .../batch/archive): see connector/sandbox/hubspot_api.py.
- GET /_sandbox/contacts?property=a&property=b&offset=&limit=: contacts with those properties
  (all when none is named), seeded contacts first, then generated ones.
- GET /_sandbox/unsubscribes: {"unsubscribed": [addresses unsubscribed from all email],
  "requests": {address: how many unsubscribe-all requests named it}}.
- GET /_sandbox/state: request counts per route, 429s, sizes, custom properties, jobs, config,
  and `export_downloads`: per export file download, its Host and whether it carried Authorization.
- POST /_sandbox/config: change rate_limit_per_10s, daily_limit, export_delay, import_delay,
  validate_requests, validate_responses, export_zip, portal_id, export_file_origin (the
  scheme://host:port export links point to, as HubSpot's pre-signed links point to its file host;
  null: this sandbox).
- POST /_sandbox/faults: {"endpoint": "<METHOD> <route>" | "any", "kind": "http_500" |
  "http_502" | "http_429" | "record_errors", "count": n}: the next n matching requests fail that
  way. `record_errors` is a partial failure, as when contacts are merged or deleted while a sync
  runs: a batch update answers 207 with its first input refused (OBJECT_NOT_FOUND, not written); an
  import refuses every 100th row (INVALID_OBJECT_ID, not written). Other requests are unaffected.
- POST /_sandbox/refusals: {"contactIds": [ids]} replaces the portal's permanent per-record refusals
  (`[]` lifts them) -> {"refusals": [ids]}. A refusal stands for a record the CRM refuses for good
  whatever is retried (a portal's property validation rule): a batch update naming such a contact
  answers 207 with that input refused (category VALIDATION_ERROR, a "Property values were not
  valid: [...]" message with error INVALID_CUSTOM_PROPERTY_VALIDATION, context ids [id]) and the
  others written; an import refuses such rows (INVALID_CUSTOM_PROPERTY_VALIDATION), nothing of
  them written. Unlike `record_errors` it lasts until replaced, so a retry meets it again.
- POST /_sandbox/reset: the portal back to the state the sandbox started in (its OAuth tokens
  stay valid).
- POST /_sandbox/oauth: {"next_account": "<portal id>"} the portal the next consents are for
  (sticky; default: the default portal); {"deny_next": true} the next consent redirects back with
  error=access_denied (once); {"token_ttl_seconds": n} (n > 0) the lifetime of access tokens
  issued from now on (default 1800); {"expire_tokens": true} every access token issued so far for
  the portal expires now; {"revoke_refresh_tokens": true} every refresh token of the portal is refused from
  now on. All optional -> {"next_account", "deny_next", "token_ttl_seconds"} (the settings now),
  plus "expired_tokens" / "revoked_refresh_tokens": how many tokens that did.
- GET /_sandbox/oauth: the portal's counts {"code_grants", "refreshes", "revoked" (refresh
  tokens deleted through the API), "refused_refreshes" (refreshes refused: revoked token),
  "expired_rejections" (API requests refused: access token expired)}.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from connector.sandbox.hubspot_accounts import current_account, portal_key, sandbox_state
from connector.sandbox.hubspot_contacts import IdRange
from connector.sandbox.hubspot_oauth import oauth_authority
from connector.sandbox.hubspot_properties import iso_now
from connector.sandbox.hubspot_state import SandboxState

control = Blueprint("hubspot_control", __name__, url_prefix="/_sandbox")

MAX_GENERATED = 5_000_000
GENERATE_DEFAULTS = {"duplicate_every": 50, "malformed_every": 97, "missing_email_every": 61, "seed": 1}


class ControlError(Exception):
    pass


@control.errorhandler(ControlError)
def _control_error(exc: ControlError) -> ResponseReturnValue:
    return jsonify({"error": str(exc)}), 400


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ControlError("expected a JSON object")
    return body


@control.post("/seed")
def seed() -> ResponseReturnValue:
    body = _body()
    state = sandbox_state()
    answer: dict[str, Any] = {}
    with state.lock:
        try:
            answer["contactIds"] = [_seed_contact(state, c) for c in body.get("contacts", [])]
            answer["listIds"] = [_seed_list(state, spec) for spec in body.get("lists", [])]
            for address in body.get("unsubscribed", []):
                state.opt_outs.since.setdefault(str(address).strip().lower(), iso_now())
            if "generate" in body:
                answer.update(_generate(state, body["generate"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ControlError(f"cannot seed: {exc}") from None
    return jsonify(answer)


def _seed_contact(state: SandboxState, spec: dict[str, Any]) -> str:
    properties = {str(k): "" if v is None else str(v) for k, v in (spec.get("properties") or {}).items()}
    contact_id = spec.get("id")
    return state.contacts.add(properties, iso_now(), None if contact_id is None else str(contact_id))


def _seed_list(state: SandboxState, spec: dict[str, Any]) -> str:
    members = [str(i) for i in spec.get("contactIds", [])]
    unknown = [i for i in members if not state.contacts.exists(i)]
    if unknown:
        raise ValueError(f"list {spec.get('name')!r} names contacts that do not exist: {unknown[:10]}")
    ordered = sorted(set(members), key=int)  # HubSpot pages memberships by ascending record id
    list_id = spec.get("listId")
    processing_type = str(spec.get("processingType") or "MANUAL")
    return state.add_list(
        str(spec["name"]), ordered, None if list_id is None else str(list_id), processing_type
    ).list_id


def _generate(state: SandboxState, spec: dict[str, Any]) -> dict[str, Any]:
    count = spec.get("contacts")
    if not isinstance(count, int) or not 1 <= count <= MAX_GENERATED:
        raise ValueError(f"generate.contacts must be an integer from 1 to {MAX_GENERATED}")
    knobs = {name: int(spec.get(name, default)) for name, default in GENERATE_DEFAULTS.items()}
    block = state.contacts.generate(count, iso_now(), **knobs)
    members = IdRange(block.first_id, block.count)
    generated_list = state.add_list(str(spec.get("list_name") or "Generated contacts"), members)
    return {
        "listId": generated_list.list_id,
        "generated": {"count": count, "firstContactId": members[0], "lastContactId": members[-1], **knobs},
    }


@control.get("/contacts/<contact_id>")
def get_contact(contact_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        props = state.contacts.get(contact_id)
        fate = state.contacts.fate(contact_id)
    if props is None:
        return jsonify({"error": f"no contact {contact_id}"}), 404
    return jsonify({"id": contact_id, "properties": props, **fate})


@control.get("/contacts")
def list_contacts() -> ResponseReturnValue:
    names = request.args.getlist("property")
    offset = request.args.get("offset", 0, type=int)
    limit = request.args.get("limit", type=int)
    state = sandbox_state()
    with state.lock:
        ids = islice(state.contacts.iter_ids(), offset, None if limit is None else offset + limit)
        contacts = []
        for contact_id in ids:
            props = state.contacts.get(contact_id) or {}
            shown = {n: props[n] for n in names if n in props} if names else props
            contacts.append({"id": contact_id, "properties": shown})
        total = len(state.contacts)
    return jsonify({"total": total, "offset": offset, "contacts": contacts})


@control.get("/unsubscribes")
def show_unsubscribes() -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        return jsonify(state.opt_outs.to_json())


@control.get("/state")
def show_state() -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        return jsonify(state.summary())


@control.post("/config")
def configure() -> ResponseReturnValue:
    body = _body()
    state = sandbox_state()
    with state.lock:
        try:
            state.config.update(body)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return jsonify({"config": state.config.public()})


@control.post("/faults")
def add_fault() -> ResponseReturnValue:
    body = _body()
    state = sandbox_state()
    with state.lock:
        try:
            state.faults.add(
                str(body.get("endpoint", "any")), str(body.get("kind")), int(body.get("count", 1))
            )
        except (ValueError, TypeError) as exc:
            raise ControlError(str(exc)) from None
        return jsonify({"faults": state.faults.pending()})


@control.post("/refusals")
def set_refusals() -> ResponseReturnValue:
    contact_ids = _body().get("contactIds")
    if not isinstance(contact_ids, list) or not all(_is_record_id(i) for i in contact_ids):
        raise ControlError("contactIds must be a list of contact ids")
    state = sandbox_state()
    with state.lock:
        state.refused_ids = {str(i) for i in contact_ids}
        return jsonify({"refusals": sorted(state.refused_ids, key=int)})


def _is_record_id(raw: object) -> bool:
    return (isinstance(raw, str) and raw.isdigit()) or (isinstance(raw, int) and not isinstance(raw, bool))


@control.post("/reset")
def reset() -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        state.reset()
    return jsonify({"reset": True})


OAUTH_SETTINGS = ("next_account", "deny_next", "token_ttl_seconds")
OAUTH_FLAGS = ("deny_next", "expire_tokens", "revoke_refresh_tokens")


@control.get("/oauth")
def oauth_counts() -> ResponseReturnValue:
    return jsonify(oauth_authority().counts(current_account()))


@control.post("/oauth")
def configure_oauth() -> ResponseReturnValue:
    body = _body()
    authority = oauth_authority()
    answer = authority.configure(_oauth_settings(body))
    if body.get("expire_tokens"):
        answer["expired_tokens"] = authority.expire_all(current_account())
    if body.get("revoke_refresh_tokens"):
        answer["revoked_refresh_tokens"] = authority.revoke_all(current_account())
    return jsonify(answer)


def _oauth_settings(body: dict[str, Any]) -> dict[str, Any]:
    """The OAuth settings `body` changes, checked (ControlError says what is wrong)."""
    known = sorted({*OAUTH_SETTINGS, *OAUTH_FLAGS})
    if set(body) - set(known):
        raise ControlError(f"unknown OAuth controls {sorted(set(body) - set(known))}; known: {known}")
    flags = [name for name in OAUTH_FLAGS if not isinstance(body.get(name, False), bool)]
    if flags:
        raise ControlError(f"{flags[0]} must be true or false")
    ttl = body.get("token_ttl_seconds", 1)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
        raise ControlError("token_ttl_seconds must be a positive number")
    changes = {name: body[name] for name in OAUTH_SETTINGS if name in body}
    if "next_account" in changes:
        try:
            changes["next_account"] = portal_key(changes["next_account"])
        except ValueError as exc:
            raise ControlError(f"next_account: {exc}") from None
    return changes
