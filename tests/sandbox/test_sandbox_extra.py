"""The product runs without the `sandbox` extra; what needs it says so in one line.

Each check runs the CLI in a fresh interpreter where the extra's packages cannot be imported (set to
None in sys.modules, as Python does for a module it must not import): `import fakeredis` fails there
and `importlib.util.find_spec` answers None, as in an install without the extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connector.extras import SANDBOX_MODULES

WITHOUT_EXTRA = f"""
import sys
for name in {SANDBOX_MODULES!r}:
    sys.modules[name] = None
"""
RUN_CLI = WITHOUT_EXTRA + "from connector.cli import main\nmain()\n"
IMPORT_PRODUCT = (
    WITHOUT_EXTRA
    + """
import importlib, pkgutil
import connector
for found in pkgutil.walk_packages(connector.__path__, "connector."):
    if not found.name.startswith("connector.sandbox.") and found.name != "connector.demo":
        importlib.import_module(found.name)
print("imported")
"""
)
INSTALL = "pip install 'apexverify-crm-connector[sandbox]'"


def run(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "HUBSPOT_SPECS_DIR")}
    env.update(CONNECTOR_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    return env


def test_the_product_imports_and_helps_without_the_extra(bare_env: dict[str, str]) -> None:
    imported = run(IMPORT_PRODUCT, env=bare_env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "imported"

    for args in (["--help"], ["sandbox", "--help"], ["sandbox", "hubspot", "--help"], ["verify", "--help"]):
        helped = run(RUN_CLI, *args, env=bare_env)
        assert helped.returncode == 0, (args, helped.stderr)
    listing = run(RUN_CLI, "sandbox", "--help", env=bare_env).stdout
    assert all(name in listing for name in ("apexverify", "hubspot", "salesforce"))


@pytest.mark.parametrize(
    ("args", "needed_by"),
    [
        (["demo"], "connector demo"),
        (["demo", "--use-env-services"], "connector demo"),
        (["sandbox", "apexverify"], "connector sandbox apexverify"),
        (["sandbox", "hubspot", "--port", "8102", "--specs-dir", "x"], "connector sandbox hubspot"),
        (["sandbox", "salesforce"], "connector sandbox salesforce"),
        (["verify", "in.txt", "--type", "email", "--country", "US"], "connector verify without REDIS_URL"),
    ],
)
def test_what_needs_the_extra_says_so_in_one_line(
    bare_env: dict[str, str], args: list[str], needed_by: str
) -> None:
    refused = run(RUN_CLI, *args, env=bare_env)
    assert refused.returncode == 2
    or_redis = ", or set REDIS_URL" if args[0] == "verify" else ""
    assert refused.stderr.splitlines() == [f"error: {needed_by} needs the sandbox extra: {INSTALL}{or_redis}"]
    assert refused.stdout == ""


def test_an_unreachable_redis_without_the_extra_says_so_in_one_line(
    bare_env: dict[str, str], tmp_path: Path
) -> None:
    contacts = tmp_path / "contacts.txt"
    contacts.write_text("ana@example.com\nben@example.com\n", encoding="utf-8")
    bare_env.update(REDIS_URL="redis://127.0.0.1:1/0", APEXVERIFY_API_KEY="key")
    refused = run(RUN_CLI, "verify", str(contacts), "--type", "email", "--country", "US", env=bare_env)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "error: REDIS_URL does not answer; the in-process broker standing in needs the sandbox extra: "
        + INSTALL
    ]
