"""Salesforce campaign end to end: read -> verify -> write back, with a real worker process.

The Salesforce counterpart of hubspot_end_to_end.py: one generated campaign of N members
(Contacts and Leads, the sandbox's defaults: 30% leads, every 200th a converted lead, read and
flagged as the contact it became, as on Salesforce) synced through the
Salesforce sandbox (Bulk API 2.0 above 10,000 records), the ApexVerify sandbox (delays 0) and a
`connector worker` subprocess. Prints wall time, seconds and CPU per step, Salesforce API calls
(sandbox request count and the org's API usage), ApexVerify calls, the worker's peak RSS and CPU
seconds, its RQ scheduler child's CPU and its PostgreSQL backends' CPU (read just before the worker
is stopped, as hubspot_end_to_end.py does).

CPU is measured against the same floor as HubSpot's (floor.py at the same contact count, run in
this process after every service is stopped; `--no-floor` skips it): the floor's shapes - a CSV
segment in, ApexVerify's JSON export, a CSV of flags out - are what Salesforce's Bulk API 2.0 path
handles too (query results come as CSV, ingest jobs take CSV), so the unavoidable work is the same.

Targets (issue 15: "Salesforce 1,000,000 the same ratios"): the HubSpot run's - <= 60 ApexVerify
calls, wall <= 100 s, worker peak RSS <= 300 MB, worker + PostgreSQL CPU <= 8x the floor, worker
CPU <= 3x the floor - and, for Salesforce's own calls (the sandbox's request count), <= 80 as in
the project's performance table.

    .venv/bin/python benchmarks/salesforce_end_to_end.py --contacts 100000
    .venv/bin/python benchmarks/salesforce_end_to_end.py --contacts 1000000 --json-out /tmp/sf-1m.json

`--profile FILE` samples the worker with py-spy and prints where its CPU goes, as for HubSpot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
import requests
from hubspot_end_to_end import (
    RunOptions,
    StepCpu,
    add_floor,
    floor_note,
    measure_floor_before,
    shared_target_rows,
    step_seconds,
    wait_until_settled,
)
from sqlalchemy import select

SESSION = "00Dbench!salesforce-session"
ORG_ID = "00D000000000001AAA"
# Salesforce requests (the sandbox's count) for 1,000,000 members, as in the project's README.
TARGET_SALESFORCE_REQUESTS = 80


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
    scheduler_cpu_seconds: float = 0.0
    postgres_backend_cpu_seconds: float = 0.0
    total_cpu_seconds: float = 0.0  # worker + scheduler child + PostgreSQL backends
    floor_cpu_seconds: float | None = None  # floor.py at the same contact count; None: --no-floor
    total_floor_ratio: float | None = None
    worker_floor_ratio: float | None = None
    floor_phases: dict[str, float] = field(default_factory=dict)
    floor_runs: list[float] = field(default_factory=list)  # each floor.py total (before, after the run)


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


def run(options: RunOptions, profile: Path | None = None) -> SalesforceResult:
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
        if profile is not None:
            services.append(harness.start_profiler(worker.pid, profile, work_dir))
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
    runtime.engine.dispose()  # so that only the worker's backends are left to measure
    backend_cpu = harness.database_backend_cpu(options.database)
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
    result = SalesforceResult(
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
        scheduler_cpu_seconds=figures.children_cpu_seconds,
        postgres_backend_cpu_seconds=backend_cpu,
    )
    result.total_cpu_seconds = harness.CpuAgainstFloor.of(result).total
    return result


def print_result(result: SalesforceResult) -> None:
    rows = [
        ("contacts and leads", f"{result.contacts:,}"),
        ("final status", result.status + (f" ({result.error})" if result.error else "")),
        ("wall time (s)", f"{result.wall_seconds:.0f}"),
        ("Salesforce requests (sandbox count)", f"{salesforce_calls(result):,}"),
        ("Salesforce API usage (Sforce-Limit-Info)", f"{result.salesforce_api_usage:,}"),
        ("ApexVerify calls", f"{result.apexverify_calls}"),
        ("worker peak RSS (MB)", f"{result.worker_peak_rss_mb:.0f}"),
        ("worker CPU (s)", f"{result.worker_cpu_seconds:.2f}"),
        ("  RQ scheduler child CPU (s)", f"{result.scheduler_cpu_seconds:.2f}"),
        ("PostgreSQL backends of the worker CPU (s)", f"{result.postgres_backend_cpu_seconds:.2f}"),
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
    harness.print_cpu_against_floor(harness.CpuAgainstFloor.of(result), floor_note(result))
    harness.print_table("Targets", ("target", "measured", "verdict"), target_rows(result))


def salesforce_calls(result: SalesforceResult) -> int:
    return sum(result.salesforce_requests.values())


def target_rows(result: SalesforceResult) -> list[tuple[str, str, str]]:
    calls = salesforce_calls(result)
    return [
        (
            f"Salesforce requests (sandbox count) <= {TARGET_SALESFORCE_REQUESTS}",
            str(calls),
            harness.verdict(calls <= TARGET_SALESFORCE_REQUESTS),
        ),
        *shared_target_rows(result),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=100_000, help="campaign members (default 100,000)")
    parser.add_argument("--database", default="connector_bench_sf")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    parser.add_argument(
        "--no-floor", action="store_true", help="do not measure the CPU floor (floor.py) after the run"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the worker: collapsed stacks into this file")
    args = parser.parse_args(argv)
    options = RunOptions(contacts=args.contacts, database=args.database, timeout=args.timeout)
    before = measure_floor_before(options.contacts, args.no_floor)
    result = run(options, profile=args.profile)
    if not args.no_floor:
        add_floor(result, before)
    print_result(result)
    if args.profile is not None:
        harness.print_profile(args.profile)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
