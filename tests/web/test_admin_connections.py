"""Connections over HTTP: the admin API lists, shows and disconnects them; segments and syncs name
theirs; webhooks land on the connection of the portal or org they come from.

Portals and orgs are installed at the function level (tests/connections_support.py); the ops page's
install buttons are tested with it (tests/web/test_ops_connections.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from sqlalchemy import func, select

from connector.crm.hubspot.webhook import sign
from connector.models import CoalescedContact, Connection, Sync
from connector.pipeline.intake import crm_connection
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN, SALESFORCE_SESSION, SALESFORCE_WEBHOOK_TOKEN
from tests.connections_support import (
    ENV_PORTAL,
    HS_CLIENT_SECRET,
    KEY,
    ORG_B,
    PORTAL_B,
    SF_CLIENT_SECRET,
    install,
    oauth_counts,
    tokens_of,
)

AUTH = {"Authorization": "Bearer test-admin-token"}
FIELDS = {"id", "crm", "external_id", "name", "auth", "status", "last_error", "created_at", "updated_at",
          "webhook_url"}  # fmt: skip


def get(web: SandboxServer, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{web.url}{path}", params=params, headers=AUTH, timeout=10)


def post(web: SandboxServer, path: str, body: Any = None) -> requests.Response:
    return requests.post(f"{web.url}{path}", json=body, headers=AUTH, timeout=10)


def delete(web: SandboxServer, path: str) -> requests.Response:
    return requests.delete(f"{web.url}{path}", headers=AUTH, timeout=10)


def secrets_of(runtime: Runtime, *connection_ids: int) -> list[str]:
    """Every token and secret that must never appear in an answer."""
    found = [
        KEY,
        HS_CLIENT_SECRET,
        SF_CLIENT_SECRET,
        HUBSPOT_TOKEN,
        SALESFORCE_SESSION,
        SALESFORCE_WEBHOOK_TOKEN,
    ]
    with runtime.session() as session:
        for connection_id in connection_ids:
            row = session.get(Connection, connection_id)
            assert row is not None
            if row.credentials:
                found += [row.credentials, *(str(v) for v in tokens_of(row).values() if isinstance(v, str))]
            if row.webhook_secret_digest:
                found.append(row.webhook_secret_digest)
    return found


def test_connections_are_listed_and_shown_without_a_token_or_secret(
    installs: Runtime, web: SandboxServer, hubspot_app: SandboxServer, salesforce_app: SandboxServer
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B)
    org = install(installs, salesforce_app, "salesforce", ORG_B)
    assert org.webhook_secret
    answer = get(web, "/admin/connections")
    assert answer.status_code == 200
    listed = answer.json()["connections"]
    by_account = {(c["crm"], c["external_id"]): c for c in listed}
    env_org = installs.settings.env["SALESFORCE_ORG_ID"]
    assert set(by_account) == {
        ("hubspot", ENV_PORTAL), ("hubspot", PORTAL_B), ("salesforce", env_org), ("salesforce", ORG_B),
    }  # fmt: skip
    assert all(set(c) == FIELDS for c in listed)
    assert by_account[("hubspot", ENV_PORTAL)]["auth"] == "env"
    mine = by_account[("hubspot", PORTAL_B)]
    assert (mine["id"], mine["auth"], mine["status"], mine["last_error"]) == (
        portal.connection.id, "oauth", "connected", None,
    )  # fmt: skip
    assert by_account[("salesforce", ORG_B)]["webhook_url"] == f"{web.url}/webhooks/salesforce"
    shown = get(web, f"/admin/connections/{portal.connection.id}")
    assert shown.status_code == 200 and shown.json() == mine
    texts = answer.text + shown.text + get(web, f"/admin/connections/{org.connection.id}").text
    for secret in [*secrets_of(installs, portal.connection.id, org.connection.id), org.webhook_secret]:
        assert secret not in texts


def test_unknown_connections_are_404(installs: Runtime, web: SandboxServer) -> None:
    from connector.pipeline.syncs import ensure_connection

    with installs.session() as session:
        files = ensure_connection(session, "file", "local", "local files").id  # no CRM connection
    for connection_id in (files, 987654, 2**63 - 1):
        for answer in (
            get(web, f"/admin/connections/{connection_id}"),
            delete(web, f"/admin/connections/{connection_id}"),
        ):
            assert answer.status_code == 404 and answer.json()["error"] == "connection_not_found"
    assert get(web, "/admin/connections/99999999999999999999").status_code == 404


def test_disconnect_over_http_revokes_at_the_crm_and_refuses_env_connections(
    installs: Runtime, web: SandboxServer, hubspot_app: SandboxServer
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    secrets = secrets_of(installs, portal.id)
    answer = delete(web, f"/admin/connections/{portal.id}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["id"], body["status"], body["auth"]) == (portal.id, "disconnected", "oauth")
    assert oauth_counts(hubspot_app, PORTAL_B)["revoked"] == 1
    assert get(web, f"/admin/connections/{portal.id}").json()["status"] == "disconnected"
    assert all(secret not in answer.text for secret in secrets)
    with installs.session() as session:
        assert session.get(Connection, portal.id).credentials is None  # type: ignore[union-attr]
    env = crm_connection(installs, "hubspot")
    refused = delete(web, f"/admin/connections/{env.id}")
    assert refused.status_code == 409 and refused.json()["error"] == "env_connection"
    assert "HUBSPOT_ACCESS_TOKEN" in refused.json()["message"]
    assert get(web, f"/admin/connections/{env.id}").json()["status"] == "connected"


def test_segments_name_their_connection_and_need_one_when_the_crm_has_several(
    installs: Runtime, web: SandboxServer, hubspot_app: SandboxServer, salesforce_app: SandboxServer
) -> None:
    env = crm_connection(installs, "hubspot")
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    org = install(installs, salesforce_app, "salesforce", ORG_B).connection
    body = {"kind": "hubspot_list", "ref": "51", "type": "email"}
    refused = post(web, "/admin/segments", body)
    assert refused.status_code == 400 and refused.json()["error"] == "connection_required"
    assert refused.json()["details"]["connection_ids"] == sorted([env.id, portal.id])
    assert f"{env.id}" in refused.json()["message"] and f"{portal.id}" in refused.json()["message"]
    for wrong in (org.id, 987654, "7", True, -1):
        answer = post(web, "/admin/segments", {**body, "connection_id": wrong})
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_connection_id", wrong
    created = post(web, "/admin/segments", {**body, "connection_id": portal.id})
    assert created.status_code == 201 and created.json()["connection_id"] == portal.id
    segment = created.json()
    assert get(web, f"/admin/segments/{segment['id']}").json()["connection_id"] == portal.id
    # Its syncs go through that connection, and say so.
    started = post(web, f"/admin/segments/{segment['id']}/sync")
    assert started.status_code == 202 and started.json()["connection_id"] == portal.id
    listed = get(web, "/admin/syncs").json()["syncs"]
    assert [s["connection_id"] for s in listed] == [portal.id]
    # Moved to the env portal by PATCH.
    moved = requests.patch(f"{web.url}/admin/segments/{segment['id']}", json={"connection_id": env.id},
                           headers=AUTH, timeout=5)  # fmt: skip
    assert moved.status_code == 200 and moved.json()["connection_id"] == env.id
    # A Salesforce segment: the env org and org B are both live, so it must say which.
    campaign = {"kind": "salesforce_campaign", "ref": "701000000000001", "object": "Contact"}
    assert post(web, "/admin/segments", campaign).json()["error"] == "connection_required"
    assert (
        post(web, "/admin/segments", {**campaign, "connection_id": org.id}).json()["connection_id"] == org.id
    )


def test_a_disconnected_connection_takes_no_new_segment_and_starts_no_sync(
    installs: Runtime, web: SandboxServer, hubspot_app: SandboxServer
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    segment = post(
        web, "/admin/segments", {"kind": "hubspot_list", "ref": "52", "connection_id": portal.id}
    ).json()
    assert delete(web, f"/admin/connections/{portal.id}").status_code == 200
    refused = post(web, "/admin/segments", {"kind": "hubspot_list", "ref": "53", "connection_id": portal.id})
    assert refused.status_code == 400 and "disconnected" in refused.json()["message"]
    # Only the env portal is left: it is the default again.
    default = post(web, "/admin/segments", {"kind": "hubspot_list", "ref": "53"})
    assert (
        default.status_code == 201
        and default.json()["connection_id"] == crm_connection(installs, "hubspot").id
    )
    stopped = post(web, f"/admin/segments/{segment['id']}/sync")
    assert stopped.status_code == 409 and stopped.json()["error"] == "connection_disconnected"
    # Installed again: it syncs.
    install(installs, hubspot_app, "hubspot", PORTAL_B)
    assert post(web, f"/admin/segments/{segment['id']}/sync").status_code == 202


def test_the_only_installed_portal_is_the_default_without_env_credentials(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    from connector.pipeline.segments import create_segment
    from tests.conftest import with_settings

    oauth_only = with_settings(installs, hubspot_access_token=None, hubspot_portal_id=None)
    portal = install(oauth_only, hubspot_app, "hubspot", PORTAL_B).connection
    segment = create_segment(oauth_only, {"kind": "hubspot_list", "ref": "54"})
    assert segment.connection_id == portal.id


# ---- webhooks -----------------------------------------------------------------------------------


def post_hubspot(web: SandboxServer, body: object) -> requests.Response:
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time() * 1000))
    url = f"{web.url}/webhooks/hubspot"
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign(HS_CLIENT_SECRET, "POST", url, raw, timestamp),
        "X-HubSpot-Request-Timestamp": timestamp,
    }
    return requests.post(url, data=raw, headers=headers, timeout=5)


def event(event_id: int, object_id: int, portal: str) -> dict[str, Any]:
    return {
        "eventId": event_id, "subscriptionId": 9, "portalId": int(portal), "appId": 1,
        "occurredAt": 1700000000000, "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
        "objectId": object_id, "changeSource": "CRM_UI", "propertyName": "email",
        "propertyValue": f"user{object_id}@example.com",
    }  # fmt: skip


def buffered(runtime: Runtime) -> dict[int, list[str]]:
    with runtime.session() as session:
        rows = session.execute(
            select(CoalescedContact.connection_id, CoalescedContact.record_id).order_by(CoalescedContact.id)
        ).all()
    found: dict[int, list[str]] = {}
    for connection_id, record_id in rows:
        found.setdefault(connection_id, []).append(record_id)
    return found


def test_hubspot_deliveries_land_on_their_portals_connection(
    installs: Runtime, web: SandboxServer, hubspot_app: SandboxServer
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    env = crm_connection(installs, "hubspot")
    answer = post_hubspot(web, [event(1, 101, PORTAL_B), event(2, 102, ENV_PORTAL), event(3, 103, PORTAL_B)])
    assert answer.status_code == 200 and answer.json() == {"accepted": 3}
    assert buffered(installs) == {portal.id: ["101", "103"], env.id: ["102"]}
    # A list trigger from portal B syncs that portal's list.
    trigger = post_hubspot(web, {"listId": "61", "type": "email", "portalId": int(PORTAL_B)})
    assert trigger.status_code == 200, trigger.text
    with installs.session() as session:
        sync = session.scalars(select(Sync)).one()
    assert (sync.connection_id, sync.source["ref"]) == (portal.id, "61")
    # A portal nobody installed: 403, and nothing is stored.
    before = buffered(installs)
    foreign = post_hubspot(web, [event(4, 104, "999"), event(5, 105, PORTAL_B)])
    assert foreign.status_code == 403
    assert buffered(installs) == before
    # A disconnected portal is a foreign one.
    assert delete(web, f"/admin/connections/{portal.id}").status_code == 200
    assert post_hubspot(web, [event(6, 106, PORTAL_B)]).status_code == 403


def test_salesforce_deliveries_are_routed_by_the_connections_own_secret(
    installs: Runtime, web: SandboxServer, salesforce_app: SandboxServer
) -> None:
    org = install(installs, salesforce_app, "salesforce", ORG_B)
    assert org.webhook_secret
    url = f"{web.url}/webhooks/salesforce"
    records = {"records": [{"Id": "003000000000001AAA", "Email": "a@example.com"}]}
    answer = requests.post(url, json=records, headers={"X-Connector-Token": org.webhook_secret}, timeout=5)
    assert answer.status_code == 200 and answer.json() == {"accepted": 1}, answer.text
    assert list(buffered(installs)) == [org.connection.id]
    campaign = {"campaignId": "701000000000002"}
    answer = requests.post(url, json=campaign, headers={"X-Connector-Token": org.webhook_secret}, timeout=5)
    assert answer.status_code == 200
    with installs.session() as session:
        assert session.scalars(select(Sync.connection_id)).all() == [org.connection.id]
    wrong = requests.post(
        url, json=records, headers={"X-Connector-Token": org.webhook_secret[:-1]}, timeout=5
    )
    assert wrong.status_code == 401 and org.webhook_secret[:-1] not in wrong.text
    with installs.session() as session:
        assert session.scalar(select(func.count()).select_from(CoalescedContact)) == 1
    # The env org's own secret still reaches the env connection.
    env = requests.post(url, json=records, headers={"X-Connector-Token": SALESFORCE_WEBHOOK_TOKEN}, timeout=5)
    assert env.status_code == 200
    assert set(buffered(installs)) == {org.connection.id, crm_connection(installs, "salesforce").id}
