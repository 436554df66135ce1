"""The realtime worker's modules import one another without a cycle (TYPE_CHECKING imports
included: a cycle hidden there still couples a call to its service), and the per-call objects
depend on the interfaces, never on the service."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = "services.realtime_worker"


def _imports(path: Path) -> set[str]:
    """The package's modules ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found |= {f"{PACKAGE}.{alias.name}" for alias in node.names}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found


def graph() -> dict[str, set[str]]:
    folder = ROOT / "services" / "realtime_worker"
    modules = {f"{PACKAGE}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path) & modules.keys() for name, path in modules.items()}


def test_no_import_cycle_in_the_worker() -> None:
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [])


def test_calls_depend_on_interfaces_not_on_the_service() -> None:
    edges = graph()
    for module in ("call", "live_call", "pipeline", "feed", "interfaces"):
        assert f"{PACKAGE}.service" not in edges[f"{PACKAGE}.{module}"], module
    assert edges[f"{PACKAGE}.interfaces"] == set()  # a leaf
