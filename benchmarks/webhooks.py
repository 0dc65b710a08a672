"""HubSpot webhook intake under load: gunicorn serving the app, `wrk` replaying signed deliveries.

Measures deliveries/s and p50/p99 latency of `POST /webhooks/hubspot` for `--duration` seconds,
then checks that every event the server accepted is in the database (webhook_events and
coalesced_contacts rows against the sum of the `accepted` answers).

- gunicorn runs `connector.web:create_app()` as the Procfile does (2 workers x 4 threads), with
  HUBSPOT_CLIENT_SECRET and HUBSPOT_PORTAL_ID set, PostgreSQL database `connector_bench_web`
  (recreated) and Redis db 6; no worker and no cron run, so buffers are not flushed meanwhile.
- Deliveries are HubSpot app events `contact.propertyChange` of `email`: single events and
  arrays of 100 (`--array-share` of the deliveries), every event with a fresh eventId and objectId.
  wrk cannot sign per request, so a pool of deliveries is signed up front (a signature stays
  valid for 5 minutes) and replayed by benchmarks/webhooks.lua.
- wrk is Debian's package (`apt-get install -y wrk`); it runs on the same 2 cores as the server.

    .venv/bin/python benchmarks/webhooks.py                        # 60 s, half single, half arrays
    .venv/bin/python benchmarks/webhooks.py --array-share 0 --duration 20

Targets: >= 300 deliveries/s, p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from sqlalchemy import text

SECRET = "bench-hubspot-client-secret"
LUA_SCRIPT = Path(__file__).resolve().parent / "webhooks.lua"
FIRST_OBJECT_ID = 5_000_000
TARGET_DELIVERIES_PER_SECOND = 300
TARGET_P99_MS = 100
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class LoadOptions:
    duration: int = 60
    connections: int = 8
    threads: int = 2
    array_share: float = 0.5
    array_size: int = 100
    pool: int = 20_000
    web_workers: int = 2
    web_threads: int = 4
    database: str = "connector_bench_web"
    keep_logs: bool = False
    profile: Path | None = None
    settings: tuple[str, ...] = ()  # NAME=VALUE environment settings for gunicorn
    with_worker: bool = False


# ---- the pool of signed deliveries -------------------------------------------------------------


def _event(event_id: int, occurred_at: int) -> str:
    object_id = FIRST_OBJECT_ID + event_id
    return (
        f'{{"eventId":{event_id},"subscriptionId":1,"portalId":{harness.HUBSPOT_PORTAL},"appId":1,'
        f'"occurredAt":{occurred_at},"subscriptionType":"contact.propertyChange","attemptNumber":0,'
        f'"objectId":{object_id},"changeSource":"CRM","propertyName":"email",'
        f'"propertyValue":"person{object_id}@example.com"}}'
    )


def write_pool(path: Path, url: str, options: LoadOptions) -> tuple[int, int]:
    """Sign `options.pool` deliveries into the pool file; returns (deliveries, events)."""
    from connector.crm.hubspot.webhook import sign

    timestamp = str(int(time.time() * 1000))
    arrays_per_100 = round(options.array_share * 100)
    event_id = 0
    with path.open("wb") as pool:
        for index in range(options.pool):
            size = options.array_size if index % 100 < arrays_per_100 else 1
            body = ("[" + ",".join(_event(event_id + i, int(timestamp)) for i in range(size)) + "]").encode()
            event_id += size
            signature = sign(SECRET, "POST", f"{url}/webhooks/hubspot", body, timestamp)
            pool.write(f"{timestamp}\n{signature}\n{len(body)}\n".encode() + body)
    return options.pool, event_id


# ---- running ------------------------------------------------------------------------------------


def start_gunicorn(env: dict[str, str], port: int, options: LoadOptions, log_dir: Path) -> harness.Service:
    args = [harness.PYTHON, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    args += ["--workers", str(options.web_workers), "--threads", str(options.web_threads), "--timeout", "30"]
    args += ["--logger-class", "connector.web.gunicorn_logging.RedactingLogger"]
    args += ["connector.web:create_app()"]
    service = harness.start_service("gunicorn", args, env, log_dir)
    harness.wait_for_http(f"http://127.0.0.1:{port}/healthz", service)
    return service


def start_flushing_worker(env: dict[str, str], log_dir: Path) -> harness.Service:
    """A worker that flushes full buffers into syncs, as production does. No CRM token and no
    ApexVerify are configured, so each sync it creates fails at its first step and costs no more."""
    return harness.start_worker({**env, "APEXVERIFY_BASE_URL": "http://127.0.0.1:9"}, log_dir)


def run_wrk(url: str, pool_path: Path, options: LoadOptions) -> dict[str, Any]:
    """wrk's figures, plus the CPU wrk used and the CPU every core of the machine was busy meanwhile."""
    args = ["wrk", f"-t{options.threads}", f"-c{options.connections}", f"-d{options.duration}s", "--latency"]
    args += ["-s", str(LUA_SCRIPT), url, "--", str(pool_path), str(options.threads)]
    children_before = _children_cpu()
    busy_before = harness.machine_busy_seconds()
    finished = subprocess.run(args, capture_output=True, text=True, check=True)
    busy = harness.machine_busy_seconds() - busy_before
    line = next(x for x in finished.stdout.splitlines() if x.startswith("RESULT "))
    figures = json.loads(line.removeprefix("RESULT "))
    return {**figures, "wrk_cpu_seconds": _children_cpu() - children_before, "machine_busy_seconds": busy}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def create_connection_row(runtime: Any) -> None:
    """The portal's connection row, as the first delivery would create it: the load measures steady
    state (concurrent first deliveries to a new portal race to insert it and one of them gets a 500)."""
    from connector.pipeline.intake import crm_connection

    crm_connection(runtime, "hubspot")


