"""Verdict flags written back onto HubSpot contacts, as properties of the `apexverify` group.

Which flags a sync writes is connector/crm/flags.py's; here are their default property names
(a connection may rename them with `field_names`, default name -> the portal's name), the
properties' definitions, and the writer: REST batch updates of 100 contacts, or, above
`bulk_threshold`, one Imports API job per batch (bulk.py), so API calls do not grow with the sync.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import hubspot.crm.contacts as hs_contacts
import hubspot.crm.properties as hs_properties

from connector.crm.base import FlagUpdate, Verdict, WriteFailure, cells_per_verdict
from connector.crm.calls import chunks
from connector.crm.flags import FlagField, FlagNames, FlagWriting
from connector.crm.hubspot.api import BATCH_LIMIT, CONTACTS, HubSpotApi, HubSpotRequestError
from connector.crm.hubspot.bulk import import_flag_rows
from connector.crm.jobs import utc_iso_millis

log = logging.getLogger(__name__)

NAMES = FlagNames(
    "HubSpot",
    "properties",
    {
        "email": {
            "valid": "apexverify_valid",
            "wrong": "apexverify_wrong",
            "is_role": "apexverify_is_role",
            "is_disposable": "apexverify_is_disposable",
            "status": "apexverify_status",
            "verified_at": "apexverify_verified_at",
        },
        "phone": {
            "valid": "apexverify_phone_valid",
            "wrong": "apexverify_phone_wrong",
            "status": "apexverify_phone_status",
            "verified_at": "apexverify_phone_verified_at",
        },
    },
)
GROUP_NAME = "apexverify"
GROUP_LABEL = "ApexVerify"
STATUS_OPTIONS = ("valid", "wrong", "unknown", "invalid_format")
EXPECTED_TYPES = {"bool": "bool", "status": "enumeration", "verified_at": "datetime"}
# One import file: under HubSpot's 1,048,576 rows and 512 MB (1,000,000 rows of flags are ~70 MB,
# streamed from disk). Each import costs a poll interval or more of waiting: four of 250,000 rows
# took 20 s more of a 1,000,000-contact write-back than one.
BULK_BATCH_ROWS = 1_000_000
# The error categories of a per-record refusal that passes (HubSpot's rate limits).
TEMPORARY_CATEGORIES = frozenset({"RATE_LIMITS", "RATE_LIMIT"})


def epoch_millis(moment: datetime) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return str(int(moment.timestamp() * 1000))


def flag_value(field: FlagField, verdict: Verdict, *, for_import: bool) -> str:
    """The value HubSpot takes: booleans as true/false, datetimes as ISO 8601 (REST) or epoch ms (import).

    An unknown boolean (None) is "": it clears the property over REST; an import leaves it as is.
    """
    return field.text(verdict, unknown="", moment=epoch_millis if for_import else utc_iso_millis)


def _property_definition(field: FlagField) -> hs_properties.PropertyCreate:
    label = f"ApexVerify {field.type_} {field.attribute.replace('_', ' ')}"
    common = {"name": field.name, "label": label, "group_name": GROUP_NAME}
    if field.kind == "bool":
        options = [
            hs_properties.OptionInput(label="Yes", value="true", display_order=0, hidden=False),
            hs_properties.OptionInput(label="No", value="false", display_order=1, hidden=False),
        ]
        return hs_properties.PropertyCreate(
            type="bool", field_type="booleancheckbox", options=options, **common
        )
    if field.kind == "status":
        options = [
            hs_properties.OptionInput(label=status, value=status, display_order=i, hidden=False)
            for i, status in enumerate(STATUS_OPTIONS)
        ]
        return hs_properties.PropertyCreate(
            type="enumeration", field_type="select", options=options, **common
        )
    return hs_properties.PropertyCreate(type="datetime", field_type="date", **common)


class HubSpotFlagWriter(FlagWriting[HubSpotApi]):
    """Verdict flags onto contacts: batch updates of 100, or one import per batch when the sync is large."""

    names = NAMES
    rest_batch = BATCH_LIMIT
    bulk_batch = BULK_BATCH_ROWS

    # -- prepare

    def prepare(self) -> None:
        """Create the `apexverify` group and each missing property; one GET when all exist."""
        existing = {p.name: p for p in self.api.call(self.api.properties.get_all, CONTACTS).results}
        for field in self.fields:
            found = existing.get(field.name)
            if found is not None and found.type != EXPECTED_TYPES[field.kind]:
                log.warning(
                    "hubspot_property_type_differs",
                    extra={
                        "property": field.name,
                        "type": found.type,
                        "expected": EXPECTED_TYPES[field.kind],
                    },
                )
        missing = [field for field in self.fields if field.name not in existing]
        if not missing:
            return
        self._create_group()
        for field in missing:
            self._create_if_absent(self.api.properties.create, _property_definition(field))

    def _create_group(self) -> None:
        group = hs_properties.PropertyGroupCreate(name=GROUP_NAME, label=GROUP_LABEL, display_order=-1)
        self._create_if_absent(self.api.property_groups.create, group)

    def _create_if_absent(self, create: Callable[..., Any], definition: Any) -> None:
        try:
            self.api.call(create, CONTACTS, definition)
        except HubSpotRequestError as exc:
            if exc.status != 409:  # 409: another worker created it meanwhile
                raise

    # -- write

    def write(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        if self.bulk:
            cells = cells_per_verdict(
                lambda verdict: [flag_value(f, verdict, for_import=True) for f in self.fields]
            )
            rows = ((update.record_id, cells(update.verdict)) for update in updates)
            return import_flag_rows(self.api, [f.name for f in self.fields], rows, work_dir=self.work_dir)
        failures: list[WriteFailure] = []
        for chunk in chunks(updates, BATCH_LIMIT):
            # HubSpot refuses a batch naming a record twice; the later verdict wins.
            inputs = {
                update.record_id: {
                    f.name: flag_value(f, update.verdict, for_import=False) for f in self.fields
                }
                for update in chunk
            }
            failures.extend(self._update_batch(inputs))
        return failures

    def _update_batch(self, inputs: dict[str, dict[str, str]]) -> list[WriteFailure]:
        body = hs_contacts.BatchInputSimplePublicObjectBatchInput(
            inputs=[
                hs_contacts.SimplePublicObjectBatchInput(id=record_id, properties=properties)
                for record_id, properties in inputs.items()
            ]
        )
        try:
            answer = self.api.call(self.api.contacts.update, body)
        except HubSpotRequestError as exc:
            return self._refused_batch(inputs, exc)
        return _batch_failures(answer, list(inputs))

    def _refused_batch(
        self, inputs: dict[str, dict[str, str]], exc: HubSpotRequestError
    ) -> list[WriteFailure]:
        """A whole batch refused (400): halve it until the records HubSpot refuses are alone."""
        if len(inputs) == 1:
            record_id = next(iter(inputs))
            return [WriteFailure(record_id, exc.category, exc.hubspot_message)]
        if exc.status != 400:
            raise exc
        items = list(inputs.items())
        middle = len(items) // 2
        return self._update_batch(dict(items[:middle])) + self._update_batch(dict(items[middle:]))


def _batch_failures(answer: Any, record_ids: list[str]) -> list[WriteFailure]:
    """Every input HubSpot did not return as updated, with the error naming it (207 partial answers)."""
    written = {result.id for result in answer.results or []}
    errors = getattr(answer, "errors", None) or []
    error_by_id: dict[str, Any] = {}  # HubSpot's BatchError objects
    for error in errors:
        for record_id in (error.context or {}).get("ids", []):
            error_by_id.setdefault(str(record_id), error)
    failures = []
    for record_id in record_ids:
        if record_id in written:
            continue
        error = error_by_id.get(record_id) or (errors[0] if errors else None)
        if error is None:
            failures.append(WriteFailure(record_id, "NOT_CONFIRMED", "HubSpot did not confirm this update"))
        else:
            failures.append(
                WriteFailure(record_id, error.category, error.message, transient=_temporary(error))
            )
    return failures


def _temporary(error: Any) -> bool:
    """A per-record error HubSpot means as temporary: a rate limit, or, when the error carries an
    HTTP status (the specs' StandardError.status; HubSpot mostly sends "error" there), a 429 or 5xx."""
    status = str(getattr(error, "status", "") or "").strip()
    refused_for_now = status.isdigit() and (int(status) == 429 or int(status) >= 500)
    return error.category in TEMPORARY_CATEGORIES or refused_for_now
