"""No function of the product code (``shared/``, ``services/``) is over 80 lines: a function a
newcomer cannot read in one screen is a sign that several things share one place."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

MAX_LINES = 80


def long_functions(source: str) -> list[tuple[str, int]]:
    """Each function (or method) of ``source`` longer than ``MAX_LINES``, with its length."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]


def test_no_function_over_80_lines_in_shared_and_services() -> None:
    found = {
        f"{path.relative_to(ROOT)}:{name}": length
        for top in ("shared", "services")
        for path in sorted((ROOT / top).rglob("*.py"))
        for name, length in long_functions(path.read_text())
    }
    assert found == {}


def test_a_long_function_is_found() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert long_functions(f"def f() -> None:\n{body}\n") == [("f", MAX_LINES + 1)]
    assert long_functions("def g() -> None:\n    pass\n") == []
