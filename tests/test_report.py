"""``aioflows report``: the page of the last run, opened in a real headless Chromium.

Chromium is required, not optional: CI installs it (``.ci/run``), and a missing one fails here
with the command that installs it. The page is loaded from a file with every host name made
unresolvable, its DOM dumped after its script ran, and Chromium's log of the page's console
read: a page that logs anything (an error, an uncaught exception) fails the test.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli import cli, write

FLOW = """
import aioflows as af

@af.task
async def load(n):
    return list(range(n))

@af.task
async def train(load, lr):
    if lr == 0.2:
        raise ValueError("lr 0.2 <diverged> & stopped")
    return sum(load) * lr

@af.task(reduce=True)
async def best(train):
    return max(s.value for s in train)

@af.task
async def side(k):
    return k

flow = af.Flow("report")
l = flow.add(load, {"n": 4})
t = flow.add(train, {"lr": [0.1, 0.2, 0.3]}, requires=[l])
flow.add(best, requires=[t])
flow.add(side, {"k": ["<b>x</b>", "y"]})
"""

INSTANCES = 7  # load-1, train-1..3, best-1, side-1..2


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(
        "the report tests need a headless Chromium: apt-get install -y chromium "
        "(.ci/run installs it when missing)"
    )


def open_page(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM of ``page`` after its scripts ran, and what it logged to its console."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing may come from the network
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_the_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    # The check below must be able to fail: a page whose script throws is caught.
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = open_page(page, tmp_path / "profile")
    assert any("Uncaught ReferenceError" in line for line in console), console


def test_report_renders_one_bar_per_instance_with_no_console_errors(tmp_path: Path) -> None:
    write(tmp_path / "flows.py", FLOW)
    assert cli(tmp_path, "run", "flows.py", "--keep-going").returncode == 1
    proc = cli(tmp_path, "report", "-o", "run.html")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote run.html: flow report, run ")
    source = (tmp_path / "run.html").read_text(encoding="utf-8")
    # Self-contained: nothing it would fetch (the SVG namespace is a name, not a fetch).
    assert not re.search(r"""\b(src|href)\s*=|@import|url\(""", source)

    dom, console = open_page(tmp_path / "run.html", tmp_path / "profile")
    assert console == []
    bars = re.findall(r'<rect class="bar" data-instance="([^"]+)" data-state="([^"]+)"', dom)
    assert len(bars) == INSTANCES
    states = dict(bars)
    assert states["train-2"] == "failed"
    assert states["best-1"] == "upstream_failed"
    assert states["side-1"] == "finished"
    assert f'data-bars="{INSTANCES}"' in dom  # the page's own script ran to its end
    nodes = re.findall(r'<g class="node" data-instance="([^"]+)" data-state="([^"]+)"', dom)
    assert dict(nodes) == states  # the graph, coloured the same way
    # The failure's message and traceback, escaped; each instance's config, escaped.
    assert "ValueError: lr 0.2 &lt;diverged&gt; &amp; stopped" in dom
    assert "Traceback (most recent call last)" in dom
    assert html.escape('{"k": "<b>x</b>"}', quote=False) in dom
    assert "<b>x</b>" not in dom
    counts = re.search(r'<table id="counts">(.*?)</table>', dom, re.S)
    assert counts is not None
    assert re.search(r"<td>train</td><td>3</td>", counts.group(1))

    # A second run (all cached or re-run) is what the page then shows.
    assert cli(tmp_path, "run", "flows.py", "--target", "load").returncode == 0
    assert cli(tmp_path, "report", "-o", "again.html").returncode == 0
    again = (tmp_path / "again.html").read_text(encoding="utf-8")
    assert again.count('class="bar"') == 1


def test_report_without_a_run_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli(tmp_path, "report")
    assert proc.returncode == 2
    assert proc.stderr.startswith("aioflows: error: no run recorded in .aioflows")
