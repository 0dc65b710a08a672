"""CRM webhooks: validate, store, enqueue, answer. No CRM or ApexVerify call happens here."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Request, jsonify, request

from connector.config import Settings
from connector.crm import hubspot_webhook
from connector.errors import ConfigError, InputError
from connector.pipeline.intake import accept_contacts, crm_connection, start_segment_sync
from connector.web import current_runtime

webhooks = Blueprint("webhooks", __name__)


@webhooks.post("/webhooks/hubspot")
def hubspot():  # type: ignore[no-untyped-def]
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
    connection = crm_connection(runtime, "hubspot")
    accepted = accept_contacts(
        runtime,
        connection,
        keyed=delivery.event_keys,
        unkeyed=[(t, c) for t, contacts in delivery.contacts.items() for c in contacts],
    )
    if delivery.segment is not None:
        list_id, type_ = delivery.segment
        start_segment_sync(
            runtime,
            connection,
            source={"kind": "hubspot_list", "ref": list_id},
            type_=type_,
            trigger="webhook",
            name=f"HubSpot list {list_id} ({type_})",
        )
        accepted += 1
    return jsonify({"accepted": accepted})


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
