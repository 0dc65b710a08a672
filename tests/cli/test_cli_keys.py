"""`connector keys generate|rotate`, run as real processes against the test database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.secretbox import SecretBox
from tests.connections_support import (
    KEY,
    PORTAL_B,
    install,
    stored,
)
from tests.processes import worker_env

CONNECTOR = str(Path(sys.executable).parent / "connector")


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONNECTOR, *args], env=env, capture_output=True, text=True, timeout=60)


def test_generate_prints_a_new_fernet_key() -> None:
    first, second = (run(["keys", "generate"], {"PATH": "/usr/bin:/bin"}) for _ in range(2))
    assert first.returncode == 0 and first.stderr == ""
    key = first.stdout.strip()
    assert first.stdout.count("\n") == 1 and key != second.stdout.strip()
    assert SecretBox([key]).open(SecretBox([key]).seal({"a": 1})) == {"a": 1}


def test_rotate_re_encrypts_the_stored_tokens_under_the_first_key(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    row = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    before = stored(installs, row.id).credentials
    held = SecretBox([KEY]).open(before or "")
    new_key = Fernet.generate_key().decode()
    env = worker_env(installs, CONNECTOR_SECRET_KEY=f"{new_key},{KEY}")
    done = run(["keys", "rotate"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 connections re-encrypted\n"
    after = stored(installs, row.id).credentials or ""
    assert after != before and SecretBox([new_key]).open(after) == held
    for secret in (new_key, KEY, *(str(v) for v in held.values())):
        assert secret not in done.stdout + done.stderr


def test_rotate_without_a_key_says_so_in_one_line(installs: Runtime) -> None:
    env = worker_env(installs)
    env.pop("CONNECTOR_SECRET_KEY", None)
    refused = run(["keys", "rotate"], env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "CONNECTOR_SECRET_KEY is not set" in refused.stderr
    malformed = run(["keys", "rotate"], {**env, "CONNECTOR_SECRET_KEY": "not-a-key"})
    assert malformed.returncode == 2 and malformed.stderr.count("\n") == 1
    assert "not-a-key" not in malformed.stderr
