"""Flows on a real Dask cluster: ``flow.run(executor=af.DaskExecutor(...))``.

One ``LocalCluster`` of 2 worker processes serves the whole module (starting one costs
seconds). The task functions live here at module level, so the workers import them by
reference (the spawned worker processes inherit this process's ``sys.path``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

import aioflows as af

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as local:
        yield local


@pytest.fixture
async def client(cluster: Any) -> AsyncIterator[Any]:
    """An asynchronous client of the test's own event loop."""
    async with distributed.Client(cluster.scheduler_address, asynchronous=True) as opened:
        await opened.wait_for_workers(2)
        yield opened


async def worker_pids(client: Any) -> set[int]:
    return set((await client.run(os.getpid)).values())


async def our_keys(client: Any, prefix: str) -> list[str]:
    """The keys the scheduler still holds that start with ``prefix``."""

    def keys(dask_scheduler: Any) -> list[str]:
        return [str(key) for key in dask_scheduler.tasks]

    held: list[str] = await client.run_on_scheduler(keys)
    return [key for key in held if key.startswith(prefix)]


# --- the tasks (run on the workers) --------------------------------------------------------


def square(x: int) -> dict[str, int]:
    return {"value": x * x, "pid": os.getpid()}


async def shift(square: dict[str, int]) -> dict[str, int]:
    await asyncio.sleep(0.01)  # on the worker's event loop
    return {"value": square["value"] + 1, "pid": os.getpid()}


def total(shift: list[af.Sweep]) -> int:
    return sum(s.value["value"] for s in shift)


def squares_flow() -> af.Flow:
    flow = af.Flow("squares")
    first = flow.add(square, {"x": [1, 2, 3, 4]})
    second = flow.add(shift, requires=[first])
    flow.add(total, requires=[second], reduce=True)
    return flow


def flaky(marker: str) -> str:
    """Fails the first time (in whichever process), then succeeds: the marker file says."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ValueError("first attempt fails")
    return "second attempt"


def broken(x: int) -> int:
    raise ValueError(f"broken {x}")


async def sleepy(i: int) -> int:
    await asyncio.sleep(60)
    return i


def killed_once(marker: str) -> int:
    """The first attempt records its pid and hangs until its worker is killed; the one that
    distributed reruns elsewhere finds the marker and returns."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(60)
    return os.getpid()


def uses_ctx(ctx: af.TaskContext) -> str:
    return ctx.unique_name


# --- the tests -------------------------------------------------------------------------------


async def test_sync_and_async_tasks_run_in_worker_processes(cluster: Any, client: Any) -> None:
    # An address: the executor opens its own client and closes it after.
    run = await squares_flow().run(executor=af.DaskExecutor(cluster.scheduler_address))
    pids = await worker_pids(client)
    assert os.getpid() not in pids
    for name in ("square", "shift"):
        assert {r.value["pid"] for r in run.results[name]} <= pids, name
    assert [r.value["value"] for r in run.results["square"]] == [1, 4, 9, 16]
    assert run.results["total"][0].value == 1 + 4 + 9 + 16 + 4
    assert run.ok


async def test_results_and_caching_as_in_process(client: Any) -> None:
    store = af.MemoryStore()
    executor = af.DaskExecutor(client)  # a client of this loop: used as is, left open
    first = await squares_flow().run(store=store, executor=executor)
    assert set(first.states.values()) == {af.TaskState.FINISHED}
    local = await squares_flow().run()  # the same flow in process: the same values
    for name in ("square", "shift"):
        assert [r.value["value"] for r in first.results[name]] == [
            r.value["value"] for r in local.results[name]
        ]
        assert [r.config_hash for r in first.results[name]] == [
            r.config_hash for r in local.results[name]
        ]
    assert first.results["total"][0].value == local.results["total"][0].value
    # A second run loads everything from the store: nothing goes to the cluster.
    second = await squares_flow().run(store=store, executor=executor)
    assert set(second.states.values()) == {af.TaskState.CACHED}
    assert second.results["total"][0].value == first.results["total"][0].value
    assert client.status == "running"


async def test_a_client_of_another_loop_lends_its_scheduler(cluster: Any) -> None:
    # A plain Client runs its own loop in a thread; the run connects its own to the scheduler.
    sync_client = await anyio.to_thread.run_sync(distributed.Client, cluster.scheduler_address)
    try:
        run = await squares_flow().run(executor=af.DaskExecutor(sync_client))
        assert run.results["total"][0].value == 34
        assert sync_client.status == "running"
    finally:
        await anyio.to_thread.run_sync(sync_client.close)


