"""Creating campaign members as Salesforce does, shared by sObject Collections (POST) and Bulk API 2.0
ingest insert jobs.

A member joins one campaign (CampaignId) and one contact or lead (ContactId, else LeadId: given both,
Salesforce keeps the contact). Per record, Salesforce refuses an Id or a field that cannot be set on
create (INVALID_FIELD_FOR_INSERT_UPDATE), a missing campaign or person (REQUIRED_FIELD_MISSING), an id
that is malformed (MALFORMED_ID), of another object (FIELD_INTEGRITY_EXCEPTION), names no record
(INVALID_CROSS_REFERENCE_KEY) or a deleted one (ENTITY_IS_DELETED), a converted lead
(CANNOT_UPDATE_CONVERTED_LEAD), a Status that is not one of the campaign's member statuses
(INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST), and a second member for the same campaign and person
(DUPLICATE_VALUE "Already a campaign member."). An omitted Status takes the campaign's default one.

A campaign's member statuses are CampaignMemberStatus records, seeded with the campaign ("Sent", the
default, and "Responded" unless the seed names others), so SOQL reads them as on Salesforce.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from connector.sandbox.salesforce_ids import KEY_PREFIXES
from connector.sandbox.salesforce_schema import default_values, utc_now
from connector.sandbox.salesforce_state import SandboxState
from connector.sandbox.salesforce_writes import Coerce, PlannedWrite, WriteError, coerce_fields

MEMBER = "CampaignMember"
DEFAULT_STATUSES: tuple[dict[str, Any], ...] = (
    {"Label": "Sent", "IsDefault": True},
    {"Label": "Responded", "HasResponded": True},
)
ALREADY_A_MEMBER = "Already a campaign member."

# (campaign id, contact or lead id) of the members a request has planned so far.
Taken = set[tuple[str, str]]


class MemberStatus(NamedTuple):
    label: str
    is_default: bool
    has_responded: bool


def campaign_statuses(state: SandboxState, campaign_id: str) -> list[MemberStatus]:
    """The campaign's member statuses, as its CampaignMemberStatus records say."""
    store, names = state.store, ["CampaignId", "Label", "IsDefault", "HasResponded"]
    found = []
    for serial in store.serials("CampaignMemberStatus"):
        if serial in store.deleted:
            continue
        values = store.values(serial, names)
        if values["CampaignId"] == campaign_id:
            found.append(
                MemberStatus(str(values["Label"]), bool(values["IsDefault"]), bool(values["HasResponded"]))
            )
    return found


def plan_member_insert(
    state: SandboxState, raw_values: dict[str, Any], coerce: Coerce, taken: Taken
) -> PlannedWrite:
    """What creating a member with `raw_values` (canonical field names, Id included if sent) would do;
    a good plan's pair is added to `taken`, so a request naming it twice creates it once."""
    values, errors = _create_values(state, raw_values, coerce)
    if errors:
        return PlannedWrite(None, errors=errors)
    refusal = _refuse_member(state, values, taken)
    if refusal is not None:
        return PlannedWrite(None, errors=[refusal])
    taken.add(_pair(values))
    return PlannedWrite(None, values=values)


def apply_member_insert(state: SandboxState, plan: PlannedWrite) -> None:
    """Create the member a good plan describes; its new id becomes the plan's record_id."""
    assert plan.ok
    now = utc_now()
    values = {**default_values(MEMBER), **plan.values, "CreatedDate": now, "LastModifiedDate": now}
    plan.record_id = state.store.add(MEMBER, {**values, "SystemModstamp": now})
    plan.serial = state.store.resolve(plan.record_id)
    state.members_created[_pair(plan.values)] += 1


def _pair(values: dict[str, Any]) -> tuple[str, str]:
    return values["CampaignId"], values.get("ContactId") or values["LeadId"]


def _create_values(
    state: SandboxState, raw_values: dict[str, Any], coerce: Coerce
) -> tuple[dict[str, Any], list[WriteError]]:
    schema = state.schema.object(MEMBER)
    assert schema is not None
    errors: list[WriteError] = []
    if raw_values.get("Id") not in (None, ""):
        errors.append(
            WriteError("INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", ("Id",))
        )
    fields = {name: raw for name, raw in raw_values.items() if name != "Id"}
    coerced, refused = coerce_fields(schema, fields, coerce, lambda field: field.can_create)
    errors += refused
    values = {name: value for name, value in coerced.items() if value is not None}
    if values.get("ContactId"):
        values.pop("LeadId", None)  # given both, Salesforce keeps the contact
    missing = [name for name in ("CampaignId",) if name not in values]
    if "ContactId" not in values and "LeadId" not in values:
        missing.append("ContactId, LeadId")
    if missing and not errors:
        errors.append(
            WriteError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]")
        )
    return values, errors


def _refuse_member(state: SandboxState, values: dict[str, Any], taken: Taken) -> WriteError | None:
    person_field = "ContactId" if "ContactId" in values else "LeadId"
    for name, object_name in (("CampaignId", "Campaign"), (person_field, person_field[:-2])):
        refusal = _refuse_reference(state, name, object_name, values[name])
        if refusal is not None:
            return refusal
    person = state.store.resolve(values[person_field])
    if (
        person_field == "LeadId"
        and person is not None
        and state.store.values(person, ["IsConverted"])["IsConverted"]
    ):
        return WriteError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", ("LeadId",))
    refusal = _settle_status(state, values)
    if refusal is not None:
        return refusal
    pair = _pair(values)
    if pair in taken or state.store.member_serial(*pair) is not None:
        state.duplicate_members_refused += 1
        return WriteError("DUPLICATE_VALUE", ALREADY_A_MEMBER)
    return None


def _refuse_reference(state: SandboxState, name: str, object_name: str, id18: str) -> WriteError | None:
    if id18[:3] != KEY_PREFIXES[object_name]:
        label = f"{object_name} ID"
        return WriteError(
            "FIELD_INTEGRITY_EXCEPTION", f"{label}: id value of incorrect type: {id18}", (name,)
        )
    serial = state.store.resolve(id18)
    if serial is None:
        return WriteError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", (name,))
    if serial in state.store.deleted:
        return WriteError("ENTITY_IS_DELETED", "entity is deleted", (name,))
    return None


def _settle_status(state: SandboxState, values: dict[str, Any]) -> WriteError | None:
    """The campaign's default status when none is given; a refusal when it has no such status."""
    statuses = campaign_statuses(state, values["CampaignId"]) or [
        MemberStatus(s["Label"], bool(s.get("IsDefault")), bool(s.get("HasResponded")))
        for s in DEFAULT_STATUSES
    ]
    wanted = values.get("Status")
    if wanted is None:
        chosen = next((s for s in statuses if s.is_default), statuses[0])
    else:
        found = next((s for s in statuses if s.label == wanted), None)
        if found is None:
            return WriteError(
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"Status: bad value for restricted picklist field: {wanted}",
                ("Status",),
            )
        chosen = found
    values["Status"], values["HasResponded"] = chosen.label, chosen.has_responded
    return None
