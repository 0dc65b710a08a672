"""POST /webhooks/salesforce: outbound messages exactly as Salesforce sends them, and Flow callouts."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import func, select

from connector.models import CoalescedContact, Sync, WebhookEvent
from connector.pipeline.coalesce import flush_due_buffers
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import SALESFORCE_ORG_ID, with_settings

ORG_18 = SALESFORCE_ORG_ID
ORG_15 = ORG_18[:15]
TOKEN = "flow-callout-token-0001"


@pytest.fixture
def sf_runtime(runtime: Runtime) -> Runtime:
    return with_settings(runtime, salesforce_org_id=ORG_15, salesforce_webhook_token=TOKEN)


def notification(notification_id: str, record_id: str, sobject: str = "Contact", **fields: str) -> str:
    values = "".join(f"<sf:{name}>{value}</sf:{name}>" for name, value in fields.items())
    return (
        f"<Notification><Id>{notification_id}</Id>"
        f'<sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>{record_id}</sf:Id>{values}</sObject></Notification>"
    )


def outbound_message(*notifications: str, org: str = ORG_18) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        " <soapenv:Body>\n"
        '  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">\n'
        f"   <OrganizationId>{org}</OrganizationId>\n"
        "   <ActionId>04k5g000000ABCDAA0</ActionId>\n"
        '   <SessionId xsi:nil="true"/>\n'
        "   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/62.0/00D5g000004ABCD</EnterpriseUrl>\n"
        "   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/62.0/00D5g000004ABCD</PartnerUrl>\n"
        + "".join(f"   {n}\n" for n in notifications)
        + "  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n"
    ).encode()


def post_xml(web: SandboxServer, body: bytes, token: str | None = TOKEN) -> requests.Response:
    """POST as Salesforce does to the endpoint URL an admin configured: `…/webhooks/salesforce?token=…`."""
    return requests.post(
        f"{web.url}/webhooks/salesforce",
        params={"token": token} if token is not None else None,
        data=body,
        headers={"Content-Type": "text/xml; charset=utf-8"},
        timeout=5,
    )


def waiting(runtime: Runtime) -> list[tuple]:
    with runtime.session() as session:
        rows = session.execute(
            select(
                CoalescedContact.type,
                CoalescedContact.object_type,
                CoalescedContact.record_id,
                CoalescedContact.value,
            ).where(CoalescedContact.sync_id.is_(None))
        )
        return sorted(tuple(r) for r in rows)


def test_outbound_message_is_acknowledged_and_its_contacts_buffered(
    sf_runtime: Runtime, web: SandboxServer
) -> None:
    body = outbound_message(
        notification("04l1", "0035g00000AAAAAAA1", Email="ann@example.com", Phone="+14155552671"),
        notification("04l2", "00Q5g00000BBBBBBB2", "Lead", Email="lee@example.com"),
        notification("04l3", "0065g00000CCCCCCC3", "Opportunity"),
    )
    response = post_xml(web, body)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/xml")
    assert b"<Ack>true</Ack>" in response.content and b"notificationsResponse" in response.content
    assert waiting(sf_runtime) == [
        ("email", "Contact", "0035g00000AAAAAAA1", "ann@example.com"),
        ("email", "Lead", "00Q5g00000BBBBBBB2", "lee@example.com"),
        ("phone", "Contact", "0035g00000AAAAAAA1", "+14155552671"),
    ]


def test_redelivered_message_is_acknowledged_but_not_processed_twice(
    sf_runtime: Runtime, web: SandboxServer
) -> None:
    body = outbound_message(notification("04l9", "0035g00000AAAAAAA9", Email="x@example.com"))
    assert post_xml(web, body).status_code == 200
    with sf_runtime.session() as session:
        session.execute(CoalescedContact.__table__.update().values(sync_id=None, value="moved"))
    assert post_xml(web, body).status_code == 200
    assert [row[3] for row in waiting(sf_runtime)] == ["moved"]  # the redelivery added nothing


def test_a_hundred_notifications_in_one_message(sf_runtime: Runtime, web: SandboxServer) -> None:
    body = outbound_message(
        *(notification(f"04m{n}", f"0035g0000{n:09d}", Email=f"p{n}@example.com") for n in range(100))
    )
    assert post_xml(web, body).status_code == 200
    assert len(waiting(sf_runtime)) == 100


@pytest.mark.parametrize("org", ["00D5g000004ZZZZEAV", "00D5g000004zbcd"])
def test_message_from_another_org_is_refused(sf_runtime: Runtime, web: SandboxServer, org: str) -> None:
    response = post_xml(web, outbound_message(notification("04lX", "0035g00000AAAAAAA1"), org=org))
    assert response.status_code == 403 and response.json()["error"] == "org_mismatch"
    assert waiting(sf_runtime) == []


def stored(runtime: Runtime) -> dict[str, int]:
    with runtime.session() as session:
        return {
            model.__name__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (WebhookEvent, CoalescedContact, Sync)
        }


@pytest.mark.parametrize(
    ("token", "org", "status", "code"),
    [
        (None, ORG_18, 401, "token_invalid"),
        ("", ORG_18, 401, "token_invalid"),
        ("wrong-token", ORG_18, 401, "token_invalid"),
        (TOKEN[:-1], ORG_18, 401, "token_invalid"),
        (TOKEN, "00D5g000004ZZZZEAV", 403, "org_mismatch"),
    ],
)
def test_a_forged_outbound_message_is_refused_and_costs_nothing(
    sf_runtime: Runtime, web: SandboxServer, token: str | None, org: str, status: int, code: str
) -> None:
    body = outbound_message(notification("04lF1", "0035g00000AAAAAAA1", Email="bounce@example.com"), org=org)

    response = post_xml(web, body, token=token)

    assert response.status_code == status and response.json()["error"] == code
    assert TOKEN not in response.text
    assert stored(sf_runtime) == {"WebhookEvent": 0, "CoalescedContact": 0, "Sync": 0}
    assert flush_due_buffers(with_settings(sf_runtime, coalesce_window_seconds=0)) == []
    apexverify = requests.get(f"{sf_runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()
    assert apexverify["batches"] == [] and apexverify["charges"] == 0


def test_the_token_is_not_taken_from_a_header_for_outbound_messages(
    sf_runtime: Runtime, web: SandboxServer
) -> None:
    """Salesforce puts it in the URL; a header is the Flow callouts' way, not an outbound message's."""
    response = requests.post(
        f"{web.url}/webhooks/salesforce",
        data=outbound_message(notification("04lH1", "0035g00000AAAAAAA1", Email="a@example.com")),
        headers={"Content-Type": "text/xml", "X-Connector-Token": TOKEN},
        timeout=5,
    )
    assert response.status_code == 401 and waiting(sf_runtime) == []


@pytest.mark.parametrize("unset", ["salesforce_org_id", "salesforce_webhook_token"])
@pytest.mark.parametrize("kind", ["xml", "json"])
def test_without_org_id_or_token_the_endpoint_answers_503(
    sf_runtime: Runtime, web: SandboxServer, unset: str, kind: str
) -> None:
    web.app.extensions["connector"] = with_settings(sf_runtime, **{unset: None})
    if kind == "xml":
        body = outbound_message(notification("04lU1", "0035g00000AAAAAAA1", Email="a@example.com"))
        response = post_xml(web, body)
    else:
        response = post_json(web, {"records": [{"Id": "0035g00000AAAAAAA1", "Email": "a@example.com"}]})

    assert response.status_code == 503 and response.json()["error"] == "salesforce_not_configured"
    assert unset.upper() in response.json()["message"]
    assert stored(sf_runtime) == {"WebhookEvent": 0, "CoalescedContact": 0, "Sync": 0}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<soapenv:Envelope><unclosed>", "malformed_xml"),
        (b"<root/>", "unreadable_body"),
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
            b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>',
            "xml_forbidden",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
            "xml_forbidden",
        ),
    ],
)
def test_bad_xml_gets_400_with_a_json_error(
    sf_runtime: Runtime, web: SandboxServer, body: bytes, code: str
) -> None:
    response = post_xml(web, body)
    assert response.status_code == 400 and response.json()["error"] == code


def test_more_than_100_notifications_are_refused(sf_runtime: Runtime, web: SandboxServer) -> None:
    body = outbound_message(*(notification(f"04n{n}", f"0035g0000{n:09d}") for n in range(101)))
    assert post_xml(web, body).status_code == 400


def post_json(web: SandboxServer, body: object, token: str | None = TOKEN) -> requests.Response:
    headers = {"X-Connector-Token": token} if token else {}
    return requests.post(f"{web.url}/webhooks/salesforce", json=body, headers=headers, timeout=5)


def test_flow_callout_with_records(sf_runtime: Runtime, web: SandboxServer) -> None:
    records = [
        {"Id": "0035g00000DDDDDDD4", "Email": "dee@example.com"},
        {"Id": "00Q5g00000EEEEEEE5", "Phone": "(415) 555-2671"},
        {"Id": "0065g00000FFFFFFF6"},
    ]
    response = post_json(web, {"records": records})

    assert response.status_code == 200 and response.json() == {"accepted": 2}
    assert waiting(sf_runtime) == [
        ("email", "Contact", "0035g00000DDDDDDD4", "dee@example.com"),
        ("phone", "Lead", "00Q5g00000EEEEEEE5", "(415) 555-2671"),
    ]


def test_flow_callout_with_a_campaign_starts_one_sync(sf_runtime: Runtime, web: SandboxServer) -> None:
    assert post_json(web, {"campaignId": "7015g000000GGGGAAA"}).json() == {"accepted": 1}
    assert post_json(web, {"campaignId": "7015g000000GGGGAAA"}).status_code == 200
    with sf_runtime.session() as session:
        syncs = session.scalars(select(Sync)).all()
        assert session.scalar(select(func.count()).select_from(Sync)) == 1
    assert syncs[0].source == {"kind": "salesforce_campaign", "ref": "7015g000000GGGGAAA", "object": None}


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_flow_callout_without_the_token_is_refused(
    sf_runtime: Runtime, web: SandboxServer, token: str | None
) -> None:
    response = post_json(
        web, {"records": [{"Id": "0035g00000DDDDDDD4", "Email": "d@example.com"}]}, token=token
    )
    assert response.status_code == 401 and response.json()["error"] == "token_invalid"
    assert waiting(sf_runtime) == []


def test_other_content_types_get_415(sf_runtime: Runtime, web: SandboxServer) -> None:
    response = requests.post(
        f"{web.url}/webhooks/salesforce", data="x", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
