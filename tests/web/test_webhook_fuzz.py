"""Generated webhook bodies — signed and well-formed enough to reach the parsers — never get a 5xx."""

from __future__ import annotations

import json
import time

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.crm.hubspot.webhook import sign
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.web.conftest import FUZZ_ORG, FUZZ_SECRET, FUZZ_TOKEN

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
hubspot_keys = st.sampled_from(
    ["eventId", "objectId", "occurredAt", "subscriptionType", "propertyName", "propertyValue", "portalId",
     "listId", "type", "vid", "properties", "hs_object_id", "email", "phone"]
)  # fmt: skip
hubspot_objects = st.dictionaries(hubspot_keys, json_values | st.sampled_from(
    ["contact.creation", "contact.propertyChange", "email", "phone", "email@example.com"]
), max_size=8)  # fmt: skip
hubspot_bodies = hubspot_objects | st.lists(hubspot_objects, max_size=5) | json_values
salesforce_records = st.lists(
    st.dictionaries(st.sampled_from(["Id", "Email", "Phone", "attributes"]), json_values)
)
salesforce_bodies = (
    st.dictionaries(
        st.sampled_from(["campaignId", "records", "type", "object", "Id", "Email"]),
        json_values | salesforce_records,
        max_size=4,
    )
    | json_values
)


@FUZZ
@given(body=hubspot_bodies)
def test_hubspot_webhook_never_answers_5xx(fuzz_runtime: Runtime, web: SandboxServer, body: object) -> None:
    raw = json.dumps(body).encode()
    stamp = str(int(time.time() * 1000))
    url = f"{web.url}/webhooks/hubspot"
    headers = {"X-HubSpot-Signature-v3": sign(FUZZ_SECRET, "POST", url, raw, stamp),
               "X-HubSpot-Request-Timestamp": stamp, "Content-Type": "application/json"}  # fmt: skip
    response = requests.post(url, data=raw, headers=headers, timeout=10)
    assert response.status_code < 500, response.text
    assert "error" in response.json() or "accepted" in response.json()


@FUZZ
@given(body=salesforce_bodies)
def test_salesforce_flow_callout_never_answers_5xx(
    fuzz_runtime: Runtime, web: SandboxServer, body: object
) -> None:
    response = requests.post(
        f"{web.url}/webhooks/salesforce", json=body, headers={"X-Connector-Token": FUZZ_TOKEN}, timeout=10
    )
    assert response.status_code < 500, response.text


@FUZZ
@given(text=st.text(max_size=300))
def test_salesforce_outbound_xml_never_answers_5xx(
    fuzz_runtime: Runtime, web: SandboxServer, text: str
) -> None:
    # Authenticated and from the right org, so the fuzzed notifications reach the parser.
    body = ('<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
            f'<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{FUZZ_ORG}'
            f"</OrganizationId>{text}</notifications></soapenv:Body></soapenv:Envelope>")  # fmt: skip
    response = requests.post(
        f"{web.url}/webhooks/salesforce", params={"token": FUZZ_TOKEN}, data=body.encode(),
        headers={"Content-Type": "text/xml"}, timeout=10,
    )  # fmt: skip
    assert response.status_code < 500, response.text
