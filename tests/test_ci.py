"""The project's front door: README's two commands, and CI running exactly the test one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None, "README.md must start with a bash block of two commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_the_demo_and_the_test_command() -> None:
    demo, tests = readme_commands()
    for line in (demo, tests):
        # Each line stands alone and makes its own venv: a bare `pip install` fails on a
        # distribution's "externally managed" (PEP 668) python3.
        assert line.startswith("python3 -m venv .venv && .venv/bin/pip install -e ")
        assert " pip install" not in line.replace(".venv/bin/pip install", "")
    assert "&& .venv/bin/aioflows run examples/" in demo
    assert "&& .venv/bin/python -m pytest" in tests
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("```bash")[0]
    assert len(head.splitlines()) <= 4, "the commands must come first"


def test_ci_runs_exactly_readmes_test_command() -> None:
    _, tests = readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci_lines


def test_the_demo_command_runs_the_flow_and_caches_it(tmp_path: Path) -> None:
    demo, _ = readme_commands()
    script = demo.split("aioflows run ", 1)[1].strip()
    assert (ROOT / script).is_file()
    command = [sys.executable, "-m", "aioflows", "run", str(ROOT / script), "--no-progress"]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / ".aioflows").is_dir()
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "cached" in second.stdout.lower()


def test_console_script_prints_version_and_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "aioflows.cli", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0
    assert version.stdout.startswith("aioflows ")
    helptext = subprocess.run(
        [sys.executable, "-m", "aioflows.cli"], capture_output=True, text=True
    )
    assert helptext.returncode == 0
    assert "usage: aioflows" in helptext.stdout
