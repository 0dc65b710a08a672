"""Updating one record as Salesforce would, shared by sObject Collections and Bulk API 2.0 ingest.

`plan_update` checks a record's id and values and says either what to write or why Salesforce
would refuse it (per-record errors: MALFORMED_ID, INVALID_CROSS_REFERENCE_KEY, ENTITY_IS_DELETED,
CANNOT_UPDATE_CONVERTED_LEAD, UNABLE_TO_LOCK_ROW for a record locked through POST /_sandbox/locks,
INVALID_FIELD_FOR_INSERT_UPDATE, INVALID_TYPE_ON_FIELD_IN_RECORD,
INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST, FIELD_CUSTOM_VALIDATION_EXCEPTION for records seeded
with the validation-rule flag). `apply` writes a plan that has no errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector.sandbox.salesforce_ids import KEY_PREFIXES, to_18
from connector.sandbox.salesforce_schema import UNCHANGED, Field, FieldValueError, utc_now
from connector.sandbox.salesforce_state import SandboxState

VALIDATION_RULE_MESSAGE = "This record is locked by a validation rule (ApexVerify sandbox)."
ROLLED_BACK = (
    "Record rolled back because not all records were valid and the request was using AllOrNone header"
)
LOCKED_MESSAGE = "unable to obtain exclusive access to this record"
READ_ONLY = (
    "Unable to create/update fields: {names}. Please check the security settings of this field and verify "
    "that it is read/write for your profile or permission set."
)

Coerce = Callable[[Field, Any], Any]


@dataclass(frozen=True)
class WriteError:
    code: str
    message: str
    fields: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": list(self.fields)}

    def to_bulk(self) -> str:
        """The sf__Error cell of Bulk API failed results: CODE:message:fields -- (or CODE:message:--)."""
        fields = ",".join(self.fields)
        return f"{self.code}:{self.message}:{fields + ' ' if fields else ''}--"


@dataclass
class PlannedWrite:
    record_id: str | None  # reported back; None when the id named no record
    serial: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    errors: list[WriteError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def plan_update(
    state: SandboxState, object_name: str, raw_id: Any, raw_values: dict[str, Any], coerce: Coerce
) -> PlannedWrite:
    """What updating `object_name` record `raw_id` with `raw_values` (canonical field names) would do."""
    found = find_record(state, object_name, raw_id)
    if isinstance(found, WriteError):
        return PlannedWrite(None, errors=[found])
    record_id, serial = found
    plan = PlannedWrite(record_id, serial)
    refusal = _refuse_record(state, object_name, serial)
    if refusal is not None:
        plan.errors.append(refusal)
        return plan
    plan.values, plan.errors = _checked_values(state, object_name, raw_values, coerce)
    if not plan.errors and serial in state.store.validation_rule:
        plan.errors.append(WriteError("FIELD_CUSTOM_VALIDATION_EXCEPTION", VALIDATION_RULE_MESSAGE))
    return plan


def apply(state: SandboxState, plan: PlannedWrite) -> None:
    assert plan.ok and plan.serial is not None
    now = utc_now()
    state.store.update(plan.serial, {**plan.values, "LastModifiedDate": now, "SystemModstamp": now})
    state.note_write(plan.serial, plan.values)


def rolled_back(plan: PlannedWrite) -> PlannedWrite:
    """A good record of an allOrNone request that failed elsewhere."""
    return PlannedWrite(
        plan.record_id, plan.serial, errors=[WriteError("ALL_OR_NONE_OPERATION_ROLLED_BACK", ROLLED_BACK)]
    )


def find_record(state: SandboxState, object_name: str, raw_id: Any) -> tuple[str, int] | WriteError:
    """(18-character id, serial) of an existing record (deleted ones included), or why there is none."""
    if raw_id is None or raw_id == "":
        return WriteError("MISSING_ARGUMENT", "Id not specified in an update call", ("Id",))
    id18 = to_18(raw_id)
    if id18 is None:
        return WriteError("MALFORMED_ID", f"malformed id {raw_id}", ("Id",))
    if id18[:3] != KEY_PREFIXES[object_name]:
        return WriteError("MALFORMED_ID", f"{object_name} ID: id value of incorrect type: {raw_id}", ("Id",))
    serial = state.store.resolve(id18)
    if serial is None:
        return WriteError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
    return id18, serial


def _refuse_record(state: SandboxState, object_name: str, serial: int) -> WriteError | None:
    if serial in state.store.deleted:
        return WriteError("ENTITY_IS_DELETED", "entity is deleted")
    if object_name == "Lead" and state.store.values(serial, ["IsConverted"])["IsConverted"]:
        return WriteError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
    if state.store.locked[serial] > 0:
        # Another transaction holds the row (for as many more updates as the lock was set for).
        state.store.locked[serial] -= 1
        return WriteError("UNABLE_TO_LOCK_ROW", LOCKED_MESSAGE)
    return None


def _checked_values(
    state: SandboxState, object_name: str, raw_values: dict[str, Any], coerce: Coerce
) -> tuple[dict[str, Any], list[WriteError]]:
    schema = state.schema.object(object_name)
    assert schema is not None
    return coerce_fields(schema, raw_values, coerce, lambda field: field.updateable)


def coerce_fields(
    schema: Any, raw_values: dict[str, Any], coerce: Coerce, writable: Callable[[Any], bool]
) -> tuple[dict[str, Any], list[WriteError]]:
    """The values a write sets, coerced to their fields' types, and its refusals: fields this write
    may not set (`writable` false: read-only on update, not creatable on insert), values of the
    wrong type."""
    values: dict[str, Any] = {}
    errors: list[WriteError] = []
    locked = [name for name in raw_values if not writable(schema.fields[name])]
    if locked:
        errors.append(
            WriteError(
                "INVALID_FIELD_FOR_INSERT_UPDATE", READ_ONLY.format(names=", ".join(locked)), tuple(locked)
            )
        )
    for name, raw in raw_values.items():
        if name in locked:
            continue
        try:
            value = coerce(schema.fields[name], raw)
        except FieldValueError as refused:
            errors.append(WriteError(refused.code, refused.message, (name,)))
            continue
        if value is not UNCHANGED:
            values[name] = value
    return values, errors
