"""Benchmark of limits learned from rate-limit headers (issue 16): ``rate_per_key="auto"``.

Run with ``python -m benchmarks.auto_limits`` (about 2 minutes; ``--rounds N`` changes the
number of measured rounds).

Two API keys whose limits differ, 60/s and 20/s (the issue's 300/min and 60/min, scaled to
seconds so that a round takes seconds, and low enough that a client without limits goes over
them on this 2-core machine), against the provider-like server of the tests
(tests/provider_server.py: per-key token buckets as large as the limit, OpenAI-style
``x-ratelimit-*`` headers on every answer, 429 with ``Retry-After`` when a key is over), run in
a separate process so that its CPU is not the client's. Each contender makes ``CALLS`` calls at
concurrency 16 through one shared HTTP client, a fresh server per run, interleaved round by
round:

- **aioflows auto**: ``af.Launcher(fn, keys=[k0, k1], rate_per_key="auto")`` with an
  ``af.HttpClient`` that hands 429s to the launcher (``max_throttles=0``): no rate written
  anywhere, each key learns its own.
- **aioflows explicit** (the bar): the same with the right rates written by hand,
  ``keys={k0: "60/s", k1: "20/s"}``.
- **aiolimiter by hand** (a peer): 16 workers, keys 3:1 by the same hand-written limits, one
  ``aiolimiter.AsyncLimiter(limit, 1)`` per key; on a 429 the worker sleeps the Retry-After
  and sends again.
- **no limits** (a naive client): the same loop without limiters, sleeping each 429's
  Retry-After.

Measured: the calls per second over the run against the keys' 80/s (a run that starts with
full buckets may pass it by a second's worth over the run), the 429s the server
answered, and the client's CPU per call (``time.process_time``, the server's not included).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiolimiter
import httpx

import aioflows as af

from ._report import part_parser, print_header, print_table, run_parts, verdict

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"sk-bench-fast-8a7c6e5d4b": 60, "sk-bench-slow-1f2e3d4c5b": 20}
CALLS = 500
CONCURRENCY = 16

Contender = Callable[[str], Awaitable[None]]


def serve() -> None:
    """The server process: the tests' provider, its URL on stdout, until stdin closes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from provider_server import Limit, ProviderServer

    with ProviderServer({k: Limit(v) for k, v in KEYS.items()}, style="openai") as server:
        print(server.url, flush=True)
        sys.stdin.read()


def _call(client: httpx.AsyncClient, secret: str) -> Awaitable[httpx.Response]:
    return client.post("/v1/chat", headers={"authorization": f"Bearer {secret}"}, json={})


async def aioflows_run(url: str, keys: Any, rate: Any) -> None:
    # The client retries a broken connection, and hands every 429 to the launcher.
    retry = af.Retry(3, backoff=0.01, max_throttles=0)
    async with af.HttpClient(url, retry=retry) as client:

        async def fn(sample: dict[str, Any], key: af.Key) -> int:
            response = await _call(client, key.secret or "")
            response.raise_for_status()
            return response.status_code

        summary = await af.Launcher(fn, keys=keys, rate_per_key=rate, concurrency=CONCURRENCY).run(
            {"id": n} for n in range(CALLS)
        )
    assert summary.succeeded == CALLS, summary


async def auto(url: str) -> None:
    await aioflows_run(url, list(KEYS), "auto")


async def explicit(url: str) -> None:
    await aioflows_run(url, {k: f"{v}/s" for k, v in KEYS.items()}, None)


async def bare(url: str, limited: bool) -> None:
    fast, slow = KEYS
    limiters = {k: aiolimiter.AsyncLimiter(v, 1) for k, v in KEYS.items()}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(CALLS):
        queue.put_nowait(n)

    async with httpx.AsyncClient(base_url=url) as client:

        async def worker() -> None:
            while True:
                try:
                    n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                key = slow if n % 4 == 3 else fast  # the keys' 3:1, by hand
                while True:
                    if limited:
                        await limiters[key].acquire()
                    try:
                        response = await _call(client, key)
                    except httpx.TransportError:  # a connection the server dropped: again
                        continue
                    if response.status_code != 429:
                        response.raise_for_status()
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def peer(url: str) -> None:
    await bare(url, limited=True)


async def naive(url: str) -> None:
    await bare(url, limited=False)


CONTENDERS: dict[str, Contender] = {
    "aioflows auto": auto,
    "aioflows explicit": explicit,
    "aiolimiter by hand": peer,
    "no limits": naive,
}


def one_run(contender: Contender) -> tuple[float, float, int]:
    """(calls/s, client CPU us per call, 429s) of one run against a fresh server."""
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.auto_limits", "--server"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        cpu, wall = time.process_time(), time.perf_counter()
        asyncio.run(contender(url))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stats = httpx.get(f"{url}/stats").json()
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)
    throttled = sum(counts.get("429", 0) for counts in stats.values())
    return CALLS / wall, cpu / CALLS * 1e6, throttled


def measure(rounds: int) -> None:
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in CONTENDERS}
    for round_ in range(rounds + 1):  # the first is a warm-up
        for name, contender in CONTENDERS.items():
            result = one_run(contender)
            if round_:
                results[name].append(result)
    limit = sum(KEYS.values())
    rows = []
    for name, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        throttled = statistics.median(r[2] for r in runs)
        rows.append([name, f"{rate:.0f}", f"{rate / limit:.0%}", f"{throttled:g}", f"{cpu:.0f}"])
    print_table(
        f"{CALLS:,} calls over 2 keys of 60/s and 20/s ({limit}/s in all), concurrency "
        f"{CONCURRENCY}",
        ["contender", "calls/s", "of limit", "429s", "client CPU us/call"],
        rows,
    )
    auto_rate, explicit_rate = (
        statistics.median(r[0] for r in results[n]) for n in list(CONTENDERS)[:2]
    )
    auto_429 = statistics.median(r[2] for r in results["aioflows auto"])
    print(
        f"\nauto keys reach {auto_rate / explicit_rate:.0%} of the hand-written rates' "
        f"throughput with {auto_429:g} 429s (target: 85% or more, 10 or fewer): "
        f"{verdict(auto_rate >= 0.85 * explicit_rate and auto_429 <= 10)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list == ["--server"]:
        serve()
        return 0
    parser = part_parser("benchmarks.auto_limits", __doc__.splitlines()[0], ["auto"], 3)
    args = parser.parse_args(args_list)
    print_header(["aioflows", "httpx", "aiolimiter"], args.rounds)
    run_parts({"auto": measure}, args.part, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
