"""RedisRateLimiter (API.md section 8) against a real redis-server: the bound, weighted costs,
charge/refund/pause, four processes on one key, isolation, a restart, memory, starvation."""

from __future__ import annotations

import multiprocessing
import struct
import time
import uuid
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis.asyncio
import redis_server
from redis_server import RedisServer

import aioflows as af
from aioflows.redislimits import bucket_name


def window_counts(times: list[float], span: float = 1.0) -> int:
    """The most grants in any window of ``span`` seconds."""
    times = sorted(times)
    most, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + span:
            j += 1
        most = max(most, j - i)
    return most


def max_excess(times: list[float], rate: float, burst: float) -> float:
    """Max over windows [t_i, t_j] of grants - (burst + (t_j - t_i) * rate)."""
    worst, lowest = -float("inf"), float("inf")
    for k, t in enumerate(sorted(times)):
        a = k - t * rate
        lowest = min(lowest, a)
        worst = max(worst, a - lowest)
    return worst + 1 - burst


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def grant_times(
    limiter: af.RedisRateLimiter, key: str, n: int, cost: float = 1
) -> list[float]:
    times = []
    for _ in range(n):
        await limiter.acquire(key, cost)
        times.append(time.monotonic())
    return times


# -- the bucket ---------------------------------------------------------------------------------


async def test_bound_and_weighted_costs(redis_server: RedisServer, prefix: str) -> None:
    async with af.RedisRateLimiter(redis_server.url, "50/s", burst=5, prefix=prefix) as limiter:
        started = time.monotonic()
        times = await grant_times(limiter, "k", 10, cost=2)  # 20 tokens: 5 at once, 15 at 50/s
        elapsed = time.monotonic() - started
        assert elapsed >= 15 / 50 - 0.02
        assert max_excess([t for t in times for _ in range(2)], 50, 5) <= 1
    async with af.RedisRateLimiter(redis_server.url, "5/s", burst=5, prefix=prefix) as slow:
        # A cost of a whole burst empties the bucket (which takes a second to refill).
        await slow.acquire("w", 5)
        assert await slow.available("w") < 2
        assert not await slow.try_acquire("w", 3)
        assert 0.3 < await slow.delay("w", 5) <= 1.0


async def test_arguments_are_checked_like_keyed_rate_limiter(
    redis_server: RedisServer, prefix: str
) -> None:
    text_cost: Any = "1"
    async with af.RedisRateLimiter(redis_server.url, "10/s", burst=3, prefix=prefix) as limiter:
        with pytest.raises(af.InvalidArgument, match="burst"):
            await limiter.acquire("k", 4)
        with pytest.raises(af.InvalidArgument):
            await limiter.acquire("k", 0)
        with pytest.raises(af.InvalidArgumentType):
            await limiter.try_acquire("k", text_cost)
        with pytest.raises(af.InvalidArgument):
            await limiter.charge("k", -1)
        with pytest.raises(af.InvalidArgument):
            await limiter.pause("k", -1)
        with pytest.raises(af.InvalidArgumentType, match="digest"):
            await limiter.acquire(object())
    with pytest.raises(af.InvalidArgument):
        af.RedisRateLimiter(redis_server.url, "fast")
    with pytest.raises(af.InvalidArgument):
        af.RedisRateLimiter(redis_server.url, 10, burst=0)
    with pytest.raises(af.InvalidArgument):
        af.RedisRateLimiter(redis_server.url, 10, prefix="")
    with pytest.raises(af.InvalidArgumentType):
        af.RedisRateLimiter(42, 10)


