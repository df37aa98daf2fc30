"""Benchmark of ``af.Launcher``: per-key rate limits held against a real HTTP server, and the
CPU the launcher costs per call against a bare httpx loop.

Run with ``python -m benchmarks.launcher`` (about 2 minutes on a 2-core machine; ``--part
rate|cpu|stock`` runs one part, ``--rounds N`` changes the number of measured rounds). It is
wall-clock heavy: every launcher run is paced by its limits (20,000 calls at 4 x 500/s take
about 9 s), so the default is 3 measured rounds, not 5.

The server is a minimal HTTP/1.1 server with keep-alive on ``asyncio`` (a ``Protocol``: request
line, headers and a ``Content-Length`` body; a small JSON answer) in a separate process
(``--server``), so that it has its own core and its CPU is not counted as the client's. It
records, for every request, the bearer key and its arrival time (``time.monotonic``, the
system-wide ``CLOCK_MONOTONIC``, so comparable with the client's), and hands them over on ``GET
/stats``. Server-side arrivals are the honest measure of a rate limit: they are what the API
provider counts.

The client is one shared ``httpx.AsyncClient`` over :class:`KeepAliveTransport`, a minimal
keep-alive transport written here: httpx's own connection pool (httpcore 1.0.9) costs 2.5-3.5 ms
of CPU per call at 64 connections on this machine, so a client that uses it cannot send more
than about 350 calls/s, far below the 2,000/s the limits allow (see part ``stock``; upstream:
encode/httpcore#1035, the pool's assignment pass is O(connections x requests) and polls every
idle socket, and encode/httpcore#1103, a failed ``import sniffio`` on every lock or event since
anyio 4.11). httpx's client layer (URLs, headers, JSON, the ``Response``) is kept.

Contenders, each sending 20,000 POSTs (a small JSON body each) with 4 API keys at concurrency
64, interleaved round by round:

- **aioflows**: ``af.Launcher(fn, keys=KEYS, rate_per_key="500/s", concurrency=64,
  output=<a fresh temporary JSONL file>)``, where ``fn`` posts the sample with the key's secret
  as a bearer token and returns the response's JSON. It writes one JSON line per call.
- **bare httpx loop** (the bar for CPU): 64 workers pulling the samples from an
  ``asyncio.Queue``, keys taken round-robin, no rate limit, the responses' JSON kept in a list.
  It runs flat out (about 7,000 calls/s here), so it shows what the HTTP calls themselves cost.
- **bare loop paced by 4 af.RateLimiter** (context): the same loop, each call first acquiring
  the ``"500/s"`` limiter of its key. It runs at the launcher's pace (2,000 calls/s), so the
  difference to the launcher is the launcher's own machinery (key picking, records, the JSONL
  writer), and the difference to the bare loop the cost of running paced. A plain
  ``af.RateLimiter`` grants a waiter the moment its tokens are there, a wake-up of the process
  per grant; the launcher's key buckets are served on shared 5 ms ticks instead
  (``aioflows.limits._TICK``), so part of that difference is the launcher doing less.

Part ``rate`` (aioflows runs only) checks the limits, per key, on the server's arrival times:

- the **steady-state rate**: each key's bucket starts full (``burst`` defaults to one second of
  tokens, 500), so the first second can hold up to ``burst + 1 s x rate`` = 1,000 calls. The
  rate is taken over the arrivals after the first second of the run (or after the key's burst
  is spent, if later: the first send, on the client, at which the key had used up
  ``burst + rate x elapsed`` tokens within 1.5), as (arrivals - 1) / their span. Target:
  within 2 % of 500/s.
- **no key above its limit in any 1-second window**: the largest number of arrivals in any
  half-open window ``[t, t + 1 s)`` over the whole run, against the bound
  ``burst + 1 s x rate`` = 1,000 (PASS/FAIL); the same over windows starting after the first
  second, against 500 (context: a pause of the client leaves tokens in the bucket, which the
  contract lets it spend later); and the largest *excess* over ``burst + T x rate`` in windows
  of any length ``T`` (the limiter's contract; <= 0: none). The same figures on the client's
  send times (taken in ``fn`` just before the POST) are shown apart: the difference between
  the two is the transit between the processes, not the limiter.

Part ``cpu`` times the three contenders in CPU seconds of the client process
(``time.process_time``, the JSONL writer's threads included) and reports aioflows' CPU per call
over the bare loop's: target, at most 1.2x (issue 15, target 4). The bare loop runs flat out,
the launcher paced at 2,000 calls/s, so the target holds the launcher's machinery and its pacing
together to a fifth of what the HTTP calls cost. Part ``stock`` (context)
compares the launcher and the bare loop on httpx's own pool with 3,000 calls. Part ``aiohttp``
runs the launcher (20,000 calls) over ``af.HttpClient`` on httpx's pool and over
``af.HttpClient(transport="aiohttp")`` (aiohttp's pool under httpx's client): target, at least
3x the calls per client CPU-second.

Each round runs in a fresh event loop with only the work timed (not the client's creation or
closing), after ``gc.collect()``; the first round (warm-up) is shorter (2,000 calls; 500 in
part ``stock``) and dropped. Every run is checked outside the timed region: every call answered
(and one line per call in the launcher's output, none with an error), every request counted at
the server.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

import aioflows as af

from ._report import max_excess, print_header, print_table, verdict
from ._server import ServerProcess

#: Measured rounds per contender; one shorter warm-up round more is run and dropped. Three,
#: not five: a round takes about 40 s of wall time (two paced runs and the stock part).
ROUNDS = 3

N_CALLS = 20_000
N_WARMUP = 2_000
KEYS = ["sk-bench-alpha-0001", "sk-bench-bravo-0002", "sk-bench-charlie-0003", "sk-bench-delta-04"]
RATE = 500.0  # per key and second
RATE_TEXT = "500/s"
BURST = RATE  # af.RateLimiter's default: one second of tokens
CONCURRENCY = 64
WINDOW = 1.0  # seconds
SKIP = 1.0  # seconds of the run before the steady state may start
DRY_SLACK = 1.5  # tokens: a bucket holding less than this is spent
TARGET_RATE_ERROR_PCT = 2.0
TARGET_CPU = 1.2  # the launcher's client CPU per call over the bare loop's (issue 15, target 4)

# The stock part: httpx's own pool costs milliseconds per call, so fewer calls.
N_STOCK = 3_000
N_STOCK_WARMUP = 500

AIOFLOWS = "aioflows Launcher"
BARE = "bare httpx loop"
PACED = "(bare loop paced by 4 af.RateLimiter)"
STOCK_BARE = "bare stock httpx loop"

# The aiohttp part: the launcher end to end over af.HttpClient on either pool.
N_TRANSPORT = 20_000
N_TRANSPORT_WARMUP = 1_000
HTTPX_POOL = "aioflows Launcher over af.HttpClient (httpx's pool)"
AIOHTTP_POOL = "aioflows Launcher over af.HttpClient(transport='aiohttp')"
TARGET_AIOHTTP = 3.0


def sample(i: int) -> dict[str, Any]:
    return {"id": i, "prompt": f"Summarise document {i} in one line.", "max_tokens": 32}


# -- the server (a separate process) ----------------------------------------------------------


_RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


class _Arrivals:
    def __init__(self) -> None:
        self.by_key: dict[str, list[float]] = {}
        self.count = 0


class _Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: every complete request in the buffer is answered at once."""

    def __init__(self, arrivals: _Arrivals) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out = []
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            lines = buffer[:head_end].split(b"\r\n")
            length = 0
            key = ""
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"authorization":
                    key = value.strip().removeprefix(b"Bearer ").decode()
            end = head_end + 4 + length
            if len(buffer) < end:
                break
            now = time.monotonic()
            buffer = buffer[end:]
            path = lines[0].split(b" ", 2)[1]
            if path == b"/stats":
                arrivals = self.arrivals
                body = json.dumps({"arrivals": arrivals.by_key, "cpu": time.process_time()})
                arrivals.by_key = {}
                payload = body.encode()
            else:
                arrivals = self.arrivals
                arrivals.count += 1
                times = arrivals.by_key.get(key)
                if times is None:
                    times = arrivals.by_key[key] = []
                times.append(now)
                payload = b'{"ok":true,"n":%d}' % arrivals.count
            out.append(_RESPONSE_HEAD + b"%d\r\n\r\n" % len(payload) + payload)
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    arrivals = _Arrivals()
    server = await loop.create_server(lambda: _Http(arrivals), "127.0.0.1", 0, backlog=256)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def server_main() -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve())
    return 0


