"""What a Salesforce delivery says: an outbound message (SOAP) or a Flow callout (JSON).

XML is parsed with defusedxml and DTDs are refused outright, so external entities and entity
expansion ("billion laughs") never get a chance to run.

Redeliveries: an outbound message is retried for up to 24 hours, then dropped from the org's
queue (pipeline/retention.py keeps delivery keys 7 days).

Routing: every connection has a webhook secret of its own, carried as `?token=` (outbound messages,
which cannot add headers) or `X-Connector-Token` (Flow callouts). The env connection's is
SALESFORCE_WEBHOOK_TOKEN (compared in constant time); an OAuth connection's is looked up in the
AccountDirectory (by its digest). No match: 401; an outbound message from another org than the
connection's: 403. When neither SALESFORCE_ORG_ID and SALESFORCE_WEBHOOK_TOKEN are both set nor the
secret is an OAuth connection's, the endpoint answers 503 (not configured), as before.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from connector.config import Settings
from connector.crm.base import (
    AccountDirectory,
    IncomingContact,
    SegmentTrigger,
    WebhookDelivery,
    WebhookRequest,
)
from connector.crm.json_body import parse_json
from connector.crm.salesforce.settings import SalesforceSettings
from connector.errors import ConfigError, InputError, UnsupportedMediaType, WebhookRefused

OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
MAX_NOTIFICATIONS = 100
OBJECTS = ("Contact", "Lead")
# Field name in the notification → verification type.
VERIFIED_FIELDS = {"Email": "email", "Phone": "phone"}
ID_PREFIXES = {"003": "Contact", "00Q": "Lead"}

ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}"><soapenv:Body>'
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
)


@dataclass
class SalesforceDelivery:
    # (notification Id, contacts it brought) — a redelivered message repeats its Ids.
    keyed: list[tuple[str, list[tuple[str, IncomingContact]]]] = field(default_factory=list)
    unkeyed: list[tuple[str, IncomingContact]] = field(default_factory=list)
    campaign: tuple[str, str, str | None] | None = None  # (campaign id, type, object or None)
    ignored: int = 0


def same_org(sent: str, expected: str) -> bool:
    """15- and 18-character ids of one org are equal: the 18-char form only adds a case-safe suffix."""
    sent, expected = sent.strip(), expected.strip()
    if len(sent) not in (15, 18) or len(expected) not in (15, 18):
        return False
    return hmac.compare_digest(sent[:15], expected[:15])


def read_outbound_message(raw: bytes, org_id: str) -> SalesforceDelivery:
    """The contacts of an authenticated outbound message; one from another org is refused (403)."""
    root = _parse_xml(raw)
    notifications = root.find(f".//{{{OUTBOUND_NS}}}notifications")
    if notifications is None:
        raise InputError("unreadable_body", "no outbound-message notifications element in the SOAP body")
    sent_org = (notifications.findtext(f"{{{OUTBOUND_NS}}}OrganizationId") or "").strip()
    if not same_org(sent_org, org_id):
        raise WebhookRefused(
            "org_mismatch", f"outbound message from org {sent_org or '?'} refused", http_status=403
        )
    items = notifications.findall(f"{{{OUTBOUND_NS}}}Notification")
    if len(items) > MAX_NOTIFICATIONS:
        raise InputError("too_many_notifications", f"at most {MAX_NOTIFICATIONS} notifications per message")
    delivery = SalesforceDelivery()
    for item in items:
        notification_id = (item.findtext(f"{{{OUTBOUND_NS}}}Id") or "").strip()
        sobject = item.find(f"{{{OUTBOUND_NS}}}sObject")
        if not notification_id or sobject is None:
            raise InputError("unreadable_notification", "every Notification needs an Id and an sObject")
        brought = _sobject_contacts(sobject)
        if brought:
            delivery.keyed.append((notification_id, brought))
        else:
            delivery.ignored += 1
    return delivery


def _parse_xml(raw: bytes) -> Element:
    try:
        return fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise InputError("xml_forbidden", "XML with a DTD or entities is refused") from None
    except ParseError as error:
        raise InputError("malformed_xml", f"body is not well-formed XML: {error}") from None


def _sobject_contacts(sobject: Element) -> list[tuple[str, IncomingContact]]:
    object_type = (sobject.get(f"{{{XSI_NS}}}type") or "").split(":")[-1]
    if object_type not in OBJECTS:
        return []
    fields = {_local_name(child.tag): (child.text or "").strip() for child in sobject}
    record_id = fields.get("Id", "")
    if not record_id:
        raise InputError("unreadable_notification", "an sObject without an Id")
    return _contacts(record_id, object_type, fields)


def _contacts(record_id: str, object_type: str, fields: dict[str, Any]) -> list[tuple[str, IncomingContact]]:
    brought = [
        (type_, IncomingContact(record_id, str(fields[name]), object_type))
        for name, type_ in VERIFIED_FIELDS.items()
        if fields.get(name)
    ]
    return brought or [("email", IncomingContact(record_id, None, object_type))]


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_flow_callout(body: Any) -> SalesforceDelivery:
    if not isinstance(body, dict):
        raise InputError("unreadable_body", "expected a JSON object with campaignId or records")
    if "campaignId" in body:
        return SalesforceDelivery(campaign=_campaign(body))
    records = body.get("records")
    if not isinstance(records, list):
        raise InputError("unreadable_body", "expected campaignId or a records array")
    delivery = SalesforceDelivery()
    for record in records:
        if not isinstance(record, dict) or not record.get("Id"):
            raise InputError("unreadable_record", "every record needs an Id")
        record_id = str(record["Id"])
        object_type = _object_type(record, record_id)
        if object_type is None:
            delivery.ignored += 1
            continue
        delivery.unkeyed.extend(_contacts(record_id, object_type, record))
    return delivery


def _campaign(body: dict[str, Any]) -> tuple[str, str, str | None]:
    campaign_id = str(body["campaignId"]).strip()
    if len(campaign_id) not in (15, 18) or not campaign_id.startswith("701"):
        raise InputError("invalid_campaign_id", "campaignId must be a 15- or 18-character Campaign id (701…)")
    type_ = body.get("type", "email")
    if type_ not in ("email", "phone"):
        raise InputError("invalid_type", "type must be 'email' or 'phone'")
    sobject = body.get("object")
    if sobject is not None and sobject not in OBJECTS:
        raise InputError("invalid_object", "object must be Contact or Lead")
    return campaign_id, type_, sobject


def _object_type(record: dict[str, Any], record_id: str) -> str | None:
    attributes = record.get("attributes")
    if isinstance(attributes, dict) and attributes.get("type") in OBJECTS:
        return attributes["type"]
    return ID_PREFIXES.get(record_id[:3])


def read_webhook(settings: Settings, request: WebhookRequest) -> list[WebhookDelivery]:
    """An outbound message (`?token=`, text/xml) or a Flow callout (`X-Connector-Token`, JSON), for
    the connection whose secret it carries."""
    own = settings.section(SalesforceSettings)
    if request.mimetype in ("text/xml", "application/xml", "application/soap+xml"):
        # Salesforce cannot add headers to an outbound message: its secret rides in the endpoint URL.
        connection_id, org_id = route(own, request.accounts, request.args.get("token"), carried_by="?token=")
        delivery = read_outbound_message(request.body, org_id)
        return [_generic(connection_id, delivery, answer=_ack)]
    if request.mimetype == "application/json":
        sent = request.headers.get("X-Connector-Token")
        connection_id, _org = route(own, request.accounts, sent, carried_by="X-Connector-Token")
        return [_generic(connection_id, read_flow_callout(parse_json(request.body)), answer=None)]
    raise UnsupportedMediaType("send text/xml (outbound message) or application/json")


def route(
    own: SalesforceSettings, accounts: AccountDirectory, sent: str | None, *, carried_by: str
) -> tuple[int, str]:
    """(connection id, org id) of the connection whose webhook secret `sent` is.

    The env connection's secret first (constant time), then the OAuth connections'. The message of a
    refusal names only where the secret travels, never a value."""
    env_ready = bool(own.org_id and own.webhook_token)
    if sent and own.webhook_token and hmac.compare_digest(sent.encode(), own.webhook_token.encode()):
        org_id, _token = webhook_secrets(own)  # 503 when SALESFORCE_ORG_ID is missing
        env_connection = accounts.connection_of(org_id)
        if env_connection is None:
            raise WebhookRefused("org_mismatch", f"org {org_id} has no connection", http_status=403)
        return env_connection, org_id
    found = accounts.connection_with_secret(sent) if sent else None
    if found is not None:
        return found
    if not env_ready and not accounts.has_secrets():
        webhook_secrets(own)  # names what is unset: without it and no OAuth connection, nothing is trusted
    raise WebhookRefused("token_invalid", f"{carried_by} is missing or wrong")


def webhook_secrets(settings: SalesforceSettings) -> tuple[str, str]:
    """The org and webhook secret of the env connection: without both, its deliveries cannot be trusted."""
    missing = [
        name
        for name, value in (
            ("SALESFORCE_ORG_ID", settings.org_id),
            ("SALESFORCE_WEBHOOK_TOKEN", settings.webhook_token),
        )
        if not value
    ]
    if missing:
        raise ConfigError("salesforce_not_configured", f"{' and '.join(missing)} must be set for webhooks")
    return str(settings.org_id), str(settings.webhook_token)


def _ack(accepted: int) -> tuple[str, str]:
    return ACK, "text/xml"


def _generic(
    connection_id: int, delivery: SalesforceDelivery, answer: Callable[[int], tuple[str, str]] | None
) -> WebhookDelivery:
    segment = None
    if delivery.campaign is not None:
        campaign_id, type_, sobject = delivery.campaign
        segment = SegmentTrigger(
            source={"kind": "salesforce_campaign", "ref": campaign_id, "object": sobject},
            type=type_,
            name=f"Salesforce campaign {campaign_id} ({type_})",
        )
    return WebhookDelivery(
        connection_id=connection_id,
        keyed=delivery.keyed,
        unkeyed=delivery.unkeyed,
        segment=segment,
        answer=answer,
    )
