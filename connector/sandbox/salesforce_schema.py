"""The objects and fields the Salesforce sandbox knows, how values are checked, and describe answers.

Contact and Lead carry the ten ApexVerify custom fields of DESIGN.md's "What is written back"
table and the standard Email Opt Out checkbox (HasOptedOutOfEmail, the opt_out action's); campaigns
have member statuses (CampaignMemberStatus). A lead carries what its conversion set, read-only as on
Salesforce: IsConverted, ConvertedContactId, ConvertedAccountId and ConvertedDate (a date, no time);
accounts (a name only) are what conversions create and contacts belong to (AccountId). Which
fields exist, and which are read-only, is configurable per object (see `Schema.configure`), so a
connector can be tested against an org that lacks some of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from connector.sandbox.salesforce_ids import KEY_PREFIXES, to_18

VERDICTS = ("valid", "wrong", "unknown", "invalid_format")
CONVERTED_STATUS = "Closed - Converted"  # the Status a lead conversion sets
LEAD_STATUSES = (
    "Open - Not Contacted",
    "Working - Contacted",
    CONVERTED_STATUS,
    "Closed - Not Converted",
)
EMAIL_SHAPE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # id | boolean | date | datetime | picklist | string | email | phone | reference
    label: str = ""
    updateable: bool = False
    length: int = 0
    picklist: tuple[str, ...] = ()
    reference_to: str | None = None
    relationship: str | None = None  # e.g. "Contact" for CampaignMember.ContactId
    custom: bool = False
    restricted: bool = False  # a restricted picklist refuses values outside its list
    createable: bool | None = None  # None: as updateable (CampaignMember's ids are create-only)

    @property
    def can_create(self) -> bool:
        return self.updateable if self.createable is None else self.createable

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if self.custom:
            return self.name.removesuffix("__c").replace("_", " ")
        return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", self.name)


def _text(
    name: str, length: int, *, updateable: bool = True, type_: str = "string", label: str = ""
) -> Field:
    return Field(name, type_, label=label, updateable=updateable, length=length)


def _apexverify_fields() -> list[Field]:
    flag = "boolean"

    def verdict(name: str) -> Field:
        return Field(
            name, "picklist", updateable=True, length=255, picklist=VERDICTS, custom=True, restricted=True
        )

    return [
        Field("ApexVerify_Valid__c", flag, updateable=True, custom=True),
        Field("ApexVerify_Wrong__c", flag, updateable=True, custom=True),
        Field("ApexVerify_Is_Role__c", flag, updateable=True, custom=True),
        Field("ApexVerify_Is_Disposable__c", flag, updateable=True, custom=True),
        verdict("ApexVerify_Status__c"),
        Field("ApexVerify_Verified_At__c", "datetime", updateable=True, custom=True),
        Field("ApexVerify_Phone_Valid__c", flag, updateable=True, custom=True),
        Field("ApexVerify_Phone_Wrong__c", flag, updateable=True, custom=True),
        verdict("ApexVerify_Phone_Status__c"),
        Field("ApexVerify_Phone_Verified_At__c", "datetime", updateable=True, custom=True),
    ]


def _system_fields(object_name: str) -> tuple[list[Field], list[Field]]:
    head = [
        Field("Id", "id", label=f"{object_name} ID", length=18),
        Field("IsDeleted", "boolean", label="Deleted"),
    ]
    tail = [Field(name, "datetime") for name in ("CreatedDate", "LastModifiedDate", "SystemModstamp")]
    return head, tail


def _person_fields() -> list[Field]:
    return [
        _text("FirstName", 40),
        _text("LastName", 80),
        _text("Name", 121, updateable=False, label="Full Name"),
        _text("Email", 80, type_="email"),
        _text("Phone", 40, type_="phone"),
        _text("MobilePhone", 40, type_="phone", label="Mobile Phone"),
        _text("Title", 128),
    ]


OBJECTS = ("Account", "Contact", "Lead", "Campaign", "CampaignMember", "CampaignMemberStatus")
# The standard "Email Opt Out" checkbox of contacts and leads (a verdict action sets it).
OPT_OUT = Field("HasOptedOutOfEmail", "boolean", label="Email Opt Out", updateable=True)


def _reference(name: str, target: str, *, createable: bool = False) -> Field:
    return Field(
        name, "reference", reference_to=target, relationship=target, length=18, createable=createable
    )


def _object_fields() -> dict[str, list[Field]]:
    lead_only = [
        _text("Company", 255),
        Field("Status", "picklist", label="Lead Status", updateable=True, length=255, picklist=LEAD_STATUSES),
        Field("IsConverted", "boolean", label="Converted"),
        # Set by a conversion (salesforce_convert.py), never by an update.
        Field(
            "ConvertedContactId",
            "reference",
            reference_to="Contact",
            relationship="ConvertedContact",
            length=18,
        ),
        Field(
            "ConvertedAccountId",
            "reference",
            reference_to="Account",
            relationship="ConvertedAccount",
            length=18,
        ),
        Field("ConvertedDate", "date", label="Converted Date"),
    ]
    member = [
        # Set when a member is created, never changed after.
        *(_reference(f"{name}Id", name, createable=True) for name in ("Campaign", "Contact", "Lead")),
        _text("Status", 40),
        Field("HasResponded", "boolean", label="Responded"),
        # Read-only copies of the member's contact or lead, as on the real object.
        *(replace(f, updateable=False) for f in _person_fields() if f.name != "MobilePhone"),
    ]
    campaign = [
        _text("Name", 80),
        Field("IsActive", "boolean", label="Active", updateable=True),
        _text("Status", 40),
    ]
    # A campaign's member statuses (its Status picklist): "Sent" (default) and "Responded" unless seeded.
    member_status = [
        _reference("CampaignId", "Campaign"),
        _text("Label", 765, updateable=False),
        Field("IsDefault", "boolean", label="Default"),
        Field("HasResponded", "boolean", label="Responded"),
    ]
    return {
        "Account": [_text("Name", 255, label="Account Name")],
        "Contact": [*_person_fields(), _reference("AccountId", "Account"), OPT_OUT, *_apexverify_fields()],
        "Lead": [*_person_fields(), OPT_OUT, *lead_only, *_apexverify_fields()],
        "Campaign": campaign,
        "CampaignMember": member,
        "CampaignMemberStatus": member_status,
    }


@dataclass
class ObjectSchema:
    name: str
    fields: dict[str, Field]  # in describe order
    _by_lower: dict[str, Field] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_lower = {name.lower(): f for name, f in self.fields.items()}

    def field(self, name: str) -> Field | None:
        return self._by_lower.get(name.lower())

    def relationship(self, name: str) -> Field | None:
        """The reference field behind relationship `name` (case-insensitive), e.g. ContactId for Contact."""
        lowered = name.lower()
        return next((f for f in self.fields.values() if (f.relationship or "").lower() == lowered), None)


def full_object(object_name: str) -> ObjectSchema:
    """The object with every field it can hold, configured missing or not (seeded data may carry them)."""
    head, tail = _system_fields(object_name)
    return ObjectSchema(object_name, {f.name: f for f in [*head, *_object_fields()[object_name], *tail]})


def default_values(object_name: str) -> dict[str, Any]:
    """A new record's values: checkboxes false, everything else empty."""
    return {
        f.name: (False if f.type == "boolean" else None) for f in full_object(object_name).fields.values()
    }


