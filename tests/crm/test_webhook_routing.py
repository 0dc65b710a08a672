"""The CRMs' webhook readers route each delivery to its connection through an AccountDirectory.

HubSpot: by the portal each event (or a workflow's / segment trigger's body) names, one delivery per
connection; a portal without a connection refuses the whole delivery (403). Salesforce: by the
webhook secret it carries (the env connection's SALESFORCE_WEBHOOK_TOKEN, or an OAuth connection's);
an outbound message from another org than the connection's is refused (403). A tiny directory
stands in for pipeline/connections.py's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

from connector.config import Settings
from connector.crm.base import WebhookDelivery, WebhookRequest
from connector.crm.hubspot.webhook import read_webhook as read_hubspot
from connector.crm.hubspot.webhook import sign
from connector.crm.salesforce.webhook import read_webhook as read_salesforce
from connector.errors import ConfigError, InputError, WebhookRefused
from tests.conftest import settings_with

SECRET = "hubspot-app-secret-routing"
URL = "https://connector.example.com/webhooks/hubspot"
ENV_ORG = "00D5g000004ABCDEAV"
OAUTH_ORG = "00D5g000004OTHEEA4"
ENV_TOKEN = "env-webhook-token-0001"
OAUTH_SECRET = "oauth-connection-webhook-secret"


@dataclass
class Directory:
    """Connections by account id (None: the env connection) and OAuth webhook secrets."""

    accounts: dict[str | None, int] = field(default_factory=dict)
    secrets: dict[str, tuple[int, str]] = field(default_factory=dict)
    asked: list[str | None] = field(default_factory=list)

    def connection_of(self, account_id: str | None) -> int | None:
        self.asked.append(account_id)
        return self.accounts.get(account_id)

    def connection_with_secret(self, secret: str) -> tuple[int, str] | None:
        return self.secrets.get(secret)

    def has_secrets(self) -> bool:
        return bool(self.secrets)


class Args(dict[str, str]):
    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key, default)


def hubspot_request(body: object, accounts: Directory) -> WebhookRequest:
    raw = json.dumps(body).encode()
    now = int(time.time() * 1000)
    headers = Args(
        {
            "X-HubSpot-Signature-v3": sign(SECRET, "POST", URL, raw, str(now)),
            "X-HubSpot-Request-Timestamp": str(now),
        }
    )
    return WebhookRequest("POST", URL, "application/json", raw, headers, Args(), now, accounts)


def event(event_id: int, object_id: int, portal: int | None) -> dict[str, object]:
    found: dict[str, object] = {
        "eventId": event_id,
        "subscriptionType": "contact.propertyChange",
        "objectId": object_id,
        "propertyName": "email",
        "propertyValue": f"c{object_id}@example.com",
        "occurredAt": 1_700_000_000_000 + event_id,
    }
    if portal is not None:
        found["portalId"] = portal
    return found


HUBSPOT_SETTINGS = settings_with(Settings(), hubspot_client_secret=SECRET, hubspot_portal_id="62515")


def ids_of(delivery: WebhookDelivery) -> list[str]:
    return [contact.record_id for _key, brought in delivery.keyed for _type, contact in brought] + [
        contact.record_id for _type, contact in delivery.unkeyed
    ]


def test_hubspot_events_of_several_portals_become_one_delivery_per_connection() -> None:
    directory = Directory(accounts={None: 1, "62515": 1, "70001": 7})
    body = [event(1, 101, 62515), event(2, 201, 70001), event(3, 102, 62515), event(4, 202, 70001)]
    deliveries = read_hubspot(HUBSPOT_SETTINGS, hubspot_request(body, directory))
    assert [(d.connection_id, ids_of(d)) for d in deliveries] == [(1, ["101", "102"]), (7, ["201", "202"])]
    assert directory.asked == ["62515", "70001"]


def test_hubspot_a_portal_without_a_connection_refuses_the_whole_delivery() -> None:
    directory = Directory(accounts={None: 1, "62515": 1})
    with pytest.raises(WebhookRefused) as refused:
        read_hubspot(HUBSPOT_SETTINGS, hubspot_request([event(1, 101, 62515), event(2, 9, 999)], directory))
    assert refused.value.http_status == 403 and refused.value.code == "portal_mismatch"


def test_hubspot_workflow_and_segment_bodies_route_by_their_portal_or_to_the_env_connection() -> None:
    directory = Directory(accounts={None: 1, "70001": 7})
    legacy = {"vid": 5, "portal-id": 70001, "properties": {"email": {"value": "l@example.com"}}}
    (workflow,) = read_hubspot(HUBSPOT_SETTINGS, hubspot_request(legacy, directory))
    assert (workflow.connection_id, ids_of(workflow)) == (7, ["5"])
    (trigger,) = read_hubspot(
        HUBSPOT_SETTINGS, hubspot_request({"listId": "12", "portalId": 70001}, directory)
    )
    assert trigger.connection_id == 7 and trigger.segment and trigger.segment.source["ref"] == "12"
    (flat,) = read_hubspot(
        HUBSPOT_SETTINGS, hubspot_request({"hs_object_id": 8, "email": "f@x.io"}, directory)
    )
    assert flat.connection_id == 1  # names no portal: the env connection's
    with pytest.raises(InputError):
        read_hubspot(HUBSPOT_SETTINGS, hubspot_request({"listId": "1", "portalId": {"a": 1}}, directory))


def test_hubspot_signature_is_checked_before_routing() -> None:
    directory = Directory(accounts={None: 1})
    request = hubspot_request([event(1, 1, 999)], directory)
    forged = WebhookRequest(
        "POST", URL, "application/json", request.body, Args(), Args(), request.now_ms, directory
    )
    with pytest.raises(WebhookRefused) as refused:
        read_hubspot(HUBSPOT_SETTINGS, forged)
    assert refused.value.http_status == 401 and directory.asked == []
    with pytest.raises(ConfigError):
        read_hubspot(Settings(), request)


# ---- Salesforce ----------------------------------------------------------------------------------


def outbound(org: str, *, token: str | None, accounts: Directory) -> WebhookRequest:
    body = (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        f'<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{org}</OrganizationId>'
        '<Notification><Id>04l1</Id><sObject xsi:type="sf:Contact" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        "<sf:Id>0035g00000AAAAAAA1</sf:Id><sf:Email>a@example.com</sf:Email></sObject></Notification>"
        "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()
    args = Args({"token": token} if token else {})
    return WebhookRequest(
        "POST", "https://c.example/webhooks/salesforce", "text/xml", body, Args(), args, 0, accounts
    )


def flow(token: str | None, accounts: Directory) -> WebhookRequest:
    headers = Args({"X-Connector-Token": token} if token else {})
    body = json.dumps({"records": [{"Id": "0035g00000AAAAAAA2", "Email": "b@example.com"}]}).encode()
    return WebhookRequest(
        "POST",
        "https://c.example/webhooks/salesforce",
        "application/json",
        body,
        headers,
        Args(),
        0,
        accounts,
    )


SF_ENV = settings_with(Settings(), salesforce_org_id=ENV_ORG[:15], salesforce_webhook_token=ENV_TOKEN)


def sf_directory() -> Directory:
    return Directory(accounts={None: 1, ENV_ORG[:15]: 1}, secrets={OAUTH_SECRET: (4, OAUTH_ORG)})


def test_salesforce_the_env_secret_routes_to_the_env_connection() -> None:
    directory = sf_directory()
    (delivery,) = read_salesforce(SF_ENV, outbound(ENV_ORG, token=ENV_TOKEN, accounts=directory))
    assert delivery.connection_id == 1 and ids_of(delivery) == ["0035g00000AAAAAAA1"] and delivery.answer
    (callout,) = read_salesforce(SF_ENV, flow(ENV_TOKEN, directory))
    assert callout.connection_id == 1 and ids_of(callout) == ["0035g00000AAAAAAA2"]


def test_salesforce_an_oauth_connections_secret_routes_to_it_and_its_org_only() -> None:
    directory = sf_directory()
    (delivery,) = read_salesforce(SF_ENV, outbound(OAUTH_ORG[:15], token=OAUTH_SECRET, accounts=directory))
    assert delivery.connection_id == 4
    (callout,) = read_salesforce(SF_ENV, flow(OAUTH_SECRET, directory))
    assert callout.connection_id == 4
    with pytest.raises(WebhookRefused) as foreign:
        read_salesforce(SF_ENV, outbound(ENV_ORG, token=OAUTH_SECRET, accounts=directory))
    assert foreign.value.http_status == 403 and foreign.value.code == "org_mismatch"
    with pytest.raises(WebhookRefused) as env_foreign:
        read_salesforce(SF_ENV, outbound(OAUTH_ORG, token=ENV_TOKEN, accounts=directory))
    assert env_foreign.value.http_status == 403


@pytest.mark.parametrize("token", [None, "not-a-known-secret"])
def test_salesforce_an_unknown_secret_is_refused(token: str | None) -> None:
    for request in (outbound(ENV_ORG, token=token, accounts=sf_directory()), flow(token, sf_directory())):
        with pytest.raises(WebhookRefused) as refused:
            read_salesforce(SF_ENV, request)
        assert refused.value.http_status == 401 and refused.value.code == "token_invalid"
        assert not token or token not in refused.value.message


def test_salesforce_without_env_webhook_settings_oauth_secrets_route_and_the_rest_is_401() -> None:
    unset = settings_with(SF_ENV, salesforce_webhook_token=None)
    (delivery,) = read_salesforce(unset, flow(OAUTH_SECRET, sf_directory()))
    assert delivery.connection_id == 4
    with pytest.raises(WebhookRefused) as wrong:
        read_salesforce(unset, flow(ENV_TOKEN, sf_directory()))
    assert wrong.value.http_status == 401 and wrong.value.code == "token_invalid"


def test_salesforce_without_env_webhook_settings_nor_oauth_secrets_is_503() -> None:
    unset = settings_with(SF_ENV, salesforce_webhook_token=None)
    with pytest.raises(ConfigError) as unconfigured:
        read_salesforce(unset, flow(ENV_TOKEN, Directory(accounts={ENV_ORG: 1})))
    assert unconfigured.value.code == "salesforce_not_configured"
    no_org = settings_with(SF_ENV, salesforce_org_id=None)
    with pytest.raises(ConfigError):
        read_salesforce(no_org, flow(ENV_TOKEN, sf_directory()))  # the env secret, but whose org?
