"""HubSpot bulk paths (Exports/Imports) against the REST batch paths, on the same list.

Runs hubspot_end_to_end.py's sync twice under the same HubSpot limit (100 calls / 10 s): once as
shipped (a list above 10,000 contacts is read with one export and written with imports) and once
with CONNECTOR_CRM_BULK_THRESHOLD above the list's size, so the list is read through memberships +
batch read and written with batch update (100 per call).
Prints both runs' HubSpot calls and wall times and the ratios.

    .venv/bin/python benchmarks/bulk_vs_rest.py --contacts 100000    # the REST run takes ~5 min

Targets: bulk makes >= 50x fewer HubSpot calls and is >= 5x faster.
"""

from __future__ import annotations

import argparse
import sys

import harness
from hubspot_end_to_end import RunOptions, RunResult, run_end_to_end

TARGET_CALL_RATIO = 50
TARGET_SPEED_RATIO = 5


def run_both(contacts: int) -> tuple[RunResult, RunResult]:
    harness.log(f"bulk run, {contacts:,} contacts")
    bulk = run_end_to_end(RunOptions(contacts=contacts))
    harness.log(f"REST run, {contacts:,} contacts")
    rest = run_end_to_end(RunOptions(contacts=contacts, force_rest=True))
    return bulk, rest


def print_comparison(bulk: RunResult, rest: RunResult) -> None:
    rows = [
        (run.mode, run.status, run.hubspot_calls, run.hubspot_429, run.wall_seconds, run.worker_cpu_seconds)
        for run in (bulk, rest)
    ]
    harness.print_table(
        f"Bulk against REST, {bulk.contacts:,} contacts",
        ("paths", "status", "HubSpot calls", "429s", "wall s", "worker CPU s"),
        rows,
    )
    harness.print_table(
        "Steps (s)",
        ("step", "bulk", "REST"),
        [(step, bulk.steps.get(step, ""), rest.steps.get(step, "")) for step in rest.steps],
    )
    call_ratio = rest.hubspot_calls / max(bulk.hubspot_calls, 1)
    speed_ratio = rest.wall_seconds / max(bulk.wall_seconds, 0.1)
    harness.print_table(
        "Targets",
        ("figure", "value", "verdict"),
        [
            ("REST calls / bulk calls", f"{call_ratio:.1f}x", _verdict(call_ratio, TARGET_CALL_RATIO)),
            ("REST wall / bulk wall", f"{speed_ratio:.1f}x", _verdict(speed_ratio, TARGET_SPEED_RATIO)),
        ],
    )


def _verdict(ratio: float, target: float) -> str:
    return f">= {target}x: {harness.verdict(ratio >= target)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=100_000, help="list size (default 100,000)")
    args = parser.parse_args(argv)
    print_comparison(*run_both(args.contacts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
