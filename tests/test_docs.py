"""The README and the docs say what the repository holds.

``make docs`` (``mkdocs build --strict``) checks every link inside docs/; these tests check what
it cannot see: the README's and the changelog's links, the make targets the README names, and
that the architecture page's tree lists every module there is, and no module that is gone.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "services", "sim", "tools", "bench")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING_RE = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
FENCE_RE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub and mkdocs' toc both make it for plain words."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_slug(h) for h in HEADING_RE.findall(FENCE_RE.sub("", markdown))}


def broken_links(page: Path) -> list[str]:
    """The relative links of a Markdown page that name no file, or no heading in that file."""
    text = FENCE_RE.sub("", page.read_text(encoding="utf-8"))
    broken: list[str] = []
    for target in LINK_RE.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http(s), mailto: not followed from the tests
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            if anchor not in _anchors(file.read_text(encoding="utf-8")):
                broken.append(target)
    return broken


def test_every_link_in_the_readme_and_the_changelog_resolves() -> None:
    for name in ("README.md", "CHANGELOG.md"):
        assert broken_links(ROOT / name) == [], name


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A part\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-part) [gone](missing.md) [no heading](other.md#nowhere)\n"
        "![image](other.md) [web](https://example.com/x)\n"
        "```\n[in code](not-a-link.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.md", "other.md#nowhere"]


def test_the_changelog_has_no_relative_links() -> None:
    # docs/changelog.md includes it as it is: a link relative to the top would break in the site.
    text = FENCE_RE.sub("", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
    relative = [t for t in LINK_RE.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    assert relative == []


def test_the_readme_keeps_the_two_set_up_commands_and_names_only_real_targets() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", readme))
    assert named - targets == set()
    assert len(readme.splitlines()) < 200


def tree_modules(markdown: str) -> set[str]:
    """The file paths the architecture page's tree lists: each line's first word, under the
    nearest less indented folder above it."""
    section = markdown.split("## The tree", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block, "the tree's code block"
    found: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(folder for _, folder in stack) + name
        if name.endswith("/"):
            stack.append((indent, name))
        else:
            found.add(path)
    return found


def modules_on_disk() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            relative = file.relative_to(ROOT)
            if file.name == "__init__.py":
                continue
            if file.name == "__main__.py" and relative.parts[0] == "services":
                continue  # python -m services.<stage>: settings first, then the service
            found.add(relative.as_posix())
    return found


def test_the_architecture_tree_lists_every_module_and_only_real_ones() -> None:
    listed = tree_modules((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    listed_py = {path for path in listed if path.endswith(".py")}
    on_disk = modules_on_disk()
    assert on_disk - listed_py == set(), "modules missing from docs/architecture.md's tree"
    assert listed_py - on_disk == set(), "modules in docs/architecture.md's tree that are gone"
    for path in listed - listed_py:
        assert (ROOT / path).exists(), path


def test_the_tree_reader_follows_indentation() -> None:
    page = "## The tree\n\n```\na/          x\n  b.py      y\n  c/\n    d.py\ne.py\n```\n"
    assert tree_modules(page) == {"a/b.py", "a/c/d.py", "e.py"}
