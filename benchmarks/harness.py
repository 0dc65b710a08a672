"""Shared plumbing for the benchmark scripts (not a benchmark itself).

Processes (sandboxes, the worker, gunicorn) run as their own process groups so their CPU is not
counted as the benchmark's; figures come from /proc. Benchmarks use PostgreSQL databases of their
own (dropped afterwards) and Redis db 6 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
POSTGRES_HOST = "127.0.0.1:5432"
POSTGRES_ADMIN_URL = f"postgresql://{POSTGRES_HOST}/test"
# Flushed by the benchmarks: a database number of its own, apart from the tests' (2-6).
REDIS_URL = os.environ.get("BENCHMARK_REDIS_URL", "redis://127.0.0.1:6379/9")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
APEXVERIFY_KEY = "bench-apexverify-key"
HUBSPOT_TOKEN = "bench-hubspot-token"
HUBSPOT_PORTAL = "424242"


def log(message: str) -> None:
    """Progress goes to stderr; the figures go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Service:
    """A process this benchmark started, in a process group of its own."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """`stop_signal` to the group we created (the worker's scheduler child too), SIGKILL if it lingers."""
        if not self.alive():
            return
        os.killpg(self.pid, self.stop_signal)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)


def start_service(name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> Service:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            list(args),
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, process, log_path)


def stop_all(services: Iterable[Service]) -> None:
    for service in services:
        service.stop()