def rows_in_database(runtime: Any) -> tuple[int, int]:
    with runtime.engine.connect() as connection:
        events = connection.scalar(text("SELECT count(*) FROM webhook_events"))
        contacts = connection.scalar(text("SELECT count(*) FROM coalesced_contacts"))
    return int(events or 0), int(contacts or 0)


@dataclass
class Processes:
    gunicorn: harness.Service
    worker: harness.Service | None = None
    profiler: harness.Service | None = None

    def in_stop_order(self) -> list[harness.Service]:
        """The profiler first (so it writes its file), gunicorn last (it finishes requests in flight)."""
        return [s for s in (self.profiler, self.worker, self.gunicorn) if s is not None]


def start_processes(env: dict[str, str], port: int, options: LoadOptions, work_dir: Path) -> Processes:
    processes = Processes(start_gunicorn(env, port, options, work_dir))
    if options.with_worker:
        processes.worker = start_flushing_worker(env, work_dir)
    if options.profile is not None:
        processes.profiler = harness.start_profiler(
            processes.gunicorn.pid, options.profile, work_dir, subprocesses=True
        )
    return processes


def run_load(options: LoadOptions) -> dict[str, Any]:
    work_dir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    processes: Processes | None = None
    try:
        database_url = harness.fresh_database(options.database)
        harness.flush_benchmark_redis()
        port = harness.free_port()
        url = f"http://127.0.0.1:{port}"
        env = harness.connector_env(
            database_url, "bench-web", work_dir / "data", HUBSPOT_CLIENT_SECRET=SECRET, PUBLIC_BASE_URL=url
        )
        env.update(setting.split("=", 1) for setting in options.settings)
        runtime = harness.prepare_runtime(env)
        create_connection_row(runtime)
        harness.log(f"signing {options.pool:,} deliveries")
        deliveries, events = write_pool(work_dir / "pool.bin", url, options)
        processes = start_processes(env, port, options, work_dir)
        harness.log(f"wrk for {options.duration} s, {options.connections} connections")
        figures = run_wrk(url, work_dir / "pool.bin", options)
        figures.update(server_figures(processes, options.database))
        harness.stop_all(processes.in_stop_order())
        events_rows, contact_rows = rows_in_database(runtime)
        runtime.engine.dispose()
        return {
            **figures,
            "pool_deliveries": deliveries,
            "pool_events": events,
            "webhook_events_rows": events_rows,
            "coalesced_contacts_rows": contact_rows,
        }
    finally:
        if processes is not None:
            harness.stop_all(processes.in_stop_order())
        if options.keep_logs:
            (work_dir / "pool.bin").unlink(missing_ok=True)
            harness.log(f"logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
        harness.drop_database(options.database)


def server_figures(processes: Processes, database: str) -> dict[str, float]:
    """CPU of gunicorn (master and workers), the flushing worker and the database's backends."""
    web = harness.process_figures(processes.gunicorn.pid)
    worker = processes.worker
    return {
        "gunicorn_cpu_seconds": web.cpu_seconds + web.children_cpu_seconds,
        "worker_cpu_seconds": harness.process_figures(worker.pid).cpu_seconds if worker else 0.0,
        "postgres_backend_cpu_seconds": harness.database_backend_cpu(database),
    }


def print_figures(options: LoadOptions, figures: dict[str, Any]) -> None:
    seconds = figures["duration_us"] / 1e6
    rate = figures["requests"] / seconds
    p99 = figures["p99_us"] / 1000
    accepted = figures["accepted"]
    stored = min(figures["webhook_events_rows"], figures["coalesced_contacts_rows"])
    rows = [
        ("mix", f"{options.array_share:.0%} arrays of {options.array_size}, rest single events"),
        ("load", f"wrk {options.threads} threads, {options.connections} connections, {seconds:.0f} s"),
        ("server", f"gunicorn {options.web_workers} workers x {options.web_threads} threads"),
        ("settings", " ".join(options.settings) or "defaults"),
        ("buffers flushed by a worker", "yes" if options.with_worker else "no (no worker, no cron)"),
        ("deliveries", f"{figures['requests']:,}"),
        ("deliveries/s", f"{rate:,.0f}"),
        ("events accepted (sum of answers)", f"{accepted:,}"),
        ("events accepted/s", f"{accepted / seconds:,.0f}"),
        ("latency p50 / p90 / p99 / max (ms)", _latencies(figures)),
        (
            "non-2xx answers (statuses)",
            f"{figures['non_2xx']:,} ({figures['non_2xx_statuses'].strip() or '-'})",
        ),
        ("socket errors (connect/read/write/timeout)", _socket_errors(figures)),
        ("pool wrap-arounds (replayed deliveries)", f"{figures['wrapped']:,}"),
        ("webhook_events rows", f"{figures['webhook_events_rows']:,}"),
        ("coalesced_contacts rows", f"{figures['coalesced_contacts_rows']:,}"),
        ("gunicorn CPU (s)", f"{figures['gunicorn_cpu_seconds']:.1f}"),
        ("PostgreSQL backends CPU (s)", f"{figures['postgres_backend_cpu_seconds']:.1f}"),
        ("wrk CPU (s)", f"{figures['wrk_cpu_seconds']:.1f}"),
        ("flushing worker CPU (s)", f"{figures['worker_cpu_seconds']:.1f}" if options.with_worker else "-"),
        (
            "machine busy CPU, all processes (s)",
            f"{figures['machine_busy_seconds']:.1f} of {CORES * seconds:.0f}",
        ),
    ]
    harness.print_table("HubSpot webhook intake", ("figure", "value"), rows)
    targets = [
        ("deliveries/s >= 300", f"{rate:,.0f}", harness.verdict(rate >= TARGET_DELIVERIES_PER_SECOND)),
        ("p99 < 100 ms", f"{p99:.1f} ms", harness.verdict(p99 < TARGET_P99_MS)),
        ("every accepted event stored", f"{stored:,} of {accepted:,}", harness.verdict(stored >= accepted)),
    ]
    harness.print_table("Targets", ("target", "measured", "verdict"), targets)


def _latencies(figures: dict[str, Any]) -> str:
    return " / ".join(f"{figures[k] / 1000:.1f}" for k in ("p50_us", "p90_us", "p99_us", "max_us"))


def _socket_errors(figures: dict[str, Any]) -> str:
    return "/".join(str(figures[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))


def parse_args(argv: list[str] | None) -> LoadOptions:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--array-share", type=float, default=0.5, help="share of deliveries that are arrays")
    parser.add_argument("--array-size", type=int, default=100, help="events per array delivery")
    parser.add_argument("--pool", type=int, default=20_000, help="signed deliveries to replay")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers (Procfile: 2)")
    parser.add_argument("--web-threads", type=int, default=4, help="gunicorn threads (Procfile: 4)")
    parser.add_argument("--database", default="connector_bench_web")
    parser.add_argument("--keep-logs", action="store_true", help="keep gunicorn's log")
    parser.add_argument("--profile", type=Path, help="py-spy the gunicorn workers into this file")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment setting for gunicorn, e.g. COALESCE_MAX_CONTACTS=100000000",
    )
    parser.add_argument(
        "--with-worker", action="store_true", help="run a worker that flushes full buffers (production-like)"
    )
    args = parser.parse_args(argv)
    return LoadOptions(
        duration=args.duration,
        connections=args.connections,
        threads=args.threads,
        array_share=args.array_share,
        array_size=args.array_size,
        pool=args.pool,
        web_workers=args.web_workers,
        web_threads=args.web_threads,
        database=args.database,
        keep_logs=args.keep_logs,
        profile=args.profile,
        settings=tuple(args.settings),
        with_worker=args.with_worker,
    )


def main(argv: list[str] | None = None) -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    options = parse_args(argv)
    print_figures(options, run_load(options))
    if options.profile is not None:
        harness.print_profile(options.profile, "gunicorn workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
