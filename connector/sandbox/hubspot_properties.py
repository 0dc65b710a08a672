"""Contact property definitions of the HubSpot sandbox, and the checks HubSpot applies to values.

Values travel as strings. On write HubSpot enforces the property's type: `bool` takes "true" or
"false"; `enumeration` only its options' values (a `checkbox` field takes several, joined by
";"); `datetime` takes ISO 8601 or epoch milliseconds (stored as ISO 8601 UTC with milliseconds);
`date` takes a midnight-UTC date; `number` a decimal. "" clears any property. Read-only and
unknown properties are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connector.sandbox.hubspot_errors import HubSpotError, validation_error

HUBSPOT_DEFINED_AT = "2019-08-06T02:41:52.000Z"
CONTACT_OBJECT_TYPES = {"contacts", "contact", "0-1"}
READ_ONLY = {"hs_object_id", "createdate", "lastmodifieddate"}
# Set by HubSpot on a merge, multi-valued (";"-joined) like a checkbox enumeration.
MERGE_PROPERTIES = (
    ("hs_merged_object_ids", "Merged Contact IDs"),
    ("hs_additional_emails", "Additional email addresses"),
)
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

# Which field types HubSpot accepts for each property type.
FIELD_TYPES = {
    "bool": {"booleancheckbox"},
    "enumeration": {"booleancheckbox", "checkbox", "radio", "select", "calculation_equation"},
    "datetime": {"date"},
    "date": {"date"},
    "number": {"number", "calculation_equation"},
    "string": {"text", "textarea", "html", "phonenumber", "file"},
    "phone_number": {"phonenumber"},
}
BOOL_OPTIONS = [
    {"label": "Yes", "value": "true", "displayOrder": 0, "hidden": False},
    {"label": "No", "value": "false", "displayOrder": 1, "hidden": False},
]


def iso_now() -> str:
    return iso_from_datetime(datetime.now(UTC))


def iso_from_datetime(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class PropertyDef:
    name: str
    label: str
    type: str
    field_type: str
    group_name: str
    description: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)
    display_order: int = -1
    read_only: bool = False
    hubspot_defined: bool = True
    created_at: str = HUBSPOT_DEFINED_AT

    def option_label(self, value: str) -> str:
        for option in self.options:
            if option["value"] == value:
                return option["label"]
        return value

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "description": self.description,
            "groupName": self.group_name,
            "options": self.options,
            "displayOrder": self.display_order,
            "calculated": False,
            "externalOptions": False,
            "hasUniqueValue": self.name == "hs_object_id",
            "hidden": False,
            "formField": not self.read_only,
            "archived": False,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
        }
        if self.hubspot_defined:
            body["hubspotDefined"] = True
        return body


def _options(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"label": label, "value": value, "displayOrder": i, "hidden": False}
        for i, (value, label) in enumerate(pairs)
    ]


def default_properties() -> list[PropertyDef]:
    info = "contactinformation"
    return [
        PropertyDef("hs_object_id", "Record ID", "number", "number", info, read_only=True),
        PropertyDef("createdate", "Create Date", "datetime", "date", info, read_only=True),
        PropertyDef("lastmodifieddate", "Last Modified Date", "datetime", "date", info, read_only=True),
        *(
            PropertyDef(name, label, "enumeration", "checkbox", info, read_only=True)
            for name, label in MERGE_PROPERTIES
        ),
        PropertyDef("email", "Email", "string", "text", info),
        PropertyDef("firstname", "First Name", "string", "text", info),
        PropertyDef("lastname", "Last Name", "string", "text", info),
        PropertyDef("phone", "Phone Number", "string", "phonenumber", info),
        PropertyDef("mobilephone", "Mobile Phone Number", "string", "phonenumber", info),
        PropertyDef("company", "Company Name", "string", "text", info),
        PropertyDef("jobtitle", "Job Title", "string", "text", info),
        PropertyDef("country", "Country/Region", "string", "text", info),
        PropertyDef(
            "lifecyclestage",
            "Lifecycle Stage",
            "enumeration",
            "radio",
            info,
            options=_options(
                ("subscriber", "Subscriber"),
                ("lead", "Lead"),
                ("marketingqualifiedlead", "Marketing Qualified Lead"),
                ("salesqualifiedlead", "Sales Qualified Lead"),
                ("opportunity", "Opportunity"),
                ("customer", "Customer"),
                ("evangelist", "Evangelist"),
                ("other", "Other"),
            ),
        ),
        PropertyDef(
            "hs_email_optout",
            "Unsubscribed from all email",
            "bool",
            "booleancheckbox",
            "emailinformation",
            options=[dict(o) for o in BOOL_OPTIONS],
        ),
    ]


def default_groups() -> list[dict[str, Any]]:
    return [
        {"name": "contactinformation", "label": "Contact information", "displayOrder": 0, "archived": False},
        {"name": "emailinformation", "label": "Email information", "displayOrder": 1, "archived": False},
    ]


@dataclass(frozen=True)
class ValueProblem:
    """Why HubSpot refuses one property value (`code` as in HubSpot's property validation)."""

    name: str
    value: str
    code: str
    message: str

    def detail(self) -> dict[str, Any]:
        """As an ErrorDetail of the specs."""
        return {"message": self.message, "code": self.code, "context": {"propertyName": [self.name]}}

    def as_hubspot_json(self) -> dict[str, Any]:
        return {"isValid": False, "message": self.message, "error": self.code, "name": self.name}


def describe_problems(problems: list[ValueProblem]) -> str:
    return "Property values were not valid: " + json.dumps([p.as_hubspot_json() for p in problems])


class PropertyCatalog:
    """The contact properties and property groups of the portal (guarded by the state's lock)."""

    def __init__(self) -> None:
        self.properties: dict[str, PropertyDef] = {p.name: p for p in default_properties()}
        self.groups: dict[str, dict[str, Any]] = {g["name"]: g for g in default_groups()}

    def get(self, name: str) -> PropertyDef | None:
        return self.properties.get(name)

    def custom_names(self) -> list[str]:
        return [name for name, prop in self.properties.items() if not prop.hubspot_defined]

    def create_group(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name", "")
        if not NAME_PATTERN.fullmatch(name):
            raise validation_error(
                f"Property group name {name!r} is invalid: use lower case letters, digits and _"
            )
        if name in self.groups:
            raise HubSpotError(
                409, "OBJECT_ALREADY_EXISTS", f"A property group named '{name}' already exists."
            )
        group = {
            "name": name,
            "label": body.get("label", name),
            "displayOrder": body.get("displayOrder", -1),
            "archived": False,
        }
        self.groups[name] = group
        return group

    def create_property(self, body: dict[str, Any], now: str) -> PropertyDef:
        name, prop_type, field_type = body.get("name", ""), body.get("type", ""), body.get("fieldType", "")
        if not NAME_PATTERN.fullmatch(name):
            raise validation_error(f"Property name {name!r} is invalid: use lower case letters, digits and _")
        if name in self.properties:
            raise HubSpotError(409, "OBJECT_ALREADY_EXISTS", f"Property named '{name}' already exists.")
        if body.get("groupName") not in self.groups:
            raise validation_error(f"Property group {body.get('groupName')!r} does not exist")
        if field_type not in FIELD_TYPES.get(prop_type, set()):
            raise validation_error(
                f"fieldType {field_type!r} is not valid for a property of type {prop_type!r}"
            )
        options = [_option(o, i) for i, o in enumerate(body.get("options") or [])]
        if prop_type == "bool" and not options:
            options = [dict(o) for o in BOOL_OPTIONS]
        if prop_type == "enumeration" and not options:
            raise validation_error(f"Property {name!r} of type enumeration needs options")
        prop = PropertyDef(
            name=name,
            label=body.get("label", name),
            type=prop_type,
            field_type=field_type,
            group_name=body["groupName"],
            description=body.get("description", ""),
            options=options,
            display_order=body.get("displayOrder", -1),
            hubspot_defined=False,
            created_at=now,
        )
        self.properties[name] = prop
        return prop

    def check_values(self, values: dict[str, str]) -> tuple[dict[str, str], list[ValueProblem]]:
        """The values as HubSpot stores them, and the ones it refuses."""
        accepted: dict[str, str] = {}
        problems: list[ValueProblem] = []
        for name, value in values.items():
            prop = self.properties.get(name)
            try:
                if prop is None:
                    raise _Refused("PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
                if prop.read_only:
                    raise _Refused("READ_ONLY_VALUE", f'Property "{name}" is read-only')
                accepted[name] = normalize_value(prop, value)
            except _Refused as refused:
                problems.append(ValueProblem(name, value, refused.code, refused.message))
        return accepted, problems


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _option(raw: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "label": raw.get("label", raw.get("value", "")),
        "value": raw.get("value", ""),
        "displayOrder": raw.get("displayOrder", index),
        "hidden": raw.get("hidden", False),
    }


def normalize_value(prop: PropertyDef, value: str) -> str:
    """`value` as stored for `prop`, or _Refused."""
    if value == "":
        return value
    if prop.type in ("bool", "enumeration"):
        return _enumeration_value(prop, value)
    if prop.type == "datetime":
        return iso_from_datetime(_parse_moment(prop, value))
    if prop.type == "date":
        moment = _parse_moment(prop, value)
        if (moment.hour, moment.minute, moment.second, moment.microsecond) != (0, 0, 0, 0):
            raise _Refused(
                "INVALID_DATE", f"{value} is not midnight UTC, as date property {prop.name} requires"
            )
        return moment.strftime("%Y-%m-%d")
    if prop.type == "number":
        try:
            float(value)
        except ValueError:
            raise _Refused("INVALID_FLOAT", f"{value} is not a valid number for {prop.name}") from None
    return value


def _enumeration_value(prop: PropertyDef, value: str) -> str:
    allowed = {option["value"] for option in prop.options}
    chosen = value.split(";") if prop.field_type == "checkbox" else [value]
    for item in chosen:
        if item not in allowed:
            raise _Refused(
                "INVALID_OPTION",
                f"{item} was not one of the allowed options: {sorted(allowed)} for property {prop.name}",
            )
    return value


def _parse_moment(prop: PropertyDef, value: str) -> datetime:
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        code = "INVALID_DATETIME" if prop.type == "datetime" else "INVALID_DATE"
        raise _Refused(
            code, f"{value} is not a valid ISO 8601 date or epoch milliseconds for {prop.name}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
