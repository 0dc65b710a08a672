"""`connector verify` and `connector demo` as a newcomer meets them (issue 12), run as real processes.

Each test starts the installed `connector` script against the ApexVerify sandbox over HTTP, with
the test PostgreSQL database and Redis db, and judges what a person sees: exit codes, the lines
on the terminal, what reached the sandbox (`/_sandbox/state`), and what was left in the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import func, select

from connector.models import Sync, SyncStatus
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from tests.processes import free_port, kill, wait_for, worker_env

CONNECTOR = str(Path(sys.executable).parent / "connector")
# Nothing listens there: a run told to use it falls back to the in-process broker (never db 0).
NO_REDIS = "redis://127.0.0.1:1/9"


def run(args: list[str], env: dict[str, str], *, cwd: Path | None = None, timeout: float = 120):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [CONNECTOR, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(
            [CONNECTOR, *args], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def sandbox_state(sandbox: SandboxServer) -> dict:
    return requests.get(f"{sandbox.url}/_sandbox/state", timeout=5).json()


def configure_sandbox(sandbox: SandboxServer, **config: float) -> None:
    requests.post(f"{sandbox.url}/_sandbox/config", json=config, timeout=5).raise_for_status()


def write_emails(path: Path, count: int, prefix: str = "user") -> Path:
    path.write_text("".join(f"{prefix}{n}@example.com\n" for n in range(count)), encoding="utf-8")
    return path


def latest_sync(runtime: Runtime) -> Sync | None:
    with runtime.session() as session:
        sync = session.scalars(select(Sync).order_by(Sync.id.desc())).first()
        if sync is not None:
            session.expunge(sync)
        return sync


def sync_status(runtime: Runtime, sync_id: int) -> str:
    with runtime.session() as session:
        return session.get_one(Sync, sync_id).status


def long_lines(text: str, width: int = 80) -> list[str]:
    return [line for line in text.splitlines() if len(line) > width]


@pytest.fixture
def env(runtime: Runtime) -> dict[str, str]:
    return worker_env(runtime, COLUMNS="80")


# --- input is checked before anything is sent ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "extra_env", "message"),
    [
        (b"a@example.com\n", {"APEXVERIFY_API_KEY": ""}, "APEXVERIFY_API_KEY"),
        (bytes(range(256)) * 40, {}, "not a text file"),  # what `verify /bin/ls` was given
        ("caf\xe9@example.com\n".encode("latin-1"), {}, "not a text file"),
        (b"", {}, "nothing to verify"),
        (b"\n  \n\n", {}, "nothing to verify"),
        (b"id,email\n", {}, "nothing to verify"),
    ],
    ids=["no-key", "binary", "latin-1", "empty", "blank-lines", "header-only"],
)
def test_bad_input_exits_2_before_any_request(
    env: dict[str, str],
    apexverify_sandbox: SandboxServer,
    tmp_path: Path,
    content: bytes,
    extra_env: dict[str, str],
    message: str,
) -> None:
    source = tmp_path / "input.txt"
    source.write_bytes(content)

    result = run(["verify", str(source), "--type", "email", "--country", "US"], {**env, **extra_env})

    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert sandbox_state(apexverify_sandbox)["requests"] == {}


def test_mostly_malformed_file_warns_with_the_count_before_upload(
    env: dict[str, str], tmp_path: Path
) -> None:
    source = tmp_path / "junk.txt"
    source.write_text(
        "".join(f"junk line {n}\n" for n in range(7)) + "not-an-email\nok1@example.com\nok2@example.com\n",
        encoding="utf-8",
    )

    result = run(["verify", str(source), "--type", "email", "--country", "US"], env)

    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    assert "8 of 10" in warning
    assert result.stderr.index(warning) < result.stderr.index("uploading")


# --- output for people --------------------------------------------------------------------------


def test_help_names_the_environment_and_the_exit_codes(env: dict[str, str]) -> None:
    verify_help = run(["verify", "--help"], env).stdout
    demo_help = run(["demo", "--help"], env).stdout

    for name in ("APEXVERIFY_API_KEY", "APEXVERIFY_BASE_URL", "DATABASE_URL", "REDIS_URL", "--resume"):
        assert name in verify_help
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "143"):
        assert code in verify_help
    assert "--use-env-services" in demo_help and "130" in demo_help
    assert not long_lines(verify_help) and not long_lines(demo_help)


def test_the_view_ends_its_line_and_logs_stay_out_of_it(env: dict[str, str], tmp_path: Path) -> None:
    write_emails(tmp_path / "in.txt", 12)

    result = run(
        ["verify", "in.txt", "--type", "email", "--country", "US", "-o", "out.csv"], env, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert any(line.startswith("wrote 12 verdicts") for line in result.stderr.splitlines())
    assert '{"ts"' not in result.stderr  # no JSON log lines below WARNING or inside the view
    assert not long_lines(result.stderr + result.stdout)


# --- waiting: prompt with Redis, bounded, interruptible ------------------------------------------


@pytest.mark.slow
def test_verify_with_redis_is_as_prompt_as_with_the_in_process_broker(
    env: dict[str, str],
    redis_connection: redis.Redis,
    apexverify_sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    if "fakeredis" in type(redis_connection).__module__:
        pytest.skip("needs a real Redis server")
    # The documented poll schedule (5 s, 10 s...): the drive loop mostly waits, as a real run does.
    env = {**env, "CONNECTOR_POLL_INITIAL_SECONDS": "5", "CONNECTOR_POLL_MAX_SECONDS": "60"}
    configure_sandbox(apexverify_sandbox, verify_delay=8)
    source = write_emails(tmp_path / "in.txt", 29)
    args = ["verify", str(source), "--type", "email", "--country", "US", "--reverify-after-days", "0"]

    timings = {}
    for broker, redis_url in (("in-process", NO_REDIS), ("redis", env["REDIS_URL"])):
        started = time.monotonic()
        result = run([*args, "-o", str(tmp_path / f"{broker}.csv")], {**env, "REDIS_URL": redis_url})
        timings[broker] = time.monotonic() - started
        assert result.returncode == 0, result.stderr

    print(f"verify of 29 values: in-process {timings['in-process']:.1f} s, Redis {timings['redis']:.1f} s")
    assert timings["redis"] <= 1.5 * timings["in-process"] + 5, timings


@pytest.mark.slow
def test_unreachable_apexverify_gives_up_after_max_wait(env: dict[str, str], tmp_path: Path) -> None:
    source = write_emails(tmp_path / "in.txt", 5)
    env = {**env, "APEXVERIFY_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    started = time.monotonic()

    try:
        result = run(
            ["verify", str(source), "--type", "email", "--country", "US", "--max-wait", "3"], env, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("verify was still waiting 60 s into a --max-wait of 3 s")

    assert time.monotonic() - started < 3 + 30
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "--resume" in line]
    assert line == result.stderr.splitlines()[-1]
    assert "apexverify_unavailable" in line


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_verifying_ends_at_once_and_resume_finishes_the_same_batch(
    env: dict[str, str],
    runtime: Runtime,
    apexverify_sandbox: SandboxServer,
    tmp_path: Path,
    signum: int,
    code: int,
) -> None:
    configure_sandbox(apexverify_sandbox, verify_delay=6)
    source = write_emails(tmp_path / "in.txt", 20)
    output = tmp_path / "out.csv"
    process = start(
        ["verify", str(source), "--type", "email", "--country", "US", "-o", str(output)],
        env,
        tmp_path / "log",
    )
    try:
        wait_for(
            lambda: (sync := latest_sync(runtime)) is not None and sync.status == SyncStatus.VERIFYING,
            60,
            "the sync to reach verifying",
        )
        time.sleep(0.5)
        process.send_signal(signum)
        started = time.monotonic()
        process.wait(timeout=15)
        took = time.monotonic() - started
    finally:
        kill(process)
    text = (tmp_path / "log").read_text()

    assert took < 5, text
    assert process.returncode == code, text
    assert "Traceback" not in text
    sync_id = latest_sync(runtime).id  # type: ignore[union-attr]
    [line] = [line for line in text.splitlines() if "--resume" in line]
    assert f"sync {sync_id} left at verifying" in line
    assert sync_status(runtime, sync_id) == SyncStatus.VERIFYING
    before = sandbox_state(apexverify_sandbox)
    assert before["requests"]["POST /v1/batch"] == 1 and before["launches"] == 1

    resumed = run(["verify", "--resume", str(sync_id), "-o", str(output)], env)

    assert resumed.returncode == 0, resumed.stderr
    assert sync_status(runtime, sync_id) == SyncStatus.COMPLETED
    assert len(output.read_text(encoding="utf-8").splitlines()) == 1 + 20
    after = sandbox_state(apexverify_sandbox)
    assert after["requests"]["POST /v1/batch"] == 1 and after["launches"] == 1


def test_a_sync_abandoned_by_a_killed_run_is_left_alone(
    env: dict[str, str], runtime: Runtime, apexverify_sandbox: SandboxServer, tmp_path: Path
) -> None:
    configure_sandbox(apexverify_sandbox, verify_delay=30)
    first = start(
        ["verify", str(write_emails(tmp_path / "a.txt", 10, "a")), "--type", "email", "--country", "US"],
        env,
        tmp_path / "first.log",
    )
    try:
        wait_for(
            lambda: (sync := latest_sync(runtime)) is not None and sync.status == SyncStatus.VERIFYING,
            60,
            "the first sync to reach verifying",
        )
    finally:
        kill(first)
    orphan = latest_sync(runtime)
    assert orphan is not None
    configure_sandbox(apexverify_sandbox, verify_delay=0.5)

    result = run(
        ["verify", str(write_emails(tmp_path / "b.txt", 10, "b")), "--type", "email", "--country", "US"], env
    )

    assert result.returncode == 0, result.stderr
    with runtime.session() as session:
        after = session.get_one(Sync, orphan.id)
        assert (after.status, after.poll_attempt, after.job_id, after.updated_at) == (
            orphan.status,
            orphan.poll_attempt,
            orphan.job_id,
            orphan.updated_at,
        )
        assert session.scalar(select(func.count()).select_from(Sync)) == 2


# --- the demo -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_runs_twice_in_one_folder_on_its_own_services(
    env: dict[str, str], runtime: Runtime, redis_connection: redis.Redis, tmp_path: Path
) -> None:
    # DATABASE_URL and REDIS_URL point at the test services: the demo must leave them alone.
    env = {name: value for name, value in env.items() if name != "CONNECTOR_DATA_DIR"}

    for attempt in (1, 2):
        result = run(["demo", "--size", "300"], env, cwd=tmp_path, timeout=240)
        assert result.returncode == 0, f"run {attempt}:\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        assert not long_lines(result.stdout + result.stderr), "a line wider than 80 columns"

    assert (tmp_path / "var" / "demo" / "connector.db").is_file()
    assert latest_sync(runtime) is None
    assert redis_connection.dbsize() == 0
    assert os.listdir(tmp_path) == ["var"]
