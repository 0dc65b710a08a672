"""The CPU floor of a sync: only the work no implementation of the connector can avoid.

For N contacts, timed with this process's CPU clock (time.process_time), in one process:

1. segment -> .txt: read a segment CSV shaped like the HubSpot export (Record ID, email,
   apexverify_verified_at), trim and lower-case each email, drop blanks and repeats, write the
   `.txt` batch file (one value per line);
2. export -> verdicts: stream-parse an ApexVerify-shaped JSON export of those values with ijson
   (kvitems, the connector's own way), keeping each value's flags;
3. verdicts -> update CSV: read the segment again and write the import CSV the connector sends
   HubSpot (Record ID + the six apexverify_* columns).

The input CSV and the JSON export are generated first (not timed) with the sandboxes' own code,
so the contacts (duplicates, malformed and missing emails) and the export records (details and
statistics) look exactly like what the end-to-end benchmark handles.

    .venv/bin/python benchmarks/floor.py --contacts 1000000
    .venv/bin/python benchmarks/floor.py --e2e-json /tmp/e2e-1m.json   # total and worker CPU / floor CPU

With --e2e-json (written by hubspot_end_to_end.py or salesforce_end_to_end.py --json-out), the floor
runs at that result's contact count and the table "CPU against the floor" is printed: total CPU
(worker + scheduler + PostgreSQL backends) / floor (target <= 8x) and worker / floor (target <= 3x).
Both end-to-end scripts also measure the floor themselves after their run (run_floor below).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import ijson

SEGMENT_HEADER = ("Record ID", "email", "apexverify_verified_at")
IMPORT_HEADER = (
    "Record ID",
    "apexverify_valid",
    "apexverify_wrong",
    "apexverify_is_role",
    "apexverify_is_disposable",
    "apexverify_status",
    "apexverify_verified_at",
)
# What a value the export leaves out (dropped as malformed) is written as.
INVALID_FORMAT = ("false", "true", "false", "false", "invalid_format")


# ---- inputs (not timed) -------------------------------------------------------------------------


def generate_segment_csv(path: Path, contacts: int) -> None:
    """The HubSpot sandbox's generated contacts (same knobs as its seed endpoint) as an export CSV."""
    from connector.sandbox.hubspot_contacts import GeneratedBlock
    from connector.sandbox.hubspot_control import GENERATE_DEFAULTS

    block = GeneratedBlock(
        first_id=1001, count=contacts, created_at="2024-01-01T00:00:00Z", **GENERATE_DEFAULTS
    )
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(SEGMENT_HEADER)
        for index in range(contacts):
            email = block.properties(index).get("email", "")
            writer.writerow((block.first_id + index, email, ""))


def generate_export_json(txt_path: Path, export_path: Path) -> None:
    """The ApexVerify sandbox's JSON export (details and statistics) of the batch file's values."""
    from connector.sandbox.apexverify import ParseResult, default_parameters, export_json, select_rows

    lines = [line for line in txt_path.read_text(encoding="utf-8").splitlines() if line]
    rows, wrong, duplicates = select_rows(lines, default_parameters("email", "US"))
    parse = ParseResult("email", "US", rows, wrong, duplicates, account_hits=0, global_hits=0)
    with export_path.open("w", encoding="utf-8") as handle:
        for piece in export_json(parse, include_details=True, include_statistics=True):
            handle.write(piece)


# ---- the floor (timed) --------------------------------------------------------------------------


def segment_to_txt(segment: Path, txt: Path) -> int:
    """Normalized, de-duplicated values of the segment into the batch file; returns how many."""
    seen: set[str] = set()
    with segment.open(encoding="utf-8", newline="") as source, txt.open("w", encoding="utf-8") as out:
        rows = csv.reader(source)
        next(rows)
        for row in rows:
            value = row[1].strip().lower()
            if value and value not in seen:
                seen.add(value)
                out.write(value + "\n")
    return len(seen)


def parse_export(export: Path) -> dict[str, tuple[str, ...]]:
    """value -> (valid, wrong, is_role, is_disposable, status), streamed from the JSON export."""
    verdicts: dict[str, tuple[str, ...]] = {}
    with export.open("rb") as handle:
        for value, record in ijson.kvitems(handle, "", use_float=True):
            if value != "statistics":
                verdicts[value] = _flags(record)
    return verdicts