async def test_charge_refund_pause(redis_server: RedisServer, prefix: str) -> None:
    """Reconciling from one process is seen by another (the margins allow a busy machine)."""
    one = af.RedisRateLimiter(redis_server.url, "5/s", burst=4, prefix=prefix)
    other = af.RedisRateLimiter(redis_server.url, "5/s", burst=4, prefix=prefix)  # "process" 2
    async with one, other:
        await one.charge("k", 6)  # 4 - 6: in debt
        assert -2.1 < await other.available("k") < -1.0
        assert not await other.try_acquire("k")
        started = time.monotonic()
        await other.acquire("k")  # the debt and one token: 3 / 5 s
        assert time.monotonic() - started >= 0.3
        await one.refund("k", 100)
        assert await other.available("k") == 4  # never above the burst
        await one.pause("k", 0.6)
        await one.pause("k", 0.05)  # pauses only extend: the longer one holds
        assert not await other.try_acquire("k")
        assert await other.delay("k") > 0.3
        started = time.monotonic()
        await other.acquire("k")
        assert time.monotonic() - started >= 0.2


async def test_keys_are_isolated_and_overrides_apply(
    redis_server: RedisServer, prefix: str
) -> None:
    overrides = {"slow": "1/s", "c": "1/s"}
    async with af.RedisRateLimiter(
        redis_server.url, "100/s", burst=2, overrides=overrides, prefix=prefix
    ) as limiter:
        assert limiter.rate_for("slow") == af.Rate(1)
        await limiter.acquire("a", 2)
        await limiter.pause("a", 5)
        assert not await limiter.try_acquire("a")
        assert await limiter.try_acquire("b", 2)  # its own full bucket
        assert await limiter.try_acquire(("tuple", 1))
        assert await limiter.try_acquire("slow", 2)
        assert await limiter.delay("slow") > 0.5  # 1/s, not 100/s
        assert await limiter.delay("b") < 0.05
        async with limiter("c"):
            pass
        assert await limiter.available("c") < 2


async def test_keys_never_reach_redis(
    redis_server: RedisServer, prefix: str, raw: redis.asyncio.Redis
) -> None:
    secret = "sk-live-VERY-SECRET-0000"
    async with af.RedisRateLimiter(redis_server.url, "10/s", prefix=prefix) as limiter:
        await limiter.acquire(secret, 5)
        await limiter.pause(secret, 1)
        names = [name async for name in raw.scan_iter(match=f"{prefix}:*")]
        assert bucket_name(prefix, secret).encode() in names
        for name in names:
            assert secret.encode() not in name
            assert secret.encode() not in await raw.get(name)
        assert secret not in repr(limiter)


async def test_failure_is_an_error_never_a_grant(prefix: str) -> None:
    port = redis_server.free_port()  # nobody listens there
    async with af.RedisRateLimiter(f"redis://127.0.0.1:{port}/0", "10/s", prefix=prefix) as lim:
        with pytest.raises(af.RedisUnavailable, match=f"127.0.0.1:{port}"):
            await lim.acquire("k")
        with pytest.raises(af.RedisUnavailable):
            await lim.try_acquire("k")
        with pytest.raises(af.RedisUnavailable):
            await lim.delay("k")


# -- waiting --------------------------------------------------------------------------------------


async def test_local_waiters_queue_in_process(
    redis_server: RedisServer, prefix: str, raw: redis.asyncio.Redis
) -> None:
    """20 waiters on one key of one process: a few round trips per grant, not one per waiter
    per refill (they would all ask again at the same moment)."""
    n = 20
    await raw.config_resetstat()
    async with af.RedisRateLimiter(redis_server.url, "100/s", burst=1, prefix=prefix) as limiter:
        times: list[float] = []

        async def one() -> None:
            await limiter.acquire("hot")
            times.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    stats = await raw.info("commandstats")
    calls = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    assert len(times) == n
    assert calls <= 3 * n + 5, calls
    assert max_excess(times, 100, 1) <= 1


