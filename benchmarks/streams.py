"""Benchmark of ``af.Pipeline``: three concurrent stages, against a hand-written anyio pipeline
and the peer libraries aiostream and pypeln.

Run with ``python -m benchmarks.streams`` (about 1 minute on a 2-core machine; ``--part
cpu|io`` runs one part, ``--rounds N`` changes the number of measured rounds). Every contender
runs the same three stages, in input order, and hands every output to its consumer:

    async map ``f1`` (8 workers) -> filter ``even`` -> async map ``f2`` (8 workers)

with at most 100 items waiting between two stages where the contender has a bound to set.
``f1(x) = 3 * x`` and ``f2(x) = x + 1`` each wait once (``asyncio.sleep(0)``, one checkpoint,
as the cheapest real async call would); ``even`` is a plain ``def``, which every contender calls
inline on the event loop. Two parts:

1. **CPU cost.** 50,000 integers, in CPU time (``time.process_time``): items per CPU-second,
   since the point is what the streaming machinery costs per item. Targets: aioflows at least
   1.1x the hand-written pipeline and at least 2x aiostream and pypeln.
2. **I/O overlap.** 5,000 integers with ``f1`` waiting 1 ms (``asyncio.sleep(0.001)``) on 64
   workers, in wall time: the ordering and the bounded buffers must not stall the I/O. Target:
   aioflows within 1.5x the hand-written pipeline; the peers are shown for context.

Contenders:

- **aioflows**: ``af.Pipeline(af.Stage(f1, workers=8), af.Filter(even), af.Stage(f2,
  workers=8), buffer=100, ordered=True)``, consumed with ``await pipe.run(items)``.
- **anyio by hand** (the bar): one task group; the 8 ``f1`` workers pull ``(index, item)``
  straight from a shared ``enumerate`` iterator, then memory object streams of 100 join the
  stages; the filter is one task; the ``f2`` workers forward ``(index, value)`` unordered, and
  the sink restores input order with a heap, emitting the completed prefix as soon as it has
  it. The filter pushes the index of each dropped item into the sink's heap (same thread, no
  lock), so the sink knows the gap is not coming (it sees it at its next arrival, or at the
  end). Order is restored once, at the end, where aioflows keeps it at every stage. Sends and
  receives take the ``*_nowait`` fast path and fall back to ``await`` only when the stream is
  full or empty, since anyio's ``send``/``receive`` pay a checkpoint each even when they need
  not wait; the same pipeline with plain ``await send(...)``/``receive()`` is shown for
  context, in parentheses.
- **aiostream**: ``stream.iterate`` -> ``stream.map(f1, ordered=True, task_limit=8)`` ->
  ``stream.filter(even)`` -> ``stream.map(f2, ordered=True, task_limit=8)``, collected with
  ``stream.list``. aiostream is pull-based: it has no buffer size to set.
- **pypeln**: ``pl.task.map(f1, items, workers=8, maxsize=100)`` -> ``pl.task.filter(even,
  maxsize=100)`` -> ``pl.task.map(f2, workers=8, maxsize=100)`` -> ``pl.task.ordered``, awaited
  inside the running loop. pypeln's only way to restore order is ``ordered``, which holds every
  output until the input ends and then sorts them; its stages start one task per item.

Each round checks the outputs against the expected list (count, first, last and every value,
in order) outside the timed region, so no contender can skip work; rounds return only that
summary, so no round's objects are alive in the next. Each round runs in a fresh event loop with
only the work timed (not loop start-up or shutdown), after ``gc.collect()``; contenders are
interleaved round by round so drift in the machine's speed hits them alike, and the first
(warm-up) round is dropped.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import pypeln as pl  # type: ignore[import-untyped]
from aiostream import stream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import aioflows as af

from ._report import part_parser, print_header, print_table, run_parts, verdict

#: Measured rounds per contender (at least 5); one warm-up round more is run and dropped.
ROUNDS = 5

BUFFER = 100
# Part 1: CPU cost.
N_ITEMS = 50_000
WORKERS = 8
TARGET_VS_HAND = 1.1  # aioflows items/CPU-s at least this times the hand-written pipeline's
TARGET_VS_PEERS = 2.0  # ... and at least this times aiostream's and pypeln's
# Part 2: I/O overlap.
N_IO_ITEMS = 5_000
IO_WORKERS = 64
IO_SECONDS = 0.001
TARGET_IO_WALL = 1.5

AIOFLOWS = "aioflows Pipeline"
HAND = "anyio by hand"
HAND_PLAIN = "(anyio by hand, plain send/receive)"
AIOSTREAM = "aiostream"
PYPELN = "pypeln.task"

Fn = Callable[[int], Awaitable[int]]


# -- the workload -----------------------------------------------------------------------------


async def f1(x: int) -> int:
    await asyncio.sleep(0)
    return 3 * x


async def f1_io(x: int) -> int:
    await asyncio.sleep(IO_SECONDS)
    return 3 * x


def even(x: int) -> bool:
    return x % 2 == 0


async def f2(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


@dataclass(frozen=True)
class Workload:
    """What every contender runs: ``f1`` on ``workers1`` workers, ``even``, ``f2`` on 8."""

    n: int
    f1: Fn
    workers1: int
    f2: Fn = f2
    workers2: int = WORKERS
    buffer: int = BUFFER

    def expected(self) -> list[int]:
        """The outputs, computed synchronously (``f1`` and ``f2`` without their waits)."""
        return [3 * x + 1 for x in range(self.n) if (3 * x) % 2 == 0]


Work = Callable[[Workload], Awaitable[list[int]]]


# -- the contenders ---------------------------------------------------------------------------


async def with_aioflows(w: Workload) -> list[int]:
    pipe = af.Pipeline(
        af.Stage(w.f1, workers=w.workers1),
        af.Filter(even),
        af.Stage(w.f2, workers=w.workers2),
        buffer=w.buffer,
        ordered=True,
    )
    return await pipe.run(range(w.n))


class _Dropped:
    """A heap entry's value meaning "this index was filtered out: nothing will come"."""

    __slots__ = ()