def _flags(record: dict[str, Any]) -> tuple[str, ...]:
    valid, wrong = bool(record.get("valid")), bool(record.get("wrong"))
    status = _status(record, valid, wrong)
    return (
        _bool(valid),
        _bool(wrong or status == "invalid_format"),
        _bool(record.get("is_role")),
        _bool(record.get("is_disposable")),
        status,
    )


def _status(record: dict[str, Any], valid: bool, wrong: bool) -> str:
    if record.get("is_syntax_error"):
        return "invalid_format"
    if valid:
        return "valid"
    return "wrong" if wrong else "unknown"


def _bool(value: Any) -> str:
    return "true" if value else "false"


def write_update_csv(segment: Path, verdicts: dict[str, tuple[str, ...]], out_path: Path) -> int:
    """One import row per contact with a value; returns how many."""
    verified_at = str(int(time.time() * 1000))
    written = 0
    with (
        segment.open(encoding="utf-8", newline="") as source,
        out_path.open("w", encoding="utf-8", newline="") as out,
    ):
        rows = csv.reader(source)
        next(rows)
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(IMPORT_HEADER)
        for record_id, email, _ in rows:
            value = email.strip().lower()
            if value:
                writer.writerow((record_id, *verdicts.get(value, INVALID_FORMAT), verified_at))
                written += 1
    return written


def cpu_timed(work: Callable[[], Any]) -> tuple[Any, float]:
    started = time.process_time()
    answer = work()
    return answer, time.process_time() - started


def run_floor(contacts: int) -> list[tuple[str, float, str]]:
    """Generate the inputs, run the three timed phases; returns (phase, CPU seconds, note) rows."""
    work_dir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    try:
        segment, txt = work_dir / "segment.csv", work_dir / "batch.txt"
        export, update = work_dir / "export.json", work_dir / "update.csv"
        harness.log(f"generating a segment CSV of {contacts:,} contacts")
        generate_segment_csv(segment, contacts)
        values, txt_cpu = cpu_timed(lambda: segment_to_txt(segment, txt))
        harness.log("generating the ApexVerify JSON export")
        generate_export_json(txt, export)
        verdicts, parse_cpu = cpu_timed(lambda: parse_export(export))
        written, update_cpu = cpu_timed(lambda: write_update_csv(segment, verdicts, update))
        mb = export.stat().st_size / 1e6
        return [
            ("segment CSV -> .txt", txt_cpu, f"{values:,} distinct values"),
            ("JSON export -> verdicts (ijson)", parse_cpu, f"{len(verdicts):,} records, {mb:,.0f} MB"),
            ("verdicts -> update CSV", update_cpu, f"{written:,} rows"),
            ("floor total", txt_cpu + parse_cpu + update_cpu, ""),
        ]
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _floor_rows(phases: list[tuple[str, float, str]]) -> Iterator[tuple[str, str, str]]:
    for name, cpu, note in phases:
        yield name, f"{cpu:.2f}", note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=100_000, help="segment size (default 100,000)")
    parser.add_argument(
        "--e2e-json", type=Path, help="an end-to-end script's --json-out file: print the ratios"
    )
    args = parser.parse_args(argv)
    e2e = json.loads(args.e2e_json.read_text()) if args.e2e_json else None
    contacts = int(e2e["contacts"]) if e2e else args.contacts
    phases = run_floor(contacts)
    harness.print_table(
        f"CPU floor for {contacts:,} contacts", ("phase", "CPU s", "note"), _floor_rows(phases)
    )
    if e2e:
        print_ratio(e2e, phases[-1][1])
    return 0


def print_ratio(e2e: dict[str, Any], floor_cpu: float) -> None:
    """The end-to-end run's CPU (worker, scheduler, PostgreSQL backends) against this floor."""
    cpu = dataclasses.replace(harness.CpuAgainstFloor.of(e2e), floor=round(floor_cpu, 2))
    mode = f", {e2e['mode']} paths" if "mode" in e2e else ""
    harness.print_cpu_against_floor(
        cpu, f"measured above; the e2e run: {int(e2e['contacts']):,} contacts{mode}"
    )


if __name__ == "__main__":
    sys.exit(main())
