"""Outages: the web keeps acknowledging webhooks without Redis, and work resumes when it is back."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import redis
import requests
from rq.job import Job
from sqlalchemy import func, select

from connector.models import CoalescedContact, Sync
from connector.pipeline.coalesce import flush_due_buffers
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.reconcile import reconcile
from connector.runtime import Runtime, set_runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from tests.conftest import with_settings

TOKEN = "flow-token-outage-test"


@pytest.fixture
def redis_down(runtime: Runtime) -> Iterator[Runtime]:
    """The same runtime, but its Redis is a port nobody listens on."""
    runtime = with_settings(runtime, salesforce_webhook_token=TOKEN, coalesce_window_seconds=0)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    down = dataclasses.replace(runtime, redis=dead)
    set_runtime(down)
    yield down
    set_runtime(runtime)


@pytest.fixture
def web_without_redis(redis_down: Runtime) -> Iterator[SandboxServer]:
    from connector.web import create_app

    server = serve_in_thread(create_app(runtime=redis_down))
    yield server
    server.stop()


def test_webhooks_are_acknowledged_while_redis_is_down_and_verified_once_it_is_back(
    redis_down: Runtime, web_without_redis: SandboxServer, runtime: Runtime
) -> None:
    records = [{"Id": f"0035g00000AAAA{n:04d}", "Email": f"r{n}@example.com"} for n in range(20)]
    response = requests.post(
        f"{web_without_redis.url}/webhooks/salesforce", json={"records": records},
        headers={"X-Connector-Token": TOKEN}, timeout=10,
    )  # fmt: skip
    assert response.status_code == 200 and response.json() == {"accepted": 20}
    with redis_down.session() as session:
        assert session.scalar(select(func.count()).select_from(CoalescedContact)) == 20
    assert requests.get(f"{web_without_redis.url}/readyz", timeout=5).status_code == 503

    # Redis is back: the cron sweep and the reconciler pick everything up.
    back = with_settings(runtime, salesforce_webhook_token=TOKEN, coalesce_window_seconds=0)
    [sync_id] = flush_due_buffers(back)
    reconcile(back)
    with back.session() as session:
        sync = session.get_one(Sync, sync_id)
        taken = session.scalar(select(func.count()).where(CoalescedContact.sync_id == sync_id))
    assert (sync.source, sync.crm, taken) == ({"kind": "coalesced"}, "salesforce", 20)
    assert Job.fetch(sync.job_id, connection=back.redis).get_status() == "queued"


def test_a_sync_started_while_redis_is_down_is_enqueued_by_the_reconciler(
    redis_down: Runtime, runtime: Runtime, tmp_path
) -> None:
    from connector.verify_command import start_file_sync

    source = tmp_path / "in.txt"
    source.write_text("a@example.com\n", encoding="utf-8")
    sync = start_file_sync(redis_down, source, type_="email", country="US")  # enqueue fails quietly

    assert reconcile(runtime) == [sync.id]
    assert drive_until_settled(runtime, sync.id).status == "completed"
