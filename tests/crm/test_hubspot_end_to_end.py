"""A HubSpot list, triggered by a signed webhook, verified and flagged — through the sandboxes over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import select

from connector.crm.hubspot.settings import HubSpotSettings
from connector.crm.hubspot.webhook import sign
from connector.models import Sync, SyncStatus, SyncValue
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_PORTAL, HUBSPOT_SECRET, HUBSPOT_TOKEN, with_settings

EMAIL_PROPERTIES = (
    "apexverify_valid", "apexverify_wrong", "apexverify_is_role", "apexverify_is_disposable",
    "apexverify_status", "apexverify_verified_at",
)  # fmt: skip


def generate_list(sandbox: SandboxServer, contacts: int) -> str:
    body = {"generate": {"contacts": contacts, "list_name": "e2e", "seed": 3}}
    answer = requests.post(f"{sandbox.url}/_sandbox/seed", json=body, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["listId"])


def all_contacts(sandbox: SandboxServer) -> Iterator[dict]:
    offset = 0
    while True:
        page = requests.get(
            f"{sandbox.url}/_sandbox/contacts", params={"offset": offset, "limit": 5000}, timeout=30
        )
        items = page.json()["contacts"]
        if not items:
            return
        yield from items
        offset += len(items)


def trigger_list_sync(web: SandboxServer, list_id: str) -> None:
    body = json.dumps({"listId": list_id, "type": "email"}).encode()
    stamp = str(int(time.time() * 1000))
    url = f"{web.url}/webhooks/hubspot"
    headers = {"X-HubSpot-Signature-v3": sign(HUBSPOT_SECRET, "POST", url, body, stamp),
               "X-HubSpot-Request-Timestamp": stamp, "Content-Type": "application/json"}  # fmt: skip
    assert requests.post(url, data=body, headers=headers, timeout=5).json() == {"accepted": 1}


@pytest.mark.slow
def test_a_10000_contact_list_gets_every_flag_matching_the_export(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    list_id = generate_list(hubspot_sandbox, 10_000)
    trigger_list_sync(web, list_id)
    with hubspot_runtime.session() as session:
        sync_id = session.scalars(select(Sync.id)).one()

    sync = drive_until_settled(hubspot_runtime, sync_id, tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    with hubspot_runtime.session() as session:
        verdicts = dict(
            session.execute(
                select(SyncValue.value, SyncValue.status).where(SyncValue.sync_id == sync_id)
            ).all()
        )
    contacts = list(all_contacts(hubspot_sandbox))
    with_email = [c for c in contacts if (c["properties"].get("email") or "").strip()]
    without_email = [c for c in contacts if not (c["properties"].get("email") or "").strip()]
    assert len(contacts) == 10_000 and without_email and len(verdicts) < len(with_email)  # duplicates exist
    for contact in with_email:
        props = contact["properties"]
        assert all(props.get(name) not in (None, "") for name in EMAIL_PROPERTIES), contact
        assert props["apexverify_status"] == verdicts[props["email"].strip().lower()]
        if props["apexverify_status"] == "invalid_format":
            assert props["apexverify_wrong"] == "true" and props["apexverify_valid"] == "false"
    for contact in without_email:
        assert not any(contact["properties"].get(name) for name in EMAIL_PROPERTIES)
    assert sync.counts["skipped_by_reason"] == {
        "no_value": len(without_email),
        "recently_verified": 0,
        "deleted": 0,
    }
    assert sync.counts["verified"] == len(with_email)
    assert "invalid_format" in verdicts.values()


@pytest.mark.slow
def test_a_50000_contact_list_uses_the_bulk_apis_under_the_rate_limit(
    hubspot_runtime: Runtime, hubspot_sandbox: SandboxServer, web: SandboxServer
) -> None:
    list_id = generate_list(hubspot_sandbox, 50_000)
    trigger_list_sync(web, list_id)
    with hubspot_runtime.session() as session:
        sync_id = session.scalars(select(Sync.id)).one()

    sync = drive_until_settled(hubspot_runtime, sync_id, tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    state = requests.get(f"{hubspot_sandbox.url}/_sandbox/state", timeout=10).json()
    assert state["rate_limited"] < 0.01 * state["total_requests"]
    assert state["total_requests"] < 40  # an export and an import, not 1,000 batch calls
    assert sync.counts["verified"] + sync.counts["skipped"] == 50_000


def test_a_recently_flagged_contact_whose_email_changed_is_verified_again(hubspot_runtime: Runtime) -> None:
    """`apexverify_verified_at` is recent, but it was written for the old email: skipping it would
    leave the old email's flags on the new one for up to reverify_after_days."""
    from connector.pipeline.intake import crm_connection, start_segment_sync

    sandbox_url = hubspot_runtime.settings.section(HubSpotSettings).base_url
    list_id = generate_list_at(sandbox_url, 20)

    def sync_list() -> Sync:
        connection = crm_connection(hubspot_runtime, "hubspot")
        source = {"kind": "hubspot_list", "ref": list_id}
        sync = start_segment_sync(hubspot_runtime, connection, source=source, type_="email", trigger="admin",
                                  name="list")  # fmt: skip
        return drive_until_settled(hubspot_runtime, sync.id)

    first = sync_list()
    assert first.status == SyncStatus.COMPLETED and first.counts["values_sent"] > 0
    contact = next(c for c in all_contacts_at(sandbox_url) if c["properties"].get("apexverify_status"))
    changed = requests.post(
        f"{sandbox_url}/crm/v3/objects/contacts/batch/update",
        json={"inputs": [{"id": contact["id"], "properties": {"email": "Moved.Elsewhere@Example.com"}}]},
        headers={"Authorization": f"Bearer {HUBSPOT_TOKEN}"},
        timeout=10,
    )
    assert changed.status_code == 200, changed.text

    second = sync_list()
    assert second.status == SyncStatus.COMPLETED
    assert second.counts["values_sent"] == 1  # only the new address costs credits
    assert second.counts["skipped_by_reason"]["recently_verified"] == first.counts["verified"] - 1
    with hubspot_runtime.session() as session:
        sent = session.scalars(select(SyncValue.value).where(SyncValue.sync_id == second.id)).all()
    assert sent == ["moved.elsewhere@example.com"]


