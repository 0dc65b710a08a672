"""Records of the Salesforce sandbox: seeded ones kept as dicts, generated campaigns computed on demand.

Every record has a serial (an int) that indexes storage; its id is `make_id(prefix, serial)`
(seeded records may bring their own ids, mapped to serials). Callers ask for a record's values
by field name, so a query reads only the fields it names.

A generated campaign of n members stores no record: member i and its contact-or-lead i are
pure functions of (seed, i); a bytearray of n kinds says which members are leads (and converted),
and write-backs land in one list per written field (8 bytes per record; people, members and
converted leads' contacts each have their own), so a million members cost seconds and a few
megabytes.

A generated converted lead is what Salesforce's lead conversion leaves (salesforce_convert.py): a
lead with IsConverted, Status "Closed - Converted", ConvertedContactId, ConvertedAccountId and
ConvertedDate (the campaign's creation day), the contact it became (the lead's names, Email and
Phone, in the account) and that account (named after the lead's company), and a campaign member
naming both the lead (LeadId) and the contact (ContactId), so a campaign read takes it as the
contact. The c-th converted lead's contact and account have serials of their own,
`first.contacts + c` and `first.accounts + c` (reserved with the campaign's people and members, so
ids never repeat), and lead and contact find each other by arithmetic: converted leads are every
`converted_every`-th person. Writes to those contacts land in lists as long as the number of
converted leads; queries list those contacts after the members' own.

Deleting a contact or lead (`delete`) puts it in the recycle bin with its campaign memberships, as
Salesforce does; a locked record (`locked`) refuses the next updates (salesforce_writes.py).

Generated emails cover the patterns the ApexVerify sandbox tells apart: corporate and free-mail
addresses, role addresses (info@...), disposable domains (mailinator.com...), undeliverable
mailboxes (bounce...@), catch-all domains, unknown answers. Every `duplicate_every`-th person
repeats the previous one's address (upper-cased, padded), every `malformed_every`-th has a
malformed address, every `missing_email_every`-th none, and every `converted_every`-th is a
converted lead. A knob of 0 turns its pattern off.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connector.sandbox.hubspot_contacts import (
    COMPANIES,
    DISPOSABLE_DOMAINS,
    FIRST_NAMES,
    FREE_DOMAINS,
    LAST_NAMES,
    PHONE_FORMATS,
    ROLE_LOCAL_PARTS,
    UNDELIVERABLE_LOCAL_PARTS,
)
from connector.sandbox.salesforce_ids import KEY_PREFIXES, make_id, serial_of
from connector.sandbox.salesforce_schema import CONVERTED_STATUS, default_values

LEAD = 1
CONVERTED = 2
# A campaign member shows its contact's (or lead's) name, email and phone.
MEMBER_COPIES = ("FirstName", "LastName", "Name", "Email", "Phone")
_UNWRITTEN = object()
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Needed:
    """The fields a reader wants: its own, and per relationship (id field, the related record's fields)."""

    fields: frozenset[str]
    related: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateKnobs:
    campaign_members: int
    lead_ratio: float = 0.3
    duplicate_every: int = 50
    malformed_every: int = 97
    missing_email_every: int = 61
    converted_every: int = 200
    seed: int = 1

    @property
    def converted_count(self) -> int:
        """How many people are converted leads: every `converted_every`-th."""
        return self.campaign_members // self.converted_every if self.converted_every > 0 else 0


def _mix(seed: int, index: int) -> int:
    """A cheap deterministic 64-bit hash (splitmix64), so person `index` looks the same on every read."""
    value = ((index + 1) * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


class _Columns:
    """Values written to `size` generated records: one list per field written (made at its first write)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lists: dict[str, list[Any]] = {}

    def overlay(self, slot: int, names: Iterable[str], base: dict[str, Any]) -> None:
        """Put the values written to record `slot` over its generated ones."""
        for name in names:
            column = self.lists.get(name)
            if column is not None and column[slot] is not _UNWRITTEN:
                base[name] = column[slot]

    def write(self, slot: int, values: dict[str, Any]) -> None:
        for name, value in values.items():
            column = self.lists.get(name)
            if column is None:
                column = self.lists[name] = [_UNWRITTEN] * self.size
            column[slot] = value


@dataclass(frozen=True)
class FirstSerials:
    """Where each kind of record a generated campaign makes starts in the serial space."""

    people: int
    members: int
    contacts: int  # converted leads' contacts
    accounts: int  # converted leads' accounts


class GeneratedCampaign:
    """Records of a generated campaign, addressed by (object, index): index i is person i (and member
    i); a converted lead's contact and account are addressed by that lead's index too."""

    def __init__(
        self, knobs: GenerateKnobs, campaign_id: str, first: FirstSerials, created: datetime
    ) -> None:
        self.knobs = knobs
        self.campaign_id = campaign_id
        self.count = knobs.campaign_members
        self.first = first
        self.created = created
        self._stamps = {"CreatedDate": created, "LastModifiedDate": created, "SystemModstamp": created}
        self.kinds = self._kinds()
        self.lead_count = self.count - self.kinds.count(0)
        self.converted_count = knobs.converted_count
        self.written = _Columns(self.count)  # people's fields
        self.member_written = _Columns(self.count)  # members' fields (a converted lead's ContactId)
        self.contact_written = _Columns(self.converted_count)  # converted leads' contacts' fields
        self.account_written = _Columns(self.converted_count)
        # Unset checkboxes read false, as on a real record.
        objects = ("Account", "Contact", "Lead", "CampaignMember")
        self._defaults = {name: default_values(name) for name in objects}

    def _kinds(self) -> bytearray:
        knobs, kinds = self.knobs, bytearray(self.count)
        threshold = int(knobs.lead_ratio * 1_000_000)
        for index in range(self.count):
            if (_mix(knobs.seed, index) >> 20) % 1_000_000 < threshold:
                kinds[index] = LEAD
        if knobs.converted_every > 0:
            for index in range(knobs.converted_every - 1, self.count, knobs.converted_every):
                kinds[index] = LEAD | CONVERTED
        return kinds

    # A converted lead's contact and account: the c-th of each belongs to person (c + 1) * every - 1.

    def _converted_slot(self, index: int) -> int:
        return (index + 1) // self.knobs.converted_every - 1

    def _converted_index(self, slot: int) -> int:
        return (slot + 1) * self.knobs.converted_every - 1

    def _is_converted_lead(self, index: int) -> bool:
        return self.kinds[index] == LEAD | CONVERTED

    def count_of(self, object_name: str) -> int:
        return {
            "Lead": self.lead_count,
            "Contact": self.count - self.lead_count + self.converted_count,
            "Account": self.converted_count,
            "CampaignMember": self.count,
        }.get(object_name, 0)

    def locate(self, serial: int) -> tuple[str, int] | None:
        """(object, index) of a serial this campaign generated (a converted lead's contact or account:
        the lead's index)."""
        first = self.first
        if 0 <= serial - first.people < self.count:
            index = serial - first.people
            return ("Lead" if self.kinds[index] & LEAD else "Contact"), index
        if 0 <= serial - first.members < self.count:
            return "CampaignMember", serial - first.members
        if 0 <= serial - first.contacts < self.converted_count:
            return "Contact", self._converted_index(serial - first.contacts)
        if 0 <= serial - first.accounts < self.converted_count:
            return "Account", self._converted_index(serial - first.accounts)
        return None

    def serials(self, object_name: str) -> Iterator[int]:
        """In query order: the members' contacts or leads, then the contacts and accounts conversions made."""
        first, converted = self.first, self.converted_count
        if object_name == "CampaignMember":
            return iter(range(first.members, first.members + self.count))
        if object_name == "Account":
            return iter(range(first.accounts, first.accounts + converted))
        if object_name not in ("Contact", "Lead"):
            return iter(())
        want_lead = object_name == "Lead"
        kinds = self.kinds
        people = (first.people + i for i in range(self.count) if bool(kinds[i] & LEAD) == want_lead)
        if want_lead:
            return people
        return itertools.chain(people, range(first.contacts, first.contacts + converted))

    def values(self, object_name: str, index: int, names: Iterable[str]) -> dict[str, Any]:
        names = set(names)
        base = self._generated(object_name, index, names)
        written, slot = self._storage(object_name, index)
        written.overlay(slot, names, base)
        defaults = self._defaults[object_name]
        return {name: base.get(name, defaults.get(name)) for name in names}

    def write(self, object_name: str, index: int, values: dict[str, Any]) -> None:
        written, slot = self._storage(object_name, index)
        written.write(slot, values)

    def _generated(self, object_name: str, index: int, names: set[str]) -> dict[str, Any]:
        if object_name == "CampaignMember":
            return self._member(index, names)
        if object_name == "Account":
            return self._account(index, names)
        if object_name == "Contact" and self.kinds[index] & LEAD:
            return self._converted_contact(index, names)
        return self._person(index, names)

    def _storage(self, object_name: str, index: int) -> tuple[_Columns, int]:
        """Where a record's writes are kept, and its slot there."""
        if object_name == "CampaignMember":
            return self.member_written, index
        if object_name == "Account":
            return self.account_written, self._converted_slot(index)
        if object_name == "Contact" and self.kinds[index] & LEAD:
            return self.contact_written, self._converted_slot(index)
        return self.written, index

    # Ids and emails are computed only when asked for: a query over a million members reads few fields.

    def _person_id(self, index: int) -> str:
        """The id of person `index` as the campaign's member: its contact, or its lead."""
        return make_id(
            KEY_PREFIXES["Lead" if self.kinds[index] & LEAD else "Contact"], self.first.people + index
        )

    def _contact_id(self, index: int) -> str:
        """The id of the contact converted lead `index` became."""
        return make_id(KEY_PREFIXES["Contact"], self.first.contacts + self._converted_slot(index))

    def _account_id(self, index: int) -> str:
        return make_id(KEY_PREFIXES["Account"], self.first.accounts + self._converted_slot(index))

    def _person(self, index: int, names: set[str]) -> dict[str, Any]:
        person = self._person_fields(index, names)
        if "Id" in names:
            person["Id"] = self._person_id(index)
        if self.kinds[index] & LEAD:
            converted = self._is_converted_lead(index)
            person["Company"] = self._company(index)
            person["Status"] = CONVERTED_STATUS if converted else "Open - Not Contacted"
            person["IsConverted"] = converted
            if converted:
                person["ConvertedDate"] = self.created.date()
                if "ConvertedContactId" in names:
                    person["ConvertedContactId"] = self._contact_id(index)
                if "ConvertedAccountId" in names:
                    person["ConvertedAccountId"] = self._account_id(index)
        return person

    def _converted_contact(self, index: int, names: set[str]) -> dict[str, Any]:
        """The contact converted lead `index` became: its names, Email and Phone, in its account."""
        contact = self._person_fields(index, names)
        if "Id" in names:
            contact["Id"] = self._contact_id(index)
        if "AccountId" in names:
            contact["AccountId"] = self._account_id(index)
        return contact

    def _account(self, index: int, names: set[str]) -> dict[str, Any]:
        """The account converted lead `index`'s conversion made, named after the lead's company."""
        account: dict[str, Any] = {"Name": self._company(index), **self._stamps}
        if "Id" in names:
            account["Id"] = self._account_id(index)
        return account

    def _person_fields(self, index: int, names: set[str]) -> dict[str, Any]:
        """What a person's contact or lead has, and a converted lead's contact copies: names, email, phone."""
        h = _mix(self.knobs.seed, index)
        first, last = FIRST_NAMES[h % 20], LAST_NAMES[(h >> 5) % 20]
        person: dict[str, Any] = {
            "FirstName": first,
            "LastName": last,
            "Name": f"{first} {last}",
            **self._stamps,
        }
        if "Email" in names:
            person["Email"] = self._email(index)
        if "Phone" in names and (h >> 50) % 3:
            person["Phone"] = PHONE_FORMATS[(h >> 52) % len(PHONE_FORMATS)].format(index % 10000)
        return person

    def _company(self, index: int) -> str:
        return COMPANIES[(_mix(self.knobs.seed, index) >> 10) % len(COMPANIES)].capitalize()

    def _member(self, index: int, names: set[str]) -> dict[str, Any]:
        member: dict[str, Any] = {"CampaignId": self.campaign_id, "Status": "Sent", **self._stamps}
        if "Id" in names:
            member["Id"] = make_id(KEY_PREFIXES["CampaignMember"], self.first.members + index)
        lead = bool(self.kinds[index] & LEAD)
        converted = self._is_converted_lead(index)
        if "ContactId" in names or "LeadId" in names:
            # A converted lead's member names the contact it became beside it, as Salesforce's does.
            member["LeadId" if lead else "ContactId"] = self._person_id(index)
            if converted:
                member["ContactId"] = self._contact_id(index)
        copies = names.intersection(MEMBER_COPIES)
        if copies:
            member.update(self.values("Lead" if lead and not converted else "Contact", index, copies))
        return member

    def _email(self, index: int) -> str | None:
        knobs, position = self.knobs, index + 1  # "every 50th" is the 50th, not the first
        if knobs.missing_email_every and position % knobs.missing_email_every == 0:
            return None
        if knobs.malformed_every and position % knobs.malformed_every == 0:
            return self._malformed_email(index)
        if knobs.duplicate_every and index > 0 and position % knobs.duplicate_every == 0:
            return f"  {self._pattern_email(index - 1).upper()} "
        return self._pattern_email(index)

    def _pattern_email(self, index: int) -> str:
        h = _mix(self.knobs.seed, index)
        first, last = FIRST_NAMES[h % 20].lower(), LAST_NAMES[(h >> 5) % 20].lower()
        company = COMPANIES[(h >> 10) % len(COMPANIES)]
        kind = (h >> 14) % 20
        if kind < 10:
            return f"{first}.{last}{index}@{company}.com"
        if kind < 13:
            return f"{first}{last}{index}@{FREE_DOMAINS[kind % len(FREE_DOMAINS)]}"
        patterns = {
            13: f"{ROLE_LOCAL_PARTS[index % len(ROLE_LOCAL_PARTS)]}@{company}{index}.com",
            14: f"{first}{index}@{DISPOSABLE_DOMAINS[index % len(DISPOSABLE_DOMAINS)]}",
            15: f"{UNDELIVERABLE_LOCAL_PARTS[index % len(UNDELIVERABLE_LOCAL_PARTS)]}{index}@{company}.com",
            16: f"{first}{index}@catchall-{company}.com",
            17: f"unknown{index}@{company}.com",
        }
        return patterns.get(kind, f"{first[0]}{last}{index}@{company}.io")

    def _malformed_email(self, index: int) -> str:
        h = _mix(self.knobs.seed, index)
        first, company = FIRST_NAMES[h % 20].lower(), COMPANIES[(h >> 10) % len(COMPANIES)]
        shapes = (
            f"{first}{index}@@{company}.com",
            f"{first} {index}@{company}.com",
            f"{first}{index}.{company}.com",
            f"{first}{index}@{company}",
            f"@{company}.com",
        )
        return shapes[index % len(shapes)]


class RecordStore:
    """Every record of every object, addressed by serial (guarded by the state's lock)."""

    def __init__(self, first_serial: int = 1) -> None:
        self._seeded: dict[int, tuple[str, dict[str, Any]]] = {}
        self._seeded_by_object: dict[str, list[int]] = {}
        self._serial_by_id: dict[str, int] = {}
        # (campaign id, contact or lead id) -> the seeded or created member's serial.
        self._members: dict[tuple[str, str], int] = {}
        self._campaigns: list[GeneratedCampaign] = []
        self._next_serial = first_serial  # each org has a range of its own (salesforce_ids.py)
        self.deleted: set[int] = set()
        self.validation_rule: set[int] = set()
        # How many more updates each locked record refuses with UNABLE_TO_LOCK_ROW.
        self.locked: Counter[int] = Counter()

    # ---- adding ----

    def add(self, object_name: str, values: dict[str, Any], record_id: str | None = None) -> str:
        """Store a record with all its fields already filled in; returns its id."""
        serial = self._take_serials(1)
        record_id = record_id or make_id(KEY_PREFIXES[object_name], serial)
        if record_id in self._serial_by_id or self.resolve(record_id) is not None:
            raise ValueError(f"a record with id {record_id} already exists")
        self._seeded[serial] = (object_name, {**values, "Id": record_id})
        self._seeded_by_object.setdefault(object_name, []).append(serial)
        self._serial_by_id[record_id] = serial
        if object_name == "CampaignMember":
            person = values.get("ContactId") or values.get("LeadId")
            self._members[(str(values.get("CampaignId")), str(person))] = serial
        return record_id

    def generate(self, knobs: GenerateKnobs, campaign_id: str, created: datetime) -> GeneratedCampaign:
        first = FirstSerials(
            people=self._take_serials(knobs.campaign_members),
            members=self._take_serials(knobs.campaign_members),
            contacts=self._take_serials(knobs.converted_count),
            accounts=self._take_serials(knobs.converted_count),
        )
        campaign = GeneratedCampaign(knobs, campaign_id, first, created)
        self._campaigns.append(campaign)
        return campaign

    def _take_serials(self, count: int) -> int:
        first, self._next_serial = self._next_serial, self._next_serial + count
        return first

    # ---- finding ----

    def resolve(self, id18: str) -> int | None:
        """The serial of the record with this (18-character) id, or None."""
        serial = self._serial_by_id.get(id18)
        if serial is not None:
            return serial
        serial = serial_of(id18)
        if serial is None:
            return None
        located = self._locate(serial)
        if located is None:
            return None
        return serial if KEY_PREFIXES[located[1]] == id18[:3] else None

    def member_serial(self, campaign_id: str, person_id: str) -> int | None:
        """The serial of the campaign's live member for this contact or lead (18-character ids), or None."""
        serial = self._members.get((campaign_id, person_id))
        if serial is None:
            person_serial = self.resolve(person_id)
            located = self._locate(person_serial) if person_serial is not None else None
            if (
                located is not None
                and located[0].campaign_id == campaign_id
                and located[1] in ("Contact", "Lead")
            ):
                serial = located[0].first.members + located[2]
        return None if serial is None or serial in self.deleted else serial

    def members_of(self, person_id: str) -> list[int]:
        """The serials of the campaign members naming this contact or lead (18 characters), deleted or not."""
        found = [serial for (_, person), serial in self._members.items() if person == person_id]
        person_serial = self.resolve(person_id)
        located = self._locate(person_serial) if person_serial is not None else None
        if located is not None and located[1] in ("Contact", "Lead"):
            generated = located[0].first.members + located[2]
            found += [] if generated in found else [generated]
        return found

    def link_member(self, campaign_id: str, person_id: str, serial: int) -> None:
        """Member `serial` of the campaign now names this contact or lead too (a converted lead's contact)."""
        self._members[(campaign_id, person_id)] = serial

    def object_of(self, serial: int) -> str | None:
        if serial in self._seeded:
            return self._seeded[serial][0]
        located = self._locate(serial)
        return located[1] if located else None

    def serials(self, object_name: str) -> Iterator[int]:
        """Seeded records first (in seeding order), then each generated campaign's."""
        seeded = list(self._seeded_by_object.get(object_name, ()))
        return itertools.chain(seeded, *(c.serials(object_name) for c in list(self._campaigns)))

    def count(self, object_name: str) -> int:
        seeded = len(self._seeded_by_object.get(object_name, ()))
        return seeded + sum(c.count_of(object_name) for c in self._campaigns)

    def _locate(self, serial: int) -> tuple[GeneratedCampaign, str, int] | None:
        for campaign in self._campaigns:
            located = campaign.locate(serial)
            if located is not None:
                return campaign, *located
        return None

    def _locate_or_fail(self, serial: int) -> tuple[GeneratedCampaign, str, int]:
        located = self._locate(serial)
        if located is None:
            raise KeyError(serial)
        return located

    # ---- reading and writing ----

    def values(self, serial: int, names: Iterable[str]) -> dict[str, Any]:
        """The named fields of a record (None for fields it does not have)."""
        names = list(names)
        if serial in self._seeded:
            object_name, record = self._seeded[serial]
            found = {name: record.get(name) for name in names}
            if object_name == "CampaignMember":
                self._fill_member_copies(found, record)
        else:
            campaign, object_name, index = self._locate_or_fail(serial)
            found = campaign.values(object_name, index, names)
        if "IsDeleted" in found:
            found["IsDeleted"] = serial in self.deleted
        return found

    def view(self, serial: int, needed: Needed) -> dict[str, Any]:
        """The fields `needed` names, related records nested under their relationship name (or None)."""
        found = self.values(serial, needed.fields)
        for relationship, (id_field, names) in needed.related.items():
            target = found.get(id_field)
            target_serial = self.resolve(target) if target else None
            if target_serial is None:
                found[relationship] = None
            else:
                found[relationship] = {**self.values(target_serial, names - {"Id"}), "Id": target}
        return found

    def update(self, serial: int, values: dict[str, Any]) -> None:
        if serial in self._seeded:
            self._seeded[serial][1].update(values)
        else:
            campaign, object_name, index = self._locate_or_fail(serial)
            campaign.write(object_name, index, values)

    def delete(self, serial: int) -> None:
        """To the recycle bin: the record, and a contact's or lead's campaign memberships with it."""
        self.deleted.add(serial)
        if self.object_of(serial) in ("Contact", "Lead"):
            person_id = self.values(serial, ["Id"])["Id"]
            self.deleted.update(self.members_of(str(person_id)))

    def _fill_member_copies(self, found: dict[str, Any], member: dict[str, Any]) -> None:
        copies = [name for name in MEMBER_COPIES if name in found]
        person_id = member.get("ContactId") or member.get("LeadId")
        person_serial = self.resolve(person_id) if person_id else None
        if copies and person_serial is not None:
            found.update(self.values(person_serial, copies))

    def summary(self) -> dict[str, int]:
        objects = ("Account", "Contact", "Lead", "Campaign", "CampaignMember", "CampaignMemberStatus")
        return {name: self.count(name) for name in objects}
