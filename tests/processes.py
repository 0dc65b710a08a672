"""The connector's real processes for tests: `connector worker`, and the Procfile's `web` (gunicorn)
and `cron` (rq cron).

`web` and `cron` are started from the Procfile's own command lines, so a test exercises exactly what
a deployment runs. Every process gets a session of its own, so `kill` takes its children with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from connector.crm.hubspot.settings import HubSpotSettings
from connector.runtime import Runtime

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROCFILE = PROJECT_ROOT / "Procfile"


def worker_env(runtime: Runtime, **extra: str) -> dict[str, str]:
    """The environment of a `connector worker` for the test runtime (its database, Redis and queue)."""
    settings = runtime.settings
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CONNECTOR_QUEUE": settings.queue_name,
        "CONNECTOR_DATA_DIR": str(settings.data_dir),
        "APEXVERIFY_BASE_URL": settings.apexverify_base_url,
        "APEXVERIFY_API_KEY": settings.apexverify_api_key or "",
        "CONNECTOR_POLL_INITIAL_SECONDS": "0.2",
        "CONNECTOR_POLL_MAX_SECONDS": "1",
        "CONNECTOR_STEP_LEASE_SECONDS": str(settings.step_lease_seconds),
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the process and its whole process group (it leads one: start_new_session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def procfile_command(name: str) -> str:
    """The command line of one Procfile process type, as written there."""
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        process, sep, command = line.partition(":")
        if sep and process.strip() == name:
            return command.strip()
    raise KeyError(f"no {name!r} process in {PROCFILE}")


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connector_env(runtime: Runtime, **extra: str) -> dict[str, str]:
    """DESIGN.md's environment for a connector process, taken from the test runtime's settings.

    The worker's environment plus what the web and cron processes read (CRM credentials,
    webhook secrets, admin token, coalescing), so every process of a test sees one configuration.
    """
    settings = runtime.settings
    hubspot = settings.section(HubSpotSettings)
    optional = {
        "ADMIN_TOKEN": settings.admin_token,
        "HUBSPOT_BASE_URL": hubspot.base_url,
        "HUBSPOT_ACCESS_TOKEN": hubspot.access_token,
        "HUBSPOT_CLIENT_SECRET": hubspot.client_secret,
        "HUBSPOT_PORTAL_ID": hubspot.portal_id,
        "HUBSPOT_RATE_LIMIT_PER_10S": str(hubspot.rate_limit_per_10s),
        "COALESCE_MAX_CONTACTS": str(settings.coalesce_max_contacts),
        "COALESCE_WINDOW_SECONDS": str(settings.coalesce_window_seconds),
        "CONNECTOR_DEFAULT_COUNTRY": settings.default_country,
    }
    env = worker_env(runtime, **{name: value for name, value in optional.items() if value is not None})
    env.update(extra)
    return env


def start_procfile_process(
    name: str, env: dict[str, str], log_path: Path, *, replace: dict[str, str] | None = None
) -> subprocess.Popen:
    """Run the Procfile's `name` line through a shell, as a Procfile runner does.

    `exec` makes the process itself (gunicorn master, rq cron) the child, and a new session makes
    it the leader of a process group, so `kill` (killpg) takes its forked workers with it.
    """
    command = procfile_command(name)
    for old, new in (replace or {}).items():
        if old not in command:
            raise AssertionError(f"{old!r} not in the Procfile's {name} command {command!r}")
        command = command.replace(old, new)
    # The Procfile expects the installed package's scripts (gunicorn, rq, connector) on PATH.
    scripts = str(Path(sys.executable).parent)
    env = {**env, "PATH": scripts + os.pathsep + env.get("PATH", os.environ.get("PATH", ""))}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class WebProcess:
    """A running `web` process (gunicorn master and its workers) on a loopback port."""

    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the master and every worker at once: no graceful shutdown, no finished requests."""
        kill(self.process)


def start_web(
    env: dict[str, str], log_path: Path, *, port: int | None = None, workers: int = 2, timeout: float = 30
) -> WebProcess:
    """Start the Procfile's `web` process and wait until it answers /healthz."""
    port = port or free_port()
    env = {**env, "PORT": str(port), "WEB_CONCURRENCY": str(workers)}
    # Loopback only: a test has no business listening on every interface.
    process = start_procfile_process("web", env, log_path, replace={"0.0.0.0:": "127.0.0.1:"})
    web = WebProcess(process, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {process.returncode}; see {log_path}")
        try:
            if requests.get(f"{web.url}/healthz", timeout=1).status_code == 200:
                return web
        except requests.RequestException:
            pass
        time.sleep(0.1)
    web.kill()
    raise AssertionError(f"gunicorn did not answer /healthz within {timeout} s; see {log_path}")


def start_cron(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start the Procfile's `cron` process (`rq cron --url $REDIS_URL connector.cron`)."""
    return start_procfile_process("cron", env, log_path)