def wait_for_http(url: str, service: Service, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            tail = service.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{service.name} exited at start:\n{tail}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{service.name} did not answer at {url} within {timeout:.0f} s")


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("LOG_LEVEL", "INFO")
    return env


def start_server(name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> tuple[Service, str]:
    """Start a server that takes `--port`; a port taken between choosing and binding it gets another try."""
    for attempt in range(3):
        port = free_port()
        service = start_service(name, [*args, "--port", str(port)], env, log_dir)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/_sandbox/state", service)
            return service, url
        except RuntimeError:
            if attempt == 2:
                raise
            log(f"{name} did not start on port {port}; trying another port")
    raise AssertionError("unreachable")


def start_apexverify(
    log_dir: Path, *, verify_delay: float = 0.0, parse_delay: float = 0.0, name: str = "apexverify"
) -> tuple[Service, str]:
    args = [PYTHON, "-m", "connector.cli", "sandbox", "apexverify"]
    args += ["--parse-delay", str(parse_delay), "--verify-delay", str(verify_delay)]
    args += ["--credits", "1000000000", "--api-key", APEXVERIFY_KEY]
    return start_server(name, args, base_env(), log_dir)


def start_hubspot(
    log_dir: Path, *, rate_limit_per_10s: int = 100, export_delay: float = 1.0, import_delay: float = 1.0
) -> tuple[Service, str]:
    args = [PYTHON, "-m", "connector.cli", "sandbox", "hubspot"]
    args += ["--rate-limit-per-10s", str(rate_limit_per_10s)]
    args += ["--export-delay", str(export_delay), "--import-delay", str(import_delay)]
    env = {**base_env(), "HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN}
    return start_server("hubspot", args, env, log_dir)


def seed_hubspot_list(hubspot_url: str, contacts: int, list_name: str = "bench") -> str:
    answer = requests.post(
        f"{hubspot_url}/_sandbox/seed",
        json={"generate": {"contacts": contacts, "list_name": list_name}},
        timeout=120,
    )
    answer.raise_for_status()
    return str(answer.json()["listId"])


def seed_hubspot_static_list(hubspot_url: str, name: str = "bench static") -> str:
    """An empty MANUAL list (what add_to_list adds to)."""
    answer = requests.post(
        f"{hubspot_url}/_sandbox/seed", json={"lists": [{"name": name, "contactIds": []}]}, timeout=30
    )
    answer.raise_for_status()
    return str(answer.json()["listIds"][0])


def sandbox_state(url: str) -> dict[str, Any]:
    answer = requests.get(f"{url}/_sandbox/state", timeout=30)
    answer.raise_for_status()
    return answer.json()


def connector_env(
    database_url: str,
    queue: str,
    data_dir: Path,
    *,
    apexverify_url: str | None = None,
    hubspot_url: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a connector process (worker or web) pointed at the benchmark's services."""
    env = base_env()
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        CONNECTOR_QUEUE=queue,
        CONNECTOR_DATA_DIR=str(data_dir),
        HUBSPOT_PORTAL_ID=HUBSPOT_PORTAL,
    )
    if apexverify_url:
        env.update(APEXVERIFY_BASE_URL=apexverify_url, APEXVERIFY_API_KEY=APEXVERIFY_KEY)
    if hubspot_url:
        env.update(HUBSPOT_BASE_URL=hubspot_url, HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN)
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_dir: Path) -> Service:
    return start_service("worker", [PYTHON, "-m", "connector.cli", "worker"], env, log_dir)


# ---- /proc figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessFigures:
    peak_rss_mb: float  # VmHWM of the process itself
    cpu_seconds: float  # utime + stime of the process itself
    children_cpu_seconds: float  # live descendants (the RQ scheduler fork) and reaped children


def _cpu_of(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _parent_of(stat_path: Path) -> int | None:
    try:
        return int(stat_path.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, found through the parent ids in /proc/*/stat."""
    entries = [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    parents = {int(entry.name): _parent_of(entry / "stat") for entry in entries}
    result, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, parent in parents.items() if parent == current]
        result.extend(children)
        todo.extend(children)
    return result


def process_figures(pid: int) -> ProcessFigures:
    """Read a live process's peak RSS and CPU seconds (call it just before stopping the process)."""
    own, reaped = _cpu_of(pid)
    children = reaped
    for child in _descendants(pid):
        try:
            children += sum(_cpu_of(child))
        except FileNotFoundError:
            continue
    return ProcessFigures(round(_peak_rss_mb(pid), 1), round(own, 2), round(children, 2))


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy (not idle or waiting for I/O) since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


# ---- databases --------------------------------------------------------------------------------


def database_url(name: str) -> str:
    return f"postgresql://{POSTGRES_HOST}/{name}"


def fresh_database(name: str) -> str:
    """Drop and create database `name`; returns its URL."""
    drop_database(name)
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(name: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_backend_cpu(name: str) -> float:
    """CPU seconds of the PostgreSQL backends now connected to database `name` (this process's excluded).

    Backends that already exited are not counted, so this is a lower bound; connection pools keep
    theirs open, which makes it close for a worker or a web process.
    """
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        pids = [
            row[0] for row in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
        ]
    total = 0.0
    for pid in pids:
        try:
            total += _cpu_of(pid)[0]
        except (FileNotFoundError, PermissionError):
            continue
    return round(total, 2)


def flush_benchmark_redis() -> None:
    """Empty Redis db 6 (the benchmarks' own): queues, rate limits and metrics from earlier runs."""
    redis.Redis.from_url(REDIS_URL).flushdb()


def prepare_runtime(env: dict[str, str]) -> Any:
    """A Runtime in this process with the same settings as the worker, schema migrated."""
    from connector.config import Settings
    from connector.db import upgrade_database
    from connector.runtime import build_runtime, set_runtime

    runtime = build_runtime(Settings.from_env(env))
    upgrade_database(runtime.engine)
    set_runtime(runtime)
    return runtime


# ---- output -----------------------------------------------------------------------------------


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain aligned text table on stdout."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# ---- CPU against the floor --------------------------------------------------------------------

# Issue 15, 1,000,000 contacts: worker + its PostgreSQL backends (+ the scheduler child) within 8x
# the floor (floor.py at the same contact count), the worker alone within 3x.
TARGET_TOTAL_FLOOR_RATIO = 8.0
TARGET_WORKER_FLOOR_RATIO = 3.0


@dataclass(frozen=True)
class CpuAgainstFloor:
    """A sync's CPU seconds (worker, its RQ scheduler child, its PostgreSQL backends) and the floor's."""

    worker: float
    scheduler: float
    postgres: float
    floor: float | None = None  # None: the floor was not measured (--no-floor)

    @classmethod
    def of(cls, result: Any) -> CpuAgainstFloor:
        """From an end-to-end result or its --json-out dict (fields both e2e scripts share)."""
        figures = result if isinstance(result, dict) else vars(result)
        return cls(
            worker=float(figures.get("worker_cpu_seconds") or 0.0),
            scheduler=float(figures.get("scheduler_cpu_seconds") or 0.0),
            postgres=float(figures.get("postgres_backend_cpu_seconds") or 0.0),
            floor=figures.get("floor_cpu_seconds"),
        )

    @property
    def total(self) -> float:
        return round(self.worker + self.scheduler + self.postgres, 2)

    @property
    def total_ratio(self) -> float | None:
        return round(self.total / self.floor, 2) if self.floor else None

    @property
    def worker_ratio(self) -> float | None:
        return round(self.worker / self.floor, 2) if self.floor else None

    def target_rows(self) -> list[tuple[str, str, str]]:
        """(target, measured, verdict) rows of the two ratio targets, for a Targets table."""
        return [
            (
                f"total CPU (worker + scheduler + PostgreSQL) <= {TARGET_TOTAL_FLOOR_RATIO:g}x the floor",
                *_ratio_cells(self.total_ratio, TARGET_TOTAL_FLOOR_RATIO),
            ),
            (
                f"worker CPU <= {TARGET_WORKER_FLOOR_RATIO:g}x the floor",
                *_ratio_cells(self.worker_ratio, TARGET_WORKER_FLOOR_RATIO),
            ),
        ]


def _ratio_cells(ratio: float | None, target: float) -> tuple[str, str]:
    """(measured, verdict) of a ratio against its target."""
    if ratio is None:
        return "-", "not measured (--no-floor)"
    return f"{ratio:.1f}x", verdict(ratio <= target)


def print_cpu_against_floor(cpu: CpuAgainstFloor, floor_note: str = "") -> None:
    """The table "CPU against the floor": each process's CPU, their total, the floor, the two ratios."""
    rows: list[tuple[str, object, str]] = [
        ("worker CPU (s)", cpu.worker, "utime+stime of `connector worker`"),
        ("RQ scheduler child CPU (s)", cpu.scheduler, "the worker's forks, live and reaped"),
        ("PostgreSQL backends CPU (s)", cpu.postgres, "backends connected to the benchmark database"),
        ("total: worker + scheduler + PostgreSQL (s)", cpu.total, ""),
        ("floor CPU (s)", "-" if cpu.floor is None else cpu.floor, floor_note),
    ]
    for name, ratio, target in (
        ("ratio total / floor", cpu.total_ratio, TARGET_TOTAL_FLOOR_RATIO),
        ("ratio worker / floor", cpu.worker_ratio, TARGET_WORKER_FLOOR_RATIO),
    ):
        measured, met = _ratio_cells(ratio, target)
        rows.append((name, measured, f"target <= {target:g}x: {met}"))
    print_table("CPU against the floor", ("figure", "value", "note"), rows)


# ---- profiling --------------------------------------------------------------------------------

PY_SPY = Path(PYTHON).parent / "py-spy"
PROFILE_TOP = 25


def start_profiler(
    pid: int, output: Path, log_dir: Path, *, rate: int = 100, subprocesses: bool = False
) -> Service:
    """py-spy sampling `pid` (non-blocking) into collapsed stacks; stop() makes it write them."""
    if not PY_SPY.exists():
        raise RuntimeError(f"{PY_SPY} not found: .venv/bin/pip install py-spy")
    args = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--gil", "--nonblocking"]
    args += ["--subprocesses"] if subprocesses else []
    args += ["--format", "raw", "--output", str(output)]
    service = start_service("py-spy", args, base_env(), log_dir)
    service.stop_signal = signal.SIGINT
    return service


def print_profile(collapsed: Path, title: str = "worker", top: int = PROFILE_TOP) -> None:
    """Two tables from py-spy's collapsed stacks: connector functions by inclusive share of the
    samples (what each step's code costs, callees included), and functions by self share (where
    the CPU is actually spent, libraries included)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short_frame(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    ours = [(f, n) for f, n in inclusive.items() if "(connector/" in f and "cli.py" not in f]
    ours += [(f, n) for f, n in inclusive.items() if f.startswith("Flask.") or f.startswith("Session.commit")]
    print_table(
        f"py-spy: {title}: connector functions, inclusive share of {total:,} samples",
        ("incl.", "function"),
        [(_share(n, total), f) for f, n in sorted(ours, key=lambda item: -item[1])[:top]],
    )
    print_table(
        "py-spy: functions by self share (where the CPU goes)",
        ("self", "function"),
        [(_share(n, total), f) for f, n in sorted(own.items(), key=lambda item: -item[1])[:top]],
    )


def _share(samples: int, total: int) -> str:
    return f"{100 * samples / max(total, 1):.1f}%"


def _short_frame(frame: str) -> str:
    """'func (path/module.py:123)' -> 'func (path/module.py)' so that lines of one function add up."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name
