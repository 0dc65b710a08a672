"""HubSpot's verdict actions: `opt_out` and `add_to_list`, taken on contacts after their flags are written.

`opt_out` unsubscribes the contact's address from all email of the portal through the
Communication Preferences v4 API (batch `unsubscribe-all`, EMAIL channel), which hubspot-api-client
12 does not cover: those requests go through `HubSpotApi.call_path`, the same door as every other
(rate limiter, token refresh, retries, error mapping). `add_to_list` adds contacts to a static
(MANUAL or SNAPSHOT) list through the Lists API; HubSpot refuses API changes to a DYNAMIC list's
memberships, so `prepare` checks the list first and fails the step with a clear code.

The pipeline (connector/pipeline/actions.py) marks records attempted before `run` and, after a
crash, asks `already_done` about them: it reads unsubscribe-all statuses, or the records' list
memberships, so a retried step neither re-unsubscribes an address nor adds a member twice.
Failures name the record and HubSpot's error code, never the address.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from connector.crm.base import ActionTarget, VerdictAction, WriteFailure
from connector.crm.calls import chunks, redact
from connector.crm.hubspot.api import BATCH_LIMIT, HubSpotApi, HubSpotRequestError
from connector.errors import ConnectorError

log = logging.getLogger(__name__)

OPT_OUT = "opt_out"
ADD_TO_LIST = "add_to_list"
UNSUBSCRIBE_ALL = "/communication-preferences/v4/statuses/batch/unsubscribe-all"
UNSUBSCRIBE_ALL_READ = UNSUBSCRIBE_ALL + "/read"
RECORD_MEMBERSHIPS_READ = "/crm/v3/lists/records/memberships/batch/read"
EMAIL_CHANNEL = {"channel": "EMAIL"}
CONTACT_OBJECT_TYPE = "0-1"
STATIC_LIST_TYPES = ("MANUAL", "SNAPSHOT")
# Addresses per unsubscribe-all call or read, records per memberships read: HubSpot's batch limit.
PREFERENCES_BATCH = BATCH_LIMIT
# Record ids per memberships/add call (HubSpot takes far more; one call per bulk batch).
LIST_ADD_BATCH = 1_000
# Records per `run` above the bulk threshold: ten unsubscribe calls, or one memberships/add call.
BULK_BATCH = 1_000
MISSING_CONTACT = "HubSpot has no contact with this id (deleted or merged)"

Send = Callable[[list[ActionTarget]], list[WriteFailure]]


class HubSpotActionRunner:
    """Takes a sync's verdict actions on HubSpot contacts (the pipeline's ActionRunner)."""

    def __init__(self, api: HubSpotApi, type_: str, *, bulk: bool) -> None:
        self.api = api
        self.type = type_
        self.batch_size = BULK_BATCH if bulk else BATCH_LIMIT

    # -- prepare

    def prepare(self, action: VerdictAction) -> None:
        if action.do == OPT_OUT:
            if self.type != "email":
                raise ConnectorError("hubspot_opt_out_needs_email", "opt_out unsubscribes email addresses")
        elif action.do == ADD_TO_LIST:
            self._check_list(action.target)
        else:
            raise ConnectorError(
                "hubspot_action_unsupported", f"HubSpot cannot take the action {action.do!r}"
            )

    def _check_list(self, list_id: str | None) -> None:
        if not list_id:
            raise ConnectorError("hubspot_list_not_found", "add_to_list needs a list_id")
        try:
            found = self.api.call(self.api.lists.get_by_id, list_id).list
        except HubSpotRequestError as exc:
            if exc.status in (400, 404):
                raise ConnectorError(
                    "hubspot_list_not_found", f"HubSpot list {list_id} does not exist (add_to_list)"
                ) from None
            raise
        if found.object_type_id != CONTACT_OBJECT_TYPE:
            raise ConnectorError(
                "hubspot_list_not_contacts", f"HubSpot list {list_id} does not hold contacts"
            )
        if found.processing_type not in STATIC_LIST_TYPES:
            raise ConnectorError(
                "hubspot_list_not_static",
                f"HubSpot list {list_id} is {found.processing_type}: contacts can be added only to a "
                "static list (MANUAL or SNAPSHOT)",
            )

    # -- already done

    def already_done(self, action: VerdictAction, targets: list[ActionTarget]) -> set[str]:
        if action.do == OPT_OUT:
            return self._unsubscribed(targets)
        return self._members(str(action.target), targets)

    def _unsubscribed(self, targets: list[ActionTarget]) -> set[str]:
        by_address = _by_address(targets)
        done: set[str] = set()
        for addresses in chunks(by_address, PREFERENCES_BATCH):
            answer = self.api.call_path(
                "POST", UNSUBSCRIBE_ALL_READ, query=EMAIL_CHANNEL, body={"inputs": addresses}
            )
            for result in answer.get("results") or []:
                if _unsubscribed_from_all(result.get("wideStatuses") or []):
                    done.update(by_address.get(str(result.get("subscriberIdString", "")).lower(), ()))
        return done

    def _members(self, list_id: str, targets: list[ActionTarget]) -> set[str]:
        done: set[str] = set()
        for record_ids in chunks(dict.fromkeys(t.record_id for t in targets), PREFERENCES_BATCH):
            inputs = [
                {"objectTypeId": CONTACT_OBJECT_TYPE, "recordId": record_id} for record_id in record_ids
            ]
            answer = self.api.call_path("POST", RECORD_MEMBERSHIPS_READ, body={"inputs": inputs})
            for result in answer.get("results") or []:
                lists = {str(m.get("listId")) for m in result.get("recordListMemberships") or []}
                if list_id in lists:
                    done.add(str(result.get("recordId")))
        return done

    # -- run

    def run(self, action: VerdictAction, targets: list[ActionTarget]) -> list[WriteFailure]:
        failures: list[WriteFailure] = []
        if action.do == OPT_OUT:
            for chunk in chunks(targets, PREFERENCES_BATCH):
                failures += _halving(chunk, self._unsubscribe)
        else:
            list_id = str(action.target)
            for chunk in chunks(targets, LIST_ADD_BATCH):
                failures += self._add(list_id, chunk)
        log.info(
            "hubspot_action_batch",
            extra={"action": action.do, "records": len(targets), "failures": len(failures)},
        )
        return failures

    def _unsubscribe(self, targets: list[ActionTarget]) -> list[WriteFailure]:
        by_address = _by_address(targets)
        answer = self.api.call_path(
            "POST", UNSUBSCRIBE_ALL, query=EMAIL_CHANNEL, body={"inputs": list(by_address)}
        )
        failures = []
        for error in answer.get("errors") or []:
            code = _error_code(error)
            for address in (error.get("context") or {}).get("subscriberIdString", []):
                message = redact(str(error.get("message") or "refused"), [address])
                for record_id in by_address.get(str(address).lower(), ()):
                    failures.append(WriteFailure(record_id, code, f"HubSpot did not unsubscribe: {message}"))
        return failures

    def _add(self, list_id: str, targets: list[ActionTarget]) -> list[WriteFailure]:
        record_ids = list(dict.fromkeys(t.record_id for t in targets))
        try:
            answer = self.api.call(self.api.memberships.add, list_id, record_ids)
        except HubSpotRequestError as exc:
            if exc.status == 404:
                raise ConnectorError(
                    "hubspot_list_not_found", f"HubSpot list {list_id} no longer exists"
                ) from None
            raise
        missing = set(answer.record_ids_missing or [])
        return [
            WriteFailure(t.record_id, "OBJECT_NOT_FOUND", MISSING_CONTACT)
            for t in targets
            if t.record_id in missing
        ]


def _by_address(targets: Iterable[ActionTarget]) -> dict[str, list[str]]:
    """Record ids per address (lower case, as HubSpot keeps them): two contacts may share one."""
    found: dict[str, list[str]] = defaultdict(list)
    for target in targets:
        found[target.value.strip().lower()].append(target.record_id)
    return dict(found)


def _unsubscribed_from_all(wide_statuses: Iterable[Mapping[str, Any]]) -> bool:
    """An EMAIL "unsubscribed from all" status for the whole portal (or its default brand)."""
    return any(
        status.get("channel") == "EMAIL"
        and status.get("status") == "UNSUBSCRIBED"
        and (status.get("wideStatusType") == "PORTAL_WIDE" or not status.get("businessUnitId"))
        for status in wide_statuses
    )


def _error_code(error: Mapping[str, Any]) -> str:
    """The most specific code HubSpot gives for one input's error (INVALID_EMAIL, VALIDATION_ERROR)."""
    for detail in error.get("errors") or []:
        if isinstance(detail.get("subCategory"), str):
            return str(detail["subCategory"])
    return str(error.get("category") or "UNKNOWN")


def _halving(targets: list[ActionTarget], send: Send) -> list[WriteFailure]:
    """`send` the batch; a whole batch refused (400) is halved until the refused records are alone."""
    try:
        return send(targets)
    except HubSpotRequestError as exc:
        if exc.status != 400:
            raise
        if len(targets) == 1:
            message = redact(exc.hubspot_message, [targets[0].value])
            return [WriteFailure(targets[0].record_id, exc.category, f"HubSpot refused: {message}")]
    middle = len(targets) // 2
    return _halving(targets[:middle], send) + _halving(targets[middle:], send)
