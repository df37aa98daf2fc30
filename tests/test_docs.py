"""Every ```python block in docs/*.md and README.md runs on its own and exits 0; the docs
site lists every page and every public name (``mkdocs build --strict`` in .ci/run does the
rest: links, anchors, references)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_OPEN = re.compile(r"^```python\s*$")
_CLOSE = re.compile(r"^```\s*$")


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """The ``(line number, code)`` of each fenced python block of ``page``."""
    blocks: list[tuple[int, str]] = []
    start: int | None = None
    lines: list[str] = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if start is None:
            if _OPEN.match(line):
                start, lines = number, []
        elif _CLOSE.match(line):
            blocks.append((start, "\n".join(lines) + "\n"))
            start = None
        else:
            lines.append(line)
    assert start is None, f"{page.name}:{start}: python block never closed"
    return blocks


SNIPPETS = [
    pytest.param(code, id=f"{page.relative_to(ROOT)}:{line}")
    for page in PAGES
    for line, code in python_blocks(page)
]


def test_there_are_snippets() -> None:
    pages = {param.id.split(":")[0] for param in SNIPPETS}
    assert {"README.md", "docs/index.md", "docs/limits.md"} <= pages


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}\n--- stderr ---\n{proc.stderr}"


def _site_hooks() -> ModuleType:
    """docs/_hooks.py, the docs build's own code, imported as mkdocs does."""
    spec = importlib.util.spec_from_file_location("_docs_hooks", ROOT / "docs" / "_hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_reference_has_every_public_name() -> None:
    import aioflows

    reference = _site_hooks().reference_markdown()
    entries = re.findall(r"^::: aioflows\.(\w+)$", reference, re.M)
    assert sorted(entries) == sorted(n for n in aioflows.__all__ if n != "__version__")


def _pages(nav: object) -> Iterator[str]:
    """The page files of an mkdocs nav: lists of ``{title: page or nav}``."""
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for entry in nav:
            yield from _pages(entry)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _pages(value)


def test_the_site_nav_has_every_page() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = list(_pages(config["nav"]))
    pages = {p.name for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("_")}
    assert sorted(listed) == sorted(pages)  # each page once