DROPPED = _Dropped()


async def _receive(recv: MemoryObjectReceiveStream[Any]) -> Any:
    """The next item; a waiting one is taken at once, without anyio's checkpoint."""
    try:
        return recv.receive_nowait()
    except anyio.WouldBlock:
        return await recv.receive()


async def _send(send: MemoryObjectSendStream[Any], item: Any) -> None:
    """Send; when the stream has room, at once, without anyio's checkpoint."""
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        await send.send(item)


async def _send_plain(send: MemoryObjectSendStream[Any], item: Any) -> None:
    await send.send(item)


async def _receive_plain(recv: MemoryObjectReceiveStream[Any]) -> Any:
    return await recv.receive()


async def _by_hand(
    w: Workload,
    send_: Callable[[MemoryObjectSendStream[Any], Any], Awaitable[None]],
    receive_: Callable[[MemoryObjectReceiveStream[Any]], Awaitable[Any]],
) -> list[int]:
    """The hand-written pipeline: shared input iterator, 3 streams, a heap in the sink."""
    pairs: Iterator[tuple[int, int]] = enumerate(range(w.n))
    send1, recv1 = anyio.create_memory_object_stream[tuple[int, int]](w.buffer)
    send2, recv2 = anyio.create_memory_object_stream[tuple[int, int]](w.buffer)
    send3, recv3 = anyio.create_memory_object_stream[tuple[int, int]](w.buffer)
    heap: list[tuple[int, Any]] = []  # (index, value or DROPPED), shared by filter and sink
    out: list[int] = []

    async def map1() -> None:
        fn = w.f1
        for index, x in pairs:
            await send_(send1, (index, await fn(x)))

    async def stage1() -> None:
        with send1:  # closed once every f1 worker has finished
            async with anyio.create_task_group() as tg:
                for _ in range(w.workers1):
                    tg.start_soon(map1)

    async def keep_even() -> None:
        with send2, recv1:
            while True:
                try:
                    index, x = await receive_(recv1)
                except anyio.EndOfStream:
                    return
                if even(x):
                    await send_(send2, (index, x))
                else:
                    heapq.heappush(heap, (index, DROPPED))

    async def map2() -> None:
        fn = w.f2
        while True:
            try:
                index, x = await receive_(recv2)
            except anyio.EndOfStream:
                return
            await send_(send3, (index, await fn(x)))

    async def stage2() -> None:
        with send3, recv2:
            async with anyio.create_task_group() as tg:
                for _ in range(w.workers2):
                    tg.start_soon(map2)

    async def sink() -> None:
        push, pop, append = heapq.heappush, heapq.heappop, out.append
        following = 0  # the index of the next output in input order
        with recv3:
            while True:
                try:
                    entry = await receive_(recv3)
                except anyio.EndOfStream:
                    break
                push(heap, entry)
                while heap and heap[0][0] == following:
                    value = pop(heap)[1]
                    following += 1
                    if value is not DROPPED:
                        append(value)
        # Only indices dropped after the last arrival can remain: they complete the prefix.
        while heap:
            value = pop(heap)[1]
            if value is not DROPPED:
                append(value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stage1)
        tg.start_soon(keep_even)
        tg.start_soon(stage2)
        tg.start_soon(sink)
    return out


