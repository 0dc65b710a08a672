"""Chaos: a 20,000-contact HubSpot sync and a 20,000-member Salesforce campaign sync, each while the
worker is SIGKILLed at random (10 times), Redis loses its data once, ApexVerify fails 10% of calls
and sends a burst of 429s and an internal_error, and the CRM answers rate limits, 5xx and refuses
some records. Each sync must end completed (after at most one operator retry) with every contact
given exactly one outcome, one launch and one charge per batch, every record showing the verdict of
its value (and a refused record none), and nothing left in a queue or lease.

Both syncs are big enough to take their CRM's bulk paths (HubSpot Exports/Imports, Salesforce Bulk
API 2.0 query and ingest jobs: the threshold is 10,000 records), and both tests check that they did.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from connector.crm.jobs import DEFAULT_BULK_THRESHOLD
from connector.pipeline.intake import crm_connection, start_segment_sync
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.conftest import HUBSPOT_TOKEN, SALESFORCE_SESSION, with_settings
from tests.system.chaos_support import (
    WorkerChaos,
    add_faults,
    assert_every_contact_has_one_outcome,
    assert_flags_match_verdicts,
    assert_nothing_left_behind,
    assert_one_launch_and_charge_per_batch,
    expected_statuses,
    inject_apexverify_faults,
    run_to_completion,
    write_failure_reasons,
)

CONTACTS = 20_000
# Both CRMs read and write in bulk above the same threshold (syncs pass CONNECTOR_CRM_BULK_THRESHOLD).
HUBSPOT_BULK_THRESHOLD = SALESFORCE_BULK_THRESHOLD = DEFAULT_BULK_THRESHOLD
SF_API = "/services/data/v{version}"
STATUS_FIELD = "ApexVerify_Status__c"


@pytest.fixture
def real_redis(runtime: Runtime) -> Runtime:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("worker processes need a real Redis server")
    return runtime


# ---- HubSpot -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_hubspot_sync_survives_chaos(
    real_redis: Runtime, hubspot_sandbox: SandboxServer, tmp_path: Path
) -> None:
    runtime = with_settings(
        real_redis,
        hubspot_base_url=hubspot_sandbox.url,
        hubspot_access_token=HUBSPOT_TOKEN,
        hubspot_portal_id="chaos",
        step_lease_seconds=5,
    )
    apexverify_url = runtime.settings.apexverify_base_url
    seeded = requests.post(
        f"{hubspot_sandbox.url}/_sandbox/seed",
        json={"generate": {"contacts": CONTACTS, "seed": 5}},
        timeout=30,
    ).json()
    inject_apexverify_faults(apexverify_url)
    add_faults(
        hubspot_sandbox.url,
        [
            *({"endpoint": "any", "kind": kind, "count": 4} for kind in ("http_429", "http_500", "http_502")),
            # Contacts merged or deleted while the sync runs: the flags import refuses some rows.
            {"endpoint": "POST /crm/v3/imports", "kind": "record_errors", "count": 1},
        ],
    )
    source = {"kind": "hubspot_list", "ref": str(seeded["listId"])}
    connection = crm_connection(runtime, "hubspot")
    sync = start_segment_sync(runtime, connection, source=source, type_="email", trigger="admin", name="c")
    crm_env = {
        "HUBSPOT_BASE_URL": hubspot_sandbox.url,
        "HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN,
        "HUBSPOT_PORTAL_ID": "chaos",
    }

    with WorkerChaos(runtime, tmp_path, sync.id, crm_env, gap=(1.0, 6.0)) as chaos:
        run_to_completion(runtime, sync.id, chaos)

    assert_every_contact_has_one_outcome(runtime, sync.id, CONTACTS)
    assert write_failure_reasons(runtime, sync.id) == {"INVALID_OBJECT_ID"}  # the refused import rows
    assert_one_launch_and_charge_per_batch(runtime, sync.id, apexverify_url)
    contacts = requests.get(
        f"{hubspot_sandbox.url}/_sandbox/contacts",
        params={"property": ["apexverify_status"], "limit": CONTACTS},
        timeout=30,
    ).json()["contacts"]
    shown = {c["id"]: c["properties"].get("apexverify_status") for c in contacts}
    assert_flags_match_verdicts(expected_statuses(runtime, sync.id), shown)
    assert_nothing_left_behind(runtime, sync.id)
    requests_made = requests.get(f"{hubspot_sandbox.url}/_sandbox/state", timeout=5).json()["requests"]
    assert CONTACTS > HUBSPOT_BULK_THRESHOLD and requests_made.get("POST /crm/v3/imports")
    assert not requests_made.get("POST /crm/v3/objects/contacts/batch/update")


# ---- Salesforce --------------------------------------------------------------------------------


def _salesforce_records(sandbox: SandboxServer, fields: list[str]) -> Iterator[dict]:
    for sobject in ("Contact", "Lead"):
        offset = 0
        while True:
            page = requests.get(
                f"{sandbox.url}/_sandbox/records",
                params={"object": sobject, "offset": offset, "limit": 5000, "field": fields},
                timeout=30,
            ).json()["records"]
            if not page:
                break
            yield from page
            offset += len(page)


def _seed_campaign(sandbox: SandboxServer) -> str:
    """20,000 members (30% leads, every 200th a converted lead: its member names the contact it
    became), every 250th contact behind a validation rule, which the Bulk API ingest job refuses
    per record."""
    seeded = requests.post(
        f"{sandbox.url}/_sandbox/seed",
        json={
            "generate": {"campaign_members": CONTACTS, "lead_ratio": 0.3, "converted_every": 200, "seed": 5}
        },
        timeout=60,
    ).json()
    contact_ids = [
        record["Id"] for record in _salesforce_records(sandbox, ["Id"]) if record["Id"][:3] == "003"
    ]
    locked = {"validation_rule_ids": contact_ids[::250]}
    requests.post(f"{sandbox.url}/_sandbox/seed", json=locked, timeout=30).raise_for_status()
    tracked = {"track_writes": [STATUS_FIELD]}
    requests.post(f"{sandbox.url}/_sandbox/config", json=tracked, timeout=5).raise_for_status()
    return str(seeded["campaign_id"])


def _salesforce_faults(sandbox: SandboxServer) -> None:
    """5xx in every phase (bursts long enough to outlast the step lease), and the concurrent request
    limit. Not the daily limit: that rightly pauses the sync until the next UTC day."""
    planned = [
        ("any", "http_503", 2),
        (f"GET {SF_API}/query", "http_500", 3),
        (f"POST {SF_API}/jobs/query", "http_503", 1),
        (f"GET {SF_API}/jobs/query/{{job_id}}/results", "http_500", 2),
        (f"GET {SF_API}/sobjects/{{object_name}}/describe", "http_500", 1),
        (f"POST {SF_API}/jobs/ingest", "concurrent_limit", 1),
        (f"PUT {SF_API}/jobs/ingest/{{job_id}}/batches", "http_503", 2),
        (f"GET {SF_API}/jobs/ingest/{{job_id}}", "http_500", 3),
        (f"GET {SF_API}/jobs/ingest/{{job_id}}/failedResults", "http_503", 1),
    ]
    add_faults(sandbox.url, [{"endpoint": e, "kind": k, "count": n} for e, k, n in planned])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_salesforce_campaign_sync_survives_chaos(
    real_redis: Runtime, salesforce_sandbox: SandboxServer, tmp_path: Path
) -> None:
    runtime = with_settings(
        real_redis,
        salesforce_instance_url=salesforce_sandbox.url,
        salesforce_access_token=SALESFORCE_SESSION,
        step_lease_seconds=5,
    )
    apexverify_url = runtime.settings.apexverify_base_url
    campaign_id = _seed_campaign(salesforce_sandbox)
    inject_apexverify_faults(apexverify_url)
    _salesforce_faults(salesforce_sandbox)
    source = {"kind": "salesforce_campaign", "ref": campaign_id}
    connection = crm_connection(runtime, "salesforce")
    sync = start_segment_sync(runtime, connection, source=source, type_="email", trigger="admin", name="c")
    crm_env = {
        "SALESFORCE_INSTANCE_URL": salesforce_sandbox.url,
        "SALESFORCE_ACCESS_TOKEN": SALESFORCE_SESSION,
    }

    with WorkerChaos(runtime, tmp_path, sync.id, crm_env, seed=29) as chaos:
        run_to_completion(runtime, sync.id, chaos)

    assert_every_contact_has_one_outcome(runtime, sync.id, CONTACTS)
    # Converted leads' members are read as the contacts they became and flagged there: only the
    # validation rule refuses writes.
    assert write_failure_reasons(runtime, sync.id) == {"FIELD_CUSTOM_VALIDATION_EXCEPTION"}
    assert_one_launch_and_charge_per_batch(runtime, sync.id, apexverify_url)
    expected = expected_statuses(runtime, sync.id)
    assert_converted_leads_synced_as_their_contacts(salesforce_sandbox, expected)
    shown = {r["Id"]: r[STATUS_FIELD] for r in _salesforce_records(salesforce_sandbox, [STATUS_FIELD])}
    assert_flags_match_verdicts(expected, shown)
    assert_no_record_got_two_verdicts(salesforce_sandbox, expected)
    assert_nothing_left_behind(runtime, sync.id)
    state = requests.get(f"{salesforce_sandbox.url}/_sandbox/state", timeout=5).json()
    assert CONTACTS > SALESFORCE_BULK_THRESHOLD and state["query_jobs"] and state["ingest_jobs"]
    assert not state["requests"].get(f"PATCH {SF_API}/composite/sobjects")
    assert not [
        job for job, phase in state["ingest_jobs"].items() if phase in ("UploadComplete", "InProgress")
    ]


def assert_converted_leads_synced_as_their_contacts(
    sandbox: SandboxServer, expected: dict[str, str | None]
) -> None:
    """Each converted lead is in the sync as the contact it became (whose flags are then checked with
    every record's), never as itself."""
    fields = ["IsConverted", "ConvertedContactId"]
    became = {
        r["Id"]: r["ConvertedContactId"] for r in _salesforce_records(sandbox, fields) if r["IsConverted"]
    }
    assert len(became) == CONTACTS // 200 and all(became.values())
    assert set(became.values()) <= set(expected) and not set(became) & set(expected)
    for contact in became.values():  # flagged unless it has no address or the validation rule refused it
        record = requests.get(f"{sandbox.url}/_sandbox/records/{contact}", timeout=5).json()
        refused = record["validation_rule"] or not record["fields"]["Email"]
        assert (expected[contact] is None) == refused, record


def assert_no_record_got_two_verdicts(sandbox: SandboxServer, expected: dict[str, str | None]) -> None:
    """Every status ever written to a record (retried writes included) is the one it should show."""
    writes = requests.get(
        f"{sandbox.url}/_sandbox/writes", params={"field": STATUS_FIELD}, timeout=30
    ).json()["records"]
    unexpected = {rid: values for rid, values in writes.items() if set(values) != {expected.get(rid)}}
    assert not unexpected, (
        f"{len(unexpected)} records got another status, e.g. {list(unexpected.items())[:5]}"
    )
    unwritten = [rid for rid, status in expected.items() if status is not None and rid not in writes]
    assert not unwritten, f"{len(unwritten)} verified records were never written, e.g. {unwritten[:5]}"
