"""Does the worker's memory stay flat, and do wall time and CPU grow linearly or better, with the list?

Runs the HubSpot end-to-end benchmark (hubspot_end_to_end.py; `--crm salesforce`:
salesforce_end_to_end.py) at two sizes, by default 100,000 and 1,000,000 contacts, and prints for
each: the worker's peak RSS (VmHWM), wall time, worker CPU, total CPU (worker + RQ scheduler child +
PostgreSQL backends), and wall and total CPU per 1,000 contacts. Then the large / small ratios:
peak RSS (target <= 1.5), wall and total CPU (target: linear or better, i.e. a ratio <= the ratio
of contacts; issue 15: "100,000 -> 1,000,000 grows linearly or better in both CPU and wall").

    .venv/bin/python benchmarks/flat_memory.py                       # both runs, about 5 minutes
    .venv/bin/python benchmarks/flat_memory.py --small 20000 --large 200000
    .venv/bin/python benchmarks/flat_memory.py --large-json /tmp/e2e-1m.json   # reuse a finished run
    .venv/bin/python benchmarks/flat_memory.py --crm salesforce --small 20000 --large 200000

A `--small-json` / `--large-json` file is what the end-to-end script's `--json-out` writes; a size
given that way is not run again (files written before total CPU was recorded are read too: their
missing scheduler or PostgreSQL CPU counts as 0). The floor is not measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import harness
from hubspot_end_to_end import RunOptions, run_end_to_end
from salesforce_end_to_end import run as run_salesforce

TARGET_RATIO = 1.5
DEFAULT_DATABASES = {"hubspot": "connector_bench", "salesforce": "connector_bench_sf"}


def figures_for(
    contacts: int,
    saved: Path | None,
    json_dir: Path | None,
    crm: str = "hubspot",
    database: str | None = None,
) -> dict[str, Any]:
    if saved is not None:
        return json.loads(saved.read_text())
    harness.log(f"{crm} end-to-end run with {contacts:,} contacts")
    options = RunOptions(contacts=contacts, database=database or DEFAULT_DATABASES[crm])
    figures = asdict(run_salesforce(options) if crm == "salesforce" else run_end_to_end(options))
    if json_dir is not None:
        name = f"e2e-{contacts}.json" if crm == "hubspot" else f"{crm}-e2e-{contacts}.json"
        (json_dir / name).write_text(json.dumps(figures, indent=2))
    return figures


def total_cpu(run: dict[str, Any]) -> float:
    """Worker + scheduler child + PostgreSQL backends (summed from the parts for older JSON files)."""
    return harness.CpuAgainstFloor.of(run).total


def per_thousand_ms(seconds: float, contacts: int) -> str:
    return f"{1_000_000 * seconds / contacts:,.1f}"  # seconds per contact x 1,000 contacts x 1,000 ms


def size_row(run: dict[str, Any]) -> tuple[object, ...]:
    contacts = int(run["contacts"])
    return (
        f"{contacts:,}",
        run["status"],
        run["worker_peak_rss_mb"],
        run["wall_seconds"],
        run["worker_cpu_seconds"],
        total_cpu(run),
        per_thousand_ms(run["wall_seconds"], contacts),
        per_thousand_ms(total_cpu(run), contacts),
    )


def ratio_rows(small: dict[str, Any], large: dict[str, Any]) -> list[tuple[str, str, str]]:
    growth = large["contacts"] / small["contacts"]
    completed = small["status"] == large["status"] == "completed"
    rss = large["worker_peak_rss_mb"] / small["worker_peak_rss_mb"]
    rows = [
        (
            f"peak RSS ratio ({growth:g}x contacts)",
            f"{rss:.2f}",
            f"<= {TARGET_RATIO}: {harness.verdict(rss <= TARGET_RATIO)}",
        )
    ]
    for name, small_figure, large_figure in (
        ("wall", small["wall_seconds"], large["wall_seconds"]),
        ("total CPU (worker + scheduler + PostgreSQL)", total_cpu(small), total_cpu(large)),
        ("worker CPU", small["worker_cpu_seconds"], large["worker_cpu_seconds"]),
    ):
        ratio = large_figure / small_figure if small_figure else float("inf")
        met = completed and ratio <= growth
        rows.append(
            (
                f"{name} ratio",
                f"{ratio:.2f}",
                f"<= {growth:g} (linear or better): {harness.verdict(met)}"
                + ("" if completed else " (a run did not complete)"),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100_000, help="contacts of the small run")
    parser.add_argument("--large", type=int, default=1_000_000, help="contacts of the large run")
    parser.add_argument("--small-json", type=Path, help="reuse this end-to-end --json-out file")
    parser.add_argument("--large-json", type=Path, help="reuse this end-to-end --json-out file")
    parser.add_argument("--json-dir", type=Path, help="save each run's figures here as e2e-<contacts>.json")
    parser.add_argument(
        "--crm", choices=sorted(DEFAULT_DATABASES), default="hubspot", help="which end-to-end script to run"
    )
    parser.add_argument(
        "--database",
        help="PostgreSQL database to (re)create (default connector_bench, connector_bench_sf for salesforce)",
    )
    args = parser.parse_args(argv)
    small = figures_for(args.small, args.small_json, args.json_dir, args.crm, args.database)
    large = figures_for(args.large, args.large_json, args.json_dir, args.crm, args.database)
    harness.print_table(
        f"Scaling with list size ({args.crm})",
        (
            "contacts",
            "status",
            "peak RSS MB",
            "wall s",
            "worker CPU s",
            "total CPU s",
            "wall ms / 1,000",
            "total CPU ms / 1,000",
        ),
        [size_row(run) for run in (small, large)],
    )
    harness.print_table("Targets (large / small)", ("figure", "value", "verdict"), ratio_rows(small, large))
    return 0


if __name__ == "__main__":
    sys.exit(main())