class Server(ServerProcess):
    """The server process: started on a free port, stopped (SIGTERM) at the end."""

    def __init__(self) -> None:
        super().__init__("benchmarks.launcher")
        self.url = f"{self.base}/v1/complete"
        self.cpu = 0.0
        self.stats()

    def stats(self) -> tuple[dict[str, list[float]], float]:
        """Arrival times by key since the last call (then forgotten), and the server's CPU
        seconds since the last call."""
        with httpx.Client() as client:
            answer = client.get(f"{self.base}/stats").json()
        cpu, self.cpu = answer["cpu"] - self.cpu, answer["cpu"]
        return answer["arrivals"], cpu


# -- the clients ------------------------------------------------------------------------------


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """A minimal HTTP/1.1 keep-alive transport for ``httpx.AsyncClient``: one asyncio stream
    per concurrent request, kept open and reused (a LIFO of idle connections); the request as
    httpx built it (method, path, headers, body), the answer read by ``Content-Length``.

    It replaces httpcore's connection pool, which costs several milliseconds of CPU per call at
    64 connections on this machine (see the ``stock`` part); httpx's own client layer (URL and
    header handling, JSON encoding, the ``Response``) is kept. No timeouts, no TLS, no proxies,
    no chunked bodies: enough for the local server, not a general transport.
    """

    def __init__(self) -> None:
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            url = request.url
            reader, writer = await asyncio.open_connection(url.host, url.port)
            self.writers.append(writer)
        try:
            lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
            lines += [b"%s: %s" % pair for pair in request.headers.raw]
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + request.content)
            head = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
            headers = []
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                value = value.strip()
                headers.append((name, value))
                if name.lower() == b"content-length":
                    length = int(value)
            content = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise httpx.ReadError(str(exc), request=request) from exc
        self.idle.append((reader, writer))
        status = int(head[0].split(b" ", 2)[1])
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        for writer in self.writers:
            writer.close()


