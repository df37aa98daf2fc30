"""Benchmark of ``Flow.run``: the scheduling machinery per node, against hand-written executors.

Run with ``python -m benchmarks.flows`` (about 2 minutes on a 2-core machine; ``--part
fanout|chain|dag|rss|failfast`` runs one part, ``--rounds N`` changes the number of measured
rounds). ``--big [NODES]`` runs only part 6 (issue 15): a fan-out of 1,000,000 nodes (one
source, one task over 999,998 configs, one reduce) with no store, in a fresh process:
``flow.graph()`` and then ``flow.run()`` (which reuses that graph) timed apart in CPU
seconds, and the child's peak RSS (``VmHWM``) and bytes per node above the imports, against
the targets of 15 s CPU for both and 1 GiB (the CPU target scaled to NODES).

In parts 1-4 every node runs a no-op ``async def`` that returns at once, so what is
measured is the cost of the executor itself, in CPU time (``time.process_time``). Five parts:

1. **fan-out/fan-in**: one source, a task expanded over 10,000 configs (``{"i": [0..9999]}``)
   that each require the source, and a ``reduce`` sink that requires all 10,000: 10,002 nodes.
2. **chains** of 500 and of 2,000 tasks, each requiring the one before it. A chain runs one
   node at a time, so its cost per node must not grow with its length: per-node cost at 2,000
   should stay within 1.5x of that at 500 (no hidden quadratic step).
3. **random layered DAG**: 100 layers of 100 tasks; each task after the first layer requires 3
   distinct tasks drawn at random (fixed seed) from all earlier layers: 10,000 nodes.
4. **peak RSS**: the fan-out at 100,000 nodes (one source, 100,000 expanded instances, a reduce
   sink), run once per contender in a fresh subprocess (``--rss-child``) that reports its peak
   resident set at the end: the whole process, interpreter and imports included (an
   imports-only child is shown for reference). The peak is ``VmHWM`` from ``/proc/self/status``;
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is shown beside it but is not the child's own
   on Linux: ``execve`` carries the parent's high-water mark into it. CPU s there is one run's
   declaration + ``Flow.run`` (or the baseline's run), for context.
5. **fail-fast**: how long stopping 10,000 running instances takes. A task is expanded over
   10,000 configs whose instances all sleep for ever; a task ``boom`` waits until all 10,000 run,
   then raises. *Stopping* is timed from ``boom``'s raise to ``flow.run`` raising ``FlowFailed``
   (every sleeper cancelled and marked KILLED, their records written, the ``FlowRun`` built),
   without a store and with a fresh ``LocalFileStore``. The reference is an anyio task group of
   10,000 tasks in ``anyio.sleep_forever()``, timed from ``tg.cancel_scope.cancel()`` to the
   ``async with`` exiting; a plain ``asyncio.TaskGroup`` (a child raising, to the group exiting)
   is shown too. Stopping is measured in CPU time like the other parts (the records are
   written without fsync, so with a store too it is work, not waiting: the worker thread's CPU
   counts, kernel time included); the wall time and the GC's share of the span are shown beside.
   ``gc.collect()`` runs just before each span starts, so that no contender pays there for a
   full collection its start-up made due. Every round checks that all 10,000 instances are
   KILLED in ``run.states`` and, with the store, in ``list_infos()`` (outside the span).

Contenders, each given the same DAG:

- **aioflows** ``await flow.run()`` (no store, ``concurrency=None``). The ``Flow`` (the
  ``flow.add`` calls, the declaration) is built once per workload outside the timed region, as
  the baselines' dicts are; ``Flow.run`` itself is timed whole: signature binding, config
  expansion, identity hashing of every node (``config_hash``), state records, the worker pool
  and the ``FlowRun`` with one ``TaskResult`` per node. Printed apart, for reference: the CPU
  time of the declaration and of ``flow.graph()`` alone (the expansion part of ``Flow.run``).
- **naive anyio**: the DAG as a plain dict ``node -> [predecessor ids]``; one task per node in
  one task group, each with an ``anyio.Event`` set when it is done; a task waits on its
  predecessors' events, then calls the no-op.
- **graphlib + asyncio.Queue**: ``graphlib.TopologicalSorter`` over the same dict, 32 asyncio
  worker tasks sharing an ``asyncio.Queue`` of ready nodes, fed by ``get_ready()`` after each
  ``done()``.

The baselines pass each node its predecessors' results (as positional arguments) and keep every
result, so all contenders move the data along; they have no configs, identities, states or
results records. The fan-out's source, work and sink nodes all call the same kind of no-op.

Targets: ``Flow.run`` at most 1x the naive anyio executor's CPU per node, on every workload,
and at most 2x the bare ``graphlib + asyncio.Queue`` scheduler's on the fan-out (issue 15,
target 1: the executor's whole cost, expansion and hashing included, against a scheduler that
has none of its states, identities or records);
chain cost per node at 2,000 within 1.5x of that at 500; the 100,000-node fan-out under 1 GiB
peak RSS; stopping 10,000 running instances, with or without a LocalFileStore, within 1.5x of
the anyio task group cancelling 10,000 sleeping tasks. Prefect 3 is not included: it brings a
heavy dependency tree (a server, a database layer, ...) and is not in the dev extra.

Each round runs in a fresh event loop with only the work timed (not loop start-up or shutdown),
after ``gc.collect()``. The garbage collector stays on during the work, as in real use, and the
CPU time it takes within the timed region is shown (``gc.callbacks``): with thousands of tasks
alive at once it is a large share of every contender's cost. Rounds return only a node count,
so no round's objects are alive in the next. Contenders are interleaved round by round so drift
in the machine's speed hits them alike, and the first (warm-up) round is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import graphlib
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

import aioflows as af

from ._report import part_parser, print_header, print_table, run_parts, verdict

#: Measured rounds per contender (at least 5); one warm-up round more is run and dropped.
ROUNDS = 5

N_FANOUT = 10_000
CHAIN_SHORT = 500
CHAIN_LONG = 2_000
DAG_LAYERS = 100
DAG_WIDTH = 100
DAG_PREDECESSORS = 3
DAG_SEED = 20240601
N_RSS = 100_000
QUEUE_WORKERS = 32

TARGET_VS_NAIVE = 1.0
TARGET_VS_GRAPHLIB = 2.0  # issue 15, target 1: the fan-out's Flow.run against the bare scheduler
TARGET_CHAIN_GROWTH = 1.5
TARGET_RSS_MIB = 1024.0
N_FAILFAST = 10_000
TARGET_FAILFAST = 1.5
N_BIG = 1_000_000
TARGET_BIG_CPU = 15.0  # seconds of CPU for flow.graph() + flow.run() at N_BIG nodes
TARGET_BIG_MIB = 1024.0

AIOFLOWS = "aioflows Flow.run"
NAIVE = "naive anyio (task + Event)"
GRAPHLIB = "graphlib + asyncio.Queue"

Work = Callable[[], Awaitable[int]]
#: A DAG as the baselines get it: node id -> predecessor ids, in a topological order.
Preds = dict[int, list[int]]


# -- measuring --------------------------------------------------------------------------------


class GcMeter:
    """CPU time spent in the cyclic garbage collector, through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.total += time.process_time() - self._start


