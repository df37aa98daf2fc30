"""A flow whose task bodies run on a Dask cluster: ``flow.run(executor=af.DaskExecutor(...))``.

    numbers (4 values) ─> collatz (sync, CPU) ─> annotate (async) ─> longest (reduce)

The example starts a ``LocalCluster`` of two worker processes itself (a real deployment would
pass the address of its scheduler, ``"tcp://scheduler:8786"``). Each instance's body runs in a
worker process: the sync ``collatz`` in a worker's thread, the async ``annotate`` on the
worker's event loop. The scheduling, the retry of ``collatz`` and the store stay here, so the
second run loads every result from the store and sends nothing to the cluster.

    pip install "aioflows[dask]"
    python examples/flow_on_dask.py
"""

from __future__ import annotations

import asyncio
import os

from distributed import LocalCluster

import aioflows as af


@af.task(retry=3)
def collatz(start: int) -> dict[str, int]:
    """How many Collatz steps lead from ``start`` to 1 (plain CPU work, in a worker)."""
    n, steps = start, 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return {"start": start, "steps": steps, "pid": os.getpid()}


async def annotate(collatz: dict[str, int]) -> dict[str, int]:
    """An async step: it runs on the worker's event loop."""
    await asyncio.sleep(0.01)  # e.g. a call to a service
    return {**collatz, "annotated_by": os.getpid()}


@af.task(reduce=True)
def longest(annotate: list[af.Sweep]) -> dict[str, int]:
    best: dict[str, int] = max((s.value for s in annotate), key=lambda v: v["steps"])
    return best


def build() -> af.Flow:
    flow = af.Flow("collatz")
    steps = flow.add(collatz, {"start": [27, 97, 871, 6171]})
    notes = flow.add(annotate, requires=[steps])
    flow.add(longest, requires=[notes])
    return flow


async def main(address: str) -> None:
    store = af.MemoryStore()
    executor = af.DaskExecutor(address)  # it opens a client per run and closes it after
    run = await build().run(store=store, executor=executor)
    best = run.results["longest"][0].value
    pids = {r.value["pid"] for r in run.results["collatz"]}
    print(f"longest: {best['start']} takes {best['steps']} steps")
    print(f"ran in worker processes {sorted(pids)}, not in this one ({os.getpid()})")
    again = await build().run(store=store, executor=executor)
    states = sorted({state.value for state in again.states.values()})
    print(f"second run on Dask: every instance {', '.join(states)}")


if __name__ == "__main__":
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as cluster:
        asyncio.run(main(cluster.scheduler_address))
