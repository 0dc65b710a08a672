"""CRM webhooks: validate, store, enqueue, answer. No CRM or ApexVerify call happens here.

One route for every CRM, `/webhooks/<crm>`: the CRM's `read_webhook` authenticates the delivery,
routes it to its connection(s) through a `ConnectionDirectory`, and says what it brought for each
(contacts, a segment to verify, how to answer); storing it is the same for all of them.
"""

from __future__ import annotations

import time

from flask import Blueprint, Request, Response, jsonify, request
from flask.typing import ResponseReturnValue

from connector.config import Settings
from connector.crm.base import AccountDirectory, Crm, WebhookRequest
from connector.crm.registry import crm_named
from connector.errors import NotFoundError
from connector.metrics import count
from connector.pipeline.connections import ConnectionDirectory
from connector.pipeline.intake import (
    accept_contacts,
    connection_row,
    remembered_connection,
    start_segment_sync,
)
from connector.web.context import current_runtime

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


@webhooks.post("/webhooks/<name>")
def receive(name: str) -> ResponseReturnValue:
    crm = _webhook_crm(name)
    assert crm.read_webhook is not None  # _webhook_crm refuses CRMs without webhooks
    runtime = current_runtime()
    accounts = ConnectionDirectory(runtime, crm)
    deliveries = crm.read_webhook(runtime.settings, webhook_request(runtime.settings, request, accounts))
    accepted = 0
    for delivery in deliveries:
        accepted += accept_contacts(
            runtime,
            remembered_connection(runtime, delivery.connection_id),
            keyed=delivery.keyed,
            unkeyed=delivery.unkeyed,
        )
        if delivery.segment is not None:
            trigger = delivery.segment
            start_segment_sync(
                runtime,
                connection_row(runtime, delivery.connection_id),  # a segment sync reads its settings
                source=dict(trigger.source),
                type_=trigger.type,
                trigger="webhook",
                name=trigger.name,
            )
            accepted += 1
    answer = deliveries[0].answer if deliveries else None
    if answer is None:
        return jsonify({"accepted": accepted})
    body, mimetype = answer(accepted)
    return Response(body, mimetype=mimetype)


def _webhook_crm(name: str) -> Crm:
    crm = crm_named(name)
    if crm is None or crm.read_webhook is None:
        raise NotFoundError("not_found", f"no webhook at /webhooks/{name}")
    return crm


def webhook_request(settings: Settings, req: Request, accounts: AccountDirectory) -> WebhookRequest:
    return WebhookRequest(
        method=req.method,
        url=signed_uri(settings, req),
        mimetype=req.mimetype,
        body=req.get_data(cache=True),
        headers=req.headers,
        args=req.args,
        now_ms=int(time.time() * 1000),
        accounts=accounts,
    )


def signed_uri(settings: Settings, req: Request) -> str:
    """The URI a CRM signed: the public URL when behind a proxy, else the one we were called on."""
    query = req.query_string.decode("latin-1")
    base = settings.public_base_url.rstrip("/") if settings.public_base_url else req.host_url.rstrip("/")
    return f"{base}{req.path}" + (f"?{query}" if query else "")