def light_client() -> httpx.AsyncClient:
    """``httpx.AsyncClient`` over :class:`KeepAliveTransport` (the main parts)."""
    return httpx.AsyncClient(transport=KeepAliveTransport(), timeout=30.0)


def stock_client() -> httpx.AsyncClient:
    """``httpx.AsyncClient`` as shipped (httpcore's pool), sized for the concurrency."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    return httpx.AsyncClient(limits=limits, timeout=30.0)


def http_client_stock() -> httpx.AsyncClient:
    """``af.HttpClient`` on httpx's own pool (part ``aiohttp``)."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    return af.HttpClient(limits=limits, timeout=30.0)


def http_client_aiohttp() -> httpx.AsyncClient:
    """``af.HttpClient(transport="aiohttp")``: aiohttp's pool under httpx (part ``aiohttp``)."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    return af.HttpClient(transport="aiohttp", limits=limits, timeout=30.0)


ClientFactory = Callable[[], httpx.AsyncClient]


# -- the contenders ---------------------------------------------------------------------------


@dataclass
class Run:
    """One contender's run: what it cost, and what was sent and answered."""

    cpu: float = 0.0
    wall: float = 0.0
    calls: int = 0
    sent: dict[str, list[float]] = field(default_factory=dict)  # send times by secret
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # server times by secret
    start: float = 0.0  # the first send time
    server_cpu: float = 0.0  # the server process's CPU seconds during the run


async def with_launcher(
    new_client: ClientFactory, url: str, data: list[dict[str, Any]], run: Run, directory: str
) -> None:
    """``af.Launcher`` with ``fn`` posting through one shared client; a fresh output file."""
    sent: dict[str, list[float]] = {secret: [] for secret in KEYS}
    output = Path(directory) / "launch.jsonl"
    async with new_client() as client:

        async def fn(item: dict[str, Any], key: af.Key) -> Any:
            secret = key.secret
            assert secret is not None
            sent[secret].append(time.monotonic())
            response = await client.post(
                url, headers={"authorization": f"Bearer {secret}"}, json=item
            )
            response.raise_for_status()
            return response.json()

        launcher = af.Launcher(
            fn, keys=KEYS, rate_per_key=RATE_TEXT, concurrency=CONCURRENCY, output=output
        )
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        summary = await launcher.run(data)
        run.cpu = time.process_time() - cpu
        run.wall = time.perf_counter() - wall
    assert summary.succeeded == len(data), summary
    assert summary.failed == 0, summary
    with output.open() as lines:
        records = [json.loads(line) for line in lines]
    output.unlink()
    assert len(records) == len(data), len(records)
    assert all(r["error"] is None and r["output"]["ok"] for r in records)
    run.calls = len(records)
    run.sent = sent


