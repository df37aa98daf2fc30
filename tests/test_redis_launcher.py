"""Launcher(shared=RedisRateLimiter) (API.md section 8): launcher processes over the same keys
stay within each key's limits together, against a real HTTP server and a real redis-server."""

from __future__ import annotations

import json
import multiprocessing
import struct
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
import redis.asyncio
from local_server import ServerState, serve
from redis_server import RedisServer

import aioflows as af

SECRETS = ["sk-live-SHARED-AAAA1111", "sk-live-SHARED-BBBB2222"]
RATE, BURST = 10, 10  # per key: "10/s", whose burst is one second's worth
N = 30  # inputs per launcher process
JITTER = 0.2  # seconds a request may take from its grant to its arrival at the server

#: Forked where that is safe (no warning about threads before Python 3.12): no re-imports.
PROCESSES = multiprocessing.get_context("fork" if sys.version_info < (3, 12) else "spawn")


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with serve() as (url, state):
        state.keys = set(SECRETS)
        yield url, state


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def calling(client: httpx.AsyncClient, name: str) -> Any:
    async def fn(sample: dict[str, Any], key: af.Key) -> Any:
        response = await client.get(
            f"/{name}/{sample['id']}", headers={"authorization": f"Bearer {key.secret}"}
        )
        response.raise_for_status()  # a 429 is a throttle of the key
        return response.json()["path"]

    return fn


def launcher_process(
    redis_url: str, prefix: str, base: str, output: str, talk: Connection, go: Connection
) -> None:
    async def main() -> None:
        async with (
            af.RedisRateLimiter(redis_url, "1/s", prefix=prefix) as shared,
            httpx.AsyncClient(base_url=base) as client,
        ):
            launcher = af.Launcher(
                calling(client, Path(output).stem),
                keys=SECRETS,
                rate_per_key=f"{RATE}/s",
                concurrency=8,
                output=output,
                shared=shared,
            )
            await shared.delay("warm-up")  # connected, script loaded
            talk.send("ready")
            await anyio.to_thread.run_sync(go.recv)
            summary = await launcher.run([{"id": i} for i in range(N)])
            talk.send(summary.succeeded)

    anyio.run(main)


def max_excess(times: list[float], rate: float, burst: float) -> float:
    """Max over windows [t_i, t_j] of arrivals - (burst + (t_j - t_i) * rate)."""
    worst, lowest = -float("inf"), float("inf")
    for k, t in enumerate(sorted(times)):
        a = k - t * rate
        lowest = min(lowest, a)
        worst = max(worst, a - lowest)
    return worst + 1 - burst


def window_counts(times: list[float], span: float = 1.0) -> int:
    times = sorted(times)
    most, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + span:
            j += 1
        most = max(most, j - i)
    return most


def test_two_launcher_processes_share_two_keys(
    redis_server: RedisServer, prefix: str, server: tuple[str, ServerState], tmp_path: Path
) -> None:
    """Each key stays within its limit at the server although two processes use it, and each
    process's file has every pair exactly once. Apart, the two would send twice the rate."""
    url, state = server
    outputs = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    pipes = [(PROCESSES.Pipe(), PROCESSES.Pipe()) for _ in outputs]
    procs = [
        PROCESSES.Process(
            target=launcher_process,
            args=(redis_server.url, prefix, url, str(output), talk[1], go[0]),
        )
        for output, (talk, go) in zip(outputs, pipes, strict=True)
    ]
    for proc in procs:
        proc.start()
    try:
        for talk, _ in pipes:
            assert talk[0].poll(30)
            assert talk[0].recv() == "ready"
        for _, go in pipes:
            go[1].send("go")
        for talk, _ in pipes:
            assert talk[0].poll(60)
            assert talk[0].recv() == N
        for proc in procs:
            proc.join(10)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.join()
    for output in outputs:
        records = records_of(output)
        assert Counter((r["id"], r["sample"]) for r in records) == {(i, 0): 1 for i in range(N)}
        assert all(r["error"] is None for r in records)
        assert all(r["output"] == f"/{output.stem}/{r['id']}" for r in records)
    per_key: dict[str, list[float]] = defaultdict(list)
    for seen in state.seen:
        assert seen.authorization is not None
        per_key[seen.authorization.removeprefix("Bearer ")].append(seen.time)
    assert sorted(per_key) == sorted(SECRETS)
    assert sum(len(times) for times in per_key.values()) == 2 * N
    for times in per_key.values():
        # burst + one second of refill, give or take the time between a grant and the arrival
        # (a busy machine stretches it): apart, the two processes would send 30 at once
        assert window_counts(times) <= BURST + RATE + 3
        assert max_excess(times, RATE, BURST) <= RATE * JITTER + 1


