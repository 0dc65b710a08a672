"""Audit the pinned dependencies against PyPI's vulnerability data where pip-audit cannot reach it.

pip-audit asks PyPI for each pinned release (https://pypi.org/pypi/NAME/VERSION/json) or OSV;
this machine's network serves neither, only https://pypi.org/pypi/NAME/json, whose
`vulnerabilities` are the advisories (PyPA/OSV, the same data pip-audit reads) that affect the
project's newest release. So a pin that is the newest release is checked exactly, and any other
pin is listed as not checked with the newest version beside it. Needs network; not part of the
test suite.

    .venv/bin/python .ci/audit_dependencies.py [constraints.txt]

Exit status: 1 if a pin has a known vulnerability, 2 if PyPI could not be asked, else 0.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests


def pins(constraints: Path) -> list[tuple[str, str]]:
    found = []
    for line in constraints.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==", 1)
            found.append((name.strip(), version.strip()))
    return found


def newest_release(name: str) -> tuple[str, list[str]]:
    """The project's newest version and the advisory ids that affect it."""
    answer = requests.get(f"https://pypi.org/pypi/{name}/json", timeout=30)
    answer.raise_for_status()
    body = answer.json()
    advisories = [v["id"] for v in body.get("vulnerabilities", []) if not v.get("withdrawn")]
    return body["info"]["version"], advisories


def main(argv: list[str]) -> int:
    pinned = pins(Path(argv[1] if len(argv) > 1 else "constraints.txt"))
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            releases = list(pool.map(lambda pin: newest_release(pin[0]), pinned))
    except requests.RequestException as error:
        print(f"could not ask PyPI: {error}", file=sys.stderr)
        return 2
    vulnerable, unchecked = [], []
    for (name, version), (newest, advisories) in zip(pinned, releases, strict=True):
        if version != newest:
            unchecked.append(f"{name}=={version} (newest {newest})")
        elif advisories:
            vulnerable.append(f"{name}=={version}: {', '.join(advisories)}")
    checked = len(pinned) - len(unchecked)
    print(f"{checked} of {len(pinned)} pins checked: {len(vulnerable)} with known vulnerabilities")
    for line in vulnerable:
        print(f"  VULNERABLE {line}")
    for line in unchecked:
        print(f"  not checked (not the newest release) {line}")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