class Schema:
    """Every object's fields as the org shows them: minus those configured missing, some read-only."""

    def __init__(self) -> None:
        self.full = {name: full_object(name) for name in OBJECTS}
        self.configure({}, {})

    def configure(self, missing: dict[str, list[str]], readonly: dict[str, list[str]]) -> None:
        for object_name, names in [*missing.items(), *readonly.items()]:
            if object_name not in self.full:
                raise ValueError(f"unknown object {object_name!r}; known: {sorted(self.full)}")
            unknown = sorted(set(names) - set(self.full[object_name].fields))
            if unknown:
                raise ValueError(f"{object_name} has no fields {unknown}")
        self.missing = {name: sorted(set(names)) for name, names in missing.items() if names}
        self.readonly = {name: sorted(set(names)) for name, names in readonly.items() if names}
        self._objects = {name: self._configured(full) for name, full in self.full.items()}

    def _configured(self, full: ObjectSchema) -> ObjectSchema:
        gone = set(self.missing.get(full.name, ()))
        locked = set(self.readonly.get(full.name, ()))
        kept = [replace(f, updateable=False) if f.name in locked else f for f in full.fields.values()]
        return ObjectSchema(full.name, {f.name: f for f in kept if f.name not in gone})

    def object(self, name: str) -> ObjectSchema | None:
        """The object named `name` (case-insensitive) as the org shows it."""
        return next((o for key, o in self._objects.items() if key.lower() == name.lower()), None)

    def names(self) -> list[str]:
        return list(self._objects)


