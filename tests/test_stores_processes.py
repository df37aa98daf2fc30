"""LocalFileStore across real processes: SIGKILL mid-write, and two writers on one base_dir.

Every object written here checks itself (all its items carry the writer's sequence number and
there is a known count of them), so a torn or mixed file cannot pass for a whole one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import aioflows as af

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

ITEMS = 20_000  # about 200 kB of JSON per object

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import aioflows as af

    ITEMS = {items}

    def make(writer, i):
        return {{"writer": writer, "i": i, "items": [i] * ITEMS}}

    def check(obj):
        assert len(obj["items"]) == ITEMS and set(obj["items"]) == {{obj["i"]}}, "torn object"

    async def main(base, writer, count):
        store = af.LocalFileStore(base)
        for i in range(count):
            await store.save(make(writer, i), "shared", task="t", config_hash="h")
            await store.save(make(writer, i), f"own-{{i % 3}}", task=writer, config_hash="h")
            info = af.TaskInfo("t", "h", "t-0", "running", attempts=i, error=writer)
            await store.save_info(info)
            if i == 0:
                print("saved", flush=True)
            check(await store.load("shared", task="t", config_hash="h"))
            assert (await store.load_info(task="t", config_hash="h")).state == "running"
        print("done", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
).format(items=ITEMS)


def check_object(obj: Any) -> None:
    assert len(obj["items"]) == ITEMS
    assert set(obj["items"]) == {obj["i"]}


def start_writer(script: Path, base: Path, writer: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", str(script), str(base), writer, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_store_whole(base: Path) -> None:
    """Every visible file parses as what its name says."""
    files = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert files
    for path in files:
        data = json.loads(path.read_text())  # a torn file would not parse
        if path.name == "_taskinfo.json":
            af.TaskInfo.model_validate(data)
        else:
            check_object(data)


async def load_whole(base: Path) -> None:
    store = af.LocalFileStore(base)
    check_object(await store.load("shared", task="t", config_hash="h"))
    info = await store.load_info(task="t", config_hash="h")
    assert info is not None
    assert info.state is af.TaskState.RUNNING
    for data in (await store.get_results(task="t", config_hash="h")).values():
        check_object(data)


def kill_mid_write(script: Path, base: Path, writer: str, delay: float) -> None:
    """Start a writer, let it save once and run on for ``delay`` s, then SIGKILL it."""
    proc = start_writer(script, base, writer, 1_000_000)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "saved", proc.stderr.read() if proc.stderr else ""
        time.sleep(delay)  # land the kill at different points of the save cycle
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def run_writers(script: Path, base: Path, writers: list[str], count: int) -> None:
    procs = [start_writer(script, base, writer, count) for writer in writers]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err  # each writer checked every load it made
        assert out.split() == ["saved", "done"]


def hidden(base: Path) -> list[Path]:
    return list(base.rglob(".*"))


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.05, 0.13])
async def test_sigkill_mid_write_leaves_old_or_new_never_torn(tmp_path: Path, delay: float) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    base = tmp_path / "store"
    kill_mid_write(script, base, "w1", delay)
    assert_store_whole(base)
    await load_whole(base)
    store = af.LocalFileStore(base)
    await store.save({"after": "crash"}, "shared", task="t", config_hash="h")  # still writable
    assert await store.load("shared", task="t", config_hash="h") == {"after": "crash"}


async def test_repeated_kills_never_tear_anything(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    base = tmp_path / "store"
    for round_ in range(6):
        kill_mid_write(script, base, f"w{round_ % 2}", 0.01 * round_)
        assert_store_whole(base)
    await load_whole(base)
    store = af.LocalFileStore(base, stale_after=1e-9)
    await store.cleanup()  # temporaries of the killed writers are now stale
    assert hidden(base) == []
    await load_whole(base)


async def test_two_processes_share_one_base_dir(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    base = tmp_path / "store"
    run_writers(script, base, ["a", "b"], 60)
    assert_store_whole(base)
    await load_whole(base)
    store = af.LocalFileStore(base)
    shared = await store.load("shared", task="t", config_hash="h")
    assert shared["writer"] in {"a", "b"}  # last writer wins, whichever it was
    for writer in ("a", "b"):
        results = await store.get_results(task=writer, config_hash="h")
        assert sorted(results) == ["own-0", "own-1", "own-2"]
        assert {obj["writer"] for obj in results.values()} == {writer}
    assert hidden(base) == []  # writers that finished leave no temporaries
    assert sorted(os.listdir(base)) == ["a", "b", "t"]
