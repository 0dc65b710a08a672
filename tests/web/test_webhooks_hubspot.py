"""POST /webhooks/hubspot as HubSpot sends it: signed, redelivered, forged, stale."""

from __future__ import annotations

import json
import time
from datetime import UTC, timedelta

import pytest
import requests
from sqlalchemy import func, select

from connector.crm.hubspot.webhook import sign
from connector.models import CoalescedContact, Sync, WebhookEvent
from connector.pipeline.coalesce import flush_due_buffers
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import with_settings

SECRET = "hubspot-client-secret-0001"
PORTAL = "62515"


@pytest.fixture
def hubspot_runtime(runtime: Runtime) -> Runtime:
    return with_settings(runtime, hubspot_client_secret=SECRET, hubspot_portal_id=PORTAL)


@pytest.fixture
def hubspot_web(hubspot_runtime: Runtime, web: SandboxServer) -> SandboxServer:
    return web


def post_signed(
    web: SandboxServer,
    body: object,
    *,
    secret: str = SECRET,
    age_ms: int = 0,
    tamper: bool = False,
    uri: str | None = None,
) -> requests.Response:
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time() * 1000) - age_ms)
    url = f"{web.url}/webhooks/hubspot"
    signature = sign(secret, "POST", uri or url, raw, timestamp)
    if tamper:
        raw = raw.replace(b"alice", b"mallory")
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": timestamp,
    }
    return requests.post(url, data=raw, headers=headers, timeout=5)


def event(event_id: int, object_id: int, kind: str = "contact.propertyChange", **fields: object) -> dict:
    body = {
        "eventId": event_id,
        "subscriptionId": 9,
        "portalId": int(PORTAL),
        "appId": 1,
        "occurredAt": 1700000000000,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM_UI",
    }
    if kind == "contact.propertyChange":
        body.update(propertyName="email", propertyValue=f"user{object_id}@example.com")
    body.update(fields)
    return body


