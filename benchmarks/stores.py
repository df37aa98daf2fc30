"""Benchmark of ``af.LocalFileStore``: atomic small-file saves and loads against plain files.

Run with ``python -m benchmarks.stores`` (3 to 3.5 minutes on a 2-core VM, two thirds of it
deleting files between rounds, outside the timed regions; ``--rounds N`` changes the number of
measured rounds, ``--dir PATH`` the directory the rounds write under). Each round saves 10,000
small JSON objects (about 200 bytes each) and then loads them back, with:

1. ``LocalFileStore``: ``await store.save(obj, name, task=..., config_hash=...)`` and
   ``await store.load(...)``. Every save is atomic and durable: a hidden temporary file in the
   run directory, written unbuffered through aiofiles, fsynced, renamed over the final name
   (``os.replace``) and the directory fsynced. The store creates its run directories itself,
   on the first save into each, inside the timed region.
2. **plain aiofiles**, the baseline of the throughput target: ``aiofiles.open(path, "w")``,
   ``write(json.dumps(obj))``, close; loads are ``aiofiles.open(path)``, ``read()``,
   ``json.loads``. No temporary file, no fsync: a crash can leave a torn or empty file.
3. **sync json.dump**: a plain ``for`` loop of ``open`` + ``json.dump`` (loads: ``json.load``)
   inside the coroutine, as code that forgets the loop would write it. It is the fastest way
   to put the bytes in the page cache, and it blocks the event loop for the whole batch: its
   loop lag is the point of comparison for the others'.
4. **atomic aiofiles, by hand** (context, saves only, no target): the same file steps as the
   store (open ``"xb"`` unbuffered, write, fsync, close, then replace + fsync the directory in
   one executor hop: five hops to the worker threads), written inline with nothing else. The
   gap between it and row 1 is what the store adds (key checks, type lookup, sibling
   handling, cancel shielding); the gap between it and row 2 is the price of atomicity done
   in five hops.
5. **plain aiofiles + fsync** (context, saves only): row 2 with the file flushed and fsynced
   before it is closed (four hops). Durable, but not atomic: written in place, so a crash can
   still leave a torn or empty file. The gap between it and row 1 is the price of atomicity
   alone (the temporary file, the rename, the directory's fsync).

Workload. The 10,000 objects are laid out as one task with 100 config hashes (a sweep of 100
runs) and 100 names per run, i.e. ``<dir>/bench/<config_hash>/<name>.json``, 100 files per
directory, in run-major order (all of run 0, then run 1, ...), as a sweep saving its results
would. Every contender writes exactly these paths; plain aiofiles and json.dump get their 100
run directories created before the timed region, the store creates its own within it (its
first save into a directory pays for ``makedirs`` and the fsync of the parent). The async
contenders are all driven by the same ``af.map(fn, items, concurrency=32)``, so only the
storage differs; aiofiles runs every file step in the loop's default executor (a fresh one
per round: ``min(32, CPUs + 4)`` threads). Loads read the 10,000 objects just saved, same
driver and concurrency, and check them; they are served from the page cache for every
contender alike, so they measure the software path, not the disk.

Loop lag. A ticker task sleeps 1 ms in a loop throughout the timed region and records the
largest oversleep (actual - 1 ms); a sleep still pending when the work ends counts for as long
as it has overrun by then (which is what catches a loop blocked to the end). On an idle loop
the figure is the timer's own lateness, well under 1 ms (asyncio rounds a timeout up to the next
millisecond). The ticker runs for every contender, so its small cost is shared alike.

Rounds. Each round uses a fresh temporary directory, removed afterwards; the removal, the
directory set-up and an ``os.sync()`` (so that no contender pays for writing back another's
dirty pages) all happen outside the timed region. Saves and loads are timed in wall-clock time
(I/O is the subject), each in a fresh event loop with only the work timed, after
``gc.collect()``. Beside it are the CPU time of the whole process (the loop and aiofiles'
worker threads, user + system) and that of the event loop's thread alone, per op: the loop's
share bounds how many ops/s one loop can drive. Contenders are interleaved round by round so
drift in the machine's speed hits them alike, and the order rotates from round to round, since
what one contender leaves to the file system (on one mounted with ``discard``, deleting
10,000 fsynced files means 10,000 discards) can change the cost of creating files for the
next. The first (warm-up) round is dropped. Figures are medians of the measured rounds (the
range of ops/s is shown), except the worst lag, which is the maximum over them.

Targets: LocalFileStore saves at >= 60 % of the plain-aiofiles saves/s; its worst loop lag
during the saves under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiofiles

import aioflows as af

from ._report import print_header, print_table, verdict

#: Measured rounds per contender (at least 5); one warm-up round more is run and dropped.
ROUNDS = 5

TASK = "bench"
N_RUNS = 100  # config hashes
N_NAMES = 100  # objects per run
N_OBJECTS = N_RUNS * N_NAMES
CONCURRENCY = 32
TICK = 0.001  # the lag ticker's sleep, seconds

TARGET_SAVES_VS_AIOFILES = 0.6  # issue 15, target 6 (was 0.5)
TARGET_LAG_MS = 50.0

BASELINE = "plain aiofiles"
STORE = "LocalFileStore"


@dataclass(frozen=True, slots=True)
class Item:
    """One object to save: its key in the store and the path every contender writes."""

    config_hash: str
    name: str
    path: str
    obj: dict[str, Any]


def make_items(base: str) -> list[Item]:
    """The 10,000 objects, run-major, with their paths under ``base``."""
    items = []
    for run in range(N_RUNS):
        config_hash = f"{run * 2654435761 % 2**32:08x}"  # hash-looking, distinct
        for index in range(N_NAMES):
            name = f"result-{index:03d}"
            seed = run * N_NAMES + index
            obj = {
                "config_hash": config_hash,
                "name": name,
                "seed": seed,
                "loss": round(1.0 / (1 + seed), 6),
                "accuracy": round(seed / N_OBJECTS, 6),
                "steps": 1000,
                "history": [round(0.5**k, 4) for k in range(5)],
                "ok": True,
            }
            path = os.path.join(base, TASK, config_hash, f"{name}.json")
            items.append(Item(config_hash, name, path, obj))
    return items


def make_run_dirs(items: Sequence[Item]) -> None:
    for directory in sorted({os.path.dirname(item.path) for item in items}):
        os.makedirs(directory, exist_ok=True)


# -- contenders -------------------------------------------------------------------------------


async def store_saves(base: str, items: Sequence[Item]) -> None:
    store = af.LocalFileStore(base)

    async def save(item: Item) -> None:
        await store.save(item.obj, item.name, task=TASK, config_hash=item.config_hash)

    await af.map(save, items, concurrency=CONCURRENCY)


async def store_loads(base: str, items: Sequence[Item]) -> list[Any]:
    store = af.LocalFileStore(base)

    async def load(item: Item) -> Any:
        return await store.load(item.name, task=TASK, config_hash=item.config_hash)

    return await af.map(load, items, concurrency=CONCURRENCY)


async def aiofiles_saves(base: str, items: Sequence[Item]) -> None:
    async def save(item: Item) -> None:
        async with aiofiles.open(item.path, "w", encoding="utf-8") as file:
            await file.write(json.dumps(item.obj, ensure_ascii=False))

    await af.map(save, items, concurrency=CONCURRENCY)


async def aiofiles_fsync_saves(base: str, items: Sequence[Item]) -> None:
    """Plain aiofiles writes made durable: the file fsynced before it is closed, in place (no
    temporary file, so a crash can still leave a torn or empty file), in four hops."""
    loop = asyncio.get_running_loop()

    async def save(item: Item) -> None:
        async with aiofiles.open(item.path, "w", encoding="utf-8") as file:
            await file.write(json.dumps(item.obj, ensure_ascii=False))
            await file.flush()
            await loop.run_in_executor(None, os.fsync, file.fileno())

    await af.map(save, items, concurrency=CONCURRENCY)


async def aiofiles_loads(base: str, items: Sequence[Item]) -> list[Any]:
    async def load(item: Item) -> Any:
        async with aiofiles.open(item.path, encoding="utf-8") as file:
            return json.loads(await file.read())

    return await af.map(load, items, concurrency=CONCURRENCY)


def dump_all(items: Sequence[Item]) -> None:
    for item in items:
        with open(item.path, "w", encoding="utf-8") as file:
            json.dump(item.obj, file, ensure_ascii=False)


def load_all(items: Sequence[Item]) -> list[Any]:
    results = []
    for item in items:
        with open(item.path, encoding="utf-8") as file:
            results.append(json.load(file))
    return results


async def sync_saves(base: str, items: Sequence[Item]) -> None:
    dump_all(items)  # blocks the event loop for the whole batch, on purpose


async def sync_loads(base: str, items: Sequence[Item]) -> list[Any]:
    return load_all(items)  # blocks the event loop for the whole batch, on purpose


def _replace_and_sync_dir(temp: str, final: str) -> None:
    os.replace(temp, final)
    fd = os.open(os.path.dirname(final), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def atomic_saves(base: str, items: Sequence[Item]) -> None:
    """The store's file steps and nothing else: five hops to aiofiles' executor per save."""
    loop = asyncio.get_running_loop()

    async def save(item: Item) -> None:
        data = json.dumps(item.obj, ensure_ascii=False).encode()
        temp = os.path.join(os.path.dirname(item.path), f".{item.name}.tmp")
        file = await aiofiles.open(temp, "xb", buffering=0)
        try:
            await file.write(data)  # a ~200-byte unbuffered write is never partial
            await loop.run_in_executor(None, os.fsync, file.fileno())
        finally:
            await file.close()
        await loop.run_in_executor(None, _replace_and_sync_dir, temp, item.path)

    await af.map(save, items, concurrency=CONCURRENCY)


Saves = Callable[[str, Sequence[Item]], Awaitable[None]]
Loads = Callable[[str, Sequence[Item]], Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class Contender:
    saves: Saves
    loads: Loads | None  # None: saves only (a context row)
    prepare_dirs: bool  # create the run directories before the timed region


CONTENDERS: dict[str, Contender] = {
    STORE: Contender(store_saves, store_loads, prepare_dirs=False),
    BASELINE: Contender(aiofiles_saves, aiofiles_loads, prepare_dirs=True),
    "sync json.dump / json.load": Contender(sync_saves, sync_loads, prepare_dirs=True),
    "(atomic aiofiles, by hand)": Contender(atomic_saves, None, prepare_dirs=True),
    "(plain aiofiles + fsync)": Contender(aiofiles_fsync_saves, None, prepare_dirs=True),
}


# -- measuring --------------------------------------------------------------------------------


class LagTicker:
    """Sleeps ``TICK`` in a loop and keeps the largest oversleep, in seconds."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._since = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self._since = time.perf_counter()
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - self._since - TICK)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # let it enter its first sleep before the work starts

    async def stop(self) -> float:
        """The worst lag so far, counting the overrun of a sleep still pending."""
        self.worst = max(self.worst, time.perf_counter() - self._since - TICK)
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.worst


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    cpu: float
    loop_cpu: float
    lag: float
    result: Any


