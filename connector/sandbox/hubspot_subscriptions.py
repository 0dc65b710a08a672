"""The HubSpot sandbox's Communication Preferences v4 "unsubscribe all" endpoints (subscriptions.v4.json).

The connector's `opt_out` verdict action unsubscribes addresses from all email of the portal, in
batches (`POST .../statuses/batch/unsubscribe-all`), and asks first which addresses already are
(`POST .../statuses/batch/unsubscribe-all/read`) so a retried step never unsubscribes twice. The
single `GET .../statuses/{subscriberIdString}/unsubscribe-all` shows one address's status.

As HubSpot does: `channel` is required and must be EMAIL (else 400 VALIDATION_ERROR, the spec's
Error body); a batch takes at most BATCH_LIMIT addresses (400 above); an address that is not an
email address is refused on its own in the answer's `errors` (the others are processed); an
address with no contact can be unsubscribed too (HubSpot keeps statuses per address). The batch
unsubscribe answers 200 even with per-address errors (the spec declares no 207 for it); the batch
read answers 207 then. Each portal keeps who is unsubscribed and how many requests named each
address (`EmailOptOuts`, shown by GET /_sandbox/unsubscribes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, request

from connector.sandbox.hubspot_accounts import sandbox_state
from connector.sandbox.hubspot_api import batch_answer
from connector.sandbox.hubspot_errors import standard_error, validation_error
from connector.sandbox.hubspot_properties import iso_now
from connector.sandbox.hubspot_state import EmailOptOuts, SandboxState

subscriptions = Blueprint("hubspot_subscriptions", __name__, url_prefix="/communication-preferences/v4")

# HubSpot's batch endpoints take at most 100 inputs a request; its v4 reference states no other limit.
BATCH_LIMIT = 100
CHANNEL = "EMAIL"
# The portal's email subscription types, each unsubscribed by "unsubscribe all".
SUBSCRIPTION_TYPES = ((1, "Marketing Information"), (2, "One to One"), (3, "Customer Service Communication"))
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
INVALID_SUBSCRIBER = "Invalid subscriber identifier."


def _require_channel() -> None:
    channel = request.args.get("channel")
    if channel is None:
        raise validation_error("Required query parameter 'channel' is missing; it must be EMAIL")
    if channel != CHANNEL:
        raise validation_error(f"Unsupported channel {channel!r}; the only supported channel is EMAIL")


def _addresses() -> list[str]:
    body = request.get_json(silent=True)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(item, str) for item in inputs):
        raise validation_error('Invalid input JSON: expected {"inputs": [email addresses]}')
    if len(inputs) > BATCH_LIMIT:
        raise validation_error(f"Too many inputs: {len(inputs)}; a batch takes at most {BATCH_LIMIT}")
    return list(dict.fromkeys(inputs))  # HubSpot answers once per address


def _invalid(address: str) -> dict[str, Any]:
    """One StandardError of a batch answer, for an input that is not an email address."""
    detail = {"message": INVALID_SUBSCRIBER, "in": "inputs", "code": "400", "subCategory": "INVALID_EMAIL"}
    return standard_error("VALIDATION_ERROR", INVALID_SUBSCRIBER, {"subscriberIdString": [address]}, [detail])


def _valid(address: str) -> bool:
    return EMAIL.fullmatch(address.strip()) is not None


def _wide_statuses(opt_outs: EmailOptOuts, address: str) -> list[dict[str, Any]]:
    """PublicWideStatus entries: one PORTAL_WIDE UNSUBSCRIBED when unsubscribed from all, else none."""
    since = opt_outs.unsubscribed_at(address)
    if since is None:
        return []
    return [
        {
            "channel": CHANNEL,
            "status": "UNSUBSCRIBED",
            "subscriberIdString": address,
            "timestamp": since,
            "wideStatusType": "PORTAL_WIDE",
        }
    ]


def _statuses(address: str, changed: bool, now: str) -> list[dict[str, Any]]:
    """PublicStatus entries: every subscription type, unsubscribed."""
    reason = "UNSUBSCRIBE_FROM_ALL_OCCURRED" if changed else "NO_STATUS_CHANGE"
    return [
        {
            "channel": CHANNEL,
            "source": "Public API",
            "status": "UNSUBSCRIBED",
            "subscriberIdString": address,
            "subscriptionId": subscription_id,
            "subscriptionName": name,
            "timestamp": now,
            "setStatusSuccessReason": reason,
        }
        for subscription_id, name in SUBSCRIPTION_TYPES
    ]


@subscriptions.post("/statuses/batch/unsubscribe-all")
def unsubscribe_all_batch() -> dict[str, Any]:
    _require_channel()
    addresses = _addresses()
    verbose = request.args.get("verbose", "").lower() == "true"
    started = now = iso_now()

    def unsubscribe(state: SandboxState, address: str) -> dict[str, Any]:
        changed = state.opt_outs.unsubscribe(address, now)
        return {"statuses": _statuses(address, changed, now) if verbose else []}

    results, errors = _per_address(addresses, unsubscribe)
    return batch_answer(results, errors, started)[0]  # 200 with errors: the spec has no 207 here


@subscriptions.post("/statuses/batch/unsubscribe-all/read")
def unsubscribe_all_read() -> tuple[dict[str, Any], int]:
    _require_channel()
    addresses = _addresses()
    started = iso_now()
    results, errors = _per_address(
        addresses, lambda state, address: {"wideStatuses": _wide_statuses(state.opt_outs, address)}
    )
    return batch_answer(results, errors, started)


def _per_address(
    addresses: list[str], result_of: Callable[[SandboxState, str], dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results, errors) of a batch: `result_of` each valid address under the portal's lock, an
    INVALID_EMAIL error for each other."""
    results, errors = [], []
    state = sandbox_state()
    with state.lock:
        for address in addresses:
            if _valid(address):
                results.append({"subscriberIdString": address, **result_of(state, address)})
            else:
                errors.append(_invalid(address))
    return results, errors


@subscriptions.get("/statuses/<subscriberIdString>/unsubscribe-all")
def unsubscribe_all_status(subscriberIdString: str) -> dict[str, Any]:
    _require_channel()
    if not _valid(subscriberIdString):
        raise validation_error(INVALID_SUBSCRIBER)
    started = iso_now()
    state = sandbox_state()
    with state.lock:
        wide = _wide_statuses(state.opt_outs, subscriberIdString)
    return batch_answer(wide, [], started)[0]
