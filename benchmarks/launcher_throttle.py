"""Benchmark of ``af.Launcher`` under throttles (issue 14): what a key does after a 429.

Run with ``python -m benchmarks.launcher_throttle`` (about 4 minutes; ``--part
random|bucket|window``
runs one scenario, ``--rounds N`` changes the number of measured rounds).

Three API keys with a 3:2:1 split of rates, 120/s, 80/s and 40/s (240/s in all), at concurrency
32, against a local HTTP/1.1 keep-alive server in a separate process which answers each request
after 20 ms. Two scenarios, each a path of the server:

- ``random``: the issue's measurement. 4 % of the requests, drawn at random (seeded), are
  answered ``429`` with ``Retry-After: 1``, whatever the client's pace.
- ``bucket``: the server holds each key to its rate with a token bucket whose burst is a tenth
  of a second's worth (12, 8 and 4 requests): an API that allows the rate but not a second's
  worth at once. A request finding the key's bucket empty is answered ``429`` with
  ``Retry-After: 1``. This is the issue's story: a client whose own bucket holds a second's
  worth bursts past the server's, is throttled, and (before) refills during the pause and
  bursts again.
- ``window``: the server holds each key to its rate over a sliding 1-second window (a request
  is answered ``429``, ``Retry-After: 1``, when the key already had its limit answered 200 in
  the last second): the strictest per-second API, against which a client pacing at exactly
  the limit is at its edge each second.

Contenders, each run for ``DURATION`` seconds over an endless input and then cancelled,
interleaved round by round:

- **aioflows**: ``af.Launcher(fn, keys={...: "120/s", ...}, concurrency=32)``, where ``fn``
  posts with the key's bearer and calls ``raise_for_status()`` (a 429 rests the key for its
  Retry-After; the bucket resumes empty).
- **aioflows, burst_per_key=1**: the same, with buckets of one request.
- **aioflows before**: the same launcher with the rule it had before issue 14 put back (a
  paused bucket goes on refilling during the pause, so it resumes full).
- **bare loop + aiolimiter** (a peer): 32 workers, keys round-robin, one
  ``aiolimiter.AsyncLimiter(rate, 1)`` per key; on a 429 the worker sleeps the Retry-After and
  sends the item again on the next key.
- **no throttles** (the ceiling): aioflows against the server's ``/off`` path, which never
  throttles.

Measured on the server: the 200s per second over the run (its throughput, also as a fraction of
the keys' 240/s; a run starting with full buckets may pass it by a second's worth over the run),
their split over the keys (against 3:2:1 = 50 / 33 / 17 %), and the share of requests answered
429.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiolimiter
import anyio
import httpx

import aioflows as af
from aioflows import limits

from ._report import part_parser, print_header, print_table, run_parts
from ._server import ServerProcess
from .launcher import light_client

ROUNDS = 2
DURATION = 6.0  # seconds per run
WARMUP = 2.0
KEYS = {"sk-bench-tier3-0001": 120.0, "sk-bench-tier2-0002": 80.0, "sk-bench-tier1-0003": 40.0}
CONCURRENCY = 32
LATENCY = 0.02  # the server's answer time
THROTTLE_SHARE = 0.04  # of requests answered 429 in the random scenario
SCENARIOS = ["random", "bucket", "window"]
SERVER_BURST = 0.1  # seconds of a key's rate the server's bucket holds (scenario bucket)
RETRY_AFTER = 1

AIOFLOWS = "aioflows"
STRICT = "aioflows, burst_per_key=1"
BEFORE = "aioflows before (refills while paused)"
PEER = "bare loop + aiolimiter"
CEILING = "(no throttles: aioflows)"

# -- the server (a separate process) ----------------------------------------------------------

_OK = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}'
_THROTTLED = (
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\nContent-Length: 0\r\n\r\n" % RETRY_AFTER
)


class _State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.random = random.Random(14)
        self.windows: dict[str, collections.deque[float]] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.ok: collections.Counter[str] = collections.Counter()
        self.throttled: collections.Counter[str] = collections.Counter()
        self.limits = {secret: int(rate) for secret, rate in KEYS.items()}

    def answer(self, path: bytes, key: str) -> bytes:
        now = time.monotonic()
        throttle = False
        if path == b"/random":
            throttle = self.random.random() < THROTTLE_SHARE
        elif path == b"/bucket":
            rate = self.limits.get(key, 0)
            capacity = max(1.0, rate * SERVER_BURST)
            tokens, at = self.buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            throttle = tokens < 1
            self.buckets[key] = (tokens if throttle else tokens - 1, now)
        elif path == b"/window":
            window = self.windows.setdefault(key, collections.deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            throttle = len(window) >= self.limits.get(key, 0)
            if not throttle:
                window.append(now)
        if throttle:
            self.throttled[key] += 1
            return _THROTTLED
        self.ok[key] += 1
        return _OK


class _Http(asyncio.Protocol):
    """One request at a time per connection (the client's), answered after ``LATENCY``."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        loop = asyncio.get_running_loop()
        while (head_end := buffer.find(b"\r\n\r\n")) >= 0:
            lines = buffer[:head_end].split(b"\r\n")
            length, key = 0, ""
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
            buffer = buffer[end:]
            path = lines[0].split(b" ", 2)[1]
            if path == b"/stats":
                state = self.state
                body = json.dumps({"ok": state.ok, "throttled": state.throttled}).encode()
                state.reset()
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                self._write(head + body)
            else:
                loop.call_later(LATENCY, self._write, self.state.answer(path, key))
        self.buffer = buffer

    def _write(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    state = _State()
    server = await loop.create_server(lambda: _Http(state), "127.0.0.1", 0, backlog=256)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class Server(ServerProcess):
    def __init__(self) -> None:
        super().__init__("benchmarks.launcher_throttle")
        self.stats()

    def stats(self) -> tuple[dict[str, int], dict[str, int]]:
        """200s and 429s by key since the last call (then forgotten)."""
        with httpx.Client() as client:
            answer = client.get(f"{self.base}/stats").json()
        return answer["ok"], answer["throttled"]


# -- the contenders ---------------------------------------------------------------------------


def endless() -> Iterator[dict[str, Any]]:
    for n in itertools.count():
        yield {"id": n}


def _pause_refilling(self: af.RateLimiter, seconds: float) -> None:
    """``RateLimiter.pause`` as it was before issue 14: the bucket refills while paused."""
    until = limits._loop_time() + seconds
    if until > self._paused_until:
        self._paused_until = until


_PAUSE = "pause"


@contextlib.contextmanager
def rule_before() -> Iterator[None]:
    """The old rule put back for the length of a run (every bucket's ``pause``)."""
    resuming_empty = af.RateLimiter.pause
    setattr(af.RateLimiter, _PAUSE, _pause_refilling)
    try:
        yield
    finally:
        setattr(af.RateLimiter, _PAUSE, resuming_empty)


async def with_launcher(url: str, duration: float, burst: float | None) -> None:
    async with light_client() as client:

        async def fn(item: dict[str, Any], key: af.Key) -> None:
            response = await client.post(url, headers={"authorization": f"Bearer {key.secret}"})
            response.raise_for_status()  # a 429 rests this key for its Retry-After

        launcher = af.Launcher(fn, keys=dict(KEYS), concurrency=CONCURRENCY, burst_per_key=burst)
        with anyio.move_on_after(duration):
            await launcher.run(endless())


async def with_peer(url: str, duration: float) -> None:
    secrets = list(KEYS)
    limiters = [aiolimiter.AsyncLimiter(KEYS[s], 1.0) for s in secrets]
    items = endless()
    turns = itertools.count()
    async with light_client() as client:

        async def worker() -> None:
            for _ in items:
                while True:
                    turn = next(turns) % len(secrets)
                    async with limiters[turn]:
                        pass
                    response = await client.post(
                        url, headers={"authorization": f"Bearer {secrets[turn]}"}
                    )
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(float(response.headers["retry-after"]))

        with anyio.move_on_after(duration):
            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENCY):
                    tg.start_soon(worker)


def contenders(base: str, path: str) -> dict[str, Callable[[float], Any]]:
    url = f"{base}{path}"
    return {
        AIOFLOWS: lambda d: with_launcher(url, d, None),
        STRICT: lambda d: with_launcher(url, d, 1),
        BEFORE: lambda d: _before(url, d),
        PEER: lambda d: with_peer(url, d),
        CEILING: lambda d: with_launcher(f"{base}/off", d, None),
    }


async def _before(url: str, duration: float) -> None:
    with rule_before():
        await with_launcher(url, duration, None)


# -- the measurement --------------------------------------------------------------------------


def measure(server: Server, run: Callable[[float], Any], duration: float) -> dict[str, float]:
    server.stats()
    started = time.perf_counter()
    asyncio.run(run(duration))
    wall = time.perf_counter() - started
    ok, throttled = server.stats()
    answered = sum(ok.values()) + sum(throttled.values())
    total_ok = sum(ok.values())
    shares = {s: 100 * ok.get(s, 0) / total_ok if total_ok else 0.0 for s in KEYS}
    return {
        "rate": total_ok / wall,
        "throttled": 100 * sum(throttled.values()) / answered if answered else 0.0,
        **{f"share{i}": shares[s] for i, s in enumerate(KEYS)},
    }


def scenario(path: str) -> Callable[[int], None]:
    def part(rounds: int) -> None:
        server = Server()
        try:
            runs = contenders(server.base, path)
            print(f"\nscenario {path.strip('/')}: {DURATION:g} s per run")
            for run in runs.values():  # warm-up, dropped
                measure(server, run, WARMUP)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
            for round_ in range(1, rounds + 1):
                for name, run in runs.items():
                    figures = measure(server, run, DURATION)
                    results[name].append(figures)
                    print(
                        f"  round {round_} {name}: {figures['rate']:.0f} ok/s, "
                        f"{figures['throttled']:.1f} % 429"
                    )
        finally:
            server.stop()
        nominal = sum(KEYS.values())
        rows = []
        for name, figures in results.items():
            med = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
            split = " / ".join(f"{med[f'share{i}']:.0f}" for i in range(len(KEYS)))
            rows.append(
                [
                    name,
                    f"{med['rate']:.0f}",
                    f"{med['rate'] / nominal:.2f}",
                    split,
                    f"{med['throttled']:.1f}",
                ]
            )
        print_table(
            f"{path.strip('/')}: 3 keys at 120/80/40 per s, concurrency {CONCURRENCY}",
            ["contender", "ok/s", "x 240/s", "split % (3:2:1 = 50/33/17)", "429 %"],
            rows,
        )

    return part


def main(argv: Sequence[str] | None = None) -> int:
    parser = part_parser(
        "python -m benchmarks.launcher_throttle",
        "the launcher's keys after throttles",
        SCENARIOS,
        ROUNDS,
    )
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
        return 0
    print_header(
        ["aioflows", "anyio", "httpx", "aiolimiter"], args.rounds, f"a {WARMUP:g} s warm-up"
    )
    run_parts({name: scenario(f"/{name}") for name in SCENARIOS}, args.part, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
