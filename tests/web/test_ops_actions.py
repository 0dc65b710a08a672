"""The ops page, in Chromium: a segment's verdict actions and a sync's action counts are shown."""

from __future__ import annotations

import requests
from playwright.sync_api import Page
from sqlalchemy import update

from connector.models import Sync
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.web.test_admin_api import AUTH, LIST_SEGMENT, add_segment
from tests.web.test_ops_page import open_sync, sign_in


def test_segments_and_syncs_show_their_verdict_actions(
    runtime: Runtime,
    web: SandboxServer,
    page: Page,
) -> None:
    actions = [
        {"when": "wrong", "do": "opt_out"},
        {"when": "disposable", "do": "add_to_list", "list_id": "77"},
    ]
    segment = add_segment(web, {**LIST_SEGMENT, "actions": actions}).json()
    sync_id = requests.post(f"{web.url}/admin/segments/{segment['id']}/sync", headers=AUTH, timeout=5).json()[
        "id"
    ]
    with runtime.session() as session:  # as write-back leaves a sync whose actions ran
        session.execute(
            update(Sync).where(Sync.id == sync_id).values(
                status="completed", counts={"actions": {"opt_out": 3, "add_to_list": 2},
                                            "actions_failed": {"opt_out": 1}},
            )
        )  # fmt: skip

    sign_in(page, web)
    page.goto(f"{web.url}/admin/ops/segments")
    cell = page.locator(f"tr[data-segment-id='{segment['id']}'] td.actions")
    assert cell.inner_text().splitlines() == ["wrong → opt_out", "disposable → add_to_list 77"]
    open_sync(page, web, sync_id)
    shown = page.locator("#actions").inner_text()
    assert "add_to_list 2 · opt_out 3" in shown and "refused: opt_out 1" in shown