GC_METER = GcMeter()


@dataclass
class Sample:
    cpu: float  # seconds of process CPU time for the work
    gc: float  # of which in the cyclic garbage collector
    nodes: int  # nodes the contender ran


async def _timed(work: Work) -> Sample:
    """Run ``work`` inside the running loop; its CPU time, GC share and node count."""
    gc_before = GC_METER.total
    start = time.process_time()
    nodes = await work()
    cpu = time.process_time() - start
    return Sample(cpu, GC_METER.total - gc_before, nodes)


def measure(work: Work) -> Sample:
    """One round: a fresh event loop, ``gc.collect()`` first, only ``work`` itself timed."""
    gc.collect()
    gc.callbacks.append(GC_METER)
    try:
        return asyncio.run(_timed(work))
    finally:
        gc.callbacks.remove(GC_METER)


def run_rounds(contenders: dict[str, Work], rounds: int) -> dict[str, list[Sample]]:
    """Interleave the contenders round by round; the warm-up round is run and dropped."""
    results: dict[str, list[Sample]] = {name: [] for name in contenders}
    for round_no in range(rounds + 1):
        for name, work in contenders.items():
            sample = measure(work)
            if round_no > 0:
                results[name].append(sample)
    return results


def median(samples: list[Sample], field: str = "cpu") -> float:
    return float(statistics.median(getattr(sample, field) for sample in samples))


