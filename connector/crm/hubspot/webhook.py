"""What a HubSpot webhook delivery says: its v3 signature, and the contacts or segment it names.

Pure functions over bytes and parsed JSON; the HTTP glue is in connector/web/webhooks.py, which
calls `read_webhook` for deliveries to /webhooks/hubspot.

Every portal's deliveries are signed with the app's one client secret, so a delivery is routed by the
portal it names: each app event by its `portalId` (a delivery batching events of several portals
becomes one WebhookDelivery per connection), a workflow's or segment trigger's body by its
`portalId` / `portal-id`, or the env connection when it names none (the AccountDirectory decides
which portals are the env connection's). A portal with no connection is refused with 403 and nothing
of the delivery is stored.

Redeliveries: app webhooks retry up to 10 times over about 24 hours; workflow webhook actions
retry 5xx answers over 3 days (pipeline/retention.py keeps delivery keys 7 days).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connector.config import Settings
from connector.crm.base import (
    AccountDirectory,
    IncomingContact,
    SegmentTrigger,
    WebhookDelivery,
    WebhookRequest,
)
from connector.crm.hubspot.settings import HubSpotSettings
from connector.crm.json_body import parse_json
from connector.errors import ConfigError, InputError, WebhookRefused

MAX_SIGNATURE_AGE_MS = 5 * 60 * 1000
VERIFIED_PROPERTIES = {"email": "email", "phone": "phone"}
OWN_PROPERTY_PREFIX = "apexverify_"
# HubSpot signs the URI with these escapes decoded (its request-validation guide lists them).
_DECODED_IN_URI = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip


def check_signature(
    *,
    secret: str,
    method: str,
    uri: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now_ms: int,
) -> None:
    """Raise WebhookRefused unless `signature` is HubSpot's v3 signature of this request."""
    if not signature or not timestamp:
        raise WebhookRefused(
            "signature_missing", "X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp required"
        )
    try:
        sent_ms = int(timestamp)
    except ValueError:
        raise WebhookRefused("timestamp_invalid", "X-HubSpot-Request-Timestamp is not a number") from None
    if abs(now_ms - sent_ms) > MAX_SIGNATURE_AGE_MS:
        raise WebhookRefused("timestamp_out_of_window", "request timestamp is more than 5 minutes from now")
    candidates = {uri, _decode_uri(uri)}
    expected = [sign(secret, method, candidate, body, timestamp) for candidate in candidates]
    # Compare against every candidate so timing does not depend on which one matched.
    matches = [hmac.compare_digest(e.encode(), signature.encode()) for e in expected]
    if not any(matches):
        raise WebhookRefused("signature_invalid", "X-HubSpot-Signature-v3 does not match this request")


