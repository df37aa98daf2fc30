"""Benchmark of ``af.RedisStore``: small-object saves and loads against bare redis-py commands.

Run with ``python -m benchmarks.redis_store`` (about 30 s on a 2-core VM; ``--rounds N``
changes the number of measured rounds). It starts its own redis-server on a free loopback
port (no persistence) and stops it at the end; redis-server must be installed.

Each round saves 2,000 small JSON objects (about 200 bytes each: 20 runs x 100 names, the
shape of a sweep's results or of a server's request records) and loads them back, with:

1. ``RedisStore``: ``await store.save(obj, name, task=..., config_hash=...)`` and
   ``await store.load(...)``: key checks, type lookup, JSON through the store's encoder, one
   ``HSET`` / ``HGET`` into the run's hash.
2. **bare redis-py**, the baseline of the target: ``await redis.hset(key, name,
   json.dumps(obj))`` and ``json.loads(await redis.hget(key, name))`` on the same keys, through
   the same client options, with nothing else.
3. ``LocalFileStore`` (context, no target): the same saves as fsynced atomic files in a
   temporary directory, the store a single machine would use. Its loads are served from the
   page cache.

Every contender is driven by the same ``af.map(fn, items, concurrency=32)``, so only the
storage differs, and every Redis contender uses one client (a connection pool of up to 32
connections, all made before the timed region). The commands each op sent are counted with the
server's ``INFO commandstats`` (reset before the round): a store op that took more than one
command would show here. Each round runs in a fresh event loop with only the work timed, after
``gc.collect()``; the database is flushed (and the LocalFileStore directory removed) between
rounds, outside the timed region. Contenders are interleaved round by round and the first
(warm-up) round is dropped; figures are medians of the measured rounds.

Target: RedisStore saves and loads each at >= 70 % of bare redis-py's ops/s, with exactly one
Redis command per op.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import redis.asyncio

import aioflows as af

from ._report import part_parser, print_header, print_table, verdict

ROUNDS = 5
RUNS, NAMES = 20, 100
CONCURRENCY = 32
TARGET = 0.7

Item = tuple[str, str, dict[str, Any]]  # (config_hash, name, obj)
ITEMS: list[Item] = [
    (
        f"{r:016x}",
        f"obj-{n}",
        {
            "run": r,
            "name": n,
            "metrics": {"acc": 0.5 + n / 1000, "loss": 1.0 / (n + 1)},
            "tags": ["bench", "small", "json"],
            "note": "x" * 80,
        },
    )
    for r in range(RUNS)
    for n in range(NAMES)
]
TASK = "bench"


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    try:
        for _ in range(500):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


class Contender:
    """Saves and loads of ITEMS through one storage; ``setup``/``teardown`` run untimed."""

    name = ""

    async def setup(self, url: str) -> None: ...

    async def save(self, item: Item) -> None: ...

    async def load(self, item: Item) -> None: ...

    async def teardown(self) -> None: ...


class StoreContender(Contender):
    name = "RedisStore"

    async def setup(self, url: str) -> None:
        self.redis = redis.asyncio.Redis.from_url(url, max_connections=CONCURRENCY)
        await warm(self.redis)
        self.store: af.ResultStore = af.RedisStore(self.redis)

    async def save(self, item: Item) -> None:
        config_hash, name, obj = item
        await self.store.save(obj, name, task=TASK, config_hash=config_hash)

    async def load(self, item: Item) -> None:
        config_hash, name, obj = item
        if await self.store.load(name, task=TASK, config_hash=config_hash) != obj:
            raise AssertionError(name)

    async def teardown(self) -> None:
        await self.redis.flushdb()
        await self.redis.aclose()


class BareContender(StoreContender):
    name = "bare redis-py"

    async def save(self, item: Item) -> None:
        config_hash, name, obj = item
        await self.redis.hset(f"aioflows:run:{TASK}/{config_hash}", name, json.dumps(obj))

    async def load(self, item: Item) -> None:
        config_hash, name, obj = item
        data = await self.redis.hget(f"aioflows:run:{TASK}/{config_hash}", name)
        if data is None or json.loads(data) != obj:
            raise AssertionError(name)


class LocalContender(StoreContender):
    name = "(LocalFileStore)"

    async def setup(self, url: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="bench-redis-store-")
        self.store = af.LocalFileStore(self.directory)

    async def teardown(self) -> None:
        shutil.rmtree(self.directory)


async def warm(client: redis.asyncio.Redis) -> None:
    """Open every pooled connection before the timed region."""
    await asyncio.gather(*(client.execute_command("PING") for _ in range(CONCURRENCY)))


async def commands(url: str) -> int:
    """Commands the server ran since its last stats reset (the stats calls excluded)."""
    async with redis.asyncio.Redis.from_url(url) as client:
        stats = await client.info("commandstats")
        # The stats calls, the warm-up pings and the set-up of these connections.
        skip = {"info", "config|resetstat", "ping", "client|setinfo", "hello", "select"}
        skip = {f"cmdstat_{name}" for name in skip}
        return sum(int(v["calls"]) for k, v in stats.items() if k not in skip)


async def reset(url: str) -> None:
    async with redis.asyncio.Redis.from_url(url) as client:
        await client.config_resetstat()


def one_round(contender: Contender, url: str) -> tuple[float, float, float, float]:
    """(saves/s, loads/s, commands per save, commands per load) of one round."""

    async def run() -> tuple[float, float, float, float]:
        await contender.setup(url)
        try:
            await reset(url)
            started = time.perf_counter()
            await af.map(contender.save, ITEMS, concurrency=CONCURRENCY)
            saves = len(ITEMS) / (time.perf_counter() - started)
            per_save = await commands(url) / len(ITEMS)
            await reset(url)
            started = time.perf_counter()
            await af.map(contender.load, ITEMS, concurrency=CONCURRENCY)
            loads = len(ITEMS) / (time.perf_counter() - started)
            per_load = await commands(url) / len(ITEMS)
            return saves, loads, per_save, per_load
        finally:
            await contender.teardown()

    gc.collect()
    return asyncio.run(run())


def main() -> None:
    parser = part_parser("python -m benchmarks.redis_store", __doc__ or "", [], ROUNDS)
    args = parser.parse_args()
    rounds: int = args.rounds
    print_header(["aioflows", "redis", "anyio"], rounds)
    contenders: list[Contender] = [StoreContender(), BareContender(), LocalContender()]
    samples: dict[str, list[tuple[float, float, float, float]]] = {c.name: [] for c in contenders}
    started = time.perf_counter()
    with redis_server() as url:
        for number in range(rounds + 1):
            order = contenders[number % 3 :] + contenders[: number % 3]
            for contender in order:
                result = one_round(contender, url)
                if number:  # round 0 warms up
                    samples[contender.name].append(result)

    def column(name: str, i: int) -> float:
        return statistics.median(s[i] for s in samples[name])

    bare_saves, bare_loads = column("bare redis-py", 0), column("bare redis-py", 1)
    rows = []
    for contender in contenders:
        n = contender.name
        local = n.startswith("(")
        rows.append(
            [
                n,
                f"{column(n, 0):,.0f}",
                f"{column(n, 0) / bare_saves:.2f}x",
                f"{column(n, 1):,.0f}",
                f"{column(n, 1) / bare_loads:.2f}x",
                "-" if local else f"{column(n, 2):.2f}",
                "-" if local else f"{column(n, 3):.2f}",
            ]
        )
    print_table(
        f"saves then loads of {len(ITEMS):,} small JSON objects ({RUNS} runs x {NAMES} names) "
        f"at concurrency {CONCURRENCY} (wall clock, median of {rounds})",
        ["contender", "saves/s", "vs bare", "loads/s", "vs bare", "cmds/save", "cmds/load"],
        rows,
    )
    save_ratio = column("RedisStore", 0) / bare_saves
    load_ratio = column("RedisStore", 1) / bare_loads
    one = column("RedisStore", 2) == column("RedisStore", 3) == 1.0
    print(
        f"target RedisStore saves >= {TARGET:.0%} of bare redis-py: {save_ratio:.0%} "
        f"{verdict(save_ratio >= TARGET)}"
    )
    print(
        f"target RedisStore loads >= {TARGET:.0%} of bare redis-py: {load_ratio:.0%} "
        f"{verdict(load_ratio >= TARGET)}"
    )
    print(f"target one Redis command per save and per load: {verdict(one)}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
