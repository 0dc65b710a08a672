"""The house rules a reviewer would otherwise check by hand.

- Imports run one way: entry points → web → pipeline → crm / apexverify → core, with no cycle
  among connector/ modules. Every import counts, function-local and TYPE_CHECKING ones included:
  a cycle hidden in a function is still a cycle.
- Outside a CRM's own package (connector/crm/<name>/), the sandboxes and the demo, no CRM is
  named: the rest of the connector reaches a CRM through its entry in crm/registry.py, which is
  the one place that lists them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.crm.registry import CRMS

PACKAGE = Path(__file__).resolve().parent.parent / "connector"
# Lower layers never import higher ones; modules of one layer may import each other.
ENTRY_POINTS = {
    "connector.cli",
    "connector.demo",
    "connector.verify_command",
    "connector.worker",
    "connector.cron",
}
LAYERS = {"entry": 4, "web": 3, "pipeline": 2, "crm": 1, "apexverify": 1, "core": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def area(module: str) -> str:
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("web", "pipeline", "crm", "apexverify", "sandbox"):
        return parts[1]
    return "core"


def imports_of(module: str) -> set[str]:
    """Every connector module `module` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_connector_modules() -> None:
    assert len(GRAPH) > 50  # the walk found the package
    assert cycles() == []


def test_imports_run_one_way() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        source = area(module)
        for target in targets:
            destination = area(target)
            if source == "sandbox" or destination == "sandbox":
                # The sandboxes stand apart: they import only each other and the core; only the
                # entry points (CLI, demo) start them.
                allowed = destination in ("sandbox", "core") if source == "sandbox" else source == "entry"
            elif {source, destination} == {"crm", "apexverify"}:
                allowed = False  # two services side by side: the pipeline joins them
            else:
                allowed = LAYERS[destination] <= LAYERS[source]
            if not allowed:
                wrong.append(f"{module} ({source}) imports {target} ({destination})")
    assert wrong == []


def test_the_layer_check_sees_a_wrong_way_import() -> None:
    assert area("connector.crm.registry") == "crm" and area("connector.pipeline.sources") == "pipeline"
    assert "connector.pipeline.coalesce" in GRAPH["connector.pipeline.sources"]


def names_in_code(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every name, string and comment token of a Python file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    for token in tokens:
        if token.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT):
            yield token.start[0], token.string


def crm_name_pattern() -> re.Pattern[str]:
    return re.compile("|".join(re.escape(name) for name in CRMS), re.IGNORECASE)


def named_anywhere() -> list[str]:
    own = [PACKAGE / "crm" / name for name in CRMS]
    exempt = [*own, PACKAGE / "sandbox", PACKAGE / "demo.py", PACKAGE / "crm" / "registry.py"]
    pattern = crm_name_pattern()
    found = []
    for path in sorted(PACKAGE.rglob("*")):
        if not path.is_file() or path.suffix not in (".py", ".html", ".js", ".css", ".json"):
            continue
        if any(path == place or place in path.parents for place in exempt):
            continue
        lines = names_in_code(path) if path.suffix == ".py" else enumerate(path.read_text().splitlines(), 1)
        found += [
            f"{path.relative_to(PACKAGE)}:{n}: {text.strip()[:80]}"
            for n, text in lines
            if pattern.search(text)
        ]
    return found


def test_crms_are_named_only_in_their_packages_and_the_registry() -> None:
    assert set(CRMS) >= {"hubspot", "salesforce"}
    assert named_anywhere() == []


@pytest.mark.parametrize("text", ["hubspot_list", "# a Salesforce id", "'HUBSPOT_PORTAL_ID'"])
def test_the_name_check_sees_a_crm_name(text: str) -> None:
    assert crm_name_pattern().search(text)