# -- the no-op tasks --------------------------------------------------------------------------


async def noop(*args: Any, **kwargs: Any) -> Any:
    """Every node of every contender: returns at once (no checkpoint), so only the
    executor's own cost is measured."""
    return None


# -- the workloads ----------------------------------------------------------------------------


class Workload:
    """One DAG, declared both as an ``af.Flow`` and as the baselines' ``Preds`` dict."""

    def __init__(self, title: str, build_flow: Callable[[], af.Flow], preds: Preds) -> None:
        self.title = title
        self.build_flow = build_flow
        self.preds = preds
        self.nodes = len(preds)


def fanout_preds(n: int) -> Preds:
    """Node 0 the source, 1..n the expanded work, n + 1 the sink requiring all of them."""
    preds: Preds = {0: []}
    for i in range(1, n + 1):
        preds[i] = [0]
    preds[n + 1] = list(range(1, n + 1))
    return preds


def fanout_flow(n: int) -> af.Flow:
    flow = af.Flow("fanout")
    src = flow.add(noop, name="source")
    work = flow.add(noop, {"i": list(range(n))}, name="work", requires=[src])
    flow.add(noop, name="sink", requires=[work], reduce=True)
    return flow


def fanout(n: int) -> Workload:
    return Workload(
        f"fan-out/fan-in: 1 source -> 1 task over {n:,} configs -> 1 reduce sink",
        lambda: fanout_flow(n),
        fanout_preds(n),
    )


def chain_flow(n: int) -> af.Flow:
    flow = af.Flow("chain")
    prev = flow.add(noop, name="t0")
    for i in range(1, n):
        prev = flow.add(noop, name=f"t{i}", requires=[prev])
    return flow


def chain(n: int) -> Workload:
    preds: Preds = {0: []}
    for i in range(1, n):
        preds[i] = [i - 1]
    return Workload(f"chain of {n:,} tasks", lambda: chain_flow(n), preds)


def dag_preds() -> Preds:
    """``DAG_LAYERS`` x ``DAG_WIDTH`` nodes; each node after layer 0 requires
    ``DAG_PREDECESSORS`` distinct nodes of earlier layers, drawn with a fixed seed."""
    rng = random.Random(DAG_SEED)
    preds: Preds = {}
    for layer in range(DAG_LAYERS):
        start = layer * DAG_WIDTH
        for node in range(start, start + DAG_WIDTH):
            preds[node] = sorted(rng.sample(range(start), DAG_PREDECESSORS)) if start else []
    return preds


def dag_flow(preds: Preds) -> af.Flow:
    flow = af.Flow("dag")
    specs: dict[int, af.TaskSpec] = {}
    for node, ps in preds.items():
        specs[node] = flow.add(noop, name=f"n{node}", requires=[specs[p] for p in ps])
    return flow


def dag() -> Workload:
    preds = dag_preds()
    return Workload(
        f"random layered DAG: {DAG_LAYERS} layers x {DAG_WIDTH} tasks, "
        f"{DAG_PREDECESSORS} random predecessors each (seed {DAG_SEED})",
        lambda: dag_flow(preds),
        preds,
    )


