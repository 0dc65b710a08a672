"""Verification polling: how late completion is detected, and how many status calls it takes.

For each verification delay D (default 7, 30, 100 and 300 s) an ApexVerify sandbox with
`--verify-delay D`, a database and a `connector worker` of its own run two small file syncs one
after the other: the first has no history, so it polls on the documented schedule; the second
polls on the schedule informed by the first (connector/pipeline/polling.py). All delays run at
once, so the run lasts about 2 x max(D) + 40 s. The worker polls through RQ's scheduler with
CONNECTOR_POLL_INITIAL_SECONDS=5 and CONNECTOR_POLL_MAX_SECONDS=60. Measured per delay and sync:

- lateness: when the sync left `verifying` minus (batch launched_at + D) — the sandbox marks a
  batch done exactly D seconds after its launch;
- status calls: the sandbox's count of `GET /v1/batch/{uuid}`.

Next to it, computed from the same rule (done at launch + D, a poll at t sees it if t >= D): the
documented 5 s -> 60 s doubling schedule, "elapsed 15%" (first poll at 5 s, then wait
clamp(0.15 x elapsed, 5 s, 60 s), no estimate), and the connector's schedule
(`next_poll_time`) for an estimate E = D and estimates 30% and 15% short and 30%, 40% and 50% long.

Targets: lateness <= max(15% of D, 5 s); no more status calls than the doubling schedule.

    .venv/bin/python benchmarks/polling.py                 # about 11 minutes
    .venv/bin/python benchmarks/polling.py --scale 0.1     # delays and schedule x0.1: about 2 minutes
    .venv/bin/python benchmarks/polling.py --delays 7,30   # only these delays
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from sqlalchemy import select

INITIAL_SECONDS = 5.0
MAX_SECONDS = 60.0
LATE_FRACTION = 0.15
LATE_FLOOR_SECONDS = 5.0
STATUS_ROUTE = "GET /v1/batch/{uuid}"


@dataclass(frozen=True)
class Scale:
    factor: float

    @property
    def initial(self) -> float:
        return INITIAL_SECONDS * self.factor

    @property
    def cap(self) -> float:
        return MAX_SECONDS * self.factor

    def allowed_lateness(self, delay: float) -> float:
        return max(LATE_FRACTION * delay, LATE_FLOOR_SECONDS * self.factor)


@dataclass
class Measured:
    delay: float
    sync: str  # "first" (no history) or "second" (with the first's history)
    status: str
    lateness: float
    status_calls: int


# ---- schedules (poll times in seconds after launch) ------------------------------------------


def doubling_schedule(scale: Scale) -> Iterator[float]:
    """The documented schedule: a poll right at launch, then 5, 10, 20, 40, 60, 60, ... s later."""
    return connector_schedule(scale, None)


def connector_schedule(scale: Scale, estimate: float | None) -> Iterator[float]:
    """The connector's own rule (connector/pipeline/polling.py next_poll_time)."""
    from connector.config import Settings
    from connector.pipeline.polling import next_poll_time

    settings = Settings(poll_initial_seconds=scale.initial, poll_max_seconds=scale.cap)
    calls, moment = 0, 0.0
    while True:
        moment = next_poll_time(settings, calls, moment, estimate)
        calls += 1
        yield moment


def elapsed_schedule(scale: Scale, first: float) -> Iterator[float]:
    """First poll at `first`, then wait 15% of the time since launch, kept within [5 s, 60 s]."""
    moment = max(first, scale.initial)
    while True:
        yield moment
        moment += min(max(LATE_FRACTION * moment, scale.initial), scale.cap)


def detect(schedule: Iterator[float], delay: float) -> tuple[int, float]:
    """(status calls, lateness) when the batch is done `delay` seconds after launch."""
    for calls, moment in enumerate(schedule, start=1):
        if moment >= delay:
            return calls, moment - delay
    raise AssertionError("schedules are endless")


# ---- the measured run ---------------------------------------------------------------------------


@dataclass
class Lane:
    """One verification delay: its database, sandbox, worker and syncs."""

    delay: float
    database: str
    sandbox: harness.Service
    sandbox_url: str
    worker: harness.Service
    runtime: Any
    work_dir: Path
    values: int
    sync_id: int = 0


def start_lane(delay: float, scale: Scale, database: str, work_dir: Path, values: int) -> Lane:
    lane_dir = work_dir / f"delay-{delay:g}"
    lane_dir.mkdir()
    database = f"{database}_{delay:g}".replace(".", "_")
    sandbox, url = harness.start_apexverify(lane_dir, verify_delay=delay)
    env = harness.connector_env(
        harness.fresh_database(database),
        f"bench-poll-{delay:g}",
        lane_dir / "data",
        apexverify_url=url,
        CONNECTOR_POLL_INITIAL_SECONDS=str(scale.initial),
        CONNECTOR_POLL_MAX_SECONDS=str(scale.cap),
    )
    runtime = harness.prepare_runtime(env)
    worker = harness.start_worker(env, lane_dir)
    return Lane(delay, database, sandbox, url, worker, runtime, lane_dir, values)


def start_sync(lane: Lane, which: str) -> None:
    """A sync of emails never seen before (seen ones would come from the connector's cache)."""
    from connector.verify_command import start_file_sync

    source = lane.work_dir / f"{which}.txt"
    source.write_text("".join(f"poll{lane.delay:g}.{which}{n}@example.com\n" for n in range(lane.values)))
    lane.sync_id = int(start_file_sync(lane.runtime, source, type_="email", country="US").id)


