"""Benchmarks of aioflows beyond one machine: ``af.RedisRateLimiter`` (and, appended, Dask).

Run with ``python -m benchmarks.distributed`` (about 90 s on a 2-core machine; ``--part NAME``
runs one part, ``--rounds N`` changes the number of measured rounds). It starts its own
redis-server on a free loopback port (no persistence), as the tests do. Parts:

1. **throughput.** Acquires per second of one generous key set (nothing is ever refused; 100
   keys in turn), one awaited call after another, from one process and from 4 processes at
   once, against the ``limits`` library's async Redis storage doing the same hits with its
   moving-window and its sliding-window strategy, on redis-py (the client aioflows uses) and on
   coredis (limits' default). The floor is a bare redis-py EVALSHA of ``return 1``: one round
   trip and nothing else. Wall clock (the processes run in parallel), and, from one process,
   what an acquire costs: the client's CPU time and the script's time in Redis (INFO
   commandstats); the target is judged on their sum, which a busy machine blurs less.
2. **round-trips.** Round trips per uncontended acquire, counted by a TCP proxy between the
   client and Redis (a round trip is a request that follows a reply): the script and every
   command it runs count once, whatever the library.
3. **accuracy.** 4 processes acquire one key at 200/s (burst 10) until 800 grants: the steady
   rate after the first 50 and the largest excess over ``burst + T * rate`` in any window, on
   the processes' clocks (one machine, one monotonic clock).
4. **dask.** ``benchmarks/distributed_dask.py``'s ``main()``, when that file exists.

Every contender gets the same keys and counts; contenders are interleaved round by round, and
the first (warm-up) round is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import limits
import limits.aio.storage
import limits.aio.strategies
import redis.asyncio

import aioflows as af

from ._report import max_excess, part_parser, print_header, print_table, run_parts, verdict

#: Measured rounds per contender; one warm-up round more is run and dropped.
ROUNDS = 5

# Part 1: throughput.
HITS = 2_000  # per process and round
KEYS = 100
PROCESSES = 4
GENEROUS = 1_000_000  # per second: nothing is refused
TARGET_VS_BEST_PEER = 1.0

# Part 3: accuracy.
ACCURACY_RATE = 200.0
ACCURACY_BURST = 10.0
ACCURACY_GRANTS = 800
ACCURACY_SKIP = 50
TARGET_RATE_ERROR_PCT = 2.0

FORK = multiprocessing.get_context("fork")
NO_PERSISTENCE = ("--save", "", "--appendonly", "no", "--dir")


# -- a redis-server for the run -----------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free loopback port, no persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", *NO_PERSISTENCE, directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port)) as s,
                ):
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait()


# -- the contenders -------------------------------------------------------------------------------

#: A contender: given the Redis URL, an async context that yields ``hit(key)``.
Hit = Callable[[str], Awaitable[Any]]
Contender = Callable[[str], contextlib.AbstractAsyncContextManager[Hit]]


@contextlib.asynccontextmanager
async def bare(url: str) -> Any:
    client = redis.asyncio.Redis.from_url(url)
    script = client.register_script("return 1")
    try:

        async def hit(key: str) -> None:
            await script(keys=[key])

        yield hit
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def aioflows_redis(url: str) -> Any:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    async with af.RedisRateLimiter(url, GENEROUS, prefix=prefix) as limiter:
        yield limiter.acquire


def limits_contender(strategy: type[Any], implementation: str) -> Contender:
    @contextlib.asynccontextmanager
    async def contender(url: str) -> Any:
        storage = limits.aio.storage.RedisStorage(
            url.replace("redis://", "async+redis://"),
            implementation=implementation,
            key_prefix=f"bench-{uuid.uuid4().hex[:6]}",
        )
        limiter = strategy(storage)
        item = limits.RateLimitItemPerSecond(GENEROUS)

        async def hit(key: str) -> None:
            if not await limiter.hit(item, key):
                raise RuntimeError("limits refused a hit of a generous limit")

        yield hit

    return contender


CONTENDERS: dict[str, Contender] = {
    "bare redis-py EVALSHA (floor)": bare,
    "aioflows RedisRateLimiter": aioflows_redis,
    "limits moving-window, redis-py": limits_contender(
        limits.aio.strategies.MovingWindowRateLimiter, "redispy"
    ),
    "limits sliding-window, redis-py": limits_contender(
        limits.aio.strategies.SlidingWindowCounterRateLimiter, "redispy"
    ),
    "limits moving-window, coredis": limits_contender(
        limits.aio.strategies.MovingWindowRateLimiter, "coredis"
    ),
    "limits sliding-window, coredis": limits_contender(
        limits.aio.strategies.SlidingWindowCounterRateLimiter, "coredis"
    ),
}
AIOFLOWS = "aioflows RedisRateLimiter"
FLOOR = "bare redis-py EVALSHA (floor)"


# -- part 1: throughput ---------------------------------------------------------------------------


async def hits_timed(contender: Contender, url: str, n: int) -> tuple[float, float, float]:
    """Wall seconds, client CPU seconds and Redis seconds (the scripts' own time, from INFO
    commandstats) for ``n`` awaited hits, after one warm-up hit per key."""
    keys = [f"key-{i}" for i in range(KEYS)]
    stats = redis.asyncio.Redis.from_url(url)
    try:
        async with contender(url) as hit:
            for key in keys:
                await hit(key)
            await stats.config_resetstat()
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                await hit(keys[i % KEYS])
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            info = await stats.info("commandstats")
    finally:
        await stats.aclose()
    server = sum(info.get(f"cmdstat_{cmd}", {}).get("usec", 0) for cmd in ("evalsha", "eval"))
    return wall, cpu, server / 1e6


def one_process(name: str, url: str, n: int, talk: Connection, go: Connection) -> None:
    """A worker process: ready, wait for go, ``n`` hits, send back the seconds they took."""

    async def main() -> None:
        async with CONTENDERS[name](url) as hit:
            await hit("warm-up")
            talk.send("ready")
            await asyncio.get_running_loop().run_in_executor(None, go.recv)
            keys = [f"key-{i}" for i in range(KEYS)]
            for i in range(n):
                await hit(keys[i % KEYS])
            talk.send("done")

    asyncio.run(main())


def many_processes(name: str, url: str, n: int, count: int) -> float:
    """Wall seconds for ``count`` processes to do ``n`` hits each, started together."""
    pipes = [(FORK.Pipe(), FORK.Pipe()) for _ in range(count)]
    procs = [
        FORK.Process(target=one_process, args=(name, url, n, talk[1], go[0])) for talk, go in pipes
    ]
    for proc in procs:
        proc.start()
    try:
        for talk, _ in pipes:
            assert talk[0].recv() == "ready"
        started = time.perf_counter()
        for _, go in pipes:
            go[1].send("go")
        for talk, _ in pipes:
            assert talk[0].recv() == "done"
        return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.join(30)
            proc.kill()


def bench_throughput(url: str, rounds: int) -> None:
    print(
        f"\nrunning {', '.join(CONTENDERS)}: {HITS:,} awaited hits per process over {KEYS} keys "
        f"of a generous limit, from 1 and from {PROCESSES} processes"
    )
    single: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CONTENDERS}
    multi: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for round_ in range(rounds + 1):
        for name, contender in CONTENDERS.items():
            one = asyncio.run(hits_timed(contender, url, HITS))
            four = PROCESSES * HITS / many_processes(name, url, HITS, PROCESSES)
            if round_:  # the first round warms up
                single[name].append(one)
                multi[name].append(four)
    rate_one = {n: HITS / statistics.median(w for w, _, _ in v) for n, v in single.items()}
    client = {n: statistics.median(c for _, c, _ in v) / HITS * 1e6 for n, v in single.items()}
    server = {n: statistics.median(r for _, _, r in v) / HITS * 1e6 for n, v in single.items()}
    # What an acquire costs the machines, client and Redis together: the capacity measure
    # that a busy shared machine does not blur (wall rates move with its other load).
    per_cpu = {n: 1e6 / (client[n] + server[n]) for n in CONTENDERS}
    rate_four = {name: statistics.median(v) for name, v in multi.items()}
    rows = [
        [
            name,
            f"{rate_one[name]:,.0f}",
            f"{rate_four[name]:,.0f}",
            f"{client[name]:.1f}",
            f"{server[name]:.1f}",
            f"{per_cpu[name]:,.0f}",
            f"{per_cpu[AIOFLOWS] / per_cpu[name]:.2f}x",
        ]
        for name in CONTENDERS
    ]
    print_table(
        "== throughput: acquires per second of wall time, and what each costs in CPU ==",
        [
            "contender",
            "1 process /s",
            f"{PROCESSES} processes /s",
            "client CPU µs",
            "Redis µs",
            "per CPU-s",
            "aioflows vs",
        ],
        rows,
    )
    peers = [name for name in CONTENDERS if name.startswith("limits")]
    best = max(peers, key=lambda name: per_cpu[name])
    ratio = per_cpu[AIOFLOWS] / per_cpu[best]
    print(
        f"aioflows vs the best of limits ({best}), acquires per CPU-second (client + Redis): "
        f"{ratio:.2f}x (target >= {TARGET_VS_BEST_PEER:g}x) {verdict(ratio >= TARGET_VS_BEST_PEER)}"
    )
    for label, rates in (("1 process", rate_one), (f"{PROCESSES} processes", rate_four)):
        top = max(peers, key=lambda name: rates[name])
        print(
            f"wall clock, {label}: aioflows {rates[AIOFLOWS] / rates[top]:.2f}x the best of "
            f"limits ({top}), {rates[AIOFLOWS] / rates[FLOOR]:.2f}x the bare round trip"
        )


# -- part 2: round trips --------------------------------------------------------------------------


class TripCounter:
    """A TCP proxy in front of Redis that counts round trips: client data after a reply."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.trips = 0

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: bool,
        state: list[bool],
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                if up and not state[0]:
                    self.trips += 1
                state[0] = up
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        state = [False]  # True once the client has sent and no reply came yet
        # Cancelled when the run ends: a connection handler of asyncio must not end cancelled
        # (Python 3.11 logs it), and the proxy has nothing to clean up.
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await asyncio.gather(
                self._pipe(reader, upstream_writer, True, state),
                self._pipe(upstream_reader, writer, False, state),
            )

    async def start(self) -> tuple[asyncio.Server, str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return server, f"redis://127.0.0.1:{port}/0"


async def count_trips(contender: Contender, port: int, n: int) -> float:
    counter = TripCounter(port)
    server, url = await counter.start()
    async with server, contender(url) as hit:
        await hit("warm-up")  # connected, scripts loaded
        counter.trips = 0
        for i in range(n):
            await hit(f"fresh-{uuid.uuid4().hex}-{i}")  # a new key each time: uncontended
        trips = counter.trips / n
        server.close()
        return trips


def bench_round_trips(url: str, rounds: int) -> None:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    rows = []
    for name, contender in CONTENDERS.items():
        trips = asyncio.run(count_trips(contender, port, 200))
        rows.append([name, f"{trips:.2f}"])
    print_table(
        "== round trips per uncontended acquire (counted by a proxy) ==",
        ["contender", "round trips"],
        rows,
    )
    ours = float(rows[list(CONTENDERS).index(AIOFLOWS)][1])
    print(f"aioflows: {ours:.2f} round trips per acquire (target 1) {verdict(ours <= 1.0)}")


# -- part 3: accuracy -----------------------------------------------------------------------------


def accuracy_process(url: str, prefix: str, n: int, talk: Connection, go: Connection) -> None:
    async def main() -> None:
        limiter = af.RedisRateLimiter(url, ACCURACY_RATE, burst=ACCURACY_BURST, prefix=prefix)
        async with limiter:
            await limiter.delay("warm-up")
            talk.send("ready")
            await asyncio.get_running_loop().run_in_executor(None, go.recv)
            times = []
            for _ in range(n):
                await limiter.acquire("one-key")
                times.append(time.monotonic())
            talk.send(times)

    asyncio.run(main())


def accuracy_run(url: str) -> list[float]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    n = ACCURACY_GRANTS // PROCESSES
    pipes = [(FORK.Pipe(), FORK.Pipe()) for _ in range(PROCESSES)]
    procs = [
        FORK.Process(target=accuracy_process, args=(url, prefix, n, talk[1], go[0]))
        for talk, go in pipes
    ]
    for proc in procs:
        proc.start()
    try:
        for talk, _ in pipes:
            assert talk[0].recv() == "ready"
        for _, go in pipes:
            go[1].send("go")
        times: list[float] = []
        for talk, _ in pipes:
            times += talk[0].recv()
        return sorted(times)
    finally:
        for proc in procs:
            proc.join(30)
            proc.kill()


def bench_accuracy(url: str, rounds: int) -> None:
    print(
        f"\nrunning aioflows RedisRateLimiter: {PROCESSES} processes on one key at "
        f"{ACCURACY_RATE:g}/s, burst {ACCURACY_BURST:g}, {ACCURACY_GRANTS} grants"
    )
    rates, excesses = [], []
    for round_ in range(rounds + 1):
        times = accuracy_run(url)
        steady = times[ACCURACY_SKIP:]
        rate = (len(steady) - 1) / (steady[-1] - steady[0])
        if round_:
            rates.append(rate)
            excesses.append(max_excess(times, ACCURACY_RATE, ACCURACY_BURST))
    rate = statistics.median(rates)
    error = (rate / ACCURACY_RATE - 1) * 100
    print_table(
        "== accuracy: one key shared by 4 processes (wall clock) ==",
        ["limiter", "steady rate/s", "error", "range/s", "worst excess"],
        [
            [
                AIOFLOWS,
                f"{rate:.1f}",
                f"{error:+.2f} %",
                f"{min(rates):.1f}-{max(rates):.1f}",
                f"{max(excesses):.2f}",
            ]
        ],
    )
    ok = abs(error) <= TARGET_RATE_ERROR_PCT
    print(f"rate within ±{TARGET_RATE_ERROR_PCT:g} %: {verdict(ok)}")
    # The bound holds on the Redis clock; these times are when each process saw its grant, and
    # a late reply can move one grant per other process into a window.
    allowed = PROCESSES
    print(
        f"no window over burst + T * rate, give or take one late-seen grant per process "
        f"(excess <= {allowed}): {verdict(max(excesses) <= allowed)}"
    )


# -- part 4: the Dask section (benchmarks/distributed_dask.py) --------------------------------


def bench_dask(url: str, rounds: int) -> None:
    """The hook for the Dask half of issue 13: its ``main()``, run after the Redis parts with
    a clean command line, when ``benchmarks/distributed_dask.py`` exists."""
    if not Path(__file__).with_name("distributed_dask.py").exists():
        print("\n(dask: benchmarks/distributed_dask.py is not there; nothing to run)")
        return
    module = importlib.import_module("benchmarks.distributed_dask")
    argv = sys.argv
    sys.argv = [argv[0]]
    try:
        module.main()
    finally:
        sys.argv = argv


# -- main -------------------------------------------------------------------------------------

PARTS: dict[str, Callable[[str, int], None]] = {
    "throughput": bench_throughput,
    "round-trips": bench_round_trips,
    "accuracy": bench_accuracy,
    "dask": bench_dask,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = part_parser(
        "python -m benchmarks.distributed",
        "Benchmarks of af.RedisRateLimiter against limits' Redis storage (and the Dask part).",
        list(PARTS),
        ROUNDS,
    )
    args = parser.parse_args(argv)
    print_header(("aioflows", "redis", "limits", "coredis"), args.rounds)
    with redis_server() as url:
        version = redis.Redis.from_url(url).info("server")["redis_version"]
        print(f"redis-server {version} on 127.0.0.1, no persistence")
        bound = {name: _bind(part, url) for name, part in PARTS.items()}
        run_parts(bound, args.part, args.rounds)
    return 0


def _bind(part: Callable[[str, int], None], url: str) -> Callable[[int], None]:
    def run(rounds: int) -> None:
        part(url, rounds)

    return run


if __name__ == "__main__":
    sys.exit(main())