# -- the contenders ---------------------------------------------------------------------------


async def with_aioflows(flow: af.Flow, fresh: bool = True) -> int:
    """``flow.run()``; ``fresh``: with the graph expanded again, as a flow's first run does (a
    flow keeps its last graph while unchanged, and rounds must not share one)."""
    if fresh:
        flow._graph = None
    run = await flow.run()
    assert run.ok
    return len(run.states)


async def with_naive(preds: Preds) -> int:
    """One task per node, an ``anyio.Event`` each; wait on the predecessors', run, set."""
    events = {node: anyio.Event() for node in preds}
    results: dict[int, Any] = {}

    async def one(node: int, ps: list[int]) -> None:
        for p in ps:
            await events[p].wait()
        results[node] = await noop(*[results[p] for p in ps])
        events[node].set()

    async with anyio.create_task_group() as tg:
        for node, ps in preds.items():
            tg.start_soon(one, node, ps)
    assert len(results) == len(preds)
    return len(results)


async def with_graphlib(preds: Preds) -> int:
    """``graphlib.TopologicalSorter`` feeding an ``asyncio.Queue`` drained by 32 workers."""
    sorter = graphlib.TopologicalSorter(preds)
    sorter.prepare()
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    results: dict[int, Any] = {}
    for node in sorter.get_ready():
        queue.put_nowait(node)

    async def worker() -> None:
        while True:
            node = await queue.get()
            if node is None:
                return
            ps = preds[node]
            results[node] = await noop(*[results[p] for p in ps])
            sorter.done(node)
            for ready in sorter.get_ready():
                queue.put_nowait(ready)
            if not sorter.is_active():
                for _ in range(QUEUE_WORKERS):
                    queue.put_nowait(None)

    await asyncio.gather(*(worker() for _ in range(QUEUE_WORKERS)))
    assert len(results) == len(preds)
    return len(results)


def fresh_graph(flow: af.Flow) -> af.Graph:
    """``flow.graph()`` expanded anew (not the graph the flow keeps)."""
    flow._graph = None
    return flow.graph()


def sync_ms(fn: Callable[[], object], rounds: int) -> float:
    """Median CPU ms of a synchronous step, timed apart from the runs (warm-up dropped)."""
    times = []
    for _ in range(rounds + 1):
        gc.collect()
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times[1:]) * 1e3


def bench_workloads(workloads: list[Workload], rounds: int) -> dict[str, dict[str, float]]:
    """Time every contender on every workload; print one table; return CPU s by workload."""
    all_cpu: dict[str, dict[str, float]] = {}
    for workload in workloads:
        flow = workload.build_flow()
        preds = workload.preds
        contenders: dict[str, Work] = {
            AIOFLOWS: functools.partial(with_aioflows, flow),
            NAIVE: functools.partial(with_naive, preds),
            GRAPHLIB: functools.partial(with_graphlib, preds),
        }
        samples = run_rounds(contenders, rounds)
        for name, runs in samples.items():
            for sample in runs:
                assert sample.nodes == workload.nodes, (name, sample.nodes, workload.nodes)
        cpu = {name: median(s) for name, s in samples.items()}
        in_gc = {name: median(s, "gc") for name, s in samples.items()}
        all_cpu[workload.title] = cpu
        naive = cpu[NAIVE]
        bare = cpu[GRAPHLIB]
        rows = [
            [
                name,
                f"{secs * 1e3:.1f}",
                f"{in_gc[name] * 1e3:.1f}",
                f"{secs / workload.nodes * 1e6:.2f}",
                f"{secs / naive:.2f}x",
                f"{secs / bare:.2f}x",
            ]
            for name, secs in cpu.items()
        ]
        print_table(
            f"{workload.title}: {workload.nodes:,} nodes (CPU time, median of {rounds})",
            ["contender", "CPU ms", "of which GC ms", "CPU µs/node", "vs naive", "vs graphlib"],
            rows,
        )
        ratio = cpu[AIOFLOWS] / naive
        declare = sync_ms(workload.build_flow, rounds)
        expand = sync_ms(functools.partial(fresh_graph, flow), rounds)
        print(
            f"timed apart: flow.add calls {declare:.1f} ms (not in the runs); "
            f"flow.graph() {expand:.1f} ms (expansion + hashing, inside Flow.run)"
        )
        print(
            f"target Flow.run <= {TARGET_VS_NAIVE:g}x naive anyio per node: {ratio:.2f}x "
            f"{verdict(ratio <= TARGET_VS_NAIVE)}"
        )
    return all_cpu