async def with_hand(w: Workload) -> list[int]:
    return await _by_hand(w, _send, _receive)


async def with_hand_plain(w: Workload) -> list[int]:
    return await _by_hand(w, _send_plain, _receive_plain)


async def with_aiostream(w: Workload) -> list[int]:
    fn1: Any = w.f1  # aiostream's typing of map() with *more_sources rejects Fn
    fn2: Any = w.f2
    xs = stream.iterate(range(w.n))
    ys = stream.map(xs, fn1, ordered=True, task_limit=w.workers1)
    zs = stream.filter(ys, even)
    outs = stream.map(zs, fn2, ordered=True, task_limit=w.workers2)
    result: list[Any] = await stream.list(outs)
    return result


async def with_pypeln(w: Workload) -> list[int]:
    stage = pl.task.map(w.f1, range(w.n), workers=w.workers1, maxsize=w.buffer)
    stage = pl.task.filter(even, stage, workers=1, maxsize=w.buffer)
    stage = pl.task.map(w.f2, stage, workers=w.workers2, maxsize=w.buffer)
    stage = pl.task.ordered(stage)
    result: list[int] = await stage
    return result


# -- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float  # on the part's clock, for the work alone
    count: int
    first: int | None
    last: int | None
    exact: bool  # every output equal to the expected one, in order


async def _timed(
    work: Work, w: Workload, expected: list[int], clock: Callable[[], float]
) -> Sample:
    """Run ``work`` inside the running loop; check its outputs after the clock has stopped."""
    start = clock()
    outs = await work(w)
    seconds = clock() - start
    return Sample(
        seconds,
        len(outs),
        outs[0] if outs else None,
        outs[-1] if outs else None,
        outs == expected,
    )


def measure(work: Work, w: Workload, expected: list[int], clock: Callable[[], float]) -> Sample:
    """One round: a fresh event loop, ``gc.collect()`` first, only ``work`` itself timed."""
    gc.collect()
    return asyncio.run(_timed(work, w, expected, clock))


def run_rounds(
    contenders: dict[str, Work], w: Workload, clock: Callable[[], float], rounds: int
) -> dict[str, list[Sample]]:
    """Interleave the contenders round by round; the warm-up round is run and dropped.

    Every sample's outputs are checked against the expected list; a wrong one stops the run.
    """
    expected = w.expected()
    results: dict[str, list[Sample]] = {name: [] for name in contenders}
    for round_no in range(rounds + 1):
        for name, work in contenders.items():
            sample = measure(work, w, expected, clock)
            if not sample.exact:
                raise AssertionError(
                    f"{name}: {sample.count} outputs, first {sample.first}, last {sample.last}; "
                    f"expected {len(expected)}, first {expected[0]}, last {expected[-1]}"
                )
            if round_no > 0:
                results[name].append(sample)
    return results


def median_seconds(samples: list[Sample]) -> float:
    return statistics.median(sample.seconds for sample in samples)


def contenders_of(include_plain: bool) -> dict[str, Work]:
    contenders: dict[str, Work] = {
        AIOFLOWS: with_aioflows,
        HAND: with_hand,
        AIOSTREAM: with_aiostream,
        PYPELN: with_pypeln,
    }
    if include_plain:
        contenders[HAND_PLAIN] = with_hand_plain
    return contenders


