"""Benchmark of the launcher's request cache (issue 16): what reading and writing it costs a run.

Run with ``python -m benchmarks.launcher_cache`` (about a minute on a 2-core machine; ``--rounds
N`` changes the number of measured rounds, ``--pairs N`` the size of each run).

Every contender runs ``af.Launcher`` over the same 20,000 inputs (an id and a prompt of about 200
characters), with 4 API keys at concurrency 64 and a fresh JSONL output file each. ``fn`` stands
for an LLM call without the network: it encodes a request body as JSON, waits 5 ms (the
latency, so 64 calls are in flight as against a real API), parses a 1.3 KB completion as JSON
and reports its token usage. A real call costs more CPU than this (an HTTP client costs 50-150 us
a call, see the ``Launcher`` section), so the cache's share of a real run is smaller than here.

Contenders, interleaved round by round:

- **no cache** (the bar): ``af.Launcher(fn, keys=KEYS, concurrency=64, output=...)``.
- **cache, all misses**: the same with ``cache=af.LocalFileStore(<a fresh directory>)``: every
  lookup misses, every answer is saved (as segments of many entries, once a second and at the
  end, each written atomically with an fsync). The run the target is about: an uncached run
  may cost at most 1.10x the bar, in CPU (``time.process_time``, the store's threads included)
  and in wall.
- **cache, all hits** (context): the same launcher again over the cache the previous contender
  filled, into another output file: every pair served from the cache, no call made.
- **one object per entry** (a peer: the plain way to cache through a ResultStore):
  ``fn`` wrapped so that each call first loads ``sha256(input)`` from a LocalFileStore
  (``MissingObject``: a miss) and saves its answer under that name after the call, in the call.

The load of the machine (``os.getloadavg``) is printed before and after: the figures are CPU
times, compared side by side in one run, so that other work on the machine moves them less
than it moves wall times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

import aioflows as af

from ._report import print_header, print_table, verdict

PAIRS = 20_000
ROUNDS = 3
CONCURRENCY = 64
LATENCY = 0.005
KEYS = [f"sk-bench-{i}-{'x' * 24}" for i in range(4)]
TARGET = 1.10

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"]


def _inputs(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "prompt": f"question {i}: "
            + " ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(34)),
        }
        for i in range(n)
    ]


def _completion(prompt: str) -> str:
    """An OpenAI-style completion of about 1.3 KB, as a server would send it."""
    return json.dumps(
        {
            "id": "cmpl-" + hashlib.md5(prompt.encode()).hexdigest(),
            "object": "text_completion",
            "model": "bench-1",
            "choices": [
                {"index": 0, "text": (prompt + " ") * 5, "finish_reason": "stop", "logprobs": None}
            ],
            "usage": {"prompt_tokens": 40, "completion_tokens": 200, "total_tokens": 240},
        }
    )


_ANSWER = _completion(_inputs(1)[0]["prompt"])


async def fn(sample: dict[str, Any], key: af.Key) -> Any:
    body = json.dumps({"model": "bench-1", "prompt": sample["prompt"], "max_tokens": 256})
    await anyio.sleep(LATENCY)
    reply = json.loads(_ANSWER)
    key.report_usage(reply["usage"]["total_tokens"] + len(body) % 2)
    return reply["choices"][0]["text"]


def _per_object(store: af.LocalFileStore) -> Callable[[dict[str, Any], af.Key], Any]:
    async def cached(sample: dict[str, Any], key: af.Key) -> Any:
        body = {k: v for k, v in sample.items() if k != "id"}
        name = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        try:
            return await store.load(name, task="bench", config_hash="v1")
        except af.MissingObject:
            pass
        answer = await fn(sample, key)
        await store.save(answer, name, task="bench", config_hash="v1")
        return answer

    return cached


async def _timed(launcher: af.Launcher, data: list[dict[str, Any]]) -> tuple[float, float, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    summary = await launcher.run(data)
    return time.process_time() - cpu, time.perf_counter() - wall, summary


def _round(data: list[dict[str, Any]], root: Path) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}

    async def go() -> None:
        out = root / "out"
        shutil.rmtree(root, ignore_errors=True)
        out.mkdir(parents=True)
        common: dict[str, Any] = {"keys": KEYS, "concurrency": CONCURRENCY}
        cpu, wall, s = await _timed(af.Launcher(fn, output=out / "a.jsonl", **common), data)
        assert s.succeeded == len(data), s
        results["no cache"] = (cpu, wall)
        store = af.LocalFileStore(root / "cache")
        cached = af.Launcher(fn, output=out / "b.jsonl", cache=store, **common)
        cpu, wall, s = await _timed(cached, data)
        assert s.succeeded == len(data), s
        assert s.cached == 0, s
        results["cache, all misses"] = (cpu, wall)
        again = af.Launcher(fn, output=out / "c.jsonl", cache=store, **common)
        cpu, wall, s = await _timed(again, data)
        assert s.cached == len(data), s
        results["cache, all hits"] = (cpu, wall)
        plain = af.LocalFileStore(root / "objects")
        naive = af.Launcher(_per_object(plain), output=out / "d.jsonl", **common)
        cpu, wall, s = await _timed(naive, data)
        assert s.succeeded == len(data), s
        results["one object per entry"] = (cpu, wall)

    anyio.run(go)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.launcher_cache", description="the launcher's request cache"
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"default {ROUNDS}")
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"default {PAIRS:,}")
    args = parser.parse_args(argv)
    print_header(["aioflows", "anyio"], args.rounds)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data = _inputs(args.pairs)
    root = Path(tempfile.mkdtemp(prefix="aioflows-cache-bench-"))
    try:
        _round(data[: max(1, len(data) // 10)], root / "warm")
        rounds = []
        for number in range(1, args.rounds + 1):
            found = _round(data, root / f"r{number}")
            rounds.append(found)
            times = (f"{name} {c:.2f} s CPU {w:.2f} s wall" for name, (c, w) in found.items())
            print(f"  round {number}: " + ", ".join(times))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    names = list(rounds[0])
    cpu = {name: statistics.median(r[name][0] for r in rounds) for name in names}
    wall = {name: statistics.median(r[name][1] for r in rounds) for name in names}
    bar_cpu, bar_wall = cpu["no cache"], wall["no cache"]
    rows = [
        [
            name,
            f"{cpu[name]:.2f}",
            f"{cpu[name] / args.pairs * 1e6:.0f}",
            f"{cpu[name] / bar_cpu:.2f}x",
            f"{wall[name]:.2f}",
            f"{wall[name] / bar_wall:.2f}x",
            f"{args.pairs / wall[name]:,.0f}",
        ]
        for name in names
    ]
    print_table(
        f"{args.pairs:,} pairs, {len(KEYS)} keys, concurrency {CONCURRENCY}, "
        f"fn: JSON in and out around a {LATENCY * 1000:g} ms wait",
        ["contender", "CPU s", "CPU us/pair", "vs no cache", "wall s", "vs no cache", "pairs/s"],
        rows,
    )
    ratio_cpu = cpu["cache, all misses"] / bar_cpu
    ratio_wall = wall["cache, all misses"] / bar_wall
    print(
        f"target an uncached run with cache=LocalFileStore within {TARGET:.2f}x of no cache: "
        f"CPU {ratio_cpu:.2f}x {verdict(ratio_cpu <= TARGET)}, "
        f"wall {ratio_wall:.2f}x {verdict(ratio_wall <= TARGET)}"
    )
    print(
        f"(context) a fully cached rerun: {args.pairs / wall['cache, all hits']:,.0f} pairs/s, "
        f"{cpu['cache, all hits'] / bar_cpu:.2f}x the CPU of the calls it saves"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