async def test_a_throttle_pauses_the_key_for_every_process(
    redis_server: RedisServer, prefix: str, server: tuple[str, ServerState], tmp_path: Path
) -> None:
    """A 429 with Retry-After: 1 in one launcher: another launcher (another limiter, as another
    process would have) takes only the other key for that second."""
    url, state = server
    state.scripts["/first/0"] = [(429, {"retry-after": "1"})]
    one = af.RedisRateLimiter(redis_server.url, "1/s", prefix=prefix)
    two = af.RedisRateLimiter(redis_server.url, "1/s", prefix=prefix)
    async with one, two, httpx.AsyncClient(base_url=url) as client:

        def launcher(name: str, shared: af.RedisRateLimiter) -> af.Launcher:
            return af.Launcher(
                calling(client, name),
                keys=SECRETS,
                rate_per_key="100/s",
                concurrency=1,
                shared=shared,
                output=tmp_path / f"{name}.jsonl",
            )

        first = await launcher("first", one).run([{"id": 0}])
        assert first.succeeded == 1
        throttled_key = state.seen[0].authorization
        second = await launcher("second", two).run([{"id": i} for i in range(10)])
        assert second.succeeded == 10
    keys = [r["key"] for r in records_of(tmp_path / "second.jsonl")]
    throttled = "key-0" if throttled_key == f"Bearer {SECRETS[0]}" else "key-1"
    assert throttled not in keys  # the pause reached the other launcher through Redis


async def test_report_usage_and_no_secret_in_redis(
    redis_server: RedisServer, prefix: str, server: tuple[str, ServerState], tmp_path: Path
) -> None:
    """Token budgets in Redis: report_usage is charged there; every Redis key is a digest."""
    url, _ = server
    async with (
        af.RedisRateLimiter(redis_server.url, "1/s", prefix=prefix) as shared,
        httpx.AsyncClient(base_url=url) as client,
    ):
        inner = calling(client, "tokens")

        async def fn(sample: dict[str, Any], key: af.Key) -> Any:
            key.report_usage(300)  # estimated 100: 200 more are charged in Redis
            return await inner(sample, key)

        launcher = af.Launcher(
            fn,
            keys=SECRETS[:1],
            rate_per_key="100/s",
            tokens_per_key="1000/min",
            cost=lambda sample: 100,
            shared=shared,
        )
        started = time.monotonic()
        summary = await launcher.run([{"id": i} for i in range(3)])
        assert summary.succeeded == 3
        tokens = shared.bucket_name(("aioflows.launcher", "tokens", SECRETS[0]))
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            value = await raw.get(tokens)  # packed doubles: tokens, when counted, paused until
            left = struct.unpack("<d", value[:8])[0]
            assert left < 1000 - 3 * 300 + 40  # 900 used, refilled at ~17/s meanwhile
            assert time.monotonic() - started < 2
            for name in [k async for k in raw.scan_iter(match=f"{prefix}:*")]:
                value = await raw.get(name)
                for secret in SECRETS:
                    assert secret.encode() not in name + value
        finally:
            await raw.aclose()
    not_a_limiter: Any = "redis://localhost"
    with pytest.raises(af.InvalidArgumentType, match="RedisRateLimiter"):
        af.Launcher(fn, shared=not_a_limiter)