def sign(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def _decode_uri(uri: str) -> str:
    for escaped, plain in _DECODED_IN_URI.items():
        uri = uri.replace(escaped, plain).replace(escaped.lower(), plain)
    return uri


@dataclass
class HubSpotDelivery:
    contacts: dict[str, list[IncomingContact]] = field(default_factory=dict)
    # (dedupe key, contacts it brought) for app webhook events, so a redelivery adds nothing.
    event_keys: list[tuple[str, list[tuple[str, IncomingContact]]]] = field(default_factory=list)
    segment: tuple[str, str] | None = None  # (list id, type)
    ignored: int = 0

    def add(self, type_: str, contact: IncomingContact) -> None:
        self.contacts.setdefault(type_, []).append(contact)


def read_delivery(body: Any) -> list[tuple[str | None, HubSpotDelivery]]:
    """Classify a delivery (app events, a workflow's contact, or a segment trigger), by the portal
    each part names (None: it names none)."""
    if isinstance(body, list):
        return _read_events(body)
    if not isinstance(body, dict):
        raise InputError("unreadable_body", "expected a JSON array of events or a JSON object")
    portal = _portal(body.get("portalId", body.get("portal-id")))
    if "listId" in body:
        segment = (_list_id(body["listId"]), _segment_type(body.get("type", "email")))
        return [(portal, HubSpotDelivery(segment=segment))]
    if "vid" in body and isinstance(body.get("properties"), dict):
        return [(portal, _read_legacy_workflow(body))]
    if "hs_object_id" in body or "objectId" in body:
        return [(portal, _read_flat_workflow(body))]
    raise InputError("unreadable_body", "no listId, vid or hs_object_id in the body")


def _read_events(events: list[Any]) -> list[tuple[str | None, HubSpotDelivery]]:
    by_portal: dict[str | None, HubSpotDelivery] = {}
    for event in events:
        if not isinstance(event, dict) or "subscriptionType" not in event or "objectId" not in event:
            raise InputError("unreadable_event", "every event needs subscriptionType and objectId")
        delivery = by_portal.setdefault(_portal(event.get("portalId")), HubSpotDelivery())
        brought = [(type_, contact) for type_, contact in _event_contacts(event)]
        if not brought:
            delivery.ignored += 1
            continue
        key = f"{event.get('eventId')}:{event['objectId']}:{event.get('occurredAt')}"
        delivery.event_keys.append((key, brought))
    return list(by_portal.items())


def _portal(raw: Any) -> str | None:
    """The portal id a delivery names; None when it names none."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise InputError("invalid_portal_id", "portalId must be a HubSpot portal id")
    text = str(raw).strip()
    return text or None


def _event_contacts(event: dict[str, Any]) -> list[tuple[str, IncomingContact]]:
    record_id = str(event["objectId"])
    kind = event["subscriptionType"]
    occurred_at = _occurred_at(event.get("occurredAt"))
    if kind == "contact.creation":
        return [(type_, IncomingContact(record_id, occurred_at=occurred_at)) for type_ in VERIFIED_PROPERTIES]
    if kind == "contact.propertyChange":
        name = str(event.get("propertyName", ""))
        if name.startswith(OWN_PROPERTY_PREFIX) or name not in VERIFIED_PROPERTIES:
            return []  # includes our own write-back: no write → webhook → verify loop
        value = str(event["propertyValue"]) if event.get("propertyValue") else None
        return [(VERIFIED_PROPERTIES[name], IncomingContact(record_id, value, occurred_at=occurred_at))]
    return []


def _occurred_at(raw: Any) -> datetime | None:
    """HubSpot's occurredAt (epoch milliseconds), so that the newer of two changes wins in the buffer.

    Anything else is not refused: the event counts as observed when it arrived.
    """
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        return datetime.fromtimestamp(float(raw) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _read_legacy_workflow(body: dict[str, Any]) -> HubSpotDelivery:
    delivery = HubSpotDelivery()
    properties = body["properties"]
    for type_, name in VERIFIED_PROPERTIES.items():
        prop = properties.get(name)
        if isinstance(prop, dict) and prop.get("value"):
            delivery.add(type_, IncomingContact(str(body["vid"]), str(prop["value"])))
    if not delivery.contacts:
        delivery.add("email", IncomingContact(str(body["vid"])))
    return delivery


def _read_flat_workflow(body: dict[str, Any]) -> HubSpotDelivery:
    delivery = HubSpotDelivery()
    record_id = str(body.get("hs_object_id") or body.get("objectId"))
    for type_, name in VERIFIED_PROPERTIES.items():
        if body.get(name):
            delivery.add(type_, IncomingContact(record_id, str(body[name])))
    if not delivery.contacts:
        delivery.add("email", IncomingContact(record_id))
    return delivery


def _list_id(raw: Any) -> str:
    text = str(raw).strip()
    if not text or len(text) > 64:
        raise InputError("invalid_list_id", "listId must be a HubSpot list id")
    return text


def _segment_type(raw: Any) -> str:
    if raw not in ("email", "phone"):
        raise InputError("invalid_type", "type must be 'email' or 'phone'")
    return raw


def read_webhook(settings: Settings, request: WebhookRequest) -> list[WebhookDelivery]:
    """A signed (v3) delivery: app events, a workflow's contact, or a list to verify; one
    WebhookDelivery per connection the portals it names belong to."""
    own = settings.section(HubSpotSettings)
    if not own.client_secret:
        raise ConfigError("hubspot_not_configured", "HUBSPOT_CLIENT_SECRET is not set")
    check_signature(
        secret=own.client_secret,
        method=request.method,
        uri=request.url,
        body=request.body,
        timestamp=request.headers.get("X-HubSpot-Request-Timestamp"),
        signature=request.headers.get("X-HubSpot-Signature-v3"),
        now_ms=request.now_ms,
    )
    parts = read_delivery(parse_json(request.body))
    # Every part is routed before anything is returned: one unknown portal refuses the whole delivery.
    routed = [(connection_of(request.accounts, portal), delivery) for portal, delivery in parts]
    merged: dict[int, WebhookDelivery] = {}
    for connection_id, delivery in routed:
        target = merged.setdefault(connection_id, WebhookDelivery(connection_id=connection_id))
        target.keyed.extend(delivery.event_keys)
        target.unkeyed.extend(
            (type_, contact) for type_, contacts in delivery.contacts.items() for contact in contacts
        )
        if delivery.segment is not None:
            list_id, type_ = delivery.segment
            name = f"HubSpot list {list_id} ({type_})"
            target.segment = SegmentTrigger(
                source={"kind": "hubspot_list", "ref": list_id}, type=type_, name=name
            )
    return list(merged.values())


def connection_of(accounts: AccountDirectory, portal: str | None) -> int:
    """The connection a portal's deliveries belong to (the directory decides, the env connection's
    portal included); 403 for a portal without one."""
    found = accounts.connection_of(portal)
    if found is None:
        shown = portal if portal is not None and len(portal) <= 20 else "?"
        raise WebhookRefused(
            "portal_mismatch",
            f"delivery from portal {shown} refused: no connection of that portal",
            http_status=403,
        )
    return found
