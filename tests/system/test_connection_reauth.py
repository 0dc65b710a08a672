"""A refused refresh token mid-sync: the connection needs a new install, the sync pauses (it does not
fail), and a new install resumes it where it stopped — each batch launched once, each flag written
once, in the installed portal only. Driven through the real chain (in-process RQ worker) against
the HubSpot and ApexVerify sandboxes over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from connector.models import Sync
from connector.pipeline.drive import DriveStopped, drive_until_settled
from connector.pipeline.segments import create_segment, sync_segment
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.connections_support import (
    PORTAL_B,
    install,
    oauth_counts,
    stored,
)

EMAILS = ["ann@example.com", "info@company.org", "bounce.me@example.org"]


def seed_list(sandbox: SandboxServer, account: str) -> tuple[str, list[str]]:
    def seed(body: dict[str, Any]) -> dict[str, Any]:
        answer = requests.post(
            f"{sandbox.url}/_sandbox/seed", params={"account": account}, json=body, timeout=5
        )
        answer.raise_for_status()
        return answer.json()

    ids = seed({"contacts": [{"properties": {"email": e}} for e in EMAILS]})["contactIds"]
    return seed({"lists": [{"name": "Reauth", "contactIds": ids}]})["listIds"][0], ids


def contact(sandbox: SandboxServer, account: str, contact_id: str) -> dict[str, Any]:
    answer = requests.get(
        f"{sandbox.url}/_sandbox/contacts/{contact_id}", params={"account": account}, timeout=5
    )
    answer.raise_for_status()
    return answer.json()["properties"]


def apexverify_state(runtime: Runtime) -> dict[str, Any]:
    return requests.get(f"{runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()


def revoke_when_verifying(sandbox: SandboxServer) -> Any:
    """Once the batch is launched: every token of portal B expires and its refresh token is revoked."""
    done: list[bool] = []

    def on_tick(sync: Sync) -> None:
        if not done and sync.status in ("verifying", "fetching_results"):
            requests.post(
                f"{sandbox.url}/_sandbox/oauth",
                params={"account": PORTAL_B},
                json={"expire_tokens": True, "revoke_refresh_tokens": True},
                timeout=5,
            ).raise_for_status()
            done.append(True)

    return on_tick


def test_a_revoked_refresh_token_pauses_the_sync_until_a_new_install_resumes_it(
    installs: Runtime,
    hubspot_app: SandboxServer,
) -> None:
    connection = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    list_id, ids = seed_list(hubspot_app, PORTAL_B)
    segment = create_segment(
        installs,
        {
            "crm": "hubspot",
            "kind": "hubspot_list",
            "ref": list_id,
            "type": "email",
            "connection_id": connection.id,
        },
    )
    sync = sync_segment(installs, segment.id, trigger="admin")

    with pytest.raises(DriveStopped):
        drive_until_settled(
            installs, sync.id, on_tick=revoke_when_verifying(hubspot_app), tick_seconds=0.05, max_wait=3
        )

    paused = stored_sync(installs, sync.id)
    assert paused.status == "writing_back" and paused.failed_step is None
    assert (paused.pause_reason or "").startswith("connection_needs_reauth")
    assert stored(installs, connection.id).status == "needs_reauth"
    assert "refresh" in (stored(installs, connection.id).last_error or "").lower()
    assert all("apexverify_status" not in contact(hubspot_app, PORTAL_B, i) for i in ids)

    again = install(installs, hubspot_app, "hubspot", PORTAL_B)
    assert again.connection.id == connection.id and not again.created
    assert stored(installs, connection.id).status == "connected"
    finished = drive_until_settled(installs, sync.id, tick_seconds=0.05, max_wait=30)

    assert finished.status == "completed"
    state = apexverify_state(installs)
    assert [b["launch_count"] for b in state["batches"]] == [1]
    assert all(contact(hubspot_app, PORTAL_B, i).get("apexverify_status") for i in ids)
    assert oauth_counts(hubspot_app, PORTAL_B)["refused_refreshes"] >= 1


def stored_sync(runtime: Runtime, sync_id: int) -> Sync:
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        session.expunge(sync)
        return sync
