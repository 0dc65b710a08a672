"""Salesforce campaign end to end: read -> verify -> write back, with a real worker process.

The Salesforce counterpart of hubspot_end_to_end.py: one generated campaign of N members
(Contacts and Leads, the sandbox's defaults: 30% leads, some converted) synced through the
Salesforce sandbox (Bulk API 2.0 above 10,000 records), the ApexVerify sandbox (delays 0) and a
`connector worker` subprocess. Prints wall time, seconds and CPU per step, Salesforce API calls
(sandbox request count and the org's API usage), ApexVerify calls, and the worker's peak RSS and
CPU seconds. The issue sets no Salesforce targets; the HubSpot ones are shown for comparison.

    .venv/bin/python benchmarks/salesforce_end_to_end.py --contacts 100000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import requests
from hubspot_end_to_end import RunOptions, StepCpu, step_seconds, wait_until_settled
from sqlalchemy import select

SESSION = "00Dbench!salesforce-session"
ORG_ID = "00D000000000001AAA"


@dataclass
class SalesforceResult:
    contacts: int
    status: str
    error: str | None
    wall_seconds: float
    steps: dict[str, float]
    step_cpu: StepCpu
    salesforce_requests: dict[str, int]
    salesforce_api_usage: int
    apexverify_calls: int
    worker_peak_rss_mb: float
    worker_cpu_seconds: float
    counts: dict[str, Any]


def start_salesforce(log_dir: Path) -> tuple[harness.Service, str]:
    args = [harness.PYTHON, "-m", "connector.cli", "sandbox", "salesforce", "--daily-api-limit", "1000000"]
    env = {**harness.base_env(), "SALESFORCE_ACCESS_TOKEN": SESSION, "SALESFORCE_ORG_ID": ORG_ID}
    return harness.start_server("salesforce", args, env, log_dir)


def seed_campaign(url: str, members: int) -> str:
    answer = requests.post(
        f"{url}/_sandbox/seed", json={"generate": {"campaign_members": members}}, timeout=600
    )
    answer.raise_for_status()
    return str(answer.json()["campaign_id"])


def start_campaign_sync(runtime: Any, campaign_id: str) -> int:
    from connector.pipeline.intake import crm_connection, start_segment_sync

    sync = start_segment_sync(
        runtime,
        crm_connection(runtime, "salesforce"),
        source={"kind": "salesforce_campaign", "ref": campaign_id, "object": None},
        type_="email",
        trigger="admin",
        name=f"benchmark campaign {campaign_id}",
    )
    harness.log(f"sync {sync.id} started for campaign {campaign_id}")
    return int(sync.id)


def run(options: RunOptions) -> SalesforceResult:
    work_dir = Path(tempfile.mkdtemp(prefix="bench-sf-"))
    services: list[harness.Service] = []
    try:
        database_url = harness.fresh_database(options.database)
        harness.flush_benchmark_redis()
        apexverify, apexverify_url = harness.start_apexverify(work_dir)
        salesforce, salesforce_url = start_salesforce(work_dir)
        services += [apexverify, salesforce]
        harness.log(f"seeding a campaign of {options.contacts:,} members")
        campaign_id = seed_campaign(salesforce_url, options.contacts)
        env = harness.connector_env(
            database_url,
            f"bench-sf-{uuid.uuid4().hex[:8]}",
            work_dir / "data",
            apexverify_url=apexverify_url,
            SALESFORCE_INSTANCE_URL=salesforce_url,
            SALESFORCE_ACCESS_TOKEN=SESSION,
            SALESFORCE_ORG_ID=ORG_ID,
        )
        runtime = harness.prepare_runtime(env)
        worker = harness.start_worker(env, work_dir)
        services.append(worker)
        sync_id = start_campaign_sync(runtime, campaign_id)
        status, step_cpu = wait_until_settled(runtime, sync_id, worker, options)
        return collect(runtime, sync_id, options, status, step_cpu, worker, (salesforce_url, apexverify_url))
    finally:
        harness.stop_all(reversed(services))
        shutil.rmtree(work_dir, ignore_errors=True)
        harness.drop_database(options.database)


def collect(
    runtime: Any,
    sync_id: int,
    options: RunOptions,
    status: str,
    step_cpu: StepCpu,
    worker: harness.Service,
    urls: tuple[str, str],
) -> SalesforceResult:
    from connector.models import Sync, SyncTransition

    figures = harness.process_figures(worker.pid)
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        transitions = list(
            session.execute(
                select(SyncTransition.to_status, SyncTransition.at)
                .where(SyncTransition.sync_id == sync_id)
                .order_by(SyncTransition.id)
            )
        )
        error = f"{sync.error_code}: {sync.error_message}" if sync.error_code else None
        counts = dict(sync.counts or {})
    runtime.engine.dispose()
    salesforce_state, apexverify_state = (harness.sandbox_state(url) for url in urls)
    return SalesforceResult(
        contacts=options.contacts,
        status=status,
        error=error,
        wall_seconds=round((transitions[-1][1] - transitions[0][1]).total_seconds(), 1),
        steps=step_seconds(transitions),
        step_cpu=step_cpu,
        salesforce_requests=dict(salesforce_state["requests"]),
        salesforce_api_usage=int(salesforce_state["api_usage"]),
        apexverify_calls=sum(apexverify_state["requests"].values()),
        worker_peak_rss_mb=figures.peak_rss_mb,
        worker_cpu_seconds=figures.cpu_seconds,
        counts=counts,
    )


def print_result(result: SalesforceResult) -> None:
    calls = sum(result.salesforce_requests.values())
    rows = [
        ("contacts and leads", f"{result.contacts:,}"),
        ("final status", result.status + (f" ({result.error})" if result.error else "")),
        ("wall time (s)", f"{result.wall_seconds:.0f}  (HubSpot target: < 600)"),
        ("Salesforce requests (sandbox count)", f"{calls:,}  (HubSpot target: <= 50)"),
        ("Salesforce API usage (Sforce-Limit-Info)", f"{result.salesforce_api_usage:,}"),
        ("ApexVerify calls", f"{result.apexverify_calls}  (target: <= 60)"),
        ("worker peak RSS (MB)", f"{result.worker_peak_rss_mb:.0f}  (target: < 300)"),
        ("worker CPU (s)", f"{result.worker_cpu_seconds:.1f}"),
    ]
    harness.print_table("Salesforce campaign end to end", ("figure", "value"), rows)
    step_rows = [
        (state, seconds, result.step_cpu.worker.get(state, "-"), result.step_cpu.postgres.get(state, "-"))
        for state, seconds in result.steps.items()
    ]
    harness.print_table("Steps", ("state", "wall s", "worker CPU s", "PostgreSQL CPU s"), step_rows)
    route_rows = sorted(result.salesforce_requests.items())
    harness.print_table("Salesforce requests by route", ("route", "requests"), route_rows)
    harness.print_table("Sync counts", ("count", "value"), sorted(result.counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=100_000, help="campaign members (default 100,000)")
    parser.add_argument("--database", default="connector_bench_sf")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    result = run(RunOptions(contacts=args.contacts, database=args.database, timeout=args.timeout))
    print_result(result)
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
