"""A flow killed with SIGKILL mid-run, then run again, runs only what had not finished."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from killing import sigkill_when

import aioflows as af

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

FLOW = textwrap.dedent(
    """
    import asyncio, os, sys
    import anyio
    import aioflows as af

    LOG = sys.argv[2]
    PAUSE = float(sys.argv[3])

    async def prepare() -> int:
        return 10

    async def step(prepare: int, i: int, ctx: af.TaskContext) -> int:
        with open(LOG, "a") as log:  # one line per execution, durable before the result
            log.write(ctx.unique_name + "\\n")
            log.flush()
            os.fsync(log.fileno())
        await anyio.sleep(PAUSE)
        return prepare + i

    async def total(step: list) -> int:
        return sum(s.value for s in step)

    flow = af.Flow("resumable")
    p = flow.add(prepare)
    s = flow.add(step, {"i": list(range(16))}, requires=[p])
    flow.add(total, requires=[s], reduce=True)

    run = asyncio.run(flow.run(store=af.LocalFileStore(sys.argv[1]), concurrency=2))
    print("total", run.values("total")[0], flush=True)
    """
)


def executions(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def run_until_killed(script: Path, store: Path, log: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(log), "0.05"])
    # A few steps done, others running or pending.
    sigkill_when(proc, lambda: len(executions(log)) >= 6, "the flow")


async def test_a_flow_killed_mid_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    script, store_dir, log = tmp_path / "flow.py", tmp_path / "store", tmp_path / "log"
    script.write_text(FLOW)
    run_until_killed(script, store_dir, log)

    store = af.LocalFileStore(store_dir)
    finished = {i.unique_name for i in await store.list_infos() if i.state is af.TaskState.FINISHED}
    started_before = executions(log)
    assert "prepare-1" in finished
    assert 0 < len(finished - {"prepare-1"}) < 16
    assert "total-1" not in finished

    log.unlink()
    with anyio.fail_after(120):
        proc = await anyio.run_process(
            [sys.executable, str(script), str(store_dir), str(log), "0"], check=False
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["total", str(sum(10 + i for i in range(16)))]
    rerun = executions(log)
    every_step = {f"step-{k}" for k in range(1, 17)}
    assert set(rerun) == every_step - finished  # nothing finished ran again...
    assert len(rerun) == len(set(rerun))  # ...and nothing ran twice
    assert set(started_before) | set(rerun) >= every_step
    infos = await store.list_infos()
    assert len(infos) == 18
    assert {i.state for i in infos} == {af.TaskState.FINISHED}