def waiting(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.session() as session:
        rows = session.execute(
            select(CoalescedContact.type, CoalescedContact.record_id, CoalescedContact.value)
            .where(CoalescedContact.sync_id.is_(None))
            .order_by(CoalescedContact.id)
        )
        return [tuple(r) for r in rows]


def test_signed_events_are_buffered_and_a_redelivery_adds_nothing(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    events = [event(1, 101), event(2, 102, kind="contact.creation"), event(3, 103, propertyName="firstname")]

    first = post_signed(hubspot_web, events)
    again = post_signed(hubspot_web, events)

    assert first.status_code == 200 and first.json() == {"accepted": 2}
    assert again.status_code == 200 and again.json() == {"accepted": 0}
    assert sorted(waiting(hubspot_runtime)) == [
        ("email", "101", "user101@example.com"),
        ("email", "102", None),
        ("phone", "102", None),
    ]


def test_changes_the_connector_made_itself_are_ignored(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    response = post_signed(
        hubspot_web, [event(4, 104, propertyName="apexverify_status", propertyValue="valid")]
    )
    assert response.json() == {"accepted": 0}
    assert waiting(hubspot_runtime) == []


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ({"tamper": True}, "signature_invalid"),
        ({"secret": "not-the-secret"}, "signature_invalid"),
        ({"age_ms": 6 * 60 * 1000}, "timestamp_out_of_window"),
        ({"age_ms": -6 * 60 * 1000}, "timestamp_out_of_window"),
    ],
)
def test_forged_or_stale_deliveries_get_401_and_change_nothing(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer, variant: dict, code: str
) -> None:
    response = post_signed(hubspot_web, [event(5, 105, propertyValue="alice@example.com")], **variant)

    assert response.status_code == 401
    assert response.json()["error"] == code
    assert waiting(hubspot_runtime) == []
    with hubspot_runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


def test_unsigned_delivery_is_refused(hubspot_web: SandboxServer) -> None:
    response = requests.post(f"{hubspot_web.url}/webhooks/hubspot", json=[event(6, 106)], timeout=5)
    assert response.status_code == 401 and response.json()["error"] == "signature_missing"


def test_delivery_from_another_portal_is_refused(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    response = post_signed(hubspot_web, [event(7, 107, portalId=999)])
    assert response.status_code == 403 and response.json()["error"] == "portal_mismatch"
    assert waiting(hubspot_runtime) == []


@pytest.fixture
def proxied_runtime(hubspot_runtime: Runtime) -> Runtime:
    return with_settings(hubspot_runtime, public_base_url="https://connector.example.com/")


def test_signature_over_the_public_url_behind_a_proxy(proxied_runtime: Runtime, web: SandboxServer) -> None:
    public = "https://connector.example.com/webhooks/hubspot"
    assert post_signed(web, [event(8, 108)], uri=public).status_code == 200
    assert post_signed(web, [event(9, 109)]).status_code == 401


def test_unconfigured_secret_answers_503(web: SandboxServer) -> None:
    response = post_signed(web, [event(10, 110)])
    assert response.status_code == 503 and response.json()["error"] == "hubspot_not_configured"


def test_workflow_webhooks_in_both_shapes(hubspot_runtime: Runtime, hubspot_web: SandboxServer) -> None:
    legacy = {"vid": 201, "portal-id": int(PORTAL), "properties": {"email": {"value": "Legacy@Example.com"}}}
    flat = {"hs_object_id": "202", "email": "flat@example.com", "phone": "+14155552671"}

    assert post_signed(hubspot_web, legacy).json() == {"accepted": 1}
    assert post_signed(hubspot_web, flat).json() == {"accepted": 2}
    assert sorted(waiting(hubspot_runtime)) == [
        ("email", "201", "Legacy@Example.com"),
        ("email", "202", "flat@example.com"),
        ("phone", "202", "+14155552671"),
    ]


def test_segment_trigger_starts_one_sync_of_the_list(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    assert post_signed(hubspot_web, {"listId": "42", "type": "email"}).json() == {"accepted": 1}
    assert post_signed(hubspot_web, {"listId": "42", "type": "email"}).status_code == 200

    with hubspot_runtime.session() as session:
        syncs = session.scalars(select(Sync)).all()
    assert [(s.crm, s.source, s.trigger, s.type) for s in syncs] == [
        ("hubspot", {"kind": "hubspot_list", "ref": "42"}, "webhook", "email")
    ]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "malformed_json"),
        (b'{"something": 1}', "unreadable_body"),
        (b'"text"', "unreadable_body"),
        (b'{"listId": "1", "type": "fax"}', "invalid_type"),
        (b'[{"objectId": 1}]', "unreadable_event"),
    ],
)
def test_unreadable_bodies_get_400_with_a_json_error(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer, raw: bytes, code: str
) -> None:
    timestamp = str(int(time.time() * 1000))
    url = f"{hubspot_web.url}/webhooks/hubspot"
    headers = {
        "X-HubSpot-Signature-v3": sign(SECRET, "POST", url, raw, timestamp),
        "X-HubSpot-Request-Timestamp": timestamp,
        "Content-Type": "application/json",
    }
    response = requests.post(url, data=raw, headers=headers, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == code


def test_many_single_contact_webhooks_become_one_sync(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    runtime = with_settings(hubspot_runtime, coalesce_window_seconds=3600, coalesce_max_contacts=10_000)
    for n in range(300):
        post_signed(
            hubspot_web, {"hs_object_id": str(1000 + n), "email": f"c{n}@example.com"}
        ).raise_for_status()

    assert flush_due_buffers(runtime) == []  # window still open, buffer not full
    runtime = with_settings(runtime, coalesce_window_seconds=0)
    created = flush_due_buffers(runtime)

    assert len(created) == 1
    with runtime.session() as session:
        assert session.scalar(select(func.count()).where(CoalescedContact.sync_id == created[0])) == 300
        assert session.get_one(Sync, created[0]).source == {"kind": "coalesced"}


def test_the_first_deliveries_to_a_new_portal_race_for_its_connection_row_without_a_500(
    hubspot_runtime: Runtime,
) -> None:
    """Each gunicorn worker meets the new portal at once: all of them must agree on one row."""
    import threading

    from connector.pipeline.syncs import ensure_connection

    barrier, ids, errors = threading.Barrier(8), [], []

    def first_request() -> None:
        barrier.wait()
        try:
            with hubspot_runtime.session() as session:
                ids.append(ensure_connection(session, "hubspot", "race-portal").id)
        except Exception as error:  # noqa: BLE001 - the race's loser used to get IntegrityError
            errors.append(error)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(ids)) == 1 and len(ids) == 8


def test_a_busy_buffer_is_flushed_when_full_without_counting_it_on_every_delivery(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    runtime = with_settings(hubspot_runtime, coalesce_max_contacts=5, coalesce_window_seconds=3600)
    hubspot_web.app.extensions["connector"] = runtime
    for n in range(5):
        assert post_signed(hubspot_web, [event(9000 + n, 7000 + n, propertyValue=f"p{n}@example.com")]).ok
    queued = runtime.queue().get_jobs()
    assert [job.func_name.rsplit(".", 1)[-1] for job in queued] == ["flush_buffer_job"]  # the 5th filled it
    scheduled = runtime.queue().scheduled_job_registry.get_job_ids()
    assert len(scheduled) == 1  # the window's flush, asked for by the first delivery only


def test_the_windows_flush_is_scheduled_no_earlier_than_the_window_closes(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    """RQ keeps scheduled times in whole seconds: a flush due at exactly the window ran early, found
    the window open, and left the contacts for the cron sweep."""
    runtime = with_settings(hubspot_runtime, coalesce_window_seconds=5)
    hubspot_web.app.extensions["connector"] = runtime
    assert post_signed(hubspot_web, [event(9100, 7100, propertyValue="w@example.com")]).ok
    registry = runtime.queue().scheduled_job_registry
    (job_id,) = registry.get_job_ids()
    with runtime.session() as session:
        received = session.scalar(select(func.min(CoalescedContact.received_at)))
    assert received is not None
    runs_at = registry.get_scheduled_time(job_id).replace(tzinfo=UTC)
    assert runs_at >= received + timedelta(seconds=5)


def test_one_delivery_changing_a_contact_twice_buffers_it_once_with_the_newer_value(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    events = [
        event(11, 501, propertyValue="old@example.com", occurredAt=1700000000000),
        event(12, 501, propertyValue="new@example.com", occurredAt=1700000001000),
        event(13, 501, kind="contact.creation", occurredAt=1700000002000),  # carries no value
    ]
    answer = post_signed(hubspot_web, events)
    assert answer.status_code == 200 and answer.json() == {"accepted": 3}
    assert sorted(waiting(hubspot_runtime)) == [("email", "501", "new@example.com"), ("phone", "501", None)]


@pytest.mark.parametrize("order", ["newest_first", "oldest_first"])
def test_the_newer_occurred_at_wins_whatever_order_the_deliveries_arrive_in(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer, order: str
) -> None:
    older = event(21, 601, propertyValue="older@example.com", occurredAt=1700000000000)
    newer = event(22, 601, propertyValue="newer@example.com", occurredAt=1700000005000)
    creation = event(23, 601, kind="contact.creation", occurredAt=1700000009000)  # no value: keeps one
    deliveries = [newer, older] if order == "newest_first" else [older, newer]

    for delivered in [*deliveries, creation]:
        assert post_signed(hubspot_web, [delivered]).json() == {"accepted": 1}

    assert sorted(waiting(hubspot_runtime)) == [("email", "601", "newer@example.com"), ("phone", "601", None)]


def test_a_workflow_webhook_counts_as_observed_when_it_arrived(
    hubspot_runtime: Runtime, hubspot_web: SandboxServer
) -> None:
    def change(event_id: int, email: str, seconds_from_now: float) -> list[dict]:
        occurred_at = int((time.time() + seconds_from_now) * 1000)
        return [event(event_id, 701, propertyValue=email, occurredAt=occurred_at)]

    assert post_signed(hubspot_web, change(31, "app@example.com", -60)).ok
    assert post_signed(hubspot_web, {"hs_object_id": "701", "email": "workflow@example.com"}).ok
    # A change from before the workflow webhook arrived, delivered late, does not undo it ...
    assert post_signed(hubspot_web, change(32, "late@example.com", -30)).ok
    assert waiting(hubspot_runtime) == [("email", "701", "workflow@example.com")]
    # ... a change made after it does.
    assert post_signed(hubspot_web, change(33, "later@example.com", +1)).ok
    assert waiting(hubspot_runtime) == [("email", "701", "later@example.com")]


def test_the_sqlite_buffer_keeps_the_newest_value_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The embedded default (demo, `connector verify`) buffers through its own upsert statement."""
    from datetime import UTC, datetime

    from sqlalchemy.orm import sessionmaker

    from connector.crm.base import IncomingContact
    from connector.db import upgrade_database
    from connector.pipeline.coalesce import buffer_contacts
    from connector.pipeline.syncs import ensure_connection
    from connector.runtime import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'buffer.db'}")
    upgrade_database(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)

    def at(second: int) -> datetime:
        return datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC)

    with sessions.begin() as session:
        connection_id = ensure_connection(session, "hubspot", "sqlite-portal").id
    deliveries = [
        [IncomingContact("1", "newer@example.com", occurred_at=at(5))],
        [IncomingContact("1", "older@example.com", occurred_at=at(1))],
        # A creation event (no value) is newer but keeps the value; record 2 arrives.
        [
            IncomingContact("1", None, occurred_at=at(9)),
            IncomingContact("2", "b@example.com", occurred_at=at(1)),
        ],
        # Within one delivery too: a value without a time counts as now, newer than at(2).
        [IncomingContact("2", "b2@example.com", occurred_at=at(2)), IncomingContact("2", "b0@example.com")],
    ]
    for contacts in deliveries:
        with sessions.begin() as session:
            buffer_contacts(session, connection_id, "email", contacts)

    with sessions() as session:
        columns = (CoalescedContact.record_id, CoalescedContact.value, CoalescedContact.occurred_at)
        rows = session.execute(select(*columns).order_by(CoalescedContact.record_id)).all()
    engine.dispose()
    assert [(r.record_id, r.value) for r in rows] == [("1", "newer@example.com"), ("2", "b0@example.com")]
    assert rows[0].occurred_at == at(5) and rows[1].occurred_at > at(2)  # no time given: its arrival
