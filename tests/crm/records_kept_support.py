"""What the records-kept end-to-end tests of every CRM share (issue 17): a sync stopped before its
write-back is approved and finished over HTTP, then read back as its contacts' outcomes."""

from __future__ import annotations

from typing import Any

import requests
from sqlalchemy import select

from connector.models import Sync, SyncContact, SyncStatus, SyncValue
from connector.pipeline.drive import drive_until_settled
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.web.test_admin_api import AUTH


def approve_and_finish(runtime: Runtime, web: SandboxServer, sync_id: int) -> tuple[Sync, dict[str, Any]]:
    """Approve the sync over the admin API, drive it to completion: (the sync, its detail as
    GET /admin/syncs/<id> answers it)."""
    approved = requests.post(f"{web.url}/admin/syncs/{sync_id}/approve", headers=AUTH, timeout=5)
    assert approved.status_code == 202, approved.text
    sync = drive_until_settled(runtime, sync_id, tick_seconds=0.1)
    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    detail = requests.get(f"{web.url}/admin/syncs/{sync_id}", headers=AUTH, timeout=5)
    assert detail.status_code == 200, detail.text
    return sync, dict(detail.json())


def outcomes(runtime: Runtime, sync_id: int) -> dict[str, tuple[str, str | None, str | None, str | None]]:
    """{record id: (outcome, reason, written_to, message)} of the sync's contacts."""
    with runtime.session() as session:
        rows = session.execute(
            select(
                SyncContact.record_id,
                SyncContact.outcome,
                SyncContact.reason,
                SyncContact.written_to,
                SyncContact.error_message,
            ).where(SyncContact.sync_id == sync_id)
        ).all()
    return {record_id: (outcome, reason, to, message) for record_id, outcome, reason, to, message in rows}


def verdicts(runtime: Runtime, sync_id: int) -> dict[str, str]:
    """{normalized value: verdict status} of the sync."""
    with runtime.session() as session:
        rows = session.execute(select(SyncValue.value, SyncValue.status).where(SyncValue.sync_id == sync_id))
        return {value: status for value, status in rows}
