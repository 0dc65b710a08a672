"""`connector demo`: the whole pipeline on embedded defaults, against a local ApexVerify sandbox.

With no Redis and no PostgreSQL it runs on SQLite and an in-process broker; with REDIS_URL and
DATABASE_URL set (and reachable) it uses them.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from connector.config import Settings
from connector.db import upgrade_database
from connector.models import SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.progress import SyncProgress
from connector.runtime import build_runtime
from connector.sandbox.apexverify import ApexVerifySandboxOptions, create_app
from connector.sandbox.server import serve_in_thread
from connector.verify_command import start_file_sync

DEMO_API_KEY = "demo-key"

# One pattern per verdict the sandbox gives (see connector/sandbox/apexverify_verdicts.py).
_EMAIL_PATTERNS = [
    "{name}{n}@example.com",  # valid
    "{name}.{n}@gmail.com",  # valid, free
    "info@acme{n}.com",  # role
    "support@shop{n}.io",  # role
    "{name}{n}@mailinator.com",  # disposable
    "{name}{n}@catchall-{n}.com",  # catch-all
    "bounce.{name}{n}@example.org",  # undeliverable
    "unknown.{name}{n}@example.net",  # inconclusive
    "{name}{n}.example.com",  # malformed: no @
]
_NAMES = ["ana", "ben", "chloe", "dev", "emma", "farid", "gus", "hana", "ivan", "jo"]


def generate_emails(size: int, seed: int = 7) -> list[str]:
    """`size` lines with every verdict, duplicates in other cases, blanks and stray spaces."""
    rng = random.Random(seed)
    lines = []
    for n in range(size):
        pattern = _EMAIL_PATTERNS[n % len(_EMAIL_PATTERNS)]
        lines.append(pattern.format(name=rng.choice(_NAMES), n=n))
        if n % 50 == 0 and lines:
            lines.append("  " + lines[-1].upper() + " ")  # a duplicate after normalization
        if n % 97 == 0:
            lines.append("")  # a record with no email
    return lines


def run_demo(settings: Settings, *, size: int = 3000) -> int:
    console = Console()
    apexverify = serve_in_thread(
        create_app(ApexVerifySandboxOptions(api_key=DEMO_API_KEY, parse_delay=0.5, verify_delay=2.0))
    )
    try:
        settings = dataclasses.replace(
            settings,
            apexverify_base_url=apexverify.url,
            apexverify_api_key=DEMO_API_KEY,
            poll_initial_seconds=1.0,
            poll_max_seconds=5.0,
        )
        runtime = build_runtime(settings, allow_fallback_broker=True)
        upgrade_database(runtime.engine)
        console.print(
            f"[bold]ApexVerify CRM Connector demo[/] — database {runtime.engine.url.render_as_string()}, "
            f"broker {'in-process' if runtime.uses_fallback_broker else 'Redis'}, sandbox {apexverify.url}"
        )
        source = settings.data_dir / "demo" / "contacts.txt"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("\n".join(generate_emails(size)) + "\n", encoding="utf-8")
        started = time.monotonic()
        sync = start_file_sync(runtime, source, type_="email", country="US", reverify_after_days=0)
        with SyncProgress(Console(stderr=True)) as progress:
            sync = drive_until_settled(runtime, sync.id, on_tick=progress.update)
        console.print()
        console.print(_summary(sync.counts, sync.cost, time.monotonic() - started, source))
        return 0 if sync.status == SyncStatus.COMPLETED else 1
    finally:
        apexverify.stop()


def _summary(counts: dict, cost: dict, seconds: float, source: Path) -> Table:
    table = Table(title=f"{source.name}: {counts.get('contacts', 0)} contacts in {seconds:.1f}s")
    table.add_column("verdict")
    table.add_column("values", justify="right")
    for verdict, number in sorted((counts.get("verdicts") or {}).items()):
        table.add_row(verdict, str(number))
    table.add_section()
    for flag, number in sorted((counts.get("flags") or {}).items()):
        table.add_row(f"flagged {flag}", str(number))
    table.add_section()
    for label, number in (
        ("distinct values sent", counts.get("values_sent", 0)),
        ("contacts skipped (no email)", counts.get("skipped", 0)),
        ("contacts verified", counts.get("verified", 0)),
        ("credits charged", f"{(cost or {}).get('charged', 0):g}"),
    ):
        table.add_row(label, str(number))
    return table