async def test_a_big_request_is_not_starved(redis_server: RedisServer, prefix: str) -> None:
    """Small requests of another process keep the bucket empty; the big one claims its tokens
    and is served. Without the claim it would wait for 5 tokens that never pile up."""
    small = af.RedisRateLimiter(redis_server.url, "50/s", burst=5, prefix=prefix)
    big = af.RedisRateLimiter(redis_server.url, "50/s", burst=5, prefix=prefix)
    async with small, big:
        done = anyio.Event()

        async def hog() -> None:
            while not done.is_set():
                await small.acquire("k")

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(hog)
            await anyio.sleep(0.2)  # the bucket is empty and small ones queue
            with anyio.fail_after(3):
                await big.acquire("k", 5)
            done.set()
            tg.cancel_scope.cancel()


async def test_cancelled_waiters_take_nothing_and_do_not_block(
    redis_server: RedisServer, prefix: str
) -> None:
    async with af.RedisRateLimiter(redis_server.url, "20/s", burst=2, prefix=prefix) as limiter:
        await limiter.acquire("k", 2)
        with anyio.move_on_after(0.05):
            await limiter.acquire("k", 2)  # cancelled while waiting: its claim is dropped
        with anyio.fail_after(1):
            await limiter.acquire("k")  # served at the refill, not held up
        assert limiter.bucket_name("k") not in limiter._lines  # no line left behind


def one_of_four(url: str, prefix: str, ready: Connection, go: Connection) -> None:
    """A worker process: connect, say ready, wait for go, 40 acquires, send their times."""

    async def main() -> None:
        async with af.RedisRateLimiter(url, "50/s", burst=5, prefix=prefix) as limiter:
            await limiter.delay("warm-up")  # connected, script loaded
            ready.send("ready")
            await anyio.to_thread.run_sync(go.recv)
            ready.send(await grant_times(limiter, "one-key", 40))

    anyio.run(main)


def test_four_processes_share_one_key(redis_server: RedisServer, prefix: str) -> None:
    """4 processes x 40 acquires at 50/s burst 5: no second holds more than 55, and all take
    at least (160 - 5) / 50 s. (Forked, so that the test does not wait for four imports.)"""
    context = multiprocessing.get_context("fork")
    pipes = [(context.Pipe(), context.Pipe()) for _ in range(4)]
    procs = [
        context.Process(target=one_of_four, args=(redis_server.url, prefix, ready[1], go[0]))
        for ready, go in pipes
    ]
    for proc in procs:
        proc.start()
    try:
        for ready, _ in pipes:
            assert ready[0].poll(30)
            assert ready[0].recv() == "ready"
        started = time.monotonic()
        for _, go in pipes:
            go[1].send("go")
        times: list[float] = []
        for ready, _ in pipes:
            assert ready[0].poll(60)
            times += ready[0].recv()
        for proc in procs:
            proc.join(10)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.join()
    assert len(times) == 160
    # The bound holds on the Redis clock; the times here are taken when each process sees its
    # grant, and each has one acquire in flight, so a late reply can bunch at most one grant
    # per other process into a window: 2 more allowed for that.
    assert window_counts(times) <= 5 + 50 + 2
    assert max(times) - started >= (160 - 5) / 50
    assert max_excess(times, 50, 5) <= 3  # every window, not only 1-second ones


# -- lost state and memory ------------------------------------------------------------------------


def test_a_restart_is_an_error_then_no_over_grant(tmp_path: Path, prefix: str) -> None:
    """Redis restarts (no persistence) while a bucket is empty: calls fail with RedisUnavailable
    while it is down, and after it the buckets start empty, not full (which would grant a
    whole burst again at once)."""
    server = redis_server.start(tmp_path / "redis")
    errors: list[BaseException] = []
    times: list[float] = []

    async def main() -> None:
        nonlocal server
        async with af.RedisRateLimiter(server.url, "4/s", burst=10, prefix=prefix) as limiter:
            times.extend(await grant_times(limiter, "k", 12))  # empty now
            redis_server.stop(server)
            server = redis_server.start(tmp_path / "redis", port=server.port)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                try:
                    await limiter.acquire("k")
                except af.RedisUnavailable as exc:
                    errors.append(exc)
                    await anyio.sleep(0.02)
                else:
                    times.append(time.monotonic())

    try:
        anyio.run(main)
    finally:
        redis_server.stop(server)
    assert all(isinstance(e, af.RedisUnavailable) for e in errors)
    assert len(times) > 12  # it came back
    assert max_excess(times, 4, 10) <= 1