# -- part 1: CPU cost -------------------------------------------------------------------------


def bench_cpu(rounds: int) -> None:
    w = Workload(N_ITEMS, f1, WORKERS)
    samples = run_rounds(contenders_of(include_plain=True), w, time.process_time, rounds)
    cpu = {name: median_seconds(s) for name, s in samples.items()}
    rate = {name: N_ITEMS / secs for name, secs in cpu.items()}
    hand = rate[HAND]
    rows = [
        [
            name,
            f"{cpu[name] * 1e3:.0f}",
            f"{cpu[name] / N_ITEMS * 1e6:.2f}",
            f"{rate[name]:,.0f}",
            f"{rate[AIOFLOWS] / rate[name]:.2f}x",
        ]
        for name in samples
    ]
    outputs = samples[AIOFLOWS][0].count
    print_table(
        f"1. CPU cost: {N_ITEMS:,} items through map x{WORKERS} -> filter -> map x{WORKERS}, "
        f"buffers of {BUFFER}, ordered ({outputs:,} outputs; CPU time, median of {rounds})",
        ["contender", "CPU ms", "CPU µs/item", "items/CPU-s", "aioflows vs it"],
        rows,
    )
    print(
        "items/CPU-s counts input items; 'aioflows vs it' is aioflows' items/CPU-s over the row's"
    )
    ours = rate[AIOFLOWS]
    print(
        f"target aioflows >= {TARGET_VS_HAND:g}x anyio by hand in items/CPU-s: "
        f"{ours / hand:.2f}x {verdict(ours >= TARGET_VS_HAND * hand)}"
    )
    for peer in (AIOSTREAM, PYPELN):
        print(
            f"target aioflows >= {TARGET_VS_PEERS:g}x {peer} in items/CPU-s: "
            f"{ours / rate[peer]:.2f}x {verdict(ours >= TARGET_VS_PEERS * rate[peer])}"
        )


# -- part 2: I/O overlap ----------------------------------------------------------------------


def bench_io(rounds: int) -> None:
    w = Workload(N_IO_ITEMS, f1_io, IO_WORKERS)
    samples = run_rounds(contenders_of(include_plain=False), w, time.perf_counter, rounds)
    wall = {name: median_seconds(s) for name, s in samples.items()}
    hand = wall[HAND]
    ideal = N_IO_ITEMS / IO_WORKERS * IO_SECONDS
    rows = [
        [
            name,
            f"{secs * 1e3:.1f}",
            f"{min(s.seconds for s in samples[name]) * 1e3:.1f}"
            f"..{max(s.seconds for s in samples[name]) * 1e3:.1f}",
            f"{secs / hand:.2f}x",
        ]
        for name, secs in wall.items()
    ]
    print_table(
        f"2. I/O overlap: {N_IO_ITEMS:,} items, map with {IO_SECONDS * 1e3:g} ms of I/O "
        f"x{IO_WORKERS} -> filter -> map x{WORKERS}, buffers of {BUFFER}, ordered "
        f"(wall time, median of {rounds}; ideal {ideal * 1e3:.0f} ms)",
        ["contender", "wall ms", "range ms", "vs by hand"],
        rows,
    )
    ratio = wall[AIOFLOWS] / hand
    print(
        f"target aioflows wall time <= {TARGET_IO_WALL:g}x anyio by hand: {ratio:.2f}x "
        f"{verdict(ratio <= TARGET_IO_WALL)}"
    )


# -- main -------------------------------------------------------------------------------------


PARTS: dict[str, Callable[[int], None]] = {"cpu": bench_cpu, "io": bench_io}


def main(argv: Sequence[str] | None = None) -> int:
    parser = part_parser(
        "python -m benchmarks.streams",
        "Benchmark of af.Pipeline against a hand-written pipeline, aiostream, pypeln.",
        list(PARTS),
        ROUNDS,
    )
    args = parser.parse_args(argv)
    print_header(("aioflows", "anyio", "aiostream", "pypeln"), args.rounds)
    run_parts(PARTS, args.part, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