async def _timed(work: Callable[[], Awaitable[Any]]) -> Sample:
    ticker = LagTicker()
    await ticker.start()
    wall, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    result = await work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    loop_cpu = time.thread_time() - loop_cpu
    lag = await ticker.stop()
    return Sample(wall, cpu, loop_cpu, lag, result)


def measure(work: Callable[[], Awaitable[Any]]) -> Sample:
    """One phase: a fresh event loop, ``gc.collect()`` first, only ``work`` itself timed."""
    gc.collect()
    return asyncio.run(_timed(work))


@dataclass
class Results:
    saves: list[Sample] = field(default_factory=list)
    loads: list[Sample] = field(default_factory=list)


def run_round(contender: Contender, parent: str | None) -> tuple[Sample, Sample | None]:
    """Saves then loads in a fresh directory; set-up, checks and clean-up are not timed."""
    base = tempfile.mkdtemp(prefix="aioflows-bench-stores-", dir=parent)
    try:
        items = make_items(base)
        if contender.prepare_dirs:
            make_run_dirs(items)
        os.sync()
        saves = measure(lambda: contender.saves(base, items))
        loads = None
        if contender.loads is not None:
            load = contender.loads
            loads = measure(lambda: load(base, items))
            if loads.result != [item.obj for item in items]:
                raise AssertionError("the objects loaded differ from those saved")
            loads = dataclasses.replace(loads, result=None)  # keep no garbage for later rounds
        return saves, loads
    finally:
        shutil.rmtree(base)
        os.sync()


