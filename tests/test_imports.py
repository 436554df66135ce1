"""The tree's modules import one another without a cycle, and its layers hold (STYLE.md).

Every import counts, at any depth of a module's code, ``TYPE_CHECKING`` imports included: a
cycle hidden there still couples a call to its service. The layering rules:

- a service (``services.<stage>``) never imports another service;
- ``shared`` never imports a service;
- product code (``shared`` and ``services``) never imports ``sim``;
- the modules directly in ``shared/`` are pure cores: no asyncio, Redis or websockets;
- a stage's per-call objects depend on its interfaces, never on its service.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

TOP = ("shared", "services", "sim", "tools", "bench")
IO_LIBRARIES = ("asyncio", "redis", "websockets")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for top in TOP for p in sorted((ROOT / top).rglob("*.py"))}


def _imported_names(path: Path, name: str) -> set[str]:
    """Every dotted name ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def _resolve(imported: str, modules: dict[str, Path]) -> str | None:
    """The tree's module an imported name lands in (its longest module prefix), if any."""
    parts = imported.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {_resolve(i, modules) for i in _imported_names(path, name)}
        edges[name] = {t for t in targets if t is not None and t != name}
    return edges


def _raw_imports() -> dict[str, set[str]]:
    return {name: _imported_names(path, name) for name, path in _modules().items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge found by a depth-first walk (empty when the graph is acyclic)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def _service(name: str) -> str | None:
    """The stage a module belongs to (``services.<stage>``), if it is inside one."""
    parts = name.split(".")
    if parts[0] == "services" and len(parts) >= 2 and (ROOT / "services" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return None


def test_no_import_cycle_in_the_tree() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_service_never_imports_another_service() -> None:
    wrong = [
        (name, target)
        for name, targets in graph().items()
        if (own := _service(name)) is not None
        for target in targets
        if (other := _service(target)) is not None and other != own
    ]
    assert wrong == []


def test_shared_never_imports_a_service() -> None:
    wrong = [
        (name, target)
        for name, targets in graph().items()
        if name.split(".")[0] == "shared"
        for target in targets
        if target.split(".")[0] == "services"
    ]
    assert wrong == []


def test_product_code_never_imports_sim() -> None:
    wrong = [
        (name, imported)
        for name, imports in _raw_imports().items()
        if name.split(".")[0] in ("shared", "services")
        for imported in imports
        if imported.split(".")[0] == "sim"
    ]
    assert wrong == []


def test_the_modules_directly_in_shared_are_pure() -> None:
    wrong = [
        (name, imported)
        for name, imports in _raw_imports().items()
        if name.startswith("shared.") and name.count(".") == 1
        for imported in imports
        if imported.split(".")[0] in IO_LIBRARIES
    ]
    assert wrong == []


def test_calls_depend_on_interfaces_not_on_their_service() -> None:
    edges = graph()
    worker = "services.realtime_worker"
    for module in ("call", "live_call", "pipeline", "feed", "interfaces"):
        assert f"{worker}.service" not in edges[f"{worker}.{module}"], module
    assert {e for e in edges[f"{worker}.interfaces"] if e.startswith(worker)} == set()  # a leaf
    edge = "services.twilio_edge"
    for module in ("bridge", "replies", "webhooks", "outbound", "interfaces"):
        assert f"{edge}.service" not in edges[f"{edge}.{module}"], module
    rooms = {f"{edge}.{m}" for m in ("service", "bridge", "replies", "webhooks", "outbound")}
    assert edges[f"{edge}.interfaces"] & rooms == set()
