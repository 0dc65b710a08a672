"""README's Configuration section documents every variable the settings read, and its "see X
above/below" references point at a section that really is there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from connector.config import Settings, read_section
from connector.crm.registry import CRMS

README = Path(__file__).resolve().parent.parent / "README.md"


class RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every name asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(name)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_every_setting_read_from_the_environment_is_documented() -> None:
    env = RecordingEnv()
    Settings.from_env(env)
    for crm in CRMS.values():  # each CRM's own variables
        read_section(crm.settings, env)
    documented = set(
        re.findall(r"`([A-Z][A-Z0-9_]+)`", section(README.read_text(encoding="utf-8"), "Configuration"))
    )
    assert env.asked and sorted(env.asked - documented) == []


def test_references_to_sections_above_or_below_point_the_right_way() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    headings = {line.lstrip("#").strip(): n for n, line in enumerate(lines) if line.startswith("#")}
    references = [
        (n, name, direction)
        for n, line in enumerate(lines)
        for name, direction in re.findall(r"see ([A-Z][\w ]*?) (above|below)", line)
    ]
    assert references  # the check below checks something
    for n, name, direction in references:
        assert name in headings, f"line {n + 1}: no section {name!r}"
        assert (headings[name] < n) == (direction == "above"), f"line {n + 1}: {name} is not {direction}"


def test_ci_runs_the_readmes_test_command_then_the_long_tier_then_mypy() -> None:
    commands = [
        line
        for line in section(README.read_text(encoding="utf-8"), "Set up").splitlines()
        if line.startswith("python3 -m venv ") and line.endswith(".venv/bin/pytest")
    ]
    assert len(commands) == 1  # set-up command 2: the fast tier
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    steps = [line for line in ci if line and not line.startswith("#")]
    at = steps.index(commands[0])
    assert steps[at + 1 :] == [".venv/bin/pytest -m slow", ".venv/bin/mypy"]
