"""Batch files go when a sync completes; stored values go DATA_RETENTION_DAYS after it ends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import requests
from sqlalchemy import func, select, update

from connector.models import Sync, SyncContact, SyncStatus, SyncValue, utcnow
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.retention import purge_expired_data
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.verify_command import start_file_sync


def test_files_are_deleted_on_completion_and_values_after_the_retention_period(
    runtime: Runtime, web: SandboxServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a@example.com\nb@example.com\n", encoding="utf-8")
    sync = drive_until_settled(runtime, start_file_sync(runtime, source, type_="email", country="US").id)
    assert sync.status == SyncStatus.COMPLETED
    assert not (runtime.settings.data_dir / "syncs" / str(sync.id)).exists()

    assert purge_expired_data(runtime) == []  # ended just now: kept for DATA_RETENTION_DAYS
    with runtime.session() as session:
        session.execute(update(Sync).values(updated_at=utcnow() - timedelta(days=8)))
    assert purge_expired_data(runtime) == [sync.id]

    with runtime.session() as session:
        for model in (SyncContact, SyncValue):
            assert session.scalar(select(func.count()).select_from(model)) == 0
        purged = session.get_one(Sync, sync.id)
        assert purged.data_purged_at is not None and purged.counts["contacts"] == 2
    assert purge_expired_data(runtime) == []
    admin = {"Authorization": "Bearer test-admin-token"}
    gone = requests.get(f"{web.url}/admin/syncs/{sync.id}/results", headers=admin, timeout=5)
    assert gone.status_code == 410 and gone.json()["error"] == "results_purged"
