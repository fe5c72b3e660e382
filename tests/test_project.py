"""Checks on the project itself: CI runs the README's test command; layers the linter cannot see."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Run the tests", 1)[1]
    command = re.search(r"```\n(.+?)\n```", section, re.S).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert command in ci_lines


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_bridge_uses_no_widgets():
    # import-linter cannot forbid a submodule of an outside package, so this checks it instead.
    for path in (ROOT / "desktop" / "bridge").rglob("*.py"):
        assert not any(name.startswith("PySide6.QtWidgets") for name in imported_modules(path)), path


def test_heavy_imports_live_in_the_backend_only():
    heavy = ("torch", "diffusers", "transformers", "accelerate")
    for path in (ROOT / "desktop").rglob("*.py"):
        if path.name == "diffusers_backend.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        for node in top_level:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] in heavy for n in names), f"{path}: {names}"


MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def broken_markdown_links(root: Path) -> list[str]:
    """Relative links in README.md and docs/*.md whose file or heading does not exist (URLs skipped)."""
    broken = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if re.match(r"[a-z][a-z0-9+.-]*:", path):
                continue
            file = page.parent / path if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(root)}: {target}")
            elif "#" in target and file.suffix == ".md" and target.split("#", 1)[1] not in heading_anchors(file):
                broken.append(f"{page.relative_to(root)}: {target} (no such heading)")
    return broken


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_relative_markdown_link_resolves():
    assert broken_markdown_links(ROOT) == []


def command_line_options() -> set[str]:
    """Every --option of every `marble` command and subcommand, from the real parser."""
    import argparse

    from desktop.cli import build_parser

    options: set[str] = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            options.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
    return options


def test_docs_cli_names_every_command_line_option():
    reference = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = sorted(o for o in command_line_options() if not re.search(re.escape(o) + r"(?![\w-])", reference))
    assert missing == []
