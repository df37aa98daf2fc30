"""Benchmark of the launcher's request cache (issue 16): what reading and writing it costs a run.

Run with ``python -m benchmarks.launcher_cache`` (about four minutes on a 2-core machine;
``--part http|aiohttp|local`` runs one part, ``--rounds N`` changes the number of measured rounds,
``--pairs N`` the size of each run).

Every contender runs ``af.Launcher`` over the same 20,000 inputs (an id and a prompt of about 200
characters), with 4 API keys at concurrency 64 and a fresh JSONL output file each; ``fn`` sends
a JSON request body, gets a 1.3 KB OpenAI-style completion back after 5 ms, parses it, reports
its token usage and returns its text. Two parts, which differ in what ``fn`` costs:

- ``http`` (the target): ``fn`` POSTs over HTTP/1.1 to a local server in a separate process (a
  minimal keep-alive server on ``asyncio``, answering each request 5 ms later; its CPU is not
  the client's), through a minimal keep-alive client on anyio TCP streams written here, one
  connection per call in flight. This is an uncached run as a user has one, with the cheapest
  HTTP client there is: httpx costs more CPU per call (see the ``Launcher`` section), which
  would make the cache's share smaller still.
- ``aiohttp``: the same requests through an ``aiohttp.ClientSession`` (its pool limited to 64
  connections), a client LLM SDKs use (``httpx-aiohttp``); it costs more CPU a call than the
  minimal one, as any full client does.
- ``local`` (context, the harshest case): ``fn`` makes no request at all, it waits 5 ms and
  parses the completion from memory, so a call costs the launcher's own work and little more;
  what the cache adds is then the largest share of a run it can be.

Contenders, interleaved round by round:

- **no cache** (the bar): ``af.Launcher(fn, keys=KEYS, concurrency=64, output=...)``.
- **cache, all misses**: the same with ``cache=af.LocalFileStore(<a fresh directory>)``: every
  lookup misses, every answer is saved (as segments of many entries, once a second and at the
  end, each written atomically with an fsync). The run the target is about: an uncached run
  may cost at most 1.10x the bar, in CPU (``time.process_time``, the store's threads included).
- **cache, all hits** (context): the same launcher again over the cache the previous contender
  filled, into another output file: every pair served from the cache, no call made.
- **one object per entry** (a peer, part ``local`` only: the plain way to cache through a
  ResultStore): ``fn`` wrapped so that each call first loads ``sha256(input)`` from a
  LocalFileStore (``MissingObject``: a miss) and saves its answer under that name after the
  call.

The load of the machine (``os.getloadavg``) is printed before and after: the figures are CPU
times, compared side by side in one run, so that other work on the machine moves them less
than it moves wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import aioflows as af

from ._report import part_parser, print_header, print_table, run_parts, verdict
from ._server import ServerProcess

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


Fn = Callable[[dict[str, Any], af.Key], Awaitable[Any]]


async def local_fn(sample: dict[str, Any], key: af.Key) -> Any:
    """Part ``local``: the call without the network (the request built, the reply parsed)."""
    body = json.dumps({"model": "bench-1", "prompt": sample["prompt"], "max_tokens": 256})
    await anyio.sleep(LATENCY)
    reply = json.loads(_ANSWER)
    key.report_usage(reply["usage"]["total_tokens"] + len(body) % 2)
    return reply["choices"][0]["text"]


# -- part http: a local server in its own process, and a minimal keep-alive client --------------


class _Http(asyncio.Protocol):
    """Requests with a Content-Length body, each answered with the completion after LATENCY."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        body = _ANSWER.encode()
        self.answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        loop = asyncio.get_running_loop()
        while (head_end := buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(buffer) < end:
                break
            buffer = buffer[end:]
            loop.call_later(LATENCY, self._write)
        self.buffer = buffer

    def _write(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.answer)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", 0, backlog=256)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class _Server(ServerProcess):
    def __init__(self) -> None:
        super().__init__("benchmarks.launcher_cache")


class _Client:
    """HTTP/1.1 POSTs over kept-alive connections: one per call in flight, reused after."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[SocketStream, BufferedByteReceiveStream]] = []
        self.all: list[SocketStream] = []

    async def post(self, path: str, body: bytes, bearer: str) -> bytes:
        if self.idle:
            stream, reader = self.idle.pop()
        else:
            stream = await anyio.connect_tcp("127.0.0.1", self.port)
            reader = BufferedByteReceiveStream(stream)
            self.all.append(stream)
        await stream.send(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), bearer.encode(), len(body), body)
        )
        head = await reader.receive_until(b"\r\n\r\n", 65536)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = await reader.receive_exactly(length)
        self.idle.append((stream, reader))
        return answer

    async def aclose(self) -> None:
        for stream in self.all:
            await stream.aclose()


def aiohttp_fn(session: Any, base: str) -> Fn:
    async def complete(sample: dict[str, Any], key: af.Key) -> Any:
        """Part ``aiohttp``: the call through a common HTTP client, over the network."""
        body = {"model": "bench-1", "prompt": sample["prompt"], "max_tokens": 256}
        headers = {"Authorization": f"Bearer {key.secret}"}
        async with session.post(f"{base}/v1/completions", json=body, headers=headers) as reply:
            answer = await reply.json()
        key.report_usage(answer["usage"]["total_tokens"])
        return answer["choices"][0]["text"]

    return complete


def http_fn(client: _Client) -> Fn:
    async def complete(sample: dict[str, Any], key: af.Key) -> Any:
        """Part ``http``: the call as an LLM client makes it, over the network."""
        body = json.dumps({"model": "bench-1", "prompt": sample["prompt"], "max_tokens": 256})
        reply = json.loads(await client.post("/v1/completions", body.encode(), key.secret or ""))
        key.report_usage(reply["usage"]["total_tokens"])
        return reply["choices"][0]["text"]

    return complete


# -- the contenders -------------------------------------------------------------------------------


def _per_object(fn: Fn, store: af.LocalFileStore) -> Fn:
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


async def _round(
    fn: Fn, data: list[dict[str, Any]], root: Path, peer: bool
) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
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
    if peer:
        naive = _per_object(fn, af.LocalFileStore(root / "objects"))
        launcher = af.Launcher(naive, output=out / "d.jsonl", **common)
        cpu, wall, s = await _timed(launcher, data)
        assert s.succeeded == len(data), s
        results["one object per entry"] = (cpu, wall)
    shutil.rmtree(root, ignore_errors=True)
    return results


def _report(title: str, pairs: int, rounds: list[dict[str, tuple[float, float]]]) -> None:
    names = list(rounds[0])
    cpu = {name: statistics.median(r[name][0] for r in rounds) for name in names}
    wall = {name: statistics.median(r[name][1] for r in rounds) for name in names}
    bar_cpu, bar_wall = cpu["no cache"], wall["no cache"]
    rows = [
        [
            name,
            f"{cpu[name]:.2f}",
            f"{cpu[name] / pairs * 1e6:.0f}",
            f"{cpu[name] / bar_cpu:.2f}x",
            f"{wall[name]:.2f}",
            f"{wall[name] / bar_wall:.2f}x",
            f"{pairs / wall[name]:,.0f}",
        ]
        for name in names
    ]
    print_table(
        title,
        ["contender", "CPU s", "CPU us/pair", "vs no cache", "wall s", "vs no cache", "pairs/s"],
        rows,
    )
    added = (cpu["cache, all misses"] - bar_cpu) / pairs * 1e6
    print(f"the cache adds {added:.1f} us of CPU per pair to an uncached run")
    return None


def part(name: str, pairs: int) -> Callable[[int], None]:
    def run(rounds: int) -> None:
        data = _inputs(pairs)
        root = Path(tempfile.mkdtemp(prefix="aioflows-cache-bench-"))
        server = _Server() if name != "local" else None
        found: list[dict[str, tuple[float, float]]] = []

        async def go() -> None:
            client = _Client(server.port) if server is not None and name == "http" else None
            session: Any = None
            fn: Fn = local_fn
            if client is not None:
                fn = http_fn(client)
            elif server is not None:
                import aiohttp

                connector = aiohttp.TCPConnector(limit=CONCURRENCY)
                session = aiohttp.ClientSession(connector=connector)
                fn = aiohttp_fn(session, f"http://127.0.0.1:{server.port}")
            try:
                await _round(fn, data[: max(1, pairs // 10)], root / "warm", name == "local")
                for number in range(1, rounds + 1):
                    times = await _round(fn, data, root / f"r{number}", name == "local")
                    found.append(times)
                    line = ", ".join(
                        f"{n} {c:.2f} s CPU {w:.2f} s wall" for n, (c, w) in times.items()
                    )
                    print(f"  round {number}: {line}", flush=True)
            finally:
                if client is not None:
                    await client.aclose()
                if session is not None:
                    await session.close()

        print(f"\n== {name} ==")
        try:
            anyio.run(go)
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(root, ignore_errors=True)
        what = {
            "http": "a minimal HTTP/1.1 keep-alive POST to a server in another process, "
            "answered after",
            "aiohttp": "an aiohttp POST to a server in another process, answered after",
            "local": "no request: JSON in and out around a wait of",
        }[name]
        _report(
            f"{pairs:,} pairs, {len(KEYS)} keys, concurrency {CONCURRENCY}, fn: {what} "
            f"{LATENCY * 1000:g} ms",
            pairs,
            found,
        )
        misses = statistics.median(r["cache, all misses"][0] for r in found)
        bar = statistics.median(r["no cache"][0] for r in found)
        hits = statistics.median(r["cache, all hits"][1] for r in found)
        ratio = misses / bar
        if name != "local":
            print(
                f"target an uncached run with cache=LocalFileStore within {TARGET:.2f}x of no "
                f"cache, in CPU ({name} client): {ratio:.2f}x {verdict(ratio <= TARGET)}"
            )
        else:
            print(f"(context) an uncached run with the cache, in CPU: {ratio:.2f}x of no cache")
        print(f"(context) a fully cached rerun: {pairs / hits:,.0f} pairs/s")

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = part_parser(
        "python -m benchmarks.launcher_cache", "the launcher's request cache", PARTS, ROUNDS
    )
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"default {PAIRS:,}")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
        return 0
    print_header(["aioflows", "anyio"], args.rounds)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    run_parts({name: part(name, args.pairs) for name in PARTS}, args.part, args.rounds)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


PARTS = ("http", "aiohttp", "local")

if __name__ == "__main__":
    sys.exit(main())