async def with_bare(
    new_client: ClientFactory,
    url: str,
    data: list[dict[str, Any]],
    run: Run,
    limiters: list[af.RateLimiter] | None,
) -> None:
    """``CONCURRENCY`` workers pulling from an ``asyncio.Queue``, keys round-robin; with
    ``limiters``, each call first acquires its key's limiter."""
    sent: dict[str, list[float]] = {secret: [] for secret in KEYS}
    results: list[Any] = []
    async with new_client() as client:

        async def worker() -> None:
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                turn = next(turns) % len(KEYS)
                secret = KEYS[turn]
                if limiters is not None:
                    await limiters[turn].acquire()
                sent[secret].append(time.monotonic())
                response = await client.post(
                    url, headers={"authorization": f"Bearer {secret}"}, json=item
                )
                response.raise_for_status()
                results.append(response.json())

        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for item in data:
            queue.put_nowait(item)
        turns = itertools.count()
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(worker)
        run.cpu = time.process_time() - cpu
        run.wall = time.perf_counter() - wall
    assert len(results) == len(data), len(results)
    assert all(r["ok"] for r in results)
    run.calls = len(results)
    run.sent = sent


@dataclass(frozen=True)
class Contender:
    kind: str  # "launcher", "bare" or "paced"
    new_client: ClientFactory

    async def __call__(self, url: str, data: list[dict[str, Any]], run: Run, tmp: str) -> None:
        if self.kind == "launcher":
            await with_launcher(self.new_client, url, data, run, tmp)
        elif self.kind == "bare":
            await with_bare(self.new_client, url, data, run, None)
        else:
            limiters = [af.RateLimiter(RATE_TEXT) for _ in KEYS]
            await with_bare(self.new_client, url, data, run, limiters)


def measure(server: Server, contender: Contender, n: int, tmp: str) -> Run:
    """One round: a fresh event loop, only the calls timed; then the server's arrivals."""
    data = [sample(i) for i in range(n)]
    run = Run()
    asyncio.run(contender(server.url, data, run, tmp))
    run.arrivals, run.server_cpu = server.stats()
    arrived = sum(len(times) for times in run.arrivals.values())
    assert arrived == n, arrived
    assert set(run.arrivals) == set(KEYS), sorted(run.arrivals)
    run.start = min(times[0] for times in run.sent.values())
    return run