async def test_a_failing_task_is_retried_in_the_calling_process(
    client: Any, tmp_path: Path
) -> None:
    flow = af.Flow("retries")
    flow.add(af.task(retry=af.Retry(3, backoff=0))(flaky), {"marker": str(tmp_path / "m")})
    run = await flow.run(executor=af.DaskExecutor(client))
    (result,) = run.results["flaky"]
    assert result.value == "second attempt"
    assert result.attempts == 2

    failing = af.Flow("failing")
    failing.add(af.task(retry=af.Retry(2, backoff=0))(broken), {"x": [1]})
    with pytest.raises(af.FlowFailed) as caught:
        await failing.run(executor=af.DaskExecutor(client))
    (error,) = caught.value.errors.values()
    assert isinstance(error, ValueError)  # the task's own exception, carried back by Dask
    assert str(error) == "broken 1"
    assert caught.value.run.results["broken"][0].attempts == 2


async def test_a_timeout_cancels_the_dask_task(client: Any) -> None:
    flow = af.Flow("timeouts")
    flow.add(af.task(timeout=0.5)(sleepy), {"i": [1]})
    started = time.monotonic()
    with pytest.raises(af.FlowFailed) as caught:
        await flow.run(executor=af.DaskExecutor(client))
    assert time.monotonic() - started < 30
    (error,) = caught.value.errors.values()
    assert isinstance(error, TimeoutError)
    await wait_until_released(client, "sleepy-")


async def test_cancelling_the_flow_cancels_the_futures(client: Any) -> None:
    flow = af.Flow("cancel")
    flow.add(sleepy, {"i": [1, 2, 3, 4]})
    running: list[af.TaskEvent] = []

    def seen(event: af.TaskEvent) -> None:
        if event.state is af.TaskState.RUNNING:
            running.append(event)

    async def on_the_cluster() -> bool:
        return len(await our_keys(client, "sleepy-")) == 4

    with anyio.move_on_after(60) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(flow.run, executor=af.DaskExecutor(client), on_event=seen)
            )
            await eventually(on_the_cluster)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert len(running) == 4
    await wait_until_released(client, "sleepy-")


async def wait_until_released(client: Any, prefix: str) -> None:
    """The scheduler forgets cancelled keys soon after the cancel arrives, and the workers
    stop running them (a generous bound)."""

    async def released() -> bool:
        return not await our_keys(client, prefix)

    await eventually(released)

    # Async attempts stop on the workers too (distributed alone would let them run on).
    def executing(dask_worker: Any) -> int:
        return len(dask_worker.state.executing)

    async def idle() -> bool:
        return not any((await client.run(executing)).values())

    await eventually(idle)


async def eventually(condition: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds`` (generous: a noisy machine)."""
    with anyio.fail_after(seconds):
        for _ in itertools.count():
            if await condition():
                return
            await anyio.sleep(0.05)


async def test_a_task_taking_ctx_is_refused_before_anything_runs() -> None:
    flow = af.Flow("ctx")
    flow.add(uses_ctx)
    events: list[af.TaskEvent] = []
    # Nothing listens there: the refusal comes before any connection is tried.
    executor = af.DaskExecutor("tcp://127.0.0.1:9")
    with pytest.raises(af.FlowError, match=r"TaskContext \(ctx\).*uses_ctx"):
        await flow.run(executor=executor, on_event=events.append)
    assert events == []


def test_executor_arguments_are_checked() -> None:
    with pytest.raises(af.FlowError, match="Client or a scheduler address"):
        af.DaskExecutor(cast(Any, 42))
    with pytest.raises(af.FlowError):
        af.DaskExecutor("")
    flow = af.Flow("bad")
    flow.add(square, {"x": [1]})
    with pytest.raises(af.FlowError, match="executor must be an Executor"):
        asyncio.run(flow.run(executor=cast(Any, object())))
    assert repr(af.DaskExecutor("tcp://127.0.0.1:9")) == "DaskExecutor('tcp://127.0.0.1:9')"


async def test_a_worker_killed_mid_task_is_survived(client: Any, tmp_path: Path) -> None:
    # Last in the module: the nanny restarts the killed worker in the background.
    marker = tmp_path / "pid"
    flow = af.Flow("killed")
    flow.add(af.task(retry=af.Retry(3, backoff=0))(killed_once), {"marker": str(marker)})

    async def started() -> bool:
        return marker.exists() and bool(marker.read_text())

    async def kill_when_started() -> None:
        await eventually(started)
        os.kill(int(marker.read_text()), signal.SIGKILL)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_when_started)
            run = await flow.run(executor=af.DaskExecutor(client))
    (result,) = run.results["killed_once"]
    assert result.state is af.TaskState.FINISHED
    assert result.value != int(marker.read_text())  # finished in another worker process
    assert result.value != os.getpid()
