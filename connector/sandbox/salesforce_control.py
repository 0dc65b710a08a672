"""The Salesforce sandbox's control endpoints under /_sandbox/ (JSON, no auth): seed, inspect, configure.

Every one takes `?account=<org id>` (15 or 18 characters, key prefix 00D; 400 otherwise) and acts on
that org, created empty when first named; without it, on the default org (SALESFORCE_ORG_ID, else
00DDn0000000001). API requests reach an org through their session id (salesforce_orgs.py).

- POST /_sandbox/seed: {"accounts": [{"Id"?, "Name"}], "contacts": [{"Id"?, "Email", "Phone",
  "FirstName", "LastName", "AccountId"?, ...}], "leads": [{..., "IsConverted": bool,
  "ConvertedContactId"?, "ConvertedAccountId"?, "ConvertedDate"?}], "campaigns": [{"Id"?, "Name",
  "members": [{"ContactId" | "LeadId", "Status"?}], "member_statuses"?: [{"Label", "IsDefault"?,
  "HasResponded"?}]}] (member statuses default to "Sent", the default, and "Responded"),
  "deleted_ids": [...], "validation_rule_ids": [...],
  "generate": {"campaign_members": n, "lead_ratio": 0.3, "duplicate_every": 50, "malformed_every": 97,
  "missing_email_every": 61, "converted_every": 200, "seed": 1, "campaign_name"?}}
  -> {"accounts": [ids], "contacts": [ids], "leads": [ids], "converted": [{"LeadId", "ContactId",
  "AccountId"}] (the leads seeded converted), "campaigns": [{"Id", "members": [ids]}],
  "campaign_id" and "generated" (counts) when generating}. Field names are Salesforce's (any case);
  "IsDeleted": true seeds a deleted record. Deleted and validation-rule ids may name any record,
  seeded earlier or in the same call (they are applied last). A record deleted so is in the recycle
  bin as one deleted through the API is (DELETE /services/data/vXX.X/sobjects/<object>/<id>,
  salesforce_api.py), except that its campaign memberships stay as seeded.
  A converted lead is never converted to no contact, as on Salesforce: one seeded "IsConverted":
  true without a ConvertedContactId is converted as POST /_sandbox/convert converts it without
  ContactId (a new contact with its names, Email and Phone, and a new account; a seeded
  ConvertedDate is kept; a ConvertedAccountId needs a ConvertedContactId); one with a
  ConvertedContactId naming a contact (seeded earlier or in the same call) keeps it as given, its
  ConvertedAccountId defaulting to that contact's account and its ConvertedDate to today. Conversion
  fields on a lead that is not converted are refused (400). A seeded member naming a converted
  lead names its contact too (ContactId beside LeadId), as a converted lead's member does.
  A generated campaign's every `converted_every`-th person is a converted lead in the same way
  (salesforce_records.py): a Contact (its names, Email and Phone) and an Account (its company)
  were made for it, its lead names them (ConvertedContactId, ConvertedAccountId, ConvertedDate: the
  day it was generated) and its member carries both LeadId and ContactId; the contact is written,
  read and queried like any other. "generated" counts records: {"campaign_members", "contacts"
  (the members' and the converted leads'), "leads" (converted ones too), "converted_leads",
  "accounts", and the knobs}.
- POST /_sandbox/convert: {"leads": [{"LeadId", "ContactId"?}]} converts leads as Salesforce's
  lead conversion does (salesforce_convert.py): without ContactId a new contact (and account) is
  created from the lead's names, Email, Phone, MobilePhone, Title and Email Opt Out; with it the
  lead is merged into that contact, which keeps its own values (only its empty fields are filled).
  The lead gets IsConverted, Status "Closed - Converted", ConvertedContactId, ConvertedAccountId
  and ConvertedDate, and refuses updates from then on (CANNOT_UPDATE_CONVERTED_LEAD, REST and
  Bulk alike); its campaign members name the contact too. -> {"converted": [{"LeadId",
  "ContactId", "AccountId"}]} in the order asked. 400, nothing converted, when an entry names no
  live lead, a lead converted already or named twice, or no live contact.
- POST /_sandbox/locks: {"ids": [...], "times": n (1)}: each record refuses its next n updates
  (sObject update, Collections, Bulk ingest) with UNABLE_TO_LOCK_ROW "unable to obtain exclusive
  access to this record", as a row another transaction holds does. -> {"locked": {id: n}}.
- GET /_sandbox/records/<id>: {"object", "id", "deleted", "validation_rule", "fields"} (every field).
- GET /_sandbox/records?object=Contact&offset=0&limit=1000&field=Email&field=...: records in query
  order (seeded first, then generated), only the named fields when some are named.
- GET /_sandbox/state: requests per "<METHOD> <route>" (route as the URL rule, e.g.
  "GET /services/data/v{version}/query"), api_usage, api_limit, record counts, jobs, config,
  "campaign_members_created" ({campaign id: {contact or lead id: members created through the API}})
  and "duplicate_members_refused" (creates refused with DUPLICATE_VALUE).
- POST /_sandbox/config: {"daily_api_limit", "api_usage", "bulk_delay", "missing_fields":
  {"Contact": [...]}, "readonly_fields": {"Lead": [...]}, "expire_token": true, "track_writes":
  ["ApexVerify_Status__c", ...], "next_records_url_prefix": "@evil.example"} (any subset).
  `track_writes` keeps every value written to those fields (by sObject updates, Collections and
  Bulk ingest), so a test can see a record written twice. `next_records_url_prefix` is put in front
  of every query answer's nextRecordsUrl, standing in for an org whose answers point elsewhere.
- GET /_sandbox/writes?field=ApexVerify_Status__c: {"field", "records": {id: [values in write order]}}
  for every record written since the field was tracked.
- POST /_sandbox/faults: {"endpoint": "<METHOD> <route>" | "any", "kind": "http_500" | "http_503" |
  "request_limit" | "concurrent_limit", "count": n}: the next n matching API requests fail that way
  (`request_limit`: 403 REQUEST_LIMIT_EXCEEDED for the daily allocation; `concurrent_limit`: the same
  errorCode for the concurrent long-running request limit, "ConcurrentPerOrgLongTxn Limit exceeded.").
- POST /_sandbox/reset: the org back to the state it started in (its OAuth tokens stay good);
  with {"all": true}, the whole sandbox: the default org only, reset, no OAuth code or token, the
  OAuth settings back to their defaults.
- POST /_sandbox/oauth: {"next_account": "<org id>" | null, "deny_next": true, "token_ttl_seconds": n,
  "expire_tokens": true, "revoke_refresh_tokens": true} (any subset). `next_account`: the org every
  consent (GET /services/oauth2/authorize) is for from now on (null: the default org); `deny_next`:
  the next consent redirects back with error=access_denied (once); `token_ttl_seconds`: the lifetime
  of OAuth access tokens issued from now on (7200 unless set); `expire_tokens`: every OAuth access
  token of the ?account= org expires now (API requests with it: 401 INVALID_SESSION_ID);
  `revoke_refresh_tokens`: every refresh token of the ?account= org is refused from now on.
  -> {"next_account", "deny_next", "token_ttl_seconds", "expired_tokens": n, "revoked_refresh_tokens": n}.
  Neither touches the configured or client-credentials sessions of the default org (POST
  /_sandbox/config {"expire_token": true} expires those).
- GET /_sandbox/oauth: counts for the ?account= org: {"code_grants", "refreshes", "revoked" (POST
  /services/oauth2/revoke calls that revoked a token), "refused_refreshes" (refresh grants refused
  for a known refresh token), "expired_rejections" (API requests refused because their OAuth access
  token had expired)}.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from connector.sandbox.salesforce_convert import convert_leads, name_contact_on_members
from connector.sandbox.salesforce_ids import object_for_id, to_18
from connector.sandbox.salesforce_members import DEFAULT_STATUSES
from connector.sandbox.salesforce_orgs import org_directory
from connector.sandbox.salesforce_records import GenerateKnobs
from connector.sandbox.salesforce_schema import (
    CONVERTED_STATUS,
    default_values,
    full_object,
    parse_date,
    parse_datetime,
    to_json,
    utc_now,
)
from connector.sandbox.salesforce_state import SandboxState, sandbox_state

control = Blueprint("salesforce_control", __name__, url_prefix="/_sandbox")

MAX_GENERATED = 5_000_000
# What a lead's conversion sets beside IsConverted (salesforce_convert.py).
CONVERSION_FIELDS = ("ConvertedContactId", "ConvertedAccountId", "ConvertedDate")
DEFAULT_LIST_LIMIT = 1000


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


# ---- seeding ----


@control.post("/seed")
def seed() -> ResponseReturnValue:
    body = _body()
    state = sandbox_state()
    converted: list[dict[str, Any]] = []
    with state.lock:
        try:
            answer: dict[str, Any] = {
                "accounts": [_seed_record(state, "Account", spec) for spec in body.get("accounts", [])],
                "contacts": [_seed_record(state, "Contact", spec) for spec in body.get("contacts", [])],
                "leads": [_seed_lead(state, spec, converted) for spec in body.get("leads", [])],
                "converted": converted,
                "campaigns": [_seed_campaign(state, spec) for spec in body.get("campaigns", [])],
            }
            if "generate" in body:
                answer.update(_generate(state, body["generate"]))
            state.store.deleted.update(_serials(state, body.get("deleted_ids", [])))
            state.store.validation_rule.update(_serials(state, body.get("validation_rule_ids", [])))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ControlError(f"cannot seed: {exc}") from None
    return jsonify(answer)


@dataclass
class _Seeded:
    """A record about to be stored: its values (every field), the id it was seeded with, deleted or not."""

    object_name: str
    values: dict[str, Any]
    record_id: str | None = None
    deleted: bool = False


def _seed_record(state: SandboxState, object_name: str, spec: dict[str, Any]) -> str:
    return _store(state, _seed_values(object_name, spec))


def _seed_values(object_name: str, spec: dict[str, Any]) -> _Seeded:
    schema = full_object(object_name)
    now = utc_now()
    values = {
        **default_values(object_name),
        "CreatedDate": now,
        "LastModifiedDate": now,
        "SystemModstamp": now,
    }
    seeded = _Seeded(object_name, values)
    for name, raw in spec.items():
        found = schema.field(name)
        if found is None:
            raise ValueError(f"{object_name} has no field {name!r}")
        if found.name == "Id":
            seeded.record_id = _seed_id(object_name, raw)
        elif found.name == "IsDeleted":
            seeded.deleted = bool(raw)
        else:
            values[found.name] = _seed_value(found.type, raw)
    if values.get("Name") is None and object_name in ("Contact", "Lead"):
        values["Name"] = " ".join(str(values[n]) for n in ("FirstName", "LastName") if values.get(n)) or None
    return seeded


def _store(state: SandboxState, seeded: _Seeded) -> str:
    record_id = state.store.add(seeded.object_name, seeded.values, seeded.record_id)
    if seeded.deleted:
        state.store.deleted.update(_serials(state, [record_id]))
    return record_id


def _seed_lead(state: SandboxState, spec: dict[str, Any], converted: list[dict[str, Any]]) -> str:
    """A lead. One seeded converted is as Salesforce's conversion leaves it, never converted to no
    contact: with a ConvertedContactId naming a contact, kept as given; without one, converted now
    (salesforce_convert.py: a new contact and account). Each is added to `converted`."""
    seeded = _seed_values("Lead", spec)
    values = seeded.values
    if not values["IsConverted"]:
        given = [name for name in CONVERSION_FIELDS if values[name] is not None]
        if given:
            raise ValueError(f"a lead that is not converted has no {', '.join(given)}: {spec}")
        return _store(state, seeded)
    if values["ConvertedContactId"] is not None:
        conversion = _store_converted_as_given(state, seeded)
    elif values["ConvertedAccountId"] is not None:
        raise ValueError(f"a lead seeded converted into an account names its ConvertedContactId too: {spec}")
    else:
        conversion = _store_and_convert(state, seeded)
    converted.append(conversion)
    return str(conversion["LeadId"])


def _store_converted_as_given(state: SandboxState, seeded: _Seeded) -> dict[str, Any]:
    """A lead seeded converted to a contact: what the seed leaves out is what the conversion would have
    set (the contact's account, the day, the converted status)."""
    values = seeded.values
    contact_id = to_18(values["ConvertedContactId"])
    serial = state.store.resolve(contact_id) if contact_id else None
    if contact_id is None or serial is None or object_for_id(contact_id) != "Contact":
        raise ValueError(f"ConvertedContactId {values['ConvertedContactId']!r} names no contact")
    account_id = state.store.values(serial, ["AccountId"])["AccountId"]
    values["ConvertedAccountId"] = values["ConvertedAccountId"] or account_id
    values["ConvertedDate"] = values["ConvertedDate"] or values["CreatedDate"].date()
    values["Status"] = CONVERTED_STATUS
    lead_id = _store(state, seeded)
    return {"LeadId": lead_id, "ContactId": contact_id, "AccountId": values["ConvertedAccountId"]}


def _store_and_convert(state: SandboxState, seeded: _Seeded) -> dict[str, Any]:
    """Stored as the lead it was, then converted as POST /_sandbox/convert converts; a seeded
    ConvertedDate is kept, and a lead seeded deleted is deleted once converted."""
    day, deleted = seeded.values["ConvertedDate"], seeded.deleted
    seeded.values.update(IsConverted=False, ConvertedDate=None)
    seeded.deleted = False
    lead_id = _store(state, seeded)
    [conversion] = convert_leads(state, [{"LeadId": lead_id}])
    serial = state.store.resolve(lead_id)
    assert serial is not None
    if day is not None:
        state.store.update(serial, {"ConvertedDate": day})
    if deleted:
        state.store.deleted.add(serial)
    return {"LeadId": lead_id, "ContactId": conversion.contact_id, "AccountId": conversion.account_id}


def _seed_id(object_name: str, raw: Any) -> str:
    id18 = to_18(raw)
    if id18 is None or object_for_id(id18) != object_name:
        raise ValueError(f"{raw!r} is not a valid {object_name} id")
    return id18


def _seed_value(field_type: str, raw: Any) -> Any:
    """Seeded values are stored as given, typed: no picklist or format checks (real orgs hold odd data)."""
    if raw is None:
        return False if field_type == "boolean" else None
    if field_type == "boolean":
        return raw if isinstance(raw, bool) else str(raw).lower() == "true"
    if field_type == "datetime":
        parsed = parse_datetime(str(raw))
        if parsed is None:
            raise ValueError(f"{raw!r} is not a datetime")
        return parsed
    if field_type == "date":
        day = parse_date(str(raw))
        if day is None:
            raise ValueError(f"{raw!r} is not a date")
        return day
    if field_type in ("id", "reference"):
        return to_18(raw) or str(raw)
    return str(raw)


def _seed_campaign(state: SandboxState, spec: dict[str, Any]) -> dict[str, Any]:
    members = spec.get("members", [])
    campaign_spec = {
        name: value for name, value in spec.items() if name not in ("members", "member_statuses")
    }
    campaign_id = _seed_campaign_record(
        state, {"Name": "Campaign", **campaign_spec}, spec.get("member_statuses") or DEFAULT_STATUSES
    )
    member_ids, leads = [], []
    for member in members:
        person = _person_id(state, member)
        kind = object_for_id(person)
        values = {"CampaignId": campaign_id, "Status": member.get("Status", "Sent")}
        values["ContactId" if kind == "Contact" else "LeadId"] = person
        member_ids.append(_seed_record(state, "CampaignMember", values))
        leads += [person] if kind == "Lead" else []
    _name_converted_leads_contacts(state, leads)
    return {"Id": campaign_id, "members": member_ids}


def _name_converted_leads_contacts(state: SandboxState, lead_ids: list[str]) -> None:
    """A converted lead's members name the contact it became too (a lead converted after it joined a
    campaign), as POST /_sandbox/convert's do."""
    for lead_id in lead_ids:
        serial = state.store.resolve(lead_id)
        lead = state.store.values(serial, ["IsConverted", "ConvertedContactId"]) if serial is not None else {}
        if lead.get("IsConverted") and lead.get("ConvertedContactId"):
            name_contact_on_members(state, lead_id, str(lead["ConvertedContactId"]))


def _seed_campaign_record(
    state: SandboxState, spec: dict[str, Any], statuses: Iterable[dict[str, Any]]
) -> str:
    """A campaign and its member statuses (CampaignMemberStatus records)."""
    campaign_id = _seed_record(state, "Campaign", spec)
    for status in statuses:
        _seed_record(state, "CampaignMemberStatus", {**status, "CampaignId": campaign_id})
    return campaign_id


def _person_id(state: SandboxState, member: dict[str, Any]) -> str:
    raw = member.get("ContactId") or member.get("LeadId")
    id18 = to_18(raw)
    if id18 is None or state.store.resolve(id18) is None or object_for_id(id18) not in ("Contact", "Lead"):
        raise ValueError(f"campaign member names no existing contact or lead: {member}")
    return id18


def _serials(state: SandboxState, ids: list[Any]) -> list[int]:
    serials = []
    for raw in ids:
        id18 = to_18(raw)
        serial = state.store.resolve(id18) if id18 else None
        if serial is None:
            raise ValueError(f"no record with id {raw!r}")
        serials.append(serial)
    return serials


def _generate(state: SandboxState, spec: dict[str, Any]) -> dict[str, Any]:
    count = spec.get("campaign_members")
    if not isinstance(count, int) or not 1 <= count <= MAX_GENERATED:
        raise ValueError(f"generate.campaign_members must be an integer from 1 to {MAX_GENERATED}")
    lead_ratio = float(spec.get("lead_ratio", 0.3))
    if not 0 <= lead_ratio <= 1:
        raise ValueError("generate.lead_ratio must be between 0 and 1")
    counts = ("duplicate_every", "malformed_every", "missing_email_every", "converted_every", "seed")
    knobs = GenerateKnobs(count, lead_ratio, **{name: int(spec[name]) for name in counts if name in spec})
    if min(int(getattr(knobs, name)) for name in counts if name.endswith("_every")) < 0:
        raise ValueError("generate's *_every knobs must be 0 (off) or more")
    name = spec.get("campaign_name") or "Generated campaign"
    campaign_id = _seed_campaign_record(state, {"Name": name}, DEFAULT_STATUSES)
    campaign = state.store.generate(knobs, campaign_id, utc_now())
    return {
        "campaign_id": campaign_id,
        "generated": {
            "campaign_members": count,
            "contacts": campaign.count_of("Contact"),
            "leads": campaign.count_of("Lead"),
            "converted_leads": campaign.converted_count,
            "accounts": campaign.count_of("Account"),
            **vars(knobs),
        },
    }


# ---- converting, locking ----


@control.post("/convert")
def convert() -> ResponseReturnValue:
    body = _body()
    state = sandbox_state()
    with state.lock:
        try:
            conversions = convert_leads(state, body.get("leads"))
        except ValueError as exc:
            raise ControlError(f"cannot convert: {exc}") from None
    converted = [
        {"LeadId": c.lead_id, "ContactId": c.contact_id, "AccountId": c.account_id} for c in conversions
    ]
    return jsonify({"converted": converted})


@control.post("/locks")
def lock_records() -> ResponseReturnValue:
    body = _body()
    times = body.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise ControlError("times must be a positive integer")
    state = sandbox_state()
    with state.lock:
        try:
            serials = _serials(state, list(body.get("ids") or []))
        except (ValueError, TypeError) as exc:
            raise ControlError(f"cannot lock: {exc}") from None
        for serial in serials:
            state.store.locked[serial] = times
        ids = [state.store.values(serial, ["Id"])["Id"] for serial in serials]
    return jsonify({"locked": dict.fromkeys(ids, times)})


# ---- inspecting ----


@control.get("/records/<record_id>")
def get_record(record_id: str) -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        id18 = to_18(record_id)
        serial = state.store.resolve(id18) if id18 else None
        object_name = state.store.object_of(serial) if serial is not None else None
        if serial is None or object_name is None:
            return jsonify({"error": f"no record {record_id}"}), 404
        values = state.store.values(serial, full_object(object_name).fields)
        return jsonify(
            {
                "object": object_name,
                "id": id18,
                "deleted": serial in state.store.deleted,
                "validation_rule": serial in state.store.validation_rule,
                "fields": {name: to_json(value) for name, value in values.items()},
            }
        )


@control.get("/records")
def list_records() -> ResponseReturnValue:
    object_name = request.args.get("object", "Contact")
    offset = request.args.get("offset", 0, type=int)
    limit = request.args.get("limit", DEFAULT_LIST_LIMIT, type=int)
    if object_name not in sandbox_state().schema.full:
        return jsonify({"error": f"unknown object {object_name}"}), 400
    names = request.args.getlist("field") or list(full_object(object_name).fields)
    state = sandbox_state()
    with state.lock:
        serials = islice(state.store.serials(object_name), offset, offset + limit)
        records = [state.store.values(serial, ["Id", *names]) for serial in serials]
        total = state.store.count(object_name)
    shown = [{name: to_json(value) for name, value in record.items()} for record in records]
    return jsonify({"object": object_name, "total": total, "offset": offset, "records": shown})


@control.get("/state")
def show_state() -> ResponseReturnValue:
    state = sandbox_state()
    with state.lock:
        return jsonify(state.summary())


# ---- configuring ----


@control.post("/config")
def configure() -> ResponseReturnValue:
    body = _body()
    state = sandbox_state()
    with state.lock:
        try:
            expired = _apply_config(state, body)
        except (ValueError, TypeError) as exc:
            raise ControlError(str(exc)) from None
        return jsonify({"config": state.summary()["config"], "expired_tokens": expired})


def _apply_config(state: SandboxState, body: dict[str, Any]) -> int:
    """Check every setting first, then change them all; returns how many tokens were expired."""
    known = {
        "daily_api_limit",
        "api_usage",
        "bulk_delay",
        "missing_fields",
        "readonly_fields",
        "expire_token",
        "track_writes",
        "next_records_url_prefix",
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")
    for name in ("daily_api_limit", "api_usage"):
        if name in body and (not isinstance(body[name], int) or body[name] < 0):
            raise ValueError(f"{name} must be a non-negative integer")
    bulk_delay = float(body.get("bulk_delay", state.config.bulk_delay))
    prefix = body.get("next_records_url_prefix", state.config.next_records_url_prefix)
    if not isinstance(prefix, str):
        raise ValueError("next_records_url_prefix must be a string")
    tracked = _tracked_fields(body.get("track_writes", state.config.track_writes))
    if "missing_fields" in body or "readonly_fields" in body:
        missing = body.get("missing_fields", state.schema.missing)
        state.schema.configure(missing, body.get("readonly_fields", state.schema.readonly))
    state.config.daily_api_limit = body.get("daily_api_limit", state.config.daily_api_limit)
    state.api_usage = body.get("api_usage", state.api_usage)
    state.config.bulk_delay = bulk_delay
    state.config.track_writes = tracked
    state.config.next_records_url_prefix = prefix
    return state.tokens.expire_current() if body.get("expire_token") else 0


def _tracked_fields(names: Any) -> tuple[str, ...]:
    """Canonical names of Contact/Lead fields to track; a name neither object has is refused."""
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise ValueError("track_writes must be a list of field names")
    canonical = []
    for name in names:
        found = full_object("Contact").field(name) or full_object("Lead").field(name)
        if found is None:
            raise ValueError(f"track_writes: neither Contact nor Lead has a field {name!r}")
        canonical.append(found.name)
    return tuple(canonical)


@control.get("/writes")
def list_writes() -> ResponseReturnValue:
    name = request.args.get("field", "")
    state = sandbox_state()
    with state.lock:
        if name not in state.config.track_writes:
            return jsonify({"error": f"{name!r} is not tracked; track it with POST /_sandbox/config"}), 400
        logged = state.write_log.get(name, {})
        records = {
            state.store.values(serial, ["Id"])["Id"]: [to_json(value) for value in values]
            for serial, values in logged.items()
        }
    return jsonify({"field": name, "records": records})


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


@control.post("/reset")
def reset() -> ResponseReturnValue:
    body = request.get_json(silent=True)
    if isinstance(body, dict) and body.get("all") is True:
        org_directory().reset_all()
        return jsonify({"reset": True, "all": True})
    state = sandbox_state()
    with state.lock:
        state.reset()
    return jsonify({"reset": True})


# ---- OAuth ----


@control.post("/oauth")
def configure_oauth() -> ResponseReturnValue:
    body = _body()
    directory = org_directory()
    with directory.lock:
        try:
            return jsonify(directory.oauth.configure(sandbox_state().config.org_id, body))
        except (ValueError, TypeError) as exc:
            raise ControlError(str(exc)) from None


@control.get("/oauth")
def oauth_counts() -> ResponseReturnValue:
    directory = org_directory()
    with directory.lock:
        return jsonify(directory.oauth.counts_of(sandbox_state().config.org_id))
