"""CRM webhooks: validate, store, enqueue, answer. No CRM or ApexVerify call happens here."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Request, Response, jsonify, request
from flask.typing import ResponseReturnValue

from connector.config import Settings
from connector.crm.hubspot import webhook as hubspot_webhook
from connector.crm.salesforce import webhook as salesforce_webhook
from connector.errors import ConfigError, ConnectorError, InputError
from connector.metrics import count
from connector.pipeline.intake import accept_contacts, crm_connection, start_segment_sync, webhook_connection
from connector.web import current_runtime

webhooks = Blueprint("webhooks", __name__)


@webhooks.after_request
def count_refusals(response: Response) -> Response:
    if response.status_code >= 400:
        source = request.path.rsplit("/", 1)[-1]
        count(
            current_runtime().redis,
            "webhook_events",
            source=source,
            result=f"rejected_{response.status_code}",
        )
    return response


@webhooks.post("/webhooks/hubspot")
def hubspot() -> ResponseReturnValue:
    runtime = current_runtime()
    settings = runtime.settings
    if not settings.hubspot_client_secret:
        raise ConfigError("hubspot_not_configured", "HUBSPOT_CLIENT_SECRET is not set")
    raw = request.get_data(cache=True)
    hubspot_webhook.check_signature(
        secret=settings.hubspot_client_secret,
        method=request.method,
        uri=signed_uri(settings, request),
        body=raw,
        timestamp=request.headers.get("X-HubSpot-Request-Timestamp"),
        signature=request.headers.get("X-HubSpot-Signature-v3"),
        now_ms=int(time.time() * 1000),
    )
    delivery = hubspot_webhook.read_delivery(parse_json(raw), settings.hubspot_portal_id)
    accepted = accept_contacts(
        runtime,
        webhook_connection(runtime, "hubspot"),
        keyed=delivery.event_keys,
        unkeyed=[(t, c) for t, contacts in delivery.contacts.items() for c in contacts],
    )
    if delivery.segment is not None:
        list_id, type_ = delivery.segment
        start_segment_sync(
            runtime,
            crm_connection(runtime, "hubspot"),  # fresh: a segment sync reads the connection's settings
            source={"kind": "hubspot_list", "ref": list_id},
            type_=type_,
            trigger="webhook",
            name=f"HubSpot list {list_id} ({type_})",
        )
        accepted += 1
    return jsonify({"accepted": accepted})


@webhooks.post("/webhooks/salesforce")
def salesforce() -> ResponseReturnValue:
    runtime = current_runtime()
    settings = runtime.settings
    org_id, token = salesforce_secrets(settings)
    mimetype = request.mimetype
    if mimetype in ("text/xml", "application/xml", "application/soap+xml"):
        # Salesforce cannot add headers to an outbound message: its secret rides in the endpoint URL.
        salesforce_webhook.check_token(request.args.get("token"), token, carried_by="?token=")
        delivery = salesforce_webhook.read_outbound_message(request.get_data(), org_id)
    elif mimetype == "application/json":
        salesforce_webhook.check_token(
            request.headers.get("X-Connector-Token"), token, carried_by="X-Connector-Token"
        )
        delivery = salesforce_webhook.read_flow_callout(parse_json(request.get_data()))
    else:
        raise UnsupportedMediaType()
    connection = webhook_connection(runtime, "salesforce")
    accepted = accept_contacts(runtime, connection, keyed=delivery.keyed, unkeyed=delivery.unkeyed)
    if delivery.campaign is not None:
        campaign_id, type_, sobject = delivery.campaign
        start_segment_sync(
            runtime,
            crm_connection(runtime, "salesforce"),
            source={"kind": "salesforce_campaign", "ref": campaign_id, "object": sobject},
            type_=type_,
            trigger="webhook",
            name=f"Salesforce campaign {campaign_id} ({type_})",
        )
        accepted += 1
    if mimetype == "application/json":
        return jsonify({"accepted": accepted})
    return Response(salesforce_webhook.ACK, mimetype="text/xml")


class UnsupportedMediaType(ConnectorError):
    http_status = 415

    def __init__(self) -> None:
        super().__init__("unsupported_media_type", "send text/xml (outbound message) or application/json")


def salesforce_secrets(settings: Settings) -> tuple[str, str]:
    """The org and webhook secret of the env connection: without both, no delivery can be trusted."""
    missing = [
        name
        for name, value in (
            ("SALESFORCE_ORG_ID", settings.salesforce_org_id),
            ("SALESFORCE_WEBHOOK_TOKEN", settings.salesforce_webhook_token),
        )
        if not value
    ]
    if missing:
        raise ConfigError("salesforce_not_configured", f"{' and '.join(missing)} must be set for webhooks")
    return str(settings.salesforce_org_id), str(settings.salesforce_webhook_token)


def signed_uri(settings: Settings, req: Request) -> str:
    """The URI HubSpot signed: the public URL when behind a proxy, else the one we were called on."""
    query = req.query_string.decode("latin-1")
    base = settings.public_base_url.rstrip("/") if settings.public_base_url else req.host_url.rstrip("/")
    return f"{base}{req.path}" + (f"?{query}" if query else "")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError("malformed_json", f"body is not valid JSON: {error}") from None