# -- parts ------------------------------------------------------------------------------------


def bench_fanout(rounds: int) -> None:
    print("\n== 1. fan-out/fan-in ==")
    workload = fanout(N_FANOUT)
    cpu = bench_workloads([workload], rounds)[workload.title]
    ratio = cpu[AIOFLOWS] / cpu[GRAPHLIB]
    print(
        f"target Flow.run <= {TARGET_VS_GRAPHLIB:g}x graphlib + asyncio.Queue per node: "
        f"{ratio:.2f}x {verdict(ratio <= TARGET_VS_GRAPHLIB)}"
    )


def bench_chain(rounds: int) -> None:
    print("\n== 2. chains ==")
    short, long = chain(CHAIN_SHORT), chain(CHAIN_LONG)
    cpu = bench_workloads([short, long], rounds)
    rows = []
    for name in (AIOFLOWS, NAIVE, GRAPHLIB):
        per_short = cpu[short.title][name] / short.nodes
        per_long = cpu[long.title][name] / long.nodes
        rows.append(
            [
                name,
                f"{per_short * 1e6:.2f}",
                f"{per_long * 1e6:.2f}",
                f"{per_long / per_short:.2f}x",
            ]
        )
    print_table(
        f"chain growth: CPU per node at {CHAIN_LONG:,} vs at {CHAIN_SHORT:,} (medians of {rounds})",
        ["contender", f"µs/node at {CHAIN_SHORT}", f"µs/node at {CHAIN_LONG:,}", "growth"],
        rows,
    )
    growth = (cpu[long.title][AIOFLOWS] / long.nodes) / (cpu[short.title][AIOFLOWS] / short.nodes)
    print(
        f"target Flow.run per node at {CHAIN_LONG:,} within {TARGET_CHAIN_GROWTH:g}x of "
        f"{CHAIN_SHORT}: {growth:.2f}x {verdict(growth <= TARGET_CHAIN_GROWTH)}"
    )


def bench_dag(rounds: int) -> None:
    print("\n== 3. random layered DAG ==")
    bench_workloads([dag()], rounds)


# -- part 4: peak RSS, one fresh process per contender ----------------------------------------


RSS_CONTENDERS = {"imports": "(imports only)", "aioflows": AIOFLOWS, "naive": NAIVE}