def generate_list_at(url: str, contacts: int) -> str:
    body = {"generate": {"contacts": contacts, "list_name": "changed", "seed": 8, "missing_email_every": 0,
                         "malformed_every": 0, "duplicate_every": 0}}  # fmt: skip
    answer = requests.post(f"{url}/_sandbox/seed", json=body, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["listId"])


def all_contacts_at(url: str) -> list[dict]:
    return requests.get(f"{url}/_sandbox/contacts", params={"limit": 5000}, timeout=30).json()["contacts"]


def test_a_list_export_is_downloaded_into_its_syncs_own_directory(hubspot_runtime: Runtime) -> None:
    """A worker killed while reading the export leaves the file where the sync's purge removes it,
    not in a shared directory nothing ever cleans."""
    from datetime import timedelta

    from sqlalchemy import update

    from connector.models import Connection, utcnow
    from connector.pipeline.retention import purge_expired_data
    from connector.pipeline.sources import source_for

    list_id = generate_list_at(hubspot_runtime.settings.section(HubSpotSettings).base_url, 20)
    with hubspot_runtime.session() as session:
        connection = Connection(crm="hubspot", external_id=HUBSPOT_PORTAL, name="portal", settings={})
        session.add(connection)
        session.flush()
        sync = Sync(connection_id=connection.id, trigger="test", crm="hubspot", type="email",
                    target_country="US", source={"kind": "hubspot_list", "ref": list_id}, name="list",
                    status="exporting")  # fmt: skip
        session.add(sync)
    source = source_for(hubspot_runtime, sync)
    source.bulk_threshold = 1  # type: ignore[attr-defined]  # the Exports API, not REST pages

    reading = source.iter_records()
    next(reading)  # the worker is reading the downloaded file now
    data_dir = hubspot_runtime.settings.data_dir
    downloads = [p.relative_to(data_dir) for p in data_dir.rglob("*.download")]
    assert [str(p.parent) for p in downloads] == [f"syncs/{sync.id}"]

    with hubspot_runtime.session() as session:  # left there (killed) until the sync's data expires
        session.execute(update(Sync).values(updated_at=utcnow() - timedelta(days=8)))
    assert purge_expired_data(hubspot_runtime) == [sync.id]
    assert list(data_dir.rglob("*.download")) == []
    reading.close()


def test_two_changes_delivered_newest_first_get_flags_for_the_newest_value(
    hubspot_runtime: Runtime, web: SandboxServer
) -> None:
    """HubSpot does not promise order: the older change (to an address that bounces) arrives last."""
    from connector.pipeline.coalesce import flush_due_buffers
    from tests.web.test_webhooks_hubspot import event, post_signed

    sandbox_url = hubspot_runtime.settings.section(HubSpotSettings).base_url
    seed = {"contacts": [{"properties": {"email": "newest@example.com", "firstname": "N"}}]}
    [contact_id] = requests.post(f"{sandbox_url}/_sandbox/seed", json=seed, timeout=10).json()["contactIds"]

    def change(event_id: int, email: str, seconds_ago: int) -> list[dict]:
        occurred_at = int((time.time() - seconds_ago) * 1000)
        fields = {"portalId": int(HUBSPOT_PORTAL), "propertyValue": email, "occurredAt": occurred_at}
        return [event(event_id, int(contact_id), **fields)]

    for body in (change(2, "newest@example.com", 1), change(1, "bounce@example.com", 5)):
        assert post_signed(web, body, secret=HUBSPOT_SECRET).json() == {"accepted": 1}

    [sync_id] = flush_due_buffers(with_settings(hubspot_runtime, coalesce_window_seconds=0))
    sync = drive_until_settled(hubspot_runtime, sync_id, tick_seconds=0.1)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    properties = requests.get(f"{sandbox_url}/_sandbox/contacts/{contact_id}", timeout=5).json()["properties"]
    assert properties["apexverify_status"] == "valid" and properties["apexverify_wrong"] == "false"
    with hubspot_runtime.session() as session:
        assert session.scalars(select(SyncValue.value).where(SyncValue.sync_id == sync_id)).all() == [
            "newest@example.com"
        ]