def command(*parts: object) -> bytes:
    """One command in RESP, as redis-py would send it."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def test_keys_used_once_leave_nothing_once_full(
    redis_server: RedisServer, prefix: str, raw: redis.asyncio.Redis
) -> None:
    """100,000 keys, one acquire each, then nothing but the epoch is left in Redis once their
    buckets have refilled. The acquires are the limiter's own script call, pipelined on one
    socket (redis-py's pipeline costs more Python time than the whole test budget)."""
    n = 100_000
    async with af.RedisRateLimiter(redis_server.url, "1000/s", prefix=prefix) as limiter:
        await limiter.acquire("first")  # the epoch exists, the script is loaded
        spec = limiter._spec("first")
        numbers = struct.pack("<5d", 1, spec.kr.per_us, spec.kr.burst, 0, 0)
        args = [limiter._claimant + b"try", limiter._epoch, numbers]
        head = command("EVALSHA", limiter._sha, 2, limiter._epoch_key, "NAME", *args)
        head = head.split(b"$4\r\nNAME\r\n")
        assert len(head) == 2
        before, after = head
        data = b"".join(
            before + b"$%d\r\n%s\r\n" % (len(name), name) + after
            for name in (bucket_name(prefix, f"key-{i}").encode() for i in range(n))
        )
        granted = b":0\r\n"  # granted (no next waiter to say how long it would wait)
        expired_before = (await raw.info("stats"))["expired_keys"]
        stream = await anyio.connect_tcp("127.0.0.1", redis_server.port)
        async with stream:
            await stream.send(data)
            got = b""
            while len(got) < n * len(granted):
                got += await stream.receive(1 << 20)
        assert got == granted * n
        with anyio.fail_after(15):  # gone once full again (1 ms later)
            while True:
                left = [k async for k in raw.scan_iter(match=f"{prefix}:*", count=10_000)]
                if left == [f"{prefix}:rl:epoch".encode()]:
                    break
                await anyio.sleep(0.1)
        expired = (await raw.info("stats"))["expired_keys"] - expired_before
        assert expired >= n  # each was written, with its expiry


# -- per_key_rate= ----------------------------------------------------------------------------


async def test_map_takes_it_as_per_key_rate(redis_server: RedisServer, prefix: str) -> None:
    """map's per_key_rate= takes the Redis buckets, and a throttle pauses the key in Redis."""
    throttled: set[int] = set()
    async with af.RedisRateLimiter(redis_server.url, "40/s", burst=2, prefix=prefix) as limiter:

        async def call(item: int) -> int:
            if item == 0 and item not in throttled:
                throttled.add(item)
                raise af.RateLimited(retry_after=0.5)
            return item * 2

        started = time.monotonic()
        results = await af.map(
            call, range(6), key=lambda i: f"host-{i % 2}", per_key_rate=limiter, retry=2
        )
        assert results == [0, 2, 4, 6, 8, 10]
        # item 0 waited for the pause of host-0, which only Redis holds
        assert time.monotonic() - started >= 0.45
        assert repr(af.calls.CallPolicy(key=str, per_key_rate=limiter)).count("RedisRateLimiter")


async def test_http_client_takes_it_as_per_host_rate(
    redis_server: RedisServer, prefix: str
) -> None:
    from local_server import serve

    async with af.RedisRateLimiter(redis_server.url, "20/s", burst=1, prefix=prefix) as limiter:
        with serve() as (url, _state):
            async with af.HttpClient(url, per_host_rate=limiter) as client:
                started = time.monotonic()
                for _ in range(4):
                    (await client.get("/x")).raise_for_status()
                assert time.monotonic() - started >= 3 / 20 - 0.01