def run_rounds(rounds: int, parent: str | None) -> dict[str, Results]:
    """Interleave the contenders round by round, each round starting one contender further on;
    the warm-up round is run and dropped."""
    names = list(CONTENDERS)
    results = {name: Results() for name in names}
    for round_no in range(rounds + 1):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            saves, loads = run_round(CONTENDERS[name], parent)
            if round_no > 0:
                results[name].saves.append(saves)
                if loads is not None:
                    results[name].loads.append(loads)
    return results


def ops_per_s(samples: list[Sample]) -> float:
    return N_OBJECTS / statistics.median(s.wall for s in samples)


def cpu_us(samples: list[Sample]) -> float:
    """CPU time of the whole process (the loop and the worker threads) per op."""
    return statistics.median(s.cpu for s in samples) / N_OBJECTS * 1e6


def loop_cpu_us(samples: list[Sample]) -> float:
    """CPU time of the event loop's thread per op: what bounds the ops/s of one loop."""
    return statistics.median(s.loop_cpu for s in samples) / N_OBJECTS * 1e6


def lag_ms(samples: list[Sample]) -> tuple[float, float]:
    """(median, max) over the rounds of each round's worst lag, in ms."""
    lags = [s.lag * 1e3 for s in samples]
    return statistics.median(lags), max(lags)