def peak_rss_kib() -> tuple[int, str]:
    """This process's peak resident set in KiB, and where it was read.

    On Linux ``VmHWM`` (``/proc/self/status``) is the high-water mark of this process's own
    address space. ``ru_maxrss`` is not: ``execve`` folds the parent's peak into it, so a
    child started from a large parent reports at least the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"  # KiB on Linux


def rss_child(contender: str) -> int:
    """In a fresh process: declare and run the ``N_RSS`` fan-out; print the peak RSS as JSON."""
    before_kib, _ = peak_rss_kib()
    start = time.process_time()
    nodes = 0
    if contender == "aioflows":
        flow = fanout_flow(N_RSS)
        nodes = asyncio.run(with_aioflows(flow))
    elif contender == "naive":
        preds = fanout_preds(N_RSS)
        nodes = asyncio.run(with_naive(preds))
    cpu = time.process_time() - start
    peak_kib, source = peak_rss_kib()
    report = {
        "before_kib": before_kib,
        "peak_kib": peak_kib,
        "source": source,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "cpu": cpu,
        "nodes": nodes,
    }
    print(json.dumps(report))
    return 0


def bench_rss(rounds: int) -> None:
    print("\n== 4. peak RSS ==")
    root = Path(__file__).resolve().parent.parent
    rows = []
    peaks: dict[str, float] = {}
    source = ""
    for key, label in RSS_CONTENDERS.items():
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.flows", "--rss-child", key],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        source = report["source"]
        peak = report["peak_kib"] / 1024
        peaks[key] = peak
        rows.append(
            [
                label,
                f"{report['nodes']:,}",
                f"{report['before_kib'] / 1024:.0f}",
                f"{peak:.0f}",
                f"{report['ru_maxrss_kib'] / 1024:.0f}",
                f"{report['cpu']:.2f}",
            ]
        )
    print_table(
        f"peak RSS: fan-out of {N_RSS:,} (1 source -> {N_RSS:,} instances -> reduce sink), "
        f"one fresh process each, one run",
        ["contender", "nodes", "MiB after imports", "peak MiB", "ru_maxrss MiB", "CPU s"],
        rows,
    )
    print(
        f"peak MiB is {source} of the child; ru_maxrss is shown as asked, but on Linux it "
        "includes the parent's peak (inherited through execve)"
    )
    peak = peaks["aioflows"]
    print(
        f"target Flow.run {N_RSS:,}-node fan-out peak RSS < {TARGET_RSS_MIB:g} MiB: "
        f"{peak:.0f} MiB {verdict(peak < TARGET_RSS_MIB)}"
    )


# -- part 6: a million nodes, in a fresh process -------------------------------------------


def big_child(nodes: int) -> int:
    """In a fresh process: the fan-out of ``nodes`` nodes, ``flow.graph()`` then ``flow.run()``
    timed apart (the run reuses the graph while the flow is unchanged); print JSON."""
    before_kib, source = peak_rss_kib()
    flow = fanout_flow(nodes - 2)
    gc.collect()
    start = time.process_time()
    graph = flow.graph()
    graph_cpu = time.process_time() - start
    assert len(graph) == nodes
    del graph
    start = time.process_time()
    ran = asyncio.run(with_aioflows(flow, fresh=False))
    run_cpu = time.process_time() - start
    assert ran == nodes
    peak_kib, source = peak_rss_kib()
    print(
        json.dumps(
            {
                "nodes": nodes,
                "graph_cpu": graph_cpu,
                "run_cpu": run_cpu,
                "before_kib": before_kib,
                "peak_kib": peak_kib,
                "source": source,
            }
        )
    )
    return 0


def bench_big(nodes: int) -> None:
    """``flow.graph()`` + ``flow.run()`` of a ``nodes``-node fan-out, in a child process."""
    print(f"\n== 6. big: a {nodes:,}-node fan-out ==")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.flows", "--big-child", str(nodes)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    total = report["graph_cpu"] + report["run_cpu"]
    peak = report["peak_kib"] / 1024
    per_node = (report["peak_kib"] - report["before_kib"]) * 1024 / nodes
    print_table(
        f"fan-out of {nodes:,} nodes (1 source -> {nodes - 2:,} instances -> reduce sink), "
        "no store, one fresh process",
        ["step", "CPU s", "CPU µs/node"],
        [
            [
                "flow.graph()",
                f"{report['graph_cpu']:.2f}",
                f"{report['graph_cpu'] / nodes * 1e6:.1f}",
            ],
            ["flow.run()", f"{report['run_cpu']:.2f}", f"{report['run_cpu'] / nodes * 1e6:.1f}"],
            ["both", f"{total:.2f}", f"{total / nodes * 1e6:.1f}"],
        ],
    )
    print(
        f"peak RSS ({report['source']}) {peak:.0f} MiB; above the imports "
        f"{per_node:,.0f} bytes/node"
    )
    scale = nodes / N_BIG
    print(
        f"target (scaled to {nodes:,} nodes) CPU <= {TARGET_BIG_CPU * scale:.1f} s: {total:.2f} s "
        f"{verdict(total <= TARGET_BIG_CPU * scale)}; peak RSS <= {TARGET_BIG_MIB:g} MiB: "
        f"{peak:.0f} MiB {verdict(peak <= TARGET_BIG_MIB)}"
    )


# -- part 5: fail-fast, stopping 10,000 running instances -----------------------------------


@dataclass
class Stop:
    wall: float  # seconds from the stop's start to everything stopped
    cpu: float  # process CPU seconds in that span (worker threads included)
    gc: float  # of which in the cyclic garbage collector
    killed: int  # instances (or tasks) seen stopped


class Span:
    """The stopping span: started by :meth:`start`, read by :meth:`end`."""

    def start(self) -> None:
        gc.collect()  # start-up's GC debt is not the stop's
        self.gc = GC_METER.total
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    def end(self, killed: int) -> Stop:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return Stop(wall, cpu, GC_METER.total - self.gc, killed)


class Sleepers:
    """``n`` tasks that sleep for ever, and an event set once all of them have started."""

    def __init__(self, n: int, forever: Callable[[], Awaitable[object]]) -> None:
        self.n, self.running, self.forever = n, 0, forever
        self.all_running = asyncio.Event()

    async def sleep(self, *_: object) -> None:
        self.running += 1
        if self.running == self.n:
            self.all_running.set()
        await self.forever()


def sleeping_flow(n: int, span: Span) -> af.Flow:
    """``n`` sleepers that run for ever, and ``boom``, which fails once all of them run."""
    sleepers = Sleepers(n, anyio.sleep_forever)
    all_running = sleepers.all_running

    async def sleeper(i: int) -> None:
        await sleepers.sleep()

    async def boom() -> None:
        await all_running.wait()
        span.start()
        raise RuntimeError("boom")

    flow = af.Flow("failfast")
    flow.add(sleeper, {"i": list(range(n))})
    flow.add(boom)
    return flow


async def stop_flow(n: int, store_dir: str | None) -> Stop:
    span = Span()
    flow = sleeping_flow(n, span)
    store = af.LocalFileStore(store_dir) if store_dir is not None else None
    try:
        await flow.run(store=store)
    except af.FlowFailed as exc:
        stop = span.end(sum(s is af.TaskState.KILLED for s in exc.run.states.values()))
    else:
        raise AssertionError("the flow did not fail")
    if store is not None:  # outside the span: every killed instance has its KILLED record
        infos = await store.list_infos("sleeper")
        stop.killed = min(stop.killed, sum(i.state is af.TaskState.KILLED for i in infos))
    return stop


async def stop_anyio(n: int) -> Stop:
    span = Span()
    sleepers = Sleepers(n, anyio.sleep_forever)
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(sleepers.sleep)
        await sleepers.all_running.wait()
        span.start()
        tg.cancel_scope.cancel()
    return span.end(n)


class _Stop(Exception):
    pass


async def stop_taskgroup(n: int) -> Stop:
    span = Span()
    sleepers = Sleepers(n, functools.partial(asyncio.sleep, 3600))

    async def stopper() -> None:
        await sleepers.all_running.wait()
        span.start()
        raise _Stop

    try:
        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]  # Python 3.11+
            for _ in range(n):
                tg.create_task(sleepers.sleep())
            tg.create_task(stopper())
    except Exception as exc:  # an ExceptionGroup of the one _Stop (no except* before 3.11)
        if not all(isinstance(e, _Stop) for e in getattr(exc, "exceptions", [exc])):
            raise
    return span.end(n)


def run_stop(fn: Callable[[], Awaitable[Stop]]) -> Stop:
    gc.callbacks.append(GC_METER)
    try:
        return asyncio.run(fn())
    finally:
        gc.callbacks.remove(GC_METER)


FF_ANYIO = "anyio task group (reference)"
FF_TASKGROUP = "asyncio.TaskGroup"
FF_FLOW = "Flow.run, no store"
FF_LOCAL = "Flow.run, LocalFileStore"


def bench_failfast(rounds: int) -> None:
    print("\n== 5. fail-fast ==")
    n = N_FAILFAST
    samples: dict[str, list[Stop]] = {k: [] for k in (FF_ANYIO, FF_TASKGROUP, FF_FLOW, FF_LOCAL)}
    if not hasattr(asyncio, "TaskGroup"):
        del samples[FF_TASKGROUP]
    for round_no in range(rounds + 1):  # interleaved; round 0 is the warm-up
        with tempfile.TemporaryDirectory(prefix="aioflows-failfast-") as store_dir:
            contenders: dict[str, Callable[[], Awaitable[Stop]]] = {
                FF_ANYIO: functools.partial(stop_anyio, n),
                FF_TASKGROUP: functools.partial(stop_taskgroup, n),
                FF_FLOW: functools.partial(stop_flow, n, None),
                FF_LOCAL: functools.partial(stop_flow, n, store_dir),
            }
            if not hasattr(asyncio, "TaskGroup"):  # Python 3.10
                del contenders[FF_TASKGROUP]
            for name, fn in contenders.items():
                stop = run_stop(fn)
                assert stop.killed == n, (name, stop.killed)
                if round_no > 0:
                    samples[name].append(stop)
    cpu = {name: statistics.median(s.cpu for s in runs) for name, runs in samples.items()}
    reference = cpu[FF_ANYIO]
    rows = [
        [
            name,
            f"{cpu[name] * 1e3:.0f}",
            f"{min(s.cpu for s in runs) * 1e3:.0f}..{max(s.cpu for s in runs) * 1e3:.0f}",
            f"{statistics.median(s.gc for s in runs) * 1e3:.0f}",
            f"{statistics.median(s.wall for s in runs) * 1e3:.0f}",
            f"{cpu[name] / reference:.2f}x",
        ]
        for name, runs in samples.items()
    ]
    print_table(
        f"stopping {n:,} running instances (sleeping tasks), from the failure (the cancel) to "
        f"the run (the group) ending (CPU time, median of {rounds})",
        ["contender", "CPU ms", "range", "of which GC ms", "wall ms", "vs anyio"],
        rows,
    )
    print(
        f"every round: all {n:,} instances KILLED in run.states, and in list_infos() with the "
        "store; CPU includes the store's worker thread"
    )
    for name in (FF_FLOW, FF_LOCAL):
        ratio = cpu[name] / reference
        print(
            f"target {name} <= {TARGET_FAILFAST:g}x the anyio task group: {ratio:.2f}x "
            f"{verdict(ratio <= TARGET_FAILFAST)}"
        )


# -- main -------------------------------------------------------------------------------------


PARTS: dict[str, Callable[[int], None]] = {
    "fanout": bench_fanout,
    "chain": bench_chain,
    "dag": bench_dag,
    "rss": bench_rss,
    "failfast": bench_failfast,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = part_parser(
        "python -m benchmarks.flows",
        "Benchmark of Flow.run against hand-written DAG executors.",
        list(PARTS),
        ROUNDS,
    )
    parser.add_argument("--rss-child", choices=sorted(RSS_CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--big-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--big",
        nargs="?",
        type=int,
        const=N_BIG,
        metavar="NODES",
        help=f"run only part 6: a fan-out of NODES nodes (default {N_BIG:,}) in a child process",
    )
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args.rss_child)
    if args.big_child:
        return big_child(args.big_child)
    if args.big:
        print_header(("aioflows", "anyio"), 1, "no warm-up")
        bench_big(args.big)
        return 0
    print_header(("aioflows", "anyio"), args.rounds)
    run_parts(PARTS, args.part, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
