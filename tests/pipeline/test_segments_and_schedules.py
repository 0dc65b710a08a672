"""Segments through the admin API, and the schedule tick that turns due segments into syncs."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from connector.models import Segment, Sync, SyncStatus, utcnow
from connector.pipeline.intake import crm_connection
from connector.pipeline.schedule import enqueue_due_segment_syncs
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer

AUTH = {"Authorization": "Bearer test-admin-token"}
LIST = {"crm": "hubspot", "kind": "hubspot_list", "ref": "42", "type": "email", "schedule": "* * * * *"}


def add(web: SandboxServer, body: dict) -> requests.Response:
    return requests.post(f"{web.url}/admin/segments", json=body, headers=AUTH, timeout=5)


def test_segment_crud(web: SandboxServer) -> None:
    created = add(web, {**LIST, "parameters": {"use_global_cache": False}, "max_net_cost": 500})
    assert created.status_code == 201
    segment = created.json()
    assert {k: segment[k] for k in LIST} == LIST and segment["reverify_after_days"] == 30
    url = f"{web.url}/admin/segments/{segment['id']}"

    patched = requests.patch(url, json={"schedule": None, "reverify_after_days": 7}, headers=AUTH, timeout=5)
    assert patched.json()["schedule"] is None and patched.json()["reverify_after_days"] == 7
    assert (
        requests.get(f"{web.url}/admin/segments", headers=AUTH).json()["segments"][0]["id"] == segment["id"]
    )

    started = requests.post(f"{url}/sync", headers=AUTH, timeout=5)
    assert started.status_code == 202 and started.json()["segment_id"] == segment["id"]
    again = requests.post(f"{url}/sync", headers=AUTH, timeout=5)
    assert again.json()["id"] == started.json()["id"]  # still running: not doubled

    assert requests.delete(url, headers=AUTH, timeout=5).status_code == 204
    assert requests.get(url, headers=AUTH, timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"kind": "mailchimp"}, "invalid_kind"),
        ({"crm": "salesforce"}, "invalid_crm"),
        ({"ref": ""}, "invalid_ref"),
        ({"type": "fax"}, "invalid_type"),
        ({"schedule": "every minute"}, "invalid_schedule"),
        ({"schedule": "0 0 30 2 *"}, "invalid_schedule"),  # valid cron, but 30 February never comes
        ({"reverify_after_days": -1}, "invalid_reverify_after_days"),
        ({"max_net_cost": "lots"}, "invalid_max_net_cost"),
        ({"parameters": {"target_audience": 99}}, "invalid_parameter"),
        ({"colour": "blue"}, "unknown_field"),
        ({"kind": "salesforce_soql", "crm": "salesforce", "object": "Account"}, "invalid_object"),
        (
            {"kind": "salesforce_soql", "crm": "salesforce", "object": "Lead", "ref": "x; DELETE"},
            "invalid_ref",
        ),
    ],
)
def test_bad_segments_are_refused_with_their_code(web: SandboxServer, change: dict, code: str) -> None:
    response = add(web, {**LIST, **change})
    assert response.status_code == 400 and response.json()["error"] == code


def test_schedule_starts_one_sync_per_due_time_however_many_ticks(
    runtime: Runtime, web: SandboxServer
) -> None:
    segment_id = add(web, LIST).json()["id"]
    with runtime.session() as session:  # created a while ago, so a due time has passed since
        session.execute(update(Segment).values(created_at=utcnow() - timedelta(minutes=5)))

    first = enqueue_due_segment_syncs(runtime)
    assert len(first) == 1
    assert enqueue_due_segment_syncs(runtime) == []  # a second tick (or a second cron process)
    with runtime.session() as session:
        sync = session.get_one(Sync, first[0])
        assert (sync.segment_id, sync.trigger) == (segment_id, "schedule")
        session.execute(update(Sync).values(status=SyncStatus.COMPLETED))

    later = enqueue_due_segment_syncs(runtime, now=sync.created_at + timedelta(minutes=1, seconds=1))
    assert len(later) == 1 and later != first
    with runtime.session() as session:
        keys = session.scalars(select(Sync.idempotency_key).order_by(Sync.id)).all()
    assert len(set(keys)) == 2


def test_a_due_segment_still_syncing_is_deferred(runtime: Runtime, web: SandboxServer) -> None:
    add(web, LIST)
    with runtime.session() as session:
        session.execute(update(Segment).values(created_at=utcnow() - timedelta(minutes=5)))
    [sync_id] = enqueue_due_segment_syncs(runtime)
    with runtime.session() as session:
        created = session.get_one(Sync, sync_id).created_at
    assert enqueue_due_segment_syncs(runtime, now=created + timedelta(minutes=2)) == []


def test_a_schedule_that_never_fires_is_refused_on_change_too(web: SandboxServer) -> None:
    url = f"{web.url}/admin/segments/{add(web, LIST).json()['id']}"
    refused = requests.patch(url, json={"schedule": "0 0 31 4 *"}, headers=AUTH, timeout=5)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_schedule"
    assert "schedule" in refused.json()["message"]
    leap_day = requests.patch(url, json={"schedule": "0 0 29 2 *"}, headers=AUTH, timeout=5)
    assert leap_day.status_code == 200  # rare, but it fires
    assert requests.get(url, headers=AUTH, timeout=5).json()["schedule"] == "0 0 29 2 *"


def test_a_bad_stored_schedule_does_not_stop_the_other_segments(
    runtime: Runtime, web: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    bad = Segment(connection_id=crm_connection(runtime, "hubspot").id, crm="hubspot", kind="hubspot_list",
                  ref="43", type="email", schedule="0 0 30 2 *")  # fmt: skip
    with runtime.session() as session:  # stored before such schedules were refused; ticked first
        session.add(bad)
    good = add(web, LIST).json()["id"]
    with runtime.session() as session:
        session.execute(update(Segment).values(created_at=utcnow() - timedelta(minutes=5)))

    with caplog.at_level(logging.WARNING, logger="connector.pipeline.schedule"):
        [sync_id] = enqueue_due_segment_syncs(runtime)

    with runtime.session() as session:
        assert session.get_one(Sync, sync_id).segment_id == good
    [failed] = [r for r in caplog.records if r.getMessage() == "scheduled_sync_failed"]
    assert (failed.segment_id, failed.error) == (bad.id, "CroniterBadDateError")  # type: ignore[attr-defined]
