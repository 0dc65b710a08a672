"""Contacts of the HubSpot sandbox: seeded ones kept as dicts, generated ones computed on demand.

A million generated contacts must cost seconds and little memory, so a generated block stores no
contact at all: the id is `first_id + index`, the properties a pure function of (seed, index),
and writes land in per-property lists indexed by position (8 bytes per contact per written
property) rather than one dict per contact.

Generated emails cover the patterns the ApexVerify sandbox tells apart: ordinary corporate and
free-mail addresses, role addresses (info@, support@...), disposable domains (mailinator.com...),
undeliverable mailboxes (bounce...@), catch-all domains, unknown answers; every
`duplicate_every`-th contact repeats the previous contact's ordinary address (upper-cased, padded with
spaces), every `malformed_every`-th has a malformed address and every `missing_email_every`-th has
none. A knob of 0 turns its pattern off.

Records also go away, as HubSpot's do: an archived contact (DELETE, batch/archive) keeps its
properties here but is no longer live; a merge (`merge`) makes a NEW record of two live ones, and
both merged-away ids point to it from then on (`resolve`), as HubSpot's merges have since its
"Updated merge functionality for contacts and companies" changelog. Only live contacts are
`exists`, found by `find_id`, listed by `iter_ids` and counted by `len`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

FIRST_NAMES = (
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)
LAST_NAMES = (
    "Adams",
    "Berg",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Meyer",
    "Novak",
    "Okafor",
    "Petrov",
    "Rossi",
    "Silva",
    "Tanaka",
    "Weber",
)
COMPANIES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell", "soylent")
FREE_DOMAINS = ("gmail.com", "yahoo.com", "hotmail.com", "outlook.com")
DISPOSABLE_DOMAINS = ("mailinator.com", "yopmail.com", "guerrillamail.com")
ROLE_LOCAL_PARTS = ("info", "support", "sales", "admin", "contact")
UNDELIVERABLE_LOCAL_PARTS = ("bounce", "invalid", "nobody")
PHONE_FORMATS = ("+1 415 555 {0:04d}", "(212) 555-{0:04d}", "+49 30 1234{0:04d}", "+44 20 7946 {0:04d}")

# Properties HubSpot returns for a record when a request names none.
DEFAULT_READ_PROPERTIES = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname")
# Properties HubSpot returns whatever a request names.
ALWAYS_RETURNED = ("hs_object_id", "createdate", "lastmodifieddate")
# The ids merged into a record, in HubSpot's multi-value encoding (values joined by ";").
MERGED_IDS = "hs_merged_object_ids"
# A merged record's other email addresses (the merged-away records' own), ";"-joined likewise.
ADDITIONAL_EMAILS = "hs_additional_emails"


def _mix(seed: int, index: int) -> int:
    """A cheap deterministic hash, so contact `index` looks the same on every read."""
    value = (index * 2654435761 + seed * 40503 + 0x9E3779B9) & 0xFFFFFFFF
    value ^= value >> 15
    return (value * 2246822519) & 0xFFFFFFFF


@dataclass
class GeneratedBlock:
    first_id: int
    count: int
    created_at: str
    seed: int = 1
    duplicate_every: int = 0
    malformed_every: int = 0
    missing_email_every: int = 0
    # property name -> value per index (None: not written since generation)
    written: dict[str, list[str | None]] = field(default_factory=dict, init=False)

    def index_of(self, contact_id: str) -> int | None:
        if not contact_id.isdigit():
            return None
        index = int(contact_id) - self.first_id
        return index if 0 <= index < self.count else None

    def properties(self, index: int) -> dict[str, str]:
        props = self._generated(index)
        for name, values in self.written.items():
            value = values[index]
            if value is not None:
                props[name] = value
        return props

    def write(self, index: int, values: dict[str, str]) -> None:
        for name, value in values.items():
            column = self.written.get(name)
            if column is None:
                column = self.written[name] = [None] * self.count
            # Write-backs repeat a few values ("true", "valid", one timestamp) across many contacts.
            column[index] = sys.intern(value)

    def _generated(self, index: int) -> dict[str, str]:
        h = _mix(self.seed, index)
        first, last = FIRST_NAMES[h % 20], LAST_NAMES[(h >> 5) % 20]
        company = COMPANIES[(h >> 10) % len(COMPANIES)]
        props = {
            "hs_object_id": str(self.first_id + index),
            "createdate": self.created_at,
            "lastmodifieddate": self.created_at,
            "firstname": first,
            "lastname": last,
            "company": company.capitalize(),
        }
        email = self._email(index)
        if email is not None:
            props["email"] = email
        if (h >> 20) % 3:
            props["phone"] = PHONE_FORMATS[(h >> 22) % len(PHONE_FORMATS)].format(index % 10000)
        return props

    def _email(self, index: int) -> str | None:
        position = index + 1  # so that "every 50th" is the 50th, not the first
        if self.missing_email_every and position % self.missing_email_every == 0:
            return None
        if self.malformed_every and position % self.malformed_every == 0:
            return self._malformed_email(index)
        if self.duplicate_every and index > 0 and position % self.duplicate_every == 0:
            return f"  {self._pattern_email(index - 1).upper()} "
        return self._pattern_email(index)

    def _pattern_email(self, index: int) -> str:
        h = _mix(self.seed, index)
        first, last = FIRST_NAMES[h % 20].lower(), LAST_NAMES[(h >> 5) % 20].lower()
        company = COMPANIES[(h >> 10) % len(COMPANIES)]
        kind = (h >> 14) % 20
        if kind < 10:
            return f"{first}.{last}{index}@{company}.com"
        if kind < 13:
            return f"{first}{last}{index}@{FREE_DOMAINS[kind % len(FREE_DOMAINS)]}"
        if kind == 13:
            return f"{ROLE_LOCAL_PARTS[index % len(ROLE_LOCAL_PARTS)]}@{company}{index}.com"
        if kind == 14:
            return f"{first}{index}@{DISPOSABLE_DOMAINS[index % len(DISPOSABLE_DOMAINS)]}"
        if kind == 15:
            return f"{UNDELIVERABLE_LOCAL_PARTS[index % 3]}{index}@{company}.com"
        if kind == 16:
            return f"{first}{index}@catchall-{company}.com"
        if kind == 17:
            return f"unknown{index}@{company}.com"
        return f"{first[0]}{last}{index}@{company}.io"

    def _malformed_email(self, index: int) -> str:
        h = _mix(self.seed, index)
        first, company = FIRST_NAMES[h % 20].lower(), COMPANIES[(h >> 10) % len(COMPANIES)]
        shapes = (
            f"{first}{index}@@{company}.com",
            f"{first} {index}@{company}.com",
            f"{first}{index}.{company}.com",
            f"{first}{index}@{company}",
            f"@{company}.com",
        )
        return shapes[index % len(shapes)]


class IdRange(Sequence[str]):
    """The ids of a generated block as a sequence of strings, without building them."""

    def __init__(self, first_id: int, count: int) -> None:
        self._first_id = first_id
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return str(self._first_id + index)


class ContactStore:
    """All contacts, addressed by their numeric string ids (guarded by the state's lock)."""

    def __init__(self, first_id: int = 1001) -> None:
        self._seeded: dict[str, dict[str, str]] = {}
        self._blocks: list[GeneratedBlock] = []
        self._next_id = first_id
        self._email_index: dict[str, str] | None = None
        self._archived: dict[str, str] = {}  # id -> when it was archived
        self._merged_into: dict[str, str] = {}  # merged-away id -> the record it is now (kept direct)

    def __len__(self) -> int:
        stored = len(self._seeded) + sum(block.count for block in self._blocks)
        return stored - len(self._archived) - len(self._merged_into)

    def add(self, properties: dict[str, str], now: str, contact_id: str | None = None) -> str:
        """Store a contact as given (no property checks); returns its id."""
        if contact_id is None:
            contact_id = str(self._next_id)
        elif not contact_id.isdigit():
            raise ValueError(f"contact id {contact_id!r} is not numeric, as HubSpot ids are")
        if self._stored(contact_id):
            raise ValueError(f"contact {contact_id} already exists")
        self._next_id = max(self._next_id, int(contact_id) + 1)
        self._seeded[contact_id] = {
            **properties,
            "hs_object_id": contact_id,
            "createdate": properties.get("createdate", now),
            "lastmodifieddate": properties.get("lastmodifieddate", now),
        }
        # Kept up to date rather than dropped: batch create looks up every new email.
        if self._email_index is not None and properties.get("email"):
            self._email_index.setdefault(properties["email"].strip().lower(), contact_id)
        return contact_id

    def generate(self, count: int, now: str, **knobs: int) -> GeneratedBlock:
        block = GeneratedBlock(first_id=self._next_id, count=count, created_at=now, **knobs)
        self._next_id += count
        self._blocks.append(block)
        self._email_index = None
        return block

    def exists(self, contact_id: str) -> bool:
        """A live contact: stored, neither archived nor merged away."""
        gone = contact_id in self._archived or contact_id in self._merged_into
        return not gone and self._stored(contact_id)

    def _stored(self, contact_id: str) -> bool:
        return contact_id in self._seeded or self._locate(contact_id) is not None

    def resolve(self, contact_id: str) -> str | None:
        """The live contact an id addresses for a read: itself, or the record it was merged into."""
        target = self._merged_into.get(contact_id, contact_id)
        return target if self.exists(target) else None

    def fate(self, contact_id: str) -> dict[str, str]:
        """What became of a stored contact that is not live: {"archivedAt"} or {"mergedInto"}."""
        if contact_id in self._merged_into:
            return {"mergedInto": self._merged_into[contact_id]}
        if contact_id in self._archived:
            return {"archivedAt": self._archived[contact_id]}
        return {}

    def archive(self, contact_id: str, now: str) -> bool:
        """Archive a live contact; False when there is none by that id."""
        if not self.exists(contact_id):
            return False
        self._archived[contact_id] = now
        self._email_index = None
        return True

    def merge(self, primary_id: str, secondary_id: str, now: str) -> str:
        """Merge two live contacts into a new record (its id is returned): the primary's values win,
        the secondary's fill what the primary lacks; both ids, and the ids merged into them before,
        are listed in hs_merged_object_ids and point to the new record from now on."""
        primary, secondary = self.get(primary_id) or {}, self.get(secondary_id) or {}
        merged_ids = {primary_id, secondary_id}
        for props in (primary, secondary):
            merged_ids.update(i for i in props.get(MERGED_IDS, "").split(";") if i)
        values = {**secondary, **{name: value for name, value in primary.items() if value != ""}}
        values[MERGED_IDS] = ";".join(sorted(merged_ids, key=int))
        values["createdate"] = min(primary["createdate"], secondary["createdate"])
        values["lastmodifieddate"] = now
        others = _other_emails(primary, secondary, values.get("email", ""))
        values.pop(ADDITIONAL_EMAILS, None)
        if others:
            values[ADDITIONAL_EMAILS] = ";".join(others)
        new_id = self.add(values, now)
        for old_id in merged_ids:  # every id that pointed to either record now points to the new one
            self._merged_into[old_id] = new_id
        self._email_index = None
        return new_id

    def get(self, contact_id: str) -> dict[str, str] | None:
        """All properties of a stored contact (a copy; archived and merged-away ones too), or None."""
        if contact_id in self._seeded:
            return dict(self._seeded[contact_id])
        located = self._locate(contact_id)
        return located[0].properties(located[1]) if located else None

    def update(self, contact_id: str, values: dict[str, str], now: str) -> None:
        values = {**values, "lastmodifieddate": now}
        if contact_id in self._seeded:
            self._seeded[contact_id].update(values)
        else:
            located = self._locate(contact_id)
            if located is None:
                raise KeyError(contact_id)
            located[0].write(located[1], values)
        if "email" in values:
            self._email_index = None

    def iter_ids(self) -> Iterator[str]:
        """Live contacts: seeded ones first (in seeding order), then each generated block in order."""
        gone = self._archived.keys() | self._merged_into.keys()
        yield from (i for i in list(self._seeded) if i not in gone)
        for block in list(self._blocks):
            ids = IdRange(block.first_id, block.count)
            yield from (i for i in ids if i not in gone) if gone else ids

    def find_id(self, id_property: str, value: str) -> str | None:
        """The contact whose unique property `id_property` (hs_object_id or email) is `value`."""
        if id_property == "hs_object_id":
            return value if self.exists(value) else None
        if id_property != "email":
            raise ValueError(f"{id_property} is not a unique property")
        if self._email_index is None:
            self._email_index = self._build_email_index()
        return self._email_index.get(value.strip().lower())

    def _build_email_index(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for contact_id in self.iter_ids():
            email = (self.get(contact_id) or {}).get("email")
            if email:
                index.setdefault(email.strip().lower(), contact_id)
        return index

    def _locate(self, contact_id: str) -> tuple[GeneratedBlock, int] | None:
        for block in self._blocks:
            index = block.index_of(contact_id)
            if index is not None:
                return block, index
        return None


def _other_emails(primary: dict[str, str], secondary: dict[str, str], kept: str) -> list[str]:
    """The addresses a merged record holds besides `kept`: HubSpot keeps the secondary's as additional."""
    addresses = [
        *primary.get(ADDITIONAL_EMAILS, "").split(";"),
        secondary.get("email", ""),
        *secondary.get(ADDITIONAL_EMAILS, "").split(";"),
    ]
    seen = {kept.strip().lower()}
    others = []
    for address in addresses:
        key = address.strip().lower()
        if key and key not in seen:
            seen.add(key)
            others.append(address.strip())
    return others
