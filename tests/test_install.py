"""The install comes from the committed lock (docs/install.md): the lock matches pyproject, pins
every package with hashes, and is what make venv and the image install from."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from packaging.requirements import Requirement

from tests.conftest import ROOT


def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _requirements(project: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(name, specifier, extra) of every dependency pyproject names, extras included."""
    found = set()
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    for extra, lines in groups.items():
        for line in lines:
            req = Requirement(line)
            found.add((req.name.lower(), str(req.specifier), extra))
    return found


def test_the_lock_matches_pyproject_so_make_venv_can_use_it_as_it_is() -> None:
    # What `uv sync --locked` checks, here too so that a pyproject edited without `make lock`
    # fails in the suite with a clear message, not only at install.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ours,) = [p for p in _lock()["package"] if p["name"] == project["name"]]
    locked = set()
    for dep in ours["metadata"]["requires-dist"]:
        extra = re.search(r"extra == '([^']+)'", dep.get("marker", ""))
        locked.add((dep["name"], dep.get("specifier", ""), extra.group(1) if extra else ""))
    assert locked == _requirements(project), "uv.lock is stale: run make lock LOCK_ARGS="
    assert set(ours["metadata"]["provides-extras"]) == set(project["optional-dependencies"])


def test_every_locked_package_has_one_version_per_python_and_hashes() -> None:
    packages = [p for p in _lock()["package"] if "registry" in p["source"]]
    assert len(packages) > 50
    for package in packages:
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files, package["name"]
        assert all(f["hash"].startswith("sha256:") for f in files), package["name"]
    uv = (ROOT / "requirements-uv.txt").read_text()
    assert re.match(r"uv==[0-9.]+ \\\n", uv) and "--hash=sha256:" in uv


def test_make_venv_and_the_image_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    # The stamp depends on the lock and on uv's pin: a changed lock reinstalls.
    stamp = re.search(r"^\$\(STAMP\): (.*)$", makefile, re.M)
    assert stamp and {"pyproject.toml", "uv.lock", "$(UV)"} <= set(stamp.group(1).split())
    assert re.search(r"^\$\(UV\): requirements-uv.txt$", makefile, re.M)
    assert "sync --locked" in makefile and "--require-hashes -r requirements-uv.txt" in makefile
    assert re.search(r"^lock: ", makefile, re.M)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "uv export --frozen" in dockerfile and "pip install -q --require-hashes" in dockerfile
    context = (ROOT / ".dockerignore").read_text().split()
    assert {"!uv.lock", "!requirements-uv.txt", "!pyproject.toml"} <= set(context)


def _imported_top_levels(folders: tuple[str, ...]) -> set[str]:
    """The top-level names every module under ``folders`` imports (absolute imports only)."""
    import ast

    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def test_the_image_installs_every_package_the_code_it_ships_imports() -> None:
    """The image installs the runtime dependencies and the ``emulator`` extra (its Dockerfile's
    ``uv export --extra emulator``) and runs shared/, services/ and sim/ (the emulator runs from
    the same image): every third-party package those import must be among them. (The emulator
    once imported the official ``openai`` types, then a test-only dependency, and died at start
    in its container.)"""
    import sys
    from importlib.metadata import packages_distributions, requires

    dockerfile = (ROOT / "Dockerfile").read_text()
    extras = set(re.findall(r"uv export [^\n]*?--extra (\w+)", dockerfile))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    shipped = {Requirement(line).name.lower() for line in project["dependencies"]}
    for extra in extras:
        shipped |= {
            Requirement(line).name.lower() for line in project["optional-dependencies"][extra]
        }
    # What the shipped packages pull in themselves is installed too (e.g. pydantic-core).
    closure, todo = set(), list(shipped)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for line in requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower())
    closure = {_normal(name) for name in closure}
    own = {"shared", "services", "sim", "tools", "bench", "tests"}
    by_module = packages_distributions()
    missing = {}
    for module in _imported_top_levels(("shared", "services", "sim")) - own:
        if module in sys.stdlib_module_names or module == "__future__":
            continue
        dists = {_normal(d) for d in by_module.get(module, [])}
        if not dists & closure:
            missing[module] = sorted(dists)
    assert missing == {}, f"imported by the shipped code but not installed in the image: {missing}"