def wait_for_lanes(lanes: list[Lane], timeout: float) -> None:
    from connector.models import Sync

    deadline = time.monotonic() + timeout
    pending = list(lanes)
    while pending and time.monotonic() < deadline:
        time.sleep(1.0)
        for lane in list(pending):
            with lane.runtime.session() as session:
                status = session.get_one(Sync, lane.sync_id).status
            if status in ("completed", "failed", "cancelled"):
                harness.log(f"delay {lane.delay:g} s: sync {lane.sync_id} {status}")
                pending.remove(lane)


def measure_lane(lane: Lane, which: str, calls_before: int) -> tuple[Measured, int]:
    from connector.models import Sync, SyncBatch, SyncTransition

    with lane.runtime.session() as session:
        status = session.get_one(Sync, lane.sync_id).status
        launched = session.scalar(select(SyncBatch.launched_at).where(SyncBatch.sync_id == lane.sync_id))
        detected = session.scalar(
            select(SyncTransition.at).where(
                SyncTransition.sync_id == lane.sync_id, SyncTransition.from_status == "verifying"
            )
        )
    calls = int(harness.sandbox_state(lane.sandbox_url)["requests"].get(STATUS_ROUTE, 0))
    lateness = (detected - launched).total_seconds() - lane.delay if launched and detected else float("nan")
    return Measured(lane.delay, which, status, round(lateness, 1), calls - calls_before), calls


def run_measured(delays: list[float], scale: Scale, database: str, values: int) -> list[Measured]:
    work_dir = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    lanes: list[Lane] = []
    results: list[Measured] = []
    try:
        harness.flush_benchmark_redis()
        for delay in delays:
            lanes.append(start_lane(delay, scale, database, work_dir, values))
        calls = dict.fromkeys(range(len(lanes)), 0)
        for which in ("first", "second"):
            for lane in lanes:
                start_sync(lane, which)
            harness.log(f"{which} syncs running; the longest verification takes {max(delays):g} s")
            wait_for_lanes(lanes, timeout=max(delays) * 1.5 + 120)
            for index, lane in enumerate(lanes):
                measured, calls[index] = measure_lane(lane, which, calls[index])
                results.append(measured)
        return results
    finally:
        for lane in lanes:
            harness.stop_all([lane.worker, lane.sandbox])
            lane.runtime.engine.dispose()
            harness.drop_database(lane.database)
        shutil.rmtree(work_dir, ignore_errors=True)


# ---- output -------------------------------------------------------------------------------------


def measured_rows(results: list[Measured], scale: Scale) -> Iterator[tuple[object, ...]]:
    for result in results:
        doubling_calls, doubling_late = detect(doubling_schedule(scale), result.delay)
        allowed = scale.allowed_lateness(result.delay)
        yield (
            f"{result.delay:g}",
            result.sync,
            result.status,
            f"{result.lateness:.1f}",
            f"{100 * result.lateness / result.delay:.0f}%",
            f"{allowed:.1f}",
            result.status_calls,
            f"{doubling_late:.1f}",
            doubling_calls,
            harness.verdict(result.lateness <= allowed),
            harness.verdict(result.status_calls <= doubling_calls),
        )


SCHEDULES = (
    ("documented doubling 5->60 s", None),
    ("elapsed 15%, no estimate", 0.0),
    ("connector, E = D", 1.0),
    ("connector, E = 0.7 D", 0.7),
    ("connector, E = 0.85 D", 0.85),
    ("connector, E = 1.3 D", 1.3),
    ("connector, E = 1.4 D", 1.4),
    ("connector, E = 1.5 D", 1.5),
)


def computed_rows(delays: list[float], scale: Scale) -> Iterator[tuple[object, ...]]:
    for name, accuracy in SCHEDULES:
        for delay in delays:
            baseline_calls, _ = detect(doubling_schedule(scale), delay)
            if accuracy is None:
                schedule = doubling_schedule(scale)
            elif accuracy == 0.0:
                schedule = elapsed_schedule(scale, scale.initial)
            else:
                schedule = connector_schedule(scale, accuracy * delay)
            calls, late = detect(schedule, delay)
            allowed = scale.allowed_lateness(delay)
            yield (
                name,
                f"{delay:g}",
                f"{late:.1f}",
                f"{allowed:.1f}",
                calls,
                harness.verdict(late <= allowed),
                harness.verdict(calls <= baseline_calls),
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--delays", default="7,30,100,300", help="verification delays in seconds")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply delays and the 5/60 s schedule")
    parser.add_argument("--values", type=int, default=200, help="emails per batch (default 200)")
    parser.add_argument("--database", default="connector_bench_polling")
    parser.add_argument("--computed-only", action="store_true", help="skip the measured run")
    args = parser.parse_args(argv)
    scale = Scale(args.scale)
    delays = [float(d) * scale.factor for d in args.delays.split(",")]
    if not args.computed_only:
        measured = run_measured(delays, scale, args.database, args.values)
        harness.print_table(
            f"Measured with the worker (scale x{scale.factor:g}; seconds)",
            (
                "D",
                "sync",
                "status",
                "late",
                "late %",
                "allowed",
                "status calls",
                "doubling late",
                "doubling calls",
                "lateness",
                "calls",
            ),
            measured_rows(measured, scale),
        )
    harness.print_table(
        f"Computed schedules (scale x{scale.factor:g}; seconds)",
        ("schedule", "D", "late", "allowed", "status calls", "lateness", "calls vs doubling"),
        computed_rows(delays, scale),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