def run_rounds(
    server: Server, contenders: dict[str, Contender], n: int, warmup: int, rounds: int
) -> dict[str, list[Run]]:
    """Interleave the contenders round by round; the short warm-up round is run and dropped."""
    results: dict[str, list[Run]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory(prefix="aioflows-bench-") as tmp:
        for round_no in range(rounds + 1):
            for name, contender in contenders.items():
                run = measure(server, contender, n if round_no else warmup, tmp)
                if round_no > 0:
                    results[name].append(run)
                    print(
                        f"  round {round_no} {name}: {run.wall:.1f} s wall, {run.cpu:.2f} s CPU",
                        flush=True,
                    )
    return results


# -- the analysis -----------------------------------------------------------------------------


def max_window(times: list[float], width: float, after: float = -float("inf")) -> int:
    """Most events in any half-open window ``[t, t + width)`` with ``t >= after``.

    The maximum is reached by a window starting at an event, so only those are tried.
    """
    best = 0
    for i in range(bisect.bisect_left(times, after), len(times)):
        best = max(best, bisect.bisect_left(times, times[i] + width, lo=i) - i)
    return best


def burst_spent(sent: list[float]) -> float:
    """The first send time at which the key's bucket held less than ``DRY_SLACK`` tokens."""
    t0 = sent[0]
    for k, t in enumerate(sent):
        if k + 1 >= BURST + RATE * (t - t0) - DRY_SLACK:
            return t
    return sent[-1]


@dataclass
class KeyStats:
    calls: int
    spent: float  # seconds after the run's start at which the burst was spent
    rate: float  # steady-state rate, per second
    window: int  # most events in any 1-s window
    steady_window: int  # ... of those starting after the first second
    excess: float  # most events beyond burst + T * rate in any window T


def key_stats(times: list[float], sent: list[float], start: float) -> KeyStats:
    spent = burst_spent(sent)
    steady_from = max(start + SKIP, spent)
    steady = times[bisect.bisect_left(times, steady_from) :]
    return KeyStats(
        calls=len(times),
        spent=spent - start,
        rate=(len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else math.nan,
        window=max_window(times, WINDOW),
        steady_window=max_window(times, WINDOW, after=start + SKIP),
        excess=max_excess(times, RATE, BURST),
    )


def rate_table(runs: list[Run], side: str, title: str) -> dict[str, list[KeyStats]]:
    stats: dict[str, list[KeyStats]] = {}
    for index, secret in enumerate(KEYS):
        stats[f"key-{index}"] = [
            key_stats(
                sorted(run.arrivals[secret]) if side == "server" else run.sent[secret],
                run.sent[secret],
                run.start,
            )
            for run in runs
        ]
    rows = []
    for label, per_run in stats.items():
        rates = [s.rate for s in per_run]
        rate = statistics.median(rates)
        rows.append(
            [
                label,
                f"{statistics.median(s.calls for s in per_run):,.0f}",
                f"{max(s.spent for s in per_run):.2f}",
                f"{rate:.1f}",
                f"{(rate / RATE - 1) * 100:+.2f}%",
                f"{min(rates):.1f}..{max(rates):.1f}",
                f"{max(s.window for s in per_run)}",
                f"{max(s.steady_window for s in per_run)}",
                f"{max(s.excess for s in per_run):.2f}",
            ]
        )
    print_table(
        title,
        [
            "key",
            "calls",
            "burst spent s",
            "steady rate/s",
            "error",
            "range/s",
            "max 1-s window",
            "after 1 s",
            "excess",
        ],
        rows,
    )
    return stats


# -- parts ------------------------------------------------------------------------------------


def workload(n: int) -> str:
    return f"{n:,} calls, {len(KEYS)} keys at {RATE_TEXT}, concurrency {CONCURRENCY}"


def transit(runs: list[Run]) -> tuple[float, float, float]:
    """Send-to-arrival times in seconds (the k-th send of a key paired with its k-th arrival):
    the median, the worst of each key's first ``CONCURRENCY / keys`` calls (which wait for
    their connection to be opened), and the worst of the others."""
    skip = CONCURRENCY // len(KEYS)
    every: list[float] = []
    first: list[float] = []
    for run in runs:
        for secret in KEYS:
            pairs = zip(run.sent[secret], sorted(run.arrivals[secret]), strict=True)
            times = [arrival - send for send, arrival in pairs]
            first += times[:skip]
            every += times[skip:]
    return statistics.median(first + every), max(first), max(every)


def longest_pause(runs: list[Run]) -> float:
    """The longest gap between two sends of one key, after the first second (seconds)."""
    worst = 0.0
    for run in runs:
        for secret in KEYS:
            sent = run.sent[secret]
            steady = sent[bisect.bisect_left(sent, run.start + SKIP) :]
            worst = max([worst] + [b - a for a, b in itertools.pairwise(steady)])
    return worst


def report_rate(runs: list[Run]) -> None:
    print("\n== rate: per-key limits on the server's arrival times ==")
    title = (
        f"{AIOFLOWS}: {workload(N_CALLS)}, httpx over the keep-alive transport "
        f"(wall clock; {len(runs)} runs: rate median and range, windows and excess worst of all)"
    )
    server = rate_table(runs, "server", f"{title}\nserver arrivals")
    client = rate_table(
        runs, "client", "client send times (in fn, just before the POST), for comparison"
    )
    bound = BURST + WINDOW * RATE
    print(
        "burst spent s: seconds after the run's start at which the key's bucket first held "
        f"under {DRY_SLACK:g} tokens (client side); the steady rate counts the arrivals after "
        f"max({SKIP:g} s, that), as (arrivals - 1) / their span"
    )
    print(
        f"windows are half-open [t, t + {WINDOW:g} s); 'after 1 s': windows starting at least "
        f"{SKIP:g} s after the run's start; excess = arrivals beyond burst + T x rate "
        f"({BURST:g} + T x {RATE:g}) in some window of any length T (<= 0: none)"
    )
    median, first, later = transit(runs)
    print(
        f"send to arrival: median {median * 1e3:.2f} ms; max {first * 1e3:.1f} ms over each "
        f"key's first {CONCURRENCY // len(KEYS)} calls (the first call on each connection waits "
        f"for it to be opened), {later * 1e3:.1f} ms over the others (client pauses)"
    )
    errors = [statistics.median(s.rate for s in per_run) / RATE - 1 for per_run in server.values()]
    worst_error = max(errors, key=abs) * 100
    print(
        f"target steady rate of every key within ±{TARGET_RATE_ERROR_PCT:g}% of {RATE:g}/s "
        f"(server side): worst {worst_error:+.2f}% "
        f"{verdict(abs(worst_error) <= TARGET_RATE_ERROR_PCT)}"
    )

    def most(stats: dict[str, list[KeyStats]]) -> int:
        return max(s.window for per_run in stats.values() for s in per_run)

    print(
        f"target no key above burst + {WINDOW:g} s x rate = {bound:g} calls in any "
        f"{WINDOW:g}-s window (server side): max {most(server)} {verdict(most(server) <= bound)}"
    )
    print(
        f"(context) the same on the client's send times: max {most(client)} "
        f"{verdict(most(client) <= bound)}"
    )
    steady = max(s.steady_window for per_run in server.values() for s in per_run)
    pause = longest_pause(runs)
    print(
        f"(context) most calls of one key in a {WINDOW:g}-s window starting after the first "
        f"{SKIP:g} s: {steady}, against the rate's {RATE * WINDOW:g}; a pause of the client "
        f"leaves tokens in the bucket for later (the longest gap between two sends of a key "
        f"after the first {SKIP:g} s: {pause * 1e3:.0f} ms, {pause * RATE:.0f} tokens)"
    )


def report_cpu(
    title: str, results: dict[str, list[Run]], n: int, bare_name: str, name: str = AIOFLOWS
) -> float:
    """Print the CPU table of ``results``; return ``name``'s CPU per call over the bare's."""
    cpu = {each: statistics.median(r.cpu for r in runs) for each, runs in results.items()}
    bare = cpu[bare_name]
    rows = []
    for each, runs in results.items():  # not `name`: that is the contender whose ratio is returned
        wall = statistics.median(r.wall for r in runs)
        rows.append(
            [
                each,
                f"{cpu[each]:.2f}",
                f"{cpu[each] / n * 1e6:.0f}",
                f"{wall:.1f}",
                f"{n / wall:,.0f}",
                f"{cpu[each] / wall * 100:.0f}%",
                f"{statistics.median(r.server_cpu for r in runs) / n * 1e6:.0f}",
                f"{cpu[each] / bare:.2f}x",
            ]
        )
    rounds = min(len(runs) for runs in results.values())
    print_table(
        f"{title}: {workload(n)} (CPU time of the client process, median of {rounds})",
        [
            "contender",
            "CPU s",
            "CPU µs/call",
            "wall s",
            "calls/s",
            "CPU busy",
            "server µs/call",
            "vs bare",
        ],
        rows,
    )
    return cpu[name] / bare


def report_main_cpu(results: dict[str, list[Run]]) -> None:
    print("\n== cpu: the client's CPU per call ==")
    ratio = report_cpu("client CPU, httpx over the keep-alive transport", results, N_CALLS, BARE)
    print(
        "CPU busy = client CPU s / wall s (one core = 100%); server µs/call = the server "
        "process's CPU per request, for context"
    )
    print(
        f"target aioflows Launcher CPU per call <= {TARGET_CPU:g}x the bare httpx loop's: "
        f"{ratio:.2f}x {verdict(ratio <= TARGET_CPU)}"
    )
    if PACED in results:
        paced = statistics.median(r.cpu for r in results[PACED])
        launcher = statistics.median(r.cpu for r in results[AIOFLOWS])
        print(
            f"(context) aioflows Launcher over the bare loop paced at the same rate: "
            f"{launcher / paced:.2f}x, {(launcher - paced) / N_CALLS * 1e6:+.0f} µs/call"
        )


def report_stock(results: dict[str, list[Run]]) -> None:
    print("\n== stock: the same with httpx's own connection pool (httpcore) ==")
    ratio = report_cpu(
        "client CPU, stock httpx (httpcore pool, 64 connections)", results, N_STOCK, STOCK_BARE
    )
    print(
        f"aioflows Launcher CPU per call / bare stock httpx loop's: {ratio:.2f}x (context: "
        "httpx itself caps the client below the configured 2,000 calls/s, so the limits "
        "never bind here)"
    )


def report_aiohttp(results: dict[str, list[Run]]) -> None:
    print("\n== aiohttp: af.HttpClient on httpx's pool and on aiohttp's (transport='aiohttp') ==")
    report_cpu("client CPU, the launcher over af.HttpClient", results, N_TRANSPORT, HTTPX_POOL)
    per_cpu = {
        name: N_TRANSPORT / statistics.median(r.cpu for r in runs) for name, runs in results.items()
    }
    ratio = per_cpu[AIOHTTP_POOL] / per_cpu[HTTPX_POOL]
    print(
        f"target calls per client CPU-second with transport='aiohttp' >= "
        f"{TARGET_AIOHTTP:g}x httpx's pool: {per_cpu[AIOHTTP_POOL]:,.0f} vs "
        f"{per_cpu[HTTPX_POOL]:,.0f}, {ratio:.2f}x {verdict(ratio >= TARGET_AIOHTTP)}"
    )


PARTS = ("rate", "cpu", "stock", "aiohttp")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.launcher",
        description="Benchmark of af.Launcher against a local HTTP server.",
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"measured rounds (default {ROUNDS})"
    )
    parser.add_argument(
        "--part",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable; default: all). rate runs only the launcher; "
        "cpu adds the bare loops; stock compares them on httpx's own pool; aiohttp runs the "
        "launcher over af.HttpClient on httpx's pool and on aiohttp's",
    )
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server:
        return server_main()
    rounds: int = args.rounds
    parts: list[str] = args.part or list(PARTS)
    print_header(
        ("aioflows", "anyio", "httpx", "httpcore", "aiohttp", "httpx-aiohttp"),
        rounds,
        "1 shorter warm-up round",
    )
    started = time.perf_counter()
    server = Server()
    try:
        main_contenders: dict[str, Contender] = {}
        if "cpu" in parts:
            main_contenders[BARE] = Contender("bare", light_client)
        if "cpu" in parts or "rate" in parts:
            main_contenders[AIOFLOWS] = Contender("launcher", light_client)
        if "cpu" in parts:
            main_contenders[PACED] = Contender("paced", light_client)
        if main_contenders:
            print(f"\nrunning {', '.join(main_contenders)}: {workload(N_CALLS)}")
            results = run_rounds(server, main_contenders, N_CALLS, N_WARMUP, rounds)
            if "rate" in parts:
                report_rate(results[AIOFLOWS])
            if "cpu" in parts:
                report_main_cpu(results)
        if "stock" in parts:
            stock_contenders = {
                STOCK_BARE: Contender("bare", stock_client),
                AIOFLOWS: Contender("launcher", stock_client),
            }
            print(f"\nrunning {', '.join(stock_contenders)}: {workload(N_STOCK)}")
            stock = run_rounds(server, stock_contenders, N_STOCK, N_STOCK_WARMUP, rounds)
            report_stock(stock)
        if "aiohttp" in parts:
            transport_contenders = {
                HTTPX_POOL: Contender("launcher", http_client_stock),
                AIOHTTP_POOL: Contender("launcher", http_client_aiohttp),
            }
            print(
                f"\nrunning the launcher over af.HttpClient, httpx's pool then "
                f"transport='aiohttp': {workload(N_TRANSPORT)}"
            )
            over = run_rounds(server, transport_contenders, N_TRANSPORT, N_TRANSPORT_WARMUP, rounds)
            report_aiohttp(over)
    finally:
        server.stop()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