def phase_table(title: str, phase: dict[str, list[Sample]]) -> dict[str, float]:
    """Print one phase's table; returns the ops/s by contender."""
    rates = {name: ops_per_s(samples) for name, samples in phase.items()}
    base = rates[BASELINE]
    rows = []
    for name, samples in phase.items():
        lag_med, lag_max = lag_ms(samples)
        each = [N_OBJECTS / s.wall for s in samples]
        rows.append(
            [
                name,
                f"{rates[name]:,.0f}",
                f"{min(each):,.0f}..{max(each):,.0f}",
                f"{rates[name] / base:.2f}x",
                f"{cpu_us(samples):.0f}",
                f"{loop_cpu_us(samples):.0f}",
                f"{lag_med:.1f}",
                f"{lag_max:.1f}",
            ]
        )
    print_table(
        title,
        [
            "contender",
            "ops/s",
            "range",
            "vs aiofiles",
            "CPU µs/op",
            "loop µs/op",
            "lag med ms",
            "lag max ms",
        ],
        rows,
    )
    return rates


def filesystem_of(path: str) -> str:
    """The type of the file system holding ``path`` (Linux: from /proc/self/mounts)."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) > len(best):
                    best, fstype = point, parts[2]
    except OSError:
        pass
    return fstype


def bench_stores(rounds: int, parent: str | None) -> None:
    results = run_rounds(rounds, parent)
    what = (
        f"{N_OBJECTS:,} small JSON objects ({N_RUNS} runs x {N_NAMES} names) at concurrency "
        f"{CONCURRENCY} (wall clock, median of {rounds}; lag: the loop's worst oversleep "
        f"of a {TICK * 1e3:g} ms tick)"
    )
    saves = phase_table(f"1. saves: {what}", {n: r.saves for n, r in results.items()})
    ratio = saves[STORE] / saves[BASELINE]
    print(
        f"target {STORE} saves >= {TARGET_SAVES_VS_AIOFILES:.0%} of {BASELINE}: "
        f"{ratio:.0%} {verdict(ratio >= TARGET_SAVES_VS_AIOFILES)}"
    )
    worst = lag_ms(results[STORE].saves)[1]
    print(
        f"target {STORE} worst loop lag during saves < {TARGET_LAG_MS:g} ms: {worst:.1f} ms "
        f"{verdict(worst < TARGET_LAG_MS)}"
    )
    phase_table(
        f"2. loads: the same {N_OBJECTS:,} objects read back and checked (page cache)",
        {n: r.loads for n, r in results.items() if r.loads},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stores",
        description="Benchmark of af.LocalFileStore saves and loads against plain files.",
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"measured rounds (default {ROUNDS})"
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="where to make each round's temporary directory (default: the system's temp dir)",
    )
    args = parser.parse_args(argv)
    rounds: int = args.rounds
    parent: str | None = args.dir
    where = parent if parent is not None else tempfile.gettempdir()
    print_header(("aioflows", "anyio", "aiofiles"), rounds)
    print(f"files under {where} ({filesystem_of(where)})")
    started = time.perf_counter()
    bench_stores(rounds, parent)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
