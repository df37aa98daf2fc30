"""Benchmark of ``af.DaskExecutor``: what running a flow's tasks on Dask costs over Dask itself.

Run with ``python -m benchmarks.distributed_dask`` (about 30 s on a 2-core machine;
``--rounds N`` changes the number of measured rounds). One local cluster
(``LocalCluster(n_workers=2, processes=True, threads_per_worker=1)``) serves every contender:

- **client.map + gather**: the bare baseline, 1,000 calls of a function burning 1 ms of CPU
  submitted in one ``client.map`` (one graph, one message) and gathered;
- **flow on DaskExecutor**: a flow of one task with a 1,000-value config grid, each instance
  one Dask task submitted by the executor, awaited, and handed back to the flow's scheduler.

Both use one asynchronous client on the benchmark's event loop, made before the timing; only
the work is timed, in wall time (the target) and in CPU time of this process, which holds the
client and, in a ``LocalCluster``, the Dask scheduler too: the overhead either adds, and the
figure that moves less on a loaded machine. Contenders are interleaved round by round so
drift in the machine's speed hits them alike, and the first (warm-up) round is dropped.
Target: the flow takes at most 1.3x the wall time of the bare baseline.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

from distributed import Client, LocalCluster

import aioflows as af

from ._report import part_parser, print_header, print_table, verdict

ROUNDS = 5
N_TASKS = 1_000
CPU_SECONDS = 0.001
TARGET = 1.3


def burn(i: int) -> int:
    """1 ms of CPU: a busy loop on the thread's CPU clock, so that load elsewhere on the
    machine does not shorten the work."""
    end = time.thread_time() + CPU_SECONDS
    while time.thread_time() < end:
        pass
    return i


async def bare(client: Client) -> None:
    futures = client.map(burn, range(N_TASKS), pure=False)
    results = await client.gather(futures)
    assert results == list(range(N_TASKS))


def flow_of_burns() -> af.Flow:
    flow = af.Flow("burns")
    flow.add(burn, {"i": list(range(N_TASKS))})
    return flow


async def on_dask(client: Client) -> None:
    run = await flow_of_burns().run(executor=af.DaskExecutor(client))
    assert sorted(r.value for r in run.results["burn"]) == list(range(N_TASKS))


async def measure(
    address: str, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    contenders: dict[str, Callable[[Client], Awaitable[None]]] = {
        "client.map + gather": bare,
        "flow on DaskExecutor": on_dask,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    async with Client(address, asynchronous=True) as client:
        for round_ in range(rounds + 1):
            for name, run in contenders.items():
                gc.collect()
                started, cpu_started = time.perf_counter(), time.process_time()
                await run(client)
                if round_:  # the first round warms the workers up (imports, pickling)
                    times[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - cpu_started)
    return times, cpu


def main() -> None:
    parser = part_parser(
        "python -m benchmarks.distributed_dask",
        "Benchmark of af.DaskExecutor against client.map + gather.",
        ["dask"],
        ROUNDS,
    )
    args = parser.parse_args()
    print_header(("aioflows", "distributed"), args.rounds)
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as cluster:
        times, cpu = asyncio.run(measure(cluster.scheduler_address, args.rounds))
    base = statistics.median(times["client.map + gather"])
    cpu_base = statistics.median(cpu["client.map + gather"])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        cpu_median = statistics.median(cpu[name])
        rows.append(
            [
                name,
                f"{median:.3f}",
                f"{min(samples):.3f}",
                f"{median / base:.2f}x",
                f"{cpu_median:.3f}",
                f"{cpu_median / cpu_base:.2f}x",
            ]
        )
    print_table(
        f"{N_TASKS:,} sync tasks of {CPU_SECONDS * 1000:.0f} ms CPU on 2 worker processes "
        "(seconds)",
        ["contender", "wall", "best wall", "vs client.map", "CPU here", "vs client.map"],
        rows,
    )
    ratio = statistics.median(times["flow on DaskExecutor"]) / base
    print(
        f"\nflow on DaskExecutor / client.map + gather: {ratio:.2f}x (target <= {TARGET}x) "
        f"{verdict(ratio <= TARGET)}"
    )


if __name__ == "__main__":
    main()
