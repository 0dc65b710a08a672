"""`connector demo`: the whole pipeline on embedded defaults, against a local ApexVerify sandbox.

It touches no service it was not given: by default its own SQLite database under
CONNECTOR_DATA_DIR/demo (./var/demo) and an in-process broker, whatever DATABASE_URL and
REDIS_URL say, so a demo on a deployment's machine never puts jobs on its queues.
`--use-env-services` uses them instead (jobs still go to a queue of the demo's own). State is
kept between runs, which may follow one another in one folder: each run's Salesforce outbound
message carries new notification ids, so it is never taken for a redelivery of the last one's.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import uuid
from xml.sax.saxutils import escape

import requests
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from connector.config import Settings
from connector.crm.hubspot.webhook import sign
from connector.db import upgrade_database
from connector.models import Sync, SyncStatus
from connector.pipeline.coalesce import flush_due_buffers
from connector.pipeline.drive import DriveStopped, drive_until_settled, private_queue, stop_on_signals
from connector.progress import SyncProgress
from connector.runtime import Runtime, build_runtime
from connector.sandbox.apexverify import ApexVerifySandboxOptions, create_app
from connector.sandbox.hubspot import create_app as create_hubspot_app
from connector.sandbox.salesforce import create_app as create_salesforce_app
from connector.sandbox.server import SandboxServer, serve_in_thread
from connector.verify_command import start_file_sync
from connector.web import create_app as create_web_app

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


DEMO_HUBSPOT_TOKEN = "demo-hubspot-token"
DEMO_HUBSPOT_SECRET = "demo-hubspot-app-secret"
DEMO_SALESFORCE_SESSION = "00Ddemo!salesforce-session"
DEMO_SALESFORCE_ORG = "00D000000000DEMAAA"
DEMO_SALESFORCE_WEBHOOK_TOKEN = "demo-salesforce-webhook-token"


def run_demo(settings: Settings, *, size: int = 3000, use_env_services: bool = False) -> int:
    """Run the three demo syncs; the exit code (0: all completed, 1: not, 130/143: stopped by a signal)."""
    with stop_on_signals():
        try:
            return _run_demo(settings, size, use_env_services)
        except DriveStopped as stop:
            where = f" during sync {stop.sync.id} ({stop.sync.status})" if stop.sync is not None else ""
            Console(stderr=True).print(f"{stop.reason}: the demo stopped{where}")
            return stop.exit_code


def _run_demo(settings: Settings, size: int, use_env_services: bool) -> int:
    console = Console()
    sandboxes = [
        serve_in_thread(
            create_app(ApexVerifySandboxOptions(api_key=DEMO_API_KEY, parse_delay=0.5, verify_delay=2.0))
        ),
        serve_in_thread(
            create_hubspot_app(access_token=DEMO_HUBSPOT_TOKEN, export_delay=0.5, import_delay=0.5)
        ),
        serve_in_thread(
            create_salesforce_app(
                access_token=DEMO_SALESFORCE_SESSION, org_id=DEMO_SALESFORCE_ORG, bulk_delay=0.5
            )
        ),
    ]
    try:
        with private_queue(_demo_runtime(settings, use_env_services, *(s.url for s in sandboxes))) as runtime:
            return _run_syncs(runtime, console, size, use_env_services, sandboxes)
    finally:
        for server in sandboxes:
            server.stop()


def _run_syncs(
    runtime: Runtime, console: Console, size: int, use_env_services: bool, sandboxes: list[SandboxServer]
) -> int:
    console.print("[bold]ApexVerify CRM Connector demo[/]")
    console.print(
        f"database {runtime.engine.url.render_as_string()}, "
        f"broker {'in-process' if runtime.uses_fallback_broker else 'Redis'}"
    )
    if not use_env_services:
        state = runtime.settings.data_dir
        console.print(f"state kept in {state}; to start afresh: rm -rf {state}")
    results = [
        _file_demo(runtime, console, size),
        _hubspot_demo(runtime, console, sandboxes[1].url),
        _salesforce_demo(runtime, console, sandboxes[2].url),
    ]
    return 0 if all(results) else 1


def _demo_runtime(
    settings: Settings, use_env_services: bool, apexverify_url: str, hubspot_url: str, salesforce_url: str
) -> Runtime:
    demo_dir = settings.data_dir / "demo"
    settings = dataclasses.replace(
        settings,
        data_dir=demo_dir,
        database_url=settings.database_url if use_env_services else f"sqlite:///{demo_dir / 'connector.db'}",
        apexverify_base_url=apexverify_url,
        apexverify_api_key=DEMO_API_KEY,
        env={
            **settings.env,
            "HUBSPOT_BASE_URL": hubspot_url,
            "HUBSPOT_ACCESS_TOKEN": DEMO_HUBSPOT_TOKEN,
            "HUBSPOT_CLIENT_SECRET": DEMO_HUBSPOT_SECRET,
            "HUBSPOT_PORTAL_ID": "demo",
            "SALESFORCE_INSTANCE_URL": salesforce_url,
            "SALESFORCE_ACCESS_TOKEN": DEMO_SALESFORCE_SESSION,
            "SALESFORCE_ORG_ID": DEMO_SALESFORCE_ORG,
            "SALESFORCE_WEBHOOK_TOKEN": DEMO_SALESFORCE_WEBHOOK_TOKEN,
        },
        coalesce_window_seconds=0,
        poll_initial_seconds=1.0,
        poll_max_seconds=5.0,
    )
    runtime = build_runtime(settings, allow_fallback_broker=True, in_process_broker=not use_env_services)
    upgrade_database(runtime.engine)
    return runtime


def _file_demo(runtime: Runtime, console: Console, size: int) -> bool:
    """A generated list of emails, one of every verdict, verified from a file."""
    console.rule("1. a file of emails")
    source = runtime.data_dir() / "contacts.txt"
    source.write_text("\n".join(generate_emails(size)) + "\n", encoding="utf-8")
    sync = start_file_sync(runtime, source, type_="email", country="US", reverify_after_days=0)
    return _run_and_show(runtime, console, sync.id, source.name)


def _hubspot_demo(runtime: Runtime, console: Console, hubspot_url: str) -> bool:
    """A seeded HubSpot portal sends a signed segment webhook; the flags land on its contacts."""
    console.rule("2. a HubSpot list, triggered by a signed webhook")
    answer = requests.post(
        f"{hubspot_url}/_sandbox/seed",
        json={"generate": {"contacts": 2000, "list_name": "Demo list"}},
        timeout=30,
    )
    answer.raise_for_status()
    list_id = str(answer.json()["listId"])
    web = serve_in_thread(create_web_app(runtime=runtime))
    try:
        body = json.dumps({"listId": list_id, "type": "email"}).encode()
        stamp = str(int(time.time() * 1000))
        url = f"{web.url}/webhooks/hubspot"
        signature = sign(DEMO_HUBSPOT_SECRET, "POST", url, body, stamp)
        headers = {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": stamp}
        reply = requests.post(
            url, data=body, headers={**headers, "Content-Type": "application/json"}, timeout=10
        )
        console.print(f"POST /webhooks/hubspot {{listId: {list_id}}} → {reply.status_code} {reply.json()}")
    finally:
        web.stop()
    with runtime.session() as session:
        sync_id = session.scalar(select(Sync.id).where(Sync.crm == "hubspot").order_by(Sync.id.desc()))
    assert sync_id is not None  # the webhook above started it
    ok = _run_and_show(runtime, console, sync_id, f"HubSpot list {list_id}")
    console.print(_hubspot_flags(hubspot_url))
    return ok


def _salesforce_demo(runtime: Runtime, console: Console, salesforce_url: str) -> bool:
    """A Salesforce outbound message of 50 contacts in; the ApexVerify fields out."""
    console.rule("3. a Salesforce outbound message")
    contacts = [
        {"LastName": f"Demo {n}", "Email": email}
        for n, email in enumerate(generate_emails(50, seed=11)[:50])
        if email.strip()
    ]
    ids = requests.post(f"{salesforce_url}/_sandbox/seed", json={"contacts": contacts}, timeout=10).json()[
        "contacts"
    ]
    run = uuid.uuid4().hex[:8].upper()  # new notification ids each run: a repeat is not a redelivery
    notifications = "".join(
        f"<Notification><Id>04l{run}{n:04d}</Id>"
        f'<sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>{record_id}</sf:Id><sf:Email>{escape(contact['Email'])}</sf:Email></sObject></Notification>"
        for n, (record_id, contact) in enumerate(zip(ids, contacts, strict=True))
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        f'<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{DEMO_SALESFORCE_ORG}'
        f"</OrganizationId>{notifications}</notifications></soapenv:Body></soapenv:Envelope>"
    )
    web = serve_in_thread(create_web_app(runtime=runtime))
    try:
        # The endpoint URL an admin gives the outbound message in Salesforce, webhook secret included.
        url = f"{web.url}/webhooks/salesforce?token={DEMO_SALESFORCE_WEBHOOK_TOKEN}"
        reply = requests.post(url, data=body.encode(), headers={"Content-Type": "text/xml"}, timeout=10)
        console.print(f"POST /webhooks/salesforce ({len(ids)} notifications) → {reply.status_code} Ack")
    finally:
        web.stop()
    if reply.status_code != 200:
        console.print(f"[red]the outbound message was refused: {reply.text}[/]")
        return False
    sync_ids = flush_due_buffers(runtime)
    if not sync_ids:
        console.print("[red]the outbound message started no sync[/]")
        return False
    title = "Salesforce outbound message"
    outcomes = [_run_and_show(runtime, console, sync_id, title) for sync_id in sync_ids]
    table = _table("ApexVerify_… fields on the sandbox's Salesforce contacts (a sample)")
    table.add_column("Email", no_wrap=True, overflow="ellipsis")
    for name in ("Status__c", "Valid__c", "Is_Role__c"):
        table.add_column(name)
    for record_id in ids[:6]:
        fields = requests.get(f"{salesforce_url}/_sandbox/records/{record_id}", timeout=10).json()["fields"]
        table.add_row(
            *(
                str(fields.get(n))
                for n in ("Email", "ApexVerify_Status__c", "ApexVerify_Valid__c", "ApexVerify_Is_Role__c")
            )
        )
    console.print(table)
    return all(outcomes)


def _run_and_show(runtime: Runtime, console: Console, sync_id: int, title: str) -> bool:
    started = time.monotonic()
    with SyncProgress(Console(stderr=True)) as progress:
        sync = drive_until_settled(runtime, sync_id, on_tick=progress.update)
    console.print()
    console.print(_summary(sync.counts, sync.cost, time.monotonic() - started, title))
    if sync.status != SyncStatus.COMPLETED:
        console.print(f"[red]sync {sync.id} {sync.status}: {sync.error_code} {sync.error_message}[/]")
    return sync.status == SyncStatus.COMPLETED


def _hubspot_flags(hubspot_url: str, rows: int = 8) -> Table:
    """One contact of each kind of outcome, read back from the sandbox."""
    names = [
        "email",
        "apexverify_status",
        "apexverify_valid",
        "apexverify_is_role",
        "apexverify_is_disposable",
    ]
    contacts = requests.get(
        f"{hubspot_url}/_sandbox/contacts", params={"property": names, "limit": "1000"}, timeout=10
    ).json()["contacts"]
    table = _table("apexverify_… flags on the sandbox's HubSpot contacts (one of each kind)")
    table.add_column("email", no_wrap=True, overflow="ellipsis")
    for name in names[1:]:
        table.add_column(name.removeprefix("apexverify_"))
    seen: set[tuple] = set()
    for contact in contacts:
        values = tuple(contact["properties"].get(n) or "" for n in names)
        kind = values[1:]
        if kind not in seen and len(seen) < rows:
            seen.add(kind)
            table.add_row(values[0] or "(no email)", *values[1:])
    return table


def _summary(counts: dict, cost: dict, seconds: float, title: str) -> Table:
    table = _table(f"{title}: {counts.get('contacts', 0)} contacts in {seconds:.1f}s")
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


def _table(title: str) -> Table:
    """A table at least as wide as its title, so the title stays on one line (80 columns suffice)."""
    return Table(title=title, min_width=len(title) + 2)
