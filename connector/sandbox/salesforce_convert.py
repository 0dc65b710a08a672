"""Lead conversion in the Salesforce sandbox (POST /_sandbox/convert), as Salesforce's convertLead()
does it: the lead becomes a contact, and from then on is read-only.

Converting a lead "results in the creation of an account, a contact, and optionally an
opportunity, and also a lead update" (Salesforce's Change Data Capture guide, "Change Events for
Lead Conversion"): the lead gets IsConverted, ConvertedContactId, ConvertedAccountId and
ConvertedDate (a date without time) and the converted status, and every later update of it is
refused with CANNOT_UPDATE_CONVERTED_LEAD (salesforce_writes.py).

- Without a contact, a new one is created from the lead's standard fields (names, email, phones,
  title, email opt-out) under a new account named after the lead's company. Custom fields (the
  ApexVerify flags) are not copied: Salesforce maps them only when the org's admin says so.
- With a contact, the lead is merged into it: "only empty fields in the target object are
  overwritten — existing data (including IDs) aren't overwritten" (the SOAP API's convertLead()),
  so that contact keeps its own email. Its account is the contact's, or a new one if it has none.

The lead's campaign memberships name the contact too (ContactId beside LeadId), which is how a
campaign read tells a converted lead's member from a lead's (connector/crm/salesforce/records.py).
Every lead is checked before any is converted: one bad entry converts none. POST /_sandbox/seed
converts a lead seeded converted without a ConvertedContactId here too (salesforce_control.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connector.sandbox.salesforce_ids import object_for_id, to_18
from connector.sandbox.salesforce_schema import CONVERTED_STATUS, default_values, utc_now
from connector.sandbox.salesforce_state import SandboxState

# The lead fields a conversion carries onto the contact (Salesforce's standard field mapping).
CONTACT_FIELDS = ("FirstName", "LastName", "Email", "Phone", "MobilePhone", "Title", "HasOptedOutOfEmail")
LEAD_FIELDS = (*CONTACT_FIELDS, "Name", "Company", "IsConverted")


@dataclass(frozen=True)
class Conversion:
    lead_id: str
    contact_id: str
    account_id: str


@dataclass(frozen=True)
class _Planned:
    lead_id: str
    lead_serial: int
    contact_id: str | None  # None: a new contact
    contact_serial: int | None


def convert_leads(state: SandboxState, specs: Any) -> list[Conversion]:
    """Convert every lead `specs` names ([{"LeadId", "ContactId"?}]); ValueError, nothing converted,
    when one names no live, unconverted lead, or a contact that is not there."""
    if not isinstance(specs, list) or not specs:
        raise ValueError('"leads" must be a non-empty list of {"LeadId", "ContactId"?}')
    planned: list[_Planned] = []
    for spec in specs:
        planned.append(_plan(state, spec, {p.lead_id for p in planned}))
    return [_convert(state, plan) for plan in planned]


def _plan(state: SandboxState, spec: Any, earlier: set[str]) -> _Planned:
    if not isinstance(spec, dict):
        raise ValueError(f"not a lead to convert: {spec!r}")
    lead_id, lead_serial = _live(state, spec.get("LeadId"), "Lead")
    if lead_id in earlier:
        raise ValueError(f"lead {lead_id} is named twice")
    if state.store.values(lead_serial, ["IsConverted"])["IsConverted"]:
        raise ValueError(f"lead {lead_id} is converted already")
    if spec.get("ContactId") is None:
        return _Planned(lead_id, lead_serial, None, None)
    contact_id, contact_serial = _live(state, spec["ContactId"], "Contact")
    return _Planned(lead_id, lead_serial, contact_id, contact_serial)


def _live(state: SandboxState, raw: Any, object_name: str) -> tuple[str, int]:
    """(18-character id, serial) of a record of `object_name` that is not deleted."""
    id18 = to_18(raw)
    serial = state.store.resolve(id18) if id18 else None
    if id18 is None or serial is None or object_for_id(id18) != object_name:
        raise ValueError(f"{raw!r} names no {object_name}")
    if serial in state.store.deleted:
        raise ValueError(f"{object_name} {id18} is deleted")
    return id18, serial


def _convert(state: SandboxState, plan: _Planned) -> Conversion:
    store, now = state.store, utc_now()
    lead = store.values(plan.lead_serial, LEAD_FIELDS)
    changed = {"LastModifiedDate": now, "SystemModstamp": now}
    if plan.contact_id is None or plan.contact_serial is None:
        account_id = _new_account(state, lead)
        copied = {name: lead[name] for name in CONTACT_FIELDS}
        contact = {**default_values("Contact"), **copied, "Name": lead["Name"], "AccountId": account_id}
        contact_id = store.add("Contact", {**contact, "CreatedDate": now, **changed})
    else:
        contact_id = plan.contact_id
        existing = store.values(plan.contact_serial, [*CONTACT_FIELDS, "AccountId"])
        # Only the contact's empty fields are filled (a checkbox is never empty: it keeps its own).
        filled = {
            name: lead[name]
            for name in CONTACT_FIELDS
            if existing[name] in (None, "") and lead[name] not in (None, "")
        }
        account_id = existing["AccountId"] or _new_account(state, lead)
        if not existing["AccountId"]:
            filled["AccountId"] = account_id
        if filled:
            store.update(plan.contact_serial, {**filled, **changed})
    store.update(
        plan.lead_serial,
        {
            "IsConverted": True,
            "Status": CONVERTED_STATUS,
            "ConvertedContactId": contact_id,
            "ConvertedAccountId": account_id,
            "ConvertedDate": now.date(),
            **changed,
        },
    )
    name_contact_on_members(state, plan.lead_id, contact_id)
    return Conversion(plan.lead_id, contact_id, account_id)


def _new_account(state: SandboxState, lead: dict[str, Any]) -> str:
    now = utc_now()
    name = lead["Company"] or lead["Name"] or "Converted lead"
    stamps = {"CreatedDate": now, "LastModifiedDate": now, "SystemModstamp": now}
    return state.store.add("Account", {**default_values("Account"), "Name": name, **stamps})


def name_contact_on_members(state: SandboxState, lead_id: str, contact_id: str) -> None:
    """The converted lead's campaign members name its contact too, unless that contact is a member of
    their campaign already (members seeded for a lead seeded converted get it this way too)."""
    store = state.store
    for member in store.members_of(lead_id):
        if member in store.deleted:
            continue
        campaign_id = str(store.values(member, ["CampaignId"])["CampaignId"])
        if store.member_serial(campaign_id, contact_id) is None:
            store.update(member, {"ContactId": contact_id})
            store.link_member(campaign_id, contact_id, member)