# ---- values -------------------------------------------------------------------------------------


class FieldValueError(Exception):
    """A value the field's type refuses; `code` is Salesforce's status code for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


UNCHANGED = object()  # a Bulk API CSV cell left empty: the field keeps its value


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_datetime(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_date(text: str) -> date | None:
    """A date field's value: 2024-05-01 (a datetime's date part is taken, as Salesforce does)."""
    try:
        return date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


def json_datetime(value: datetime) -> str:
    """REST's spelling: 2024-05-01T12:00:00.000+0000."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def csv_datetime(value: datetime) -> str:
    """Bulk API 2.0 query results' spelling: 2024-05-01T12:00:00.000Z."""
    return json_datetime(value).removesuffix("+0000") + "Z"


def to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return json_datetime(value)
    return value.isoformat() if isinstance(value, date) else value


def to_csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return csv_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _wrong_type(f: Field, value: object) -> FieldValueError:
    return FieldValueError(
        "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{f.display}: value not of required type: {value}"
    )


def coerce_json(f: Field, value: Any) -> Any:
    """A JSON value from an update, as stored; FieldValueError when the field's type refuses it."""
    if f.type == "boolean":
        if value is None:
            return False  # a checkbox is never null: clearing it unchecks it
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _wrong_type(f, value)
    if value is None:
        return None
    if isinstance(value, bool | dict | list):
        raise _wrong_type(f, value)
    return _coerce_text(f, str(value))


def coerce_csv(f: Field, cell: str) -> Any:
    """A Bulk API CSV cell as stored: empty keeps the value, #N/A clears it."""
    if cell == "":
        return UNCHANGED
    if cell == "#N/A":
        return False if f.type == "boolean" else None
    if f.type == "boolean":
        lowered = cell.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise _wrong_type(f, cell)
    return _coerce_text(f, cell)


def _coerce_text(f: Field, text: str) -> Any:
    if f.type == "date":
        day = parse_date(text)
        if day is None:
            raise _wrong_type(f, text)
        return day
    if f.type == "datetime":
        parsed = parse_datetime(text)
        if parsed is None:
            raise _wrong_type(f, text)
        return parsed
    if f.restricted and text not in f.picklist:
        raise FieldValueError(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"{f.display}: bad value for restricted picklist field: {text}",
        )
    if f.type in ("id", "reference"):
        id18 = to_18(text)
        if id18 is None:
            raise FieldValueError("MALFORMED_ID", f"{f.display}: id value of incorrect type: {text}")
        return id18
    if f.type == "email" and text and not EMAIL_SHAPE.match(text):
        raise FieldValueError("INVALID_EMAIL_ADDRESS", f"{f.display}: invalid email address: {text}")
    if f.length and len(text) > f.length:
        raise FieldValueError(
            "STRING_TOO_LONG", f"{f.display}: data value too large: {text} (max length={f.length})"
        )
    return text


# ---- describe -----------------------------------------------------------------------------------

SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}


def describe(schema: ObjectSchema, version: str) -> dict[str, Any]:
    base = f"/services/data/v{version}/sobjects/{schema.name}"
    return {
        "name": schema.name,
        "label": schema.name,
        "labelPlural": schema.name + "s",
        "keyPrefix": KEY_PREFIXES[schema.name],
        "custom": False,
        "createable": True,
        "updateable": True,
        "deletable": True,
        "queryable": True,
        "searchable": True,
        "fields": [_describe_field(f) for f in schema.fields.values()],
        "urls": {
            "sobject": base,
            "describe": f"{base}/describe",
            "rowTemplate": f"{base}/{{ID}}",
        },
    }


def _describe_field(f: Field) -> dict[str, Any]:
    return {
        "name": f.name,
        "label": f.display,
        "type": f.type,
        "soapType": SOAP_TYPES.get(f.type, "xsd:string"),
        "length": f.length,
        "custom": f.custom,
        "updateable": f.updateable,
        "createable": f.can_create,
        "nillable": f.type not in ("boolean", "id"),
        "filterable": True,
        "sortable": True,
        "defaultValue": False if f.type == "boolean" else None,
        "picklistValues": [
            {"active": True, "defaultValue": False, "label": value, "validFor": None, "value": value}
            for value in f.picklist
        ],
        "restrictedPicklist": f.restricted,
        "referenceTo": [f.reference_to] if f.reference_to else [],
        "relationshipName": f.relationship,
    }
