"""Does the worker's memory stay flat as the segment grows?

Runs the HubSpot end-to-end benchmark (hubspot_end_to_end.py) at two list sizes, by default
100,000 and 1,000,000 contacts, and prints the worker's peak RSS (VmHWM) for each and their ratio.
Target: large / small <= 1.5.

    .venv/bin/python benchmarks/flat_memory.py                       # both runs, about 10 minutes
    .venv/bin/python benchmarks/flat_memory.py --small 20000 --large 200000
    .venv/bin/python benchmarks/flat_memory.py --large-json /tmp/e2e-1m.json   # reuse a finished run

A `--small-json` / `--large-json` file is what `hubspot_end_to_end.py --json-out` writes; a size
given that way is not run again.
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

TARGET_RATIO = 1.5


def figures_for(contacts: int, saved: Path | None, json_dir: Path | None) -> dict[str, Any]:
    if saved is not None:
        return json.loads(saved.read_text())
    harness.log(f"end-to-end run with {contacts:,} contacts")
    figures = asdict(run_end_to_end(RunOptions(contacts=contacts)))
    if json_dir is not None:
        (json_dir / f"e2e-{contacts}.json").write_text(json.dumps(figures, indent=2))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100_000, help="contacts of the small run")
    parser.add_argument("--large", type=int, default=1_000_000, help="contacts of the large run")
    parser.add_argument("--small-json", type=Path, help="reuse this hubspot_end_to_end.py --json-out file")
    parser.add_argument("--large-json", type=Path, help="reuse this hubspot_end_to_end.py --json-out file")
    parser.add_argument("--json-dir", type=Path, help="save each run's figures here as e2e-<contacts>.json")
    args = parser.parse_args(argv)
    small = figures_for(args.small, args.small_json, args.json_dir)
    large = figures_for(args.large, args.large_json, args.json_dir)
    rows = [
        (
            f"{run['contacts']:,}",
            run["status"],
            run["worker_peak_rss_mb"],
            run["worker_cpu_seconds"],
            run["wall_seconds"],
        )
        for run in (small, large)
    ]
    harness.print_table(
        "Worker memory against list size", ("contacts", "status", "peak RSS MB", "CPU s", "wall s"), rows
    )
    ratio = large["worker_peak_rss_mb"] / small["worker_peak_rss_mb"]
    growth = large["contacts"] / small["contacts"]
    harness.print_table(
        "Target",
        ("figure", "value", "verdict"),
        [
            (
                f"peak RSS ratio ({growth:g}x contacts)",
                f"{ratio:.2f}",
                f"<= {TARGET_RATIO}: {harness.verdict(ratio <= TARGET_RATIO)}",
            )
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
