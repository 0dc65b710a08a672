"""Fair share between connections: portal A's million-contact list sync against portal B's webhooks.

Two HubSpot portals on one deployment: A is the env connection (HUBSPOT_ACCESS_TOKEN), B is
installed by OAuth through the sandbox's consent page and token endpoint (the real install path:
pipeline/connections.py begin_install / finish_install). B receives `--rounds` rounds of
`--per-round` single-contact webhooks (HubSpot app events `contact.propertyChange` of `email`,
signed v3 with the app's client secret), each contact a fresh one of portal B. Measured:

- B's time-to-flag: from sending a contact's webhook to its `apexverify_status` appearing on that
  contact in portal B (the sandbox's control endpoint, polled every 0.2 s); per round, the last
  of its contacts;
- A's wall time: from the sync's creation to its completion (its transitions).

Three phases, each in a fresh environment (database, Redis db, sandboxes, processes), so no cache
or flag written in one phase changes the next:

1. A alone: A's list sync, B installed but quiet;
2. B alone: B's rounds one after the other (each sent once the previous one is flagged);
3. A with B: A's list sync, and B's rounds spread over it, one every (A's wall time alone / rounds).

Every phase runs what production runs: gunicorn (the Procfile's 2 workers x 4 threads), two
`connector worker` processes, `rq cron connector.cron`, the HubSpot and ApexVerify sandboxes as
processes of their own, PostgreSQL database `connector_bench_fairness` (recreated) and Redis db 9
(flushed; BENCHMARK_REDIS_URL to change). COALESCE_WINDOW_SECONDS is set small (`--window`,
default 5 s) so a round's contacts become a sync 5 s after its first one arrives.

    .venv/bin/python benchmarks/fairness.py --contacts 100000          # ~3 min
    .venv/bin/python benchmarks/fairness.py --contacts 1000000         # ~10 min

`--a-lists N` splits A's contacts over N lists synced at once (N syncs of one connection: what the
per-connection share of the workers is for, connector/pipeline/fair_share.py), and `--unfair` runs
the workers with that share switched off, for the comparison.

Targets (issue 14): B flagged within 2x its idle time plus the coalescing window; A's wall time
at most 10 % longer with B than alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import harness
import requests
from harness import log
from sqlalchemy import select

# A worker with the per-connection share of the workers switched off (every step may start).
UNFAIR_WORKER = (
    "import connector.pipeline.runner as runner; runner.has_room = lambda *args: True; "
    "from connector.cli import main; main()"
)
PORTAL_A = harness.HUBSPOT_PORTAL  # the env connection's (the sandbox's default portal)
PORTAL_B = "515151"
CLIENT_ID = "bench-fairness-client"
CLIENT_SECRET = "bench-fairness-client-secret"
FLAG = "apexverify_status"
POLL_SECONDS = 0.2
WORKERS = 2
TARGET_RATIO = 2.0
TARGET_A_GROWTH = 0.10


@dataclass(frozen=True)
class Options:
    contacts: int = 100_000
    rounds: int = 10
    per_round: int = 10
    window: int = 5
    database: str = "connector_bench_fairness"
    timeout: float = 3600.0
    spacing: float | None = None  # seconds between B's rounds during A's sync (default: A alone / rounds)
    phases: tuple[str, ...] = ("a", "b", "ab")
    keep: bool = False
    a_lists: int = 1  # A's contacts split over this many lists, synced at once
    fair: bool = True  # False: the workers run with the per-connection share of workers switched off


@dataclass
class Round:
    index: int
    sent_at: float  # epoch seconds, first webhook of the round
    a_state: str | None  # A's sync state when the round was sent
    seconds_to_flag: float | None  # the round's last contact; None: not flagged in time
    median_seconds: float | None
    syncs: list[int] = field(default_factory=list)
    after_sync: float | None = None  # from the round's (first) sync's creation to its last flag


@dataclass
class PhaseResult:
    name: str
    a_wall: float | None = None
    a_status: str | None = None
    a_steps: dict[str, float] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)
    b_sync_steps: dict[str, float] = field(default_factory=dict)  # mean seconds per state
    b_flush_after: float | None = None  # mean seconds from a round's first webhook to its sync
    b_sync_wall: float | None = None  # mean seconds from a B sync's creation to its completion
    b_statuses: dict[str, int] = field(default_factory=dict)
    machine_busy: float = 0.0
    seconds: float = 0.0
    worker_cpu: float = 0.0


# ---- the environment of one phase ------------------------------------------------------------------


class Environment:
    """Fresh database and Redis db, the sandboxes, A's list and B's contacts, B installed, the processes."""

    def __init__(self, options: Options, seed_a: bool) -> None:
        self.options = options
        self.seed_a = seed_a
        self.work_dir = Path(tempfile.mkdtemp(prefix="bench-fair-"))
        self.services: list[harness.Service] = []
        self.list_ids: list[str] = []
        self.b_contacts: list[str] = []
        self.web_url = ""
        self.hubspot_url = ""
        self.runtime: Any = None
        self.workers: list[harness.Service] = []
        self.b_connection: int | None = None

    def __enter__(self) -> Environment:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        harness.stop_all(reversed(self.services))
        if self.runtime is not None:
            self.runtime.engine.dispose()
        if self.options.keep:
            log(f"kept {self.work_dir} and database {self.options.database}")
            return
        shutil.rmtree(self.work_dir, ignore_errors=True)
        harness.drop_database(self.options.database)

    def _start(self) -> None:
        database_url = harness.fresh_database(self.options.database)
        harness.flush_benchmark_redis()
        apexverify, apexverify_url = harness.start_apexverify(self.work_dir)
        self.services.append(apexverify)
        hubspot, self.hubspot_url = self._start_hubspot()
        self.services.append(hubspot)
        if self.seed_a:
            lists = self.options.a_lists
            log(f"seeding {self.options.contacts:,} contacts into portal A ({lists} list(s))")
            self.list_ids = [
                seed_portal_a(self.hubspot_url, self.options.contacts // lists, n + 1) for n in range(lists)
            ]
        self.b_contacts = seed_portal_b(self.hubspot_url, self.options.rounds * self.options.per_round)
        port = harness.free_port()
        self.web_url = f"http://127.0.0.1:{port}"
        from cryptography.fernet import Fernet

        env = harness.connector_env(
            database_url,
            f"bench-fair-{uuid.uuid4().hex[:8]}",
            self.work_dir / "data",
            apexverify_url=apexverify_url,
            hubspot_url=self.hubspot_url,
            HUBSPOT_CLIENT_ID=CLIENT_ID,
            HUBSPOT_CLIENT_SECRET=CLIENT_SECRET,
            HUBSPOT_AUTH_URL=self.hubspot_url,
            CONNECTOR_SECRET_KEY=Fernet.generate_key().decode(),
            PUBLIC_BASE_URL=self.web_url,
            COALESCE_WINDOW_SECONDS=str(self.options.window),
            LOG_LEVEL="INFO",
        )
        self.runtime = harness.prepare_runtime(env)
        from connector.pipeline.intake import crm_connection

        crm_connection(self.runtime, "hubspot")  # A: the env connection
        self.b_connection = install_portal_b(self.runtime, self.hubspot_url, self.web_url)
        self.services.append(start_gunicorn(env, port, self.work_dir))
        command = [harness.PYTHON, "-m", "connector.cli", "worker"]
        if not self.options.fair:
            command = [harness.PYTHON, "-c", UNFAIR_WORKER, "worker"]
        for number in range(WORKERS):
            worker = harness.start_service(f"worker-{number + 1}", command, env, self.work_dir)
            self.workers.append(worker)
            self.services.append(worker)
        rq = str(Path(harness.PYTHON).parent / "rq")
        cron_args = [rq, "cron", "--logging-level", "WARNING", "--url", harness.REDIS_URL, "connector.cron"]
        self.services.append(harness.start_service("cron", cron_args, env, self.work_dir))
        time.sleep(2.0)  # the workers register and their schedulers start
        for service in self.services:
            if not service.alive():
                raise RuntimeError(f"{service.name} exited: see {service.log_path}")

    def _start_hubspot(self) -> tuple[harness.Service, str]:
        args = [harness.PYTHON, "-m", "connector.cli", "sandbox", "hubspot"]
        args += ["--export-delay", "1.0", "--import-delay", "1.0"]
        env = {
            **harness.base_env(),
            "HUBSPOT_ACCESS_TOKEN": harness.HUBSPOT_TOKEN,
            "HUBSPOT_PORTAL_ID": PORTAL_A,
            "HUBSPOT_CLIENT_ID": CLIENT_ID,
            "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        }
        return harness.start_server("hubspot", args, env, self.work_dir)

    def worker_cpu(self) -> float:
        return sum(harness.process_figures(w.pid).cpu_seconds for w in self.workers if w.alive())


def seed_portal_a(hubspot_url: str, count: int, seed: int) -> str:
    """A list of `count` generated contacts (the emails differ from one seed to the next)."""
    generate = {"contacts": count, "list_name": f"bench {seed}", "seed": seed}
    answer = requests.post(f"{hubspot_url}/_sandbox/seed", json={"generate": generate}, timeout=120)
    answer.raise_for_status()
    return str(answer.json()["listId"])


def seed_portal_b(hubspot_url: str, count: int) -> list[str]:
    contacts = [
        {"properties": {"email": f"b.person{n}.{uuid.uuid4().hex[:6]}@example.com", "firstname": f"B{n}"}}
        for n in range(count)
    ]
    answer = requests.post(
        f"{hubspot_url}/_sandbox/seed", params={"account": PORTAL_B}, json={"contacts": contacts}, timeout=60
    )
    answer.raise_for_status()
    return [str(i) for i in answer.json()["contactIds"]]


def install_portal_b(runtime: Any, hubspot_url: str, web_url: str) -> int:
    """Install portal B as an ops user would: consent page (the sandbox's, for portal B), callback."""
    from connector.pipeline.connections import begin_install, finish_install

    requests.post(
        f"{hubspot_url}/_sandbox/oauth", json={"next_account": PORTAL_B}, timeout=10
    ).raise_for_status()
    binding = "bench-ops-session"
    url = begin_install(runtime, "hubspot", binding, f"{web_url}/admin/connect/hubspot/callback")
    consent = requests.get(url, allow_redirects=False, timeout=10)
    if consent.status_code != 302:
        raise RuntimeError(f"the sandbox's consent page answered {consent.status_code}: {consent.text[:300]}")
    arguments = dict(parse_qsl(urlsplit(consent.headers["Location"]).query))
    installed = finish_install(runtime, "hubspot", binding, arguments)
    connection = installed.connection
    if str(connection.external_id) != PORTAL_B:
        raise RuntimeError(f"installed portal {connection.external_id}, expected {PORTAL_B}")
    log(f"portal B installed by OAuth: connection {connection.id}")
    return int(connection.id)


def start_gunicorn(env: dict[str, str], port: int, log_dir: Path) -> harness.Service:
    args = [harness.PYTHON, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    args += ["--workers", "2", "--threads", "4", "--timeout", "30"]
    args += ["--logger-class", "connector.web.gunicorn_logging.RedactingLogger", "connector.web:create_app()"]
    service = harness.start_service("gunicorn", args, env, log_dir)
    harness.wait_for_http(f"http://127.0.0.1:{port}/healthz", service)
    return service


# ---- portal B's webhooks and flags --------------------------------------------------------------


class FlagWatch:
    """Polls portal B's contacts; remembers when each one's flag was first seen (epoch seconds)."""

    def __init__(self, hubspot_url: str) -> None:
        self.url = f"{hubspot_url}/_sandbox/contacts"
        self.flagged: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._session = requests.Session()

    def __enter__(self) -> FlagWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = self._session.get(
                    self.url, params={"account": PORTAL_B, "property": FLAG, "limit": 100_000}, timeout=10
                )
                seen = time.time()
                for contact in answer.json()["contacts"]:
                    if contact["properties"].get(FLAG) and contact["id"] not in self.flagged:
                        self.flagged[contact["id"]] = seen
            except (requests.RequestException, ValueError, KeyError):
                pass
            self._stop.wait(POLL_SECONDS)


class WebhookSender:
    def __init__(self, web_url: str) -> None:
        from connector.crm.hubspot.webhook import sign

        self.sign = sign
        self.url = f"{web_url}/webhooks/hubspot"
        self.session = requests.Session()
        self.event_id = 1_000
        self.sent: dict[str, float] = {}

    def send(self, contact_id: str, email: str) -> None:
        self.event_id += 1
        now_ms = int(time.time() * 1000)
        event = {
            "eventId": self.event_id, "subscriptionId": 1, "portalId": int(PORTAL_B), "appId": 1,
            "occurredAt": now_ms, "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
            "objectId": int(contact_id), "changeSource": "CRM", "propertyName": "email",
            "propertyValue": email,
        }  # fmt: skip
        body = json.dumps([event]).encode()
        timestamp = str(now_ms)
        headers = {
            "Content-Type": "application/json",
            "X-HubSpot-Request-Timestamp": timestamp,
            "X-HubSpot-Signature-v3": self.sign(CLIENT_SECRET, "POST", self.url, body, timestamp),
        }
        self.sent[contact_id] = time.time()
        answer = self.session.post(self.url, data=body, headers=headers, timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(
                f"webhook for contact {contact_id} answered {answer.status_code}: {answer.text[:300]}"
            )


def emails_of(hubspot_url: str, contact_ids: list[str]) -> dict[str, str]:
    answer = requests.get(
        f"{hubspot_url}/_sandbox/contacts",
        params={"account": PORTAL_B, "property": "email", "limit": 100_000},
        timeout=30,
    )
    answer.raise_for_status()
    wanted = set(contact_ids)
    return {c["id"]: c["properties"]["email"] for c in answer.json()["contacts"] if c["id"] in wanted}


class PortalB:
    """Sends B's rounds and measures each round's time to flag."""

    def __init__(self, env: Environment, watch: FlagWatch) -> None:
        self.env, self.watch = env, watch
        self.sender = WebhookSender(env.web_url)
        self.emails = emails_of(env.hubspot_url, env.b_contacts)
        per = env.options.per_round
        self.batches = [env.b_contacts[i * per : (i + 1) * per] for i in range(env.options.rounds)]
        self.rounds: list[Round] = []

    def send_round(self, index: int, a_state: str | None) -> None:
        started = time.time()
        for contact_id in self.batches[index]:
            self.sender.send(contact_id, self.emails[contact_id])
        self.rounds.append(Round(index, started, a_state, None, None))

    def settle(self, index: int, timeout: float) -> None:
        """Wait until every contact of round `index` is flagged (or `timeout` passes), record its times."""
        deadline = time.time() + timeout
        batch = self.batches[index]
        while time.time() < deadline and not all(c in self.watch.flagged for c in batch):
            time.sleep(0.1)
        self.measure(index)

    def measure(self, index: int) -> None:
        batch = self.batches[index]
        found = self.rounds[index]
        if all(c in self.watch.flagged for c in batch):
            times = [self.watch.flagged[c] - self.sender.sent[c] for c in batch]
            found.seconds_to_flag = round(max(times), 2)
            found.median_seconds = round(statistics.median(times), 2)

    def all_flagged(self) -> bool:
        return all(c in self.watch.flagged for batch in self.batches for c in batch)


# ---- phases --------------------------------------------------------------------------------------


SETTLED = ("completed", "failed", "cancelled", "awaiting_approval")


def sync_state(runtime: Any, sync_ids: list[int]) -> str:
    """The syncs' states, joined by "+" (one state for one sync)."""
    from connector.models import Sync

    with runtime.session() as session:
        return "+".join(str(session.get_one(Sync, sync_id).status) for sync_id in sync_ids)


def start_a(env: Environment) -> list[int]:
    from hubspot_end_to_end import start_hubspot_sync

    size = env.options.contacts // env.options.a_lists
    return [start_hubspot_sync(env.runtime, list_id, size) for list_id in env.list_ids]


def a_figures(env: Environment, sync_ids: list[int], result: PhaseResult) -> None:
    """A's wall: from its first sync's creation to its last one's end; steps of its first sync."""
    from hubspot_end_to_end import step_seconds

    from connector.models import SyncTransition

    with env.runtime.session() as session:
        transitions = [
            list(
                session.execute(
                    select(SyncTransition.to_status, SyncTransition.at)
                    .where(SyncTransition.sync_id == sync_id)
                    .order_by(SyncTransition.id)
                )
            )
            for sync_id in sync_ids
        ]
    result.a_status = sync_state(env.runtime, sync_ids)
    started = min(t[0][1] for t in transitions)
    result.a_wall = round((max(t[-1][1] for t in transitions) - started).total_seconds(), 1)
    result.a_steps = step_seconds(transitions[0])


def wait_for_syncs(env: Environment, sync_ids: list[int], deadline: float) -> None:
    last = ""
    while time.time() < deadline:
        state = sync_state(env.runtime, sync_ids)
        if state != last:
            log(f"A's sync(s) {sync_ids}: {state}")
            last = state
        if all(s in SETTLED for s in state.split("+")):
            return
        time.sleep(0.5)
    raise RuntimeError(f"A's syncs {sync_ids} did not settle in time")


def b_figures(env: Environment, portal: PortalB, result: PhaseResult) -> None:
    """Which sync took each round's contacts, and how B's syncs spent their time."""
    from hubspot_end_to_end import step_seconds

    from connector.models import CoalescedContact, Sync, SyncTransition

    with env.runtime.session() as session:
        rows = session.execute(
            select(CoalescedContact.record_id, CoalescedContact.sync_id).where(
                CoalescedContact.connection_id == env.b_connection
            )
        ).all()
        sync_of = {record_id: sync_id for record_id, sync_id in rows}
        syncs = session.scalars(select(Sync).where(Sync.connection_id == env.b_connection)).all()
        statuses: dict[str, int] = {}
        created = {}
        walls = []
        per_state: dict[str, list[float]] = {}
        for sync in syncs:
            statuses[sync.status] = statuses.get(sync.status, 0) + 1
            transitions = list(
                session.execute(
                    select(SyncTransition.to_status, SyncTransition.at)
                    .where(SyncTransition.sync_id == sync.id)
                    .order_by(SyncTransition.id)
                )
            )
            created[sync.id] = transitions[0][1].timestamp()
            walls.append((transitions[-1][1] - transitions[0][1]).total_seconds())
            for state, seconds in step_seconds(transitions).items():
                per_state.setdefault(state, []).append(seconds)
    flush_after = []
    for found in portal.rounds:
        found.syncs = sorted({sync_of[c] for c in portal.batches[found.index] if sync_of.get(c) is not None})
        if found.syncs:
            flush_after.append(created[found.syncs[0]] - found.sent_at)
            if found.seconds_to_flag is not None:
                flagged = found.sent_at + found.seconds_to_flag
                found.after_sync = round(flagged - created[found.syncs[0]], 2)
    result.rounds = portal.rounds
    result.b_statuses = statuses
    result.b_sync_wall = round(statistics.mean(walls), 2) if walls else None
    result.b_flush_after = round(statistics.mean(flush_after), 2) if flush_after else None
    result.b_sync_steps = {state: round(statistics.mean(v), 2) for state, v in per_state.items()}


def run_phase(name: str, options: Options, spacing: float | None) -> PhaseResult:
    with_a, with_b = name in ("a", "ab"), name in ("b", "ab")
    log(f"phase {PHASE_TITLES[name]}")
    result = PhaseResult(name)
    with Environment(options, seed_a=with_a) as env, FlagWatch(env.hubspot_url) as watch:
        portal = PortalB(env, watch)
        busy_before, started = harness.machine_busy_seconds(), time.time()
        deadline = started + options.timeout
        sync_ids = start_a(env) if with_a else []
        if with_b and not sync_ids:
            for index in range(options.rounds):
                portal.send_round(index, None)
                portal.settle(index, timeout=300)
                log(f"B round {index + 1}: flagged in {portal.rounds[-1].seconds_to_flag} s")
                time.sleep(1.0)
        elif with_b:
            assert spacing is not None
            send_b_during_a(env, portal, sync_ids, spacing, deadline)
        if sync_ids:
            wait_for_syncs(env, sync_ids, deadline)
            a_figures(env, sync_ids, result)
        if with_b:
            while time.time() < deadline and not portal.all_flagged():
                time.sleep(0.2)
            for index in range(len(portal.rounds)):
                portal.measure(index)
            b_figures(env, portal, result)
        result.seconds = round(time.time() - started, 1)
        result.machine_busy = round(harness.machine_busy_seconds() - busy_before, 1)
        result.worker_cpu = round(env.worker_cpu(), 1)
    return result


def send_b_during_a(
    env: Environment, portal: PortalB, sync_ids: list[int], spacing: float, deadline: float
) -> None:
    """B's rounds at spacing / 2, 1.5 x spacing, ... after A's sync started (while it runs)."""
    started = time.time()
    for index in range(env.options.rounds):
        due = started + (index + 0.5) * spacing
        while time.time() < due:
            time.sleep(0.05)
        state = sync_state(env.runtime, sync_ids)
        portal.send_round(index, state)
        log(f"B round {index + 1} sent while A is {state}")
    for index in range(env.options.rounds):
        portal.settle(index, timeout=max(deadline - time.time(), 1.0))


PHASE_TITLES = {"a": "A alone", "b": "B alone", "ab": "A with B"}


# ---- output --------------------------------------------------------------------------------------


def times_to_flag(result: PhaseResult | None) -> list[float]:
    if result is None:
        return []
    return [r.seconds_to_flag for r in result.rounds if r.seconds_to_flag is not None]


def times_after_sync(result: PhaseResult | None) -> list[float]:
    """Per round, from its sync's creation to its last flag: the time-to-flag without the coalescing."""
    if result is None:
        return []
    return [r.after_sync for r in result.rounds if r.after_sync is not None]


def median_max(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {max(values):.1f}" if values else "-"


def print_results(options: Options, results: dict[str, PhaseResult], spacing: float | None) -> None:
    harness.print_table(
        "Setup",
        ("setting", "value"),
        [
            ("portal A (env connection)", f"HubSpot list of {options.contacts:,} contacts"),
            (
                "portal B (OAuth connection)",
                f"{options.rounds} rounds x {options.per_round} single-contact webhooks",
            ),
            ("COALESCE_WINDOW_SECONDS", options.window),
            ("processes", f"{WORKERS} connector workers, gunicorn 2x4, rq cron, 2 sandboxes"),
            ("A's lists (syncs at once)", options.a_lists),
            ("per-connection share of workers", "on" if options.fair else "OFF (--unfair)"),
            ("B's rounds during A", f"every {spacing:.1f} s" if spacing else "-"),
            ("machine", f"{os.cpu_count()} cores"),
        ],
    )
    rows = []
    for name, result in results.items():
        flags = times_to_flag(result)
        rows.append(
            (
                PHASE_TITLES[name],
                f"{result.a_wall} s ({result.a_status})" if result.a_wall is not None else "-",
                median_max(flags),
                median_max(times_after_sync(result)),
                f"{len(flags)} of {len(result.rounds)}" if result.rounds else "-",
                result.b_flush_after if result.b_flush_after is not None else "-",
                result.b_sync_wall if result.b_sync_wall is not None else "-",
                f"{result.machine_busy:.0f} of {result.seconds * (os.cpu_count() or 1):.0f}",
                result.worker_cpu,
            )
        )
    harness.print_table(
        "Phases",
        (
            "phase",
            "A wall",
            "B time-to-flag median / max (s)",
            "of it from B's sync's start",
            "B rounds flagged",
            "B webhook->sync (s)",
            "B sync wall (s)",
            "machine busy CPU-s",
            "workers CPU-s",
        ),
        rows,
    )
    if "ab" in results:
        harness.print_table(
            "B's rounds during A's sync",
            (
                "round",
                "A was",
                "last contact flagged after (s)",
                "median (s)",
                "of it after B's sync began",
                "B syncs",
            ),
            [
                (
                    r.index + 1,
                    r.a_state,
                    r.seconds_to_flag,
                    r.median_seconds,
                    r.after_sync,
                    ",".join(map(str, r.syncs)),
                )
                for r in results["ab"].rounds
            ],
        )
    steps = [(name, results[name].b_sync_steps) for name in ("b", "ab") if name in results]
    if steps:
        states = list(dict.fromkeys(s for _, found in steps for s in found))
        harness.print_table(
            "B's syncs: mean seconds per state",
            ("state", *(PHASE_TITLES[n] for n, _ in steps)),
            [(s, *(found.get(s, "-") for _, found in steps)) for s in states],
        )
    a_steps = [(name, results[name].a_steps) for name in ("a", "ab") if name in results]
    if a_steps:
        states = list(dict.fromkeys(s for _, found in a_steps for s in found))
        harness.print_table(
            "A's sync: seconds per state",
            ("state", *(PHASE_TITLES[n] for n, _ in a_steps)),
            [(s, *(found.get(s, "-") for _, found in a_steps)) for s in states],
        )
    print_targets(options, results)


def print_targets(options: Options, results: dict[str, PhaseResult]) -> None:
    rows = []
    idle, busy = times_to_flag(results.get("b")), times_to_flag(results.get("ab"))
    if idle and busy:
        idle_time = statistics.median(idle)
        allowed = TARGET_RATIO * idle_time + options.window
        worst = max(busy)
        rows.append(("B idle (median of rounds)", f"{idle_time:.1f} s", ""))
        rows.append(("B during A (worst round)", f"{worst:.1f} s", ""))
        rows.append(("ratio worst during A / idle", f"{worst / idle_time:.2f}x", ""))
        rows.append(
            (
                f"worst during A <= 2 x idle + window ({options.window} s)",
                f"{worst:.1f} <= {allowed:.1f} s",
                harness.verdict(worst <= allowed and len(busy) == options.rounds),
            )
        )
        rows.append(("median during A / median idle", f"{statistics.median(busy) / idle_time:.2f}x", ""))
        idle_after, busy_after = times_after_sync(results.get("b")), times_after_sync(results.get("ab"))
        if idle_after and busy_after:
            ratio = max(busy_after) / statistics.median(idle_after)
            rows.append(("from B's sync's start: worst during A / idle median", f"{ratio:.2f}x", ""))
    alone, shared = results.get("a"), results.get("ab")
    if alone and shared and alone.a_wall and shared.a_wall:
        growth = shared.a_wall / alone.a_wall - 1
        rows.append(
            (
                "A's wall with B <= alone + 10 %",
                f"{alone.a_wall:.1f} -> {shared.a_wall:.1f} s ({growth:+.1%})",
                harness.verdict(growth <= TARGET_A_GROWTH and shared.a_status == "completed"),
            )
        )
    if rows:
        harness.print_table("Targets", ("target", "measured", "verdict"), rows)


# ---- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--contacts", type=int, default=100_000, help="portal A's list size (default 100,000)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds of B's webhooks (default 10)")
    parser.add_argument("--per-round", type=int, default=10, help="webhooks per round (default 10)")
    parser.add_argument("--window", type=int, default=5, help="COALESCE_WINDOW_SECONDS (default 5)")
    parser.add_argument("--database", default="connector_bench_fairness")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up a phase after this long")
    parser.add_argument("--spacing", type=float, help="seconds between B's rounds during A's sync")
    parser.add_argument(
        "--phases", default="a,b,ab", help="which phases, of a (A alone), b (B alone), ab (A with B)"
    )
    parser.add_argument(
        "--a-lists", type=int, default=1, help="split A's contacts over N lists synced at once"
    )
    parser.add_argument(
        "--unfair", action="store_true", help="workers without the per-connection share of workers"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and work directories")
    parser.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = [p for p in phases if p not in PHASE_TITLES]
    if unknown:
        parser.error(f"unknown phases {unknown}")
    options = Options(
        contacts=args.contacts,
        rounds=args.rounds,
        per_round=args.per_round,
        window=args.window,
        database=args.database,
        timeout=args.timeout,
        spacing=args.spacing,
        phases=phases,
        keep=args.keep,
        a_lists=args.a_lists,
        fair=not args.unfair,
    )
    return options, args


def main(argv: list[str] | None = None) -> int:
    options, args = parse_args(argv)
    results: dict[str, PhaseResult] = {}
    spacing = options.spacing
    for name in options.phases:
        if name == "ab" and spacing is None:
            alone = results.get("a")
            spacing = (alone.a_wall or 0) / options.rounds if alone else 10 + options.contacts / 5_000
        results[name] = run_phase(name, options, spacing)
    print_results(options, results, spacing)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({k: asdict(v) for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
