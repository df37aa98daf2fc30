"""Benchmark of ``af.Server`` under real uvicorn: throughput and latency against a bare Starlette
route, dynamic batching against the same endpoint unbatched, and the memory of finished requests
held under a TTL.

Run with ``python -m benchmarks.serving`` (about 2.5 minutes on a 2-core machine; ``--part
throughput|batching|memory`` runs one part, ``--rounds N`` changes the number of measured
rounds of the timed parts).

Processes. Every server is ``python -m uvicorn benchmarks.serving:make_app --factory`` in its
own process, on a free 127.0.0.1 port, with ``--no-access-log --loop asyncio`` and ``--http
httptools`` when httptools is installed (h11 otherwise); which app it builds is an environment
variable. The load comes from another process (``--load``): a lean HTTP/1.1 keep-alive client
on raw asyncio sockets (one ``asyncio.Protocol`` per connection, driven from its callbacks: a
response completes, the next request is written, no task switch). httpx's own pool is not used:
it costs milliseconds of CPU per call at 64 connections (see ``benchmarks/launcher.py``), which
would cap the load far below what the servers answer. The orchestrating process only starts
the others, hands the load generator its runs over a pipe, and reads the servers' CPU and RSS
from ``/proc``. On 2 cores, the server and the load generator each have about one core.

Part ``throughput``: 64 connections, each sending its next request as soon as its last is
answered, for a 0.3 s warm-up and a 1.5 s measured window per round, the four contenders
interleaved round by round (one warm-up round dropped, medians of the rest). Each request's
body is ``{"values": [...8 ints]}`` and the work is to parse it, sum and count the values, and
answer ``{"result": {"sum": ..., "n": ...}}``:

- **load ceiling** (context): the same load against a minimal HTTP server on an
  ``asyncio.Protocol`` (``--raw-server``) doing the same work. It shows what the load generator
  can send; the targets hold only while it is well above the bare route's rate.
- **bare Starlette route**: ``await request.json()``, the work, ``JSONResponse``; the bar.
- **af.Server /predict**: ``POST /v1/endpoints/work/predict`` to an endpoint whose async
  ``process`` does the work (the request is booked, queued, run by the endpoint's pool through
  its guard, checked as JSON, finished, counted in the metrics, and answered).
- **af.Server submit + wait**: ``POST /v1/endpoints/work/requests`` (202 with the id), then
  ``GET /v1/requests/{id}?wait=10`` on the same connection; one pair counts as one request.

Targets: /predict at least 0.7x the bare route's requests/s, submit + wait at least 0.35x.
Latencies (p50, p99) are those of the requests completed in the window, measured in the load
generator from write to complete response. The af.Server of this part keeps the default
``result_ttl`` (an hour): the submitted requests stay held for the whole run (a ``/predict``
is forgotten once answered). "server CPU µs/req" is the server process's CPU (from ``/proc``)
per answered request: on a shared machine it says more than the rate, which depends on how
much of a core the server was given ("server busy").

Part ``batching``: an endpoint whose sync ``process`` sleeps ``2 ms + 0.02 ms x items`` with
``time.sleep`` (it runs in a worker thread, as a sync model call does; the GIL is released
while it sleeps, as a model's native code would), 64 connections on /predict. Batched:
``batch=af.Batch(32, 0.005)``; unbatched: the same endpoint without ``batch``. Both with
``concurrency=1``: one model instance, which is the fair comparison (a model that computes
does not run 8 calls in the time of one; with 8 threads that only sleep, the unbatched
endpoint would be credited 8 free replicas). Target: batched at least 8x the unbatched
requests/s. The unbatched endpoint at its default ``concurrency=8`` is shown for context.

Part ``memory`` (one round per allocator: it measures a state, not a time): a fresh af.Server
process with ``result_ttl=15``; 1,000 requests warm it up, then its RSS is the start. 100,000
requests are submitted through ``requests:batch`` in chunks of 1,000 (the endpoint's
``max_queued`` raised so that none is refused), and when ``/metrics`` counts all of them
SUCCESS (and the first is still retrievable, so all are held at once) the RSS is taken again;
VmHWM is the peak. Once the TTL has passed for the last of them and the expiry sweeper has run
twice, the RSS is taken a last time. Target: after the TTL, within 10 % of the start. The same
round under ``PYTHONMALLOC=malloc`` is shown for context: CPython's small-object allocator
keeps a 1 MiB arena while any block in it lives, where glibc's ``malloc_trim`` (which the
server calls) returns every free page.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ._report import part_parser, print_header, print_table, run_parts, verdict

#: Measured rounds per contender of the timed parts; one warm-up round more is run and dropped.
ROUNDS = 5

CONNECTIONS = 64
WARM = 0.3  # seconds of each run before the window
WINDOW = 1.5  # seconds measured per run
VALUES = list(range(8))

TARGET_PREDICT = 0.7
TARGET_SUBMIT_WAIT = 0.35

# Part 2: batching.
BATCH = (32, 0.005)
COST_BASE = 0.002  # seconds per process call
COST_ITEM = 0.00002  # seconds per item
TARGET_BATCHING = 8.0

# Part 3: memory.
MEMORY_TTL = 15.0
N_HELD = 100_000
CHUNK = 1_000
TARGET_MEMORY = 1.10

APP_ENV = "AIOFLOWS_BENCH_APP"
TTL_ENV = "AIOFLOWS_BENCH_TTL"
ROOT = Path(__file__).resolve().parent.parent


def work(data: dict[str, Any]) -> dict[str, Any]:
    """The trivial work every contender does with a request's parsed body."""
    values = data["values"]
    return {"sum": sum(values), "n": len(values)}


def model_cost(items: int) -> float:
    return COST_BASE + COST_ITEM * items


# -- the apps (built in the uvicorn processes) ------------------------------------------------


def make_app() -> Any:
    """The ASGI app of a server process, chosen by ``AIOFLOWS_BENCH_APP`` (uvicorn --factory)."""
    kind = os.environ.get(APP_ENV, "server")
    if kind == "bare":
        return bare_app()
    return server_app(float(os.environ.get(TTL_ENV, "3600")))


def bare_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"result": work(await request.json())})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def server_app(ttl: float) -> Any:
    import aioflows as af

    class Work(af.Endpoint):
        async def process(self, data: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            return work(data)

    class Model(af.Endpoint):
        def process(self, data: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            time.sleep(model_cost(1))
            return work(data)

    class BatchedModel(af.Endpoint):
        def process(self, datas: Any, states: Any, stats: Any) -> Any:
            time.sleep(model_cost(len(datas)))
            return [work(data) for data in datas]

    server = af.Server(result_ttl=ttl)
    server.add("work", Work(), max_queued=N_HELD + CHUNK)
    server.add("model", Model(), concurrency=1)
    server.add("model-batched", BatchedModel(), concurrency=1, batch=af.Batch(*BATCH))
    server.add("model-c8", Model(), concurrency=8)
    return server.asgi()


# -- the load ceiling's server (a separate process) -------------------------------------------


class _RawHttp(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server doing the work: the load generator's ceiling."""

    def __init__(self) -> None:
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
            length = _content_length(buffer[:head_end])
            end = head_end + 4 + length
            if len(buffer) < end:
                break
            body = json.dumps({"result": work(json.loads(buffer[head_end + 4 : end]))}).encode()
            buffer = buffer[end:]
            out.append(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(body)
                + body
            )
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def _raw_serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_RawHttp, "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


def raw_server_main(port: int) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_raw_serve(port))
    return 0


def _content_length(head: bytes) -> int:
    at = head.find(b"content-length:")
    if at < 0:
        at = head.lower().find(b"content-length:")
        if at < 0:
            return 0
    stop = head.find(b"\r\n", at)
    return int(head[at + 15 : stop if stop >= 0 else len(head)])


# -- the load generator (a separate process) --------------------------------------------------


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    if body:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class _Run:
    """One load run: its clock, what it counts, and when it is over."""

    def __init__(self, start: float, warm: float, seconds: float) -> None:
        self.begin = start + warm
        self.end = self.begin + seconds
        self.latencies: list[float] = []
        self.total = 0
        self.errors: list[str] = []
        self.open = 0
        self.over = asyncio.get_running_loop().create_future()

    def answered(self, sent: float, now: float) -> None:
        self.total += 1
        if self.begin <= now < self.end:
            self.latencies.append(now - sent)

    def closed(self) -> None:
        self.open -= 1
        if not self.open and not self.over.done():
            self.over.set_result(None)


class _Client(asyncio.Protocol):
    """One keep-alive connection that sends its next request as soon as the last is answered.

    ``mode`` "post" repeats one POST (expects 200); "submit_wait" submits (expects 202), then
    GETs that id with ``?wait=10`` (expects 200 and SUCCESS), and counts the pair as one.
    """

    def __init__(self, run: _Run, mode: str, path: str, body: bytes) -> None:
        self.run = run
        self.mode = mode
        self.post = _request("POST", path, body)
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.step = 0
        self.clock = time.perf_counter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def start(self) -> None:
        assert self.transport is not None
        self.sent = self.clock()
        self.transport.write(self.post)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.run.errors.append(f"connection lost: {exc}")
            self.transport = None
            self.run.closed()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(buffer[:head_end])
        end = head_end + 4 + _content_length(head)
        if len(buffer) < end:
            return
        body = bytes(buffer[head_end + 4 : end])
        del buffer[:end]
        self.answer(int(head[9:12]), body)

    def answer(self, status: int, body: bytes) -> None:
        transport, run = self.transport, self.run
        assert transport is not None
        if self.mode == "submit_wait" and self.step == 0:
            if status != 202:
                return self.fail(status, body)
            self.step = 1
            request_id = json.loads(body)["id"]
            transport.write(_request("GET", f"/v1/requests/{request_id}?wait=10"))
            return None
        if status != 200 or (self.step == 1 and b'"state":"SUCCESS"' not in body):
            return self.fail(status, body)
        self.step = 0
        now = self.clock()
        run.answered(self.sent, now)
        if now < run.end:
            self.sent = now
            transport.write(self.post)
        else:
            self.transport = None
            transport.close()
            run.closed()
        return None

    def fail(self, status: int, body: bytes) -> None:
        self.run.errors.append(f"HTTP {status}: {body[:200]!r}")
        transport, self.transport = self.transport, None
        assert transport is not None
        transport.close()
        self.run.closed()


async def _load(command: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = json.dumps(command["body"]).encode()
    clients: list[_Client] = []
    run: _Run | None = None

    def factory() -> _Client:
        assert run is not None
        client = _Client(run, command["mode"], command["path"], body)
        clients.append(client)
        return client

    run = _Run(0.0, 0.0, 0.0)
    for _ in range(command["connections"]):
        await loop.create_connection(factory, "127.0.0.1", command["port"])
    start = time.perf_counter()
    run.begin, run.end = start + command["warm"], start + command["warm"] + command["seconds"]
    run.open = len(clients)
    cpu: dict[str, float] = {}

    def mark(name: str) -> None:
        cpu[name] = time.process_time()

    loop.call_later(command["warm"], mark, "begin")
    loop.call_later(command["warm"] + command["seconds"], mark, "end")
    gc.collect()
    for client in clients:
        client.start()
    await asyncio.wait_for(run.over, command["seconds"] + command["warm"] + 30)
    latencies = sorted(run.latencies)
    return {
        "count": len(latencies),
        "total": run.total,
        "rate": len(latencies) / command["seconds"],
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "busy": (cpu["end"] - cpu["begin"]) / command["seconds"],
        "errors": run.errors[:5],
        "n_errors": len(run.errors),
    }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def load_main() -> int:
    """Serve load runs: one JSON command per line on stdin, one JSON result per line out."""
    for line in sys.stdin:
        result = asyncio.run(_load(json.loads(line)))
        print(json.dumps(result), flush=True)
    return 0


# -- the orchestrator -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_impl() -> str:
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


class Process:
    """A server process on a free loopback port, up once it answers ``ready_path``."""

    def __init__(self, argv: list[str], env: dict[str, str], ready: Callable[[int], bool]) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [arg.replace("{port}", str(self.port)) for arg in argv],
            cwd=ROOT,
            env={**os.environ, **env},
        )
        deadline = time.monotonic() + 30
        while not ready(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv} did not start")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds (user + system) the process has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> tuple[float, float]:
        """RSS and its high-water mark (VmHWM), in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        return int(found["VmRSS"]) / 1024, int(found["VmHWM"]) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _answers(path: str, method: str = "GET", body: Any = None) -> Callable[[int], bool]:
    def ready(port: int) -> bool:
        try:
            response = httpx.request(
                method, f"http://127.0.0.1:{port}{path}", json=body, timeout=2.0
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    return ready


def uvicorn(kind: str, ttl: float | None = None, extra: dict[str, str] | None = None) -> Process:
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.serving:make_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", "{port}", "--no-access-log", "--loop", "asyncio"]
    argv += ["--http", _http_impl(), "--log-level", "warning", "--backlog", "512"]
    env = {APP_ENV: kind, **(extra or {})}
    if ttl is not None:
        env[TTL_ENV] = str(ttl)
    if kind == "bare":
        return Process(argv, env, _answers("/predict", "POST", {"values": VALUES}))
    return Process(argv, env, _answers("/healthz"))


def raw_server() -> Process:
    argv = [sys.executable, "-m", "benchmarks.serving", "--raw-server", "{port}"]
    return Process(argv, {}, _answers("/predict", "POST", {"values": VALUES}))


class LoadGenerator:
    """The load process: runs handed to it over a pipe."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serving", "--load"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, port: int, mode: str, path: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        command = {
            "port": port,
            "mode": mode,
            "path": path,
            "body": {"values": VALUES},
            "connections": CONNECTIONS,
            "warm": WARM,
            "seconds": WINDOW,
        }
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        result: dict[str, Any] = json.loads(line)
        if result["n_errors"]:
            raise RuntimeError(f"{result['n_errors']} failed requests, e.g. {result['errors']}")
        return result

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Contender:
    name: str
    server: str  # a key of the processes
    mode: str
    path: str


@dataclass
class Measured:
    rate: float
    p50: float
    p99: float
    busy: float  # the load generator's CPU over the window, one core = 1.0
    server_us: float  # the server's CPU per request answered, µs
    server_busy: float  # the server's CPU over the run


def measure(
    contenders: Sequence[Contender], servers: dict[str, Process], rounds: int
) -> dict[str, list[Measured]]:
    """Every contender once per round, interleaved; the first round is dropped."""
    load = LoadGenerator()
    results: dict[str, list[Measured]] = {c.name: [] for c in contenders}
    try:
        for round_ in range(rounds + 1):
            for contender in contenders:
                server = servers[contender.server]
                cpu, wall = server.cpu(), time.perf_counter()
                result = load.run(server.port, contender.mode, contender.path)
                cpu, wall = server.cpu() - cpu, time.perf_counter() - wall
                if round_:
                    results[contender.name].append(
                        Measured(
                            rate=result["rate"],
                            p50=result["p50"],
                            p99=result["p99"],
                            busy=result["busy"],
                            server_us=cpu / result["total"] * 1e6,
                            server_busy=cpu / wall,
                        )
                    )
    finally:
        load.stop()
    return results


def _median(runs: list[Measured], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def report(
    title: str, results: dict[str, list[Measured]], reference: str, unit: str = "requests/s"
) -> dict[str, float]:
    rates = {name: _median(runs, "rate") for name, runs in results.items()}
    rows = []
    for name, runs in results.items():
        rows.append(
            [
                name,
                f"{rates[name]:,.0f}",
                f"{rates[name] / rates[reference]:.2f}x",
                f"{_median(runs, 'p50') * 1e3:.1f}",
                f"{_median(runs, 'p99') * 1e3:.1f}",
                f"{_median(runs, 'server_us'):.0f}",
                f"{_median(runs, 'server_busy') * 100:.0f}%",
                f"{_median(runs, 'busy') * 100:.0f}%",
            ]
        )
    rounds = min(len(runs) for runs in results.values())
    print_table(
        f"{title} (median of {rounds})",
        [
            "contender",
            unit,
            f"vs {reference}",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "server busy",
            "load busy",
        ],
        rows,
    )
    return rates


def target(text: str, ratio: float, ok: bool) -> None:
    print(f"target {text}: {ratio:.2f}x {verdict(ok)}")


# -- part 1: throughput -----------------------------------------------------------------------

CEILING = "(load ceiling: raw asyncio server)"
BARE = "bare Starlette route"
PREDICT = "af.Server /predict"
SUBMIT_WAIT = "af.Server submit + ?wait="


def bench_throughput(rounds: int) -> None:
    print(
        f"\n== throughput: {CONNECTIONS} keep-alive connections, parse JSON, sum, answer JSON "
        f"({WARM} s warm-up + {WINDOW} s measured per run) =="
    )
    contenders = [
        Contender(CEILING, "raw", "post", "/predict"),
        Contender(BARE, "bare", "post", "/predict"),
        Contender(PREDICT, "server", "post", "/v1/endpoints/work/predict"),
        Contender(SUBMIT_WAIT, "server", "submit_wait", "/v1/endpoints/work/requests"),
    ]
    servers: dict[str, Process] = {}
    try:
        servers["raw"] = raw_server()
        servers["bare"] = uvicorn("bare")
        servers["server"] = uvicorn("server")
        results = measure(contenders, servers, rounds)
    finally:
        for process in servers.values():
            process.stop()
    rates = report("1. requests/s through uvicorn", results, BARE)
    print(
        "server CPU µs/req = the server process's CPU per answered request (a submit + wait "
        "pair counts once); load busy = the load generator's CPU over the window (one core = "
        "100%)"
    )
    predict, submit_wait = rates[PREDICT] / rates[BARE], rates[SUBMIT_WAIT] / rates[BARE]
    print(f"load ceiling / bare route: {rates[CEILING] / rates[BARE]:.1f}x (context)")
    target(f"/predict >= {TARGET_PREDICT}x bare route", predict, predict >= TARGET_PREDICT)
    ok = submit_wait >= TARGET_SUBMIT_WAIT
    target(f"submit + wait >= {TARGET_SUBMIT_WAIT}x bare route", submit_wait, ok)


# -- part 2: batching -------------------------------------------------------------------------

BATCHED = f"batch=Batch{BATCH}, concurrency=1"
UNBATCHED = "unbatched, concurrency=1"
UNBATCHED_C8 = "(unbatched, concurrency=8)"


def bench_batching(rounds: int) -> None:
    print(
        f"\n== batching: sync process sleeping {COST_BASE * 1e3:g} ms + {COST_ITEM * 1e3:g} ms "
        f"per item (time.sleep in the worker thread), {CONNECTIONS} connections on /predict =="
    )
    contenders = [
        Contender(BATCHED, "server", "post", "/v1/endpoints/model-batched/predict"),
        Contender(UNBATCHED, "server", "post", "/v1/endpoints/model/predict"),
        Contender(UNBATCHED_C8, "server", "post", "/v1/endpoints/model-c8/predict"),
    ]
    servers: dict[str, Process] = {}
    try:
        servers["server"] = uvicorn("server")
        results = measure(contenders, servers, rounds)
    finally:
        for process in servers.values():
            process.stop()
    rates = report("2. dynamic batching, requests/s", results, UNBATCHED)
    ideal = BATCH[0] / model_cost(BATCH[0])
    print(
        f"ideal: unbatched {1 / model_cost(1):,.0f}/s per concurrent call; batches of "
        f"{BATCH[0]} {ideal:,.0f}/s per concurrent batch"
    )
    ratio = rates[BATCHED] / rates[UNBATCHED]
    target(f"batched >= {TARGET_BATCHING:g}x unbatched", ratio, ratio >= TARGET_BATCHING)


# -- part 3: memory ---------------------------------------------------------------------------


def _succeeded(client: httpx.Client) -> int:
    text = client.get("/metrics").text
    found = re.search(
        r'^aioflows_requests_total\{endpoint="work",state="SUCCESS"\} (\S+)$', text, re.M
    )
    return 0 if found is None else int(float(found.group(1)))


def _submit(client: httpx.Client, count: int) -> list[str]:
    response = client.post("/v1/endpoints/work/requests:batch", json=[{"values": VALUES}] * count)
    response.raise_for_status()
    ids: list[str] = response.json()["ids"]
    return ids


def _until(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the server")
        time.sleep(0.1)


@dataclass
class Memory:
    """One memory round: RSS in MiB at each moment, and how fast the requests went."""

    fresh: float = 0.0
    start: float = 0.0
    held: float = 0.0
    peak: float = 0.0
    after: float = 0.0
    gone: int = 0  # the status of GET of the first request after the TTL
    submitted: float = 0.0  # seconds to submit them all
    done: float = 0.0  # seconds until all were SUCCESS


def memory_round(env: dict[str, str]) -> Memory:
    """A fresh server: warm it up, fill it with ``N_HELD`` finished requests, let them expire."""
    server = uvicorn("server", MEMORY_TTL, env)
    out = Memory()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30.0) as client:
            out.fresh, _ = server.memory()
            _submit(client, CHUNK)
            _until(lambda: _succeeded(client) >= CHUNK, 30)
            out.start, _ = server.memory()
            began = time.perf_counter()
            first = _submit(client, CHUNK)[0]
            for _ in range(N_HELD // CHUNK - 1):
                _submit(client, CHUNK)
            out.submitted = time.perf_counter() - began
            _until(lambda: _succeeded(client) >= N_HELD + CHUNK, 120)
            out.done = time.perf_counter() - began
            last_finished = time.monotonic()
            out.held, _ = server.memory()
            state = client.get(f"/v1/requests/{first}").json().get("state")
            if state != "SUCCESS":
                print(f"warning: the first request is {state!r}: not all were held at once")
            period = min(max(MEMORY_TTL / 4, 0.05), 5.0)  # the server's sweeper
            time.sleep(max(0.0, last_finished + MEMORY_TTL + 2 * period - time.monotonic()))
            out.gone = client.get(f"/v1/requests/{first}").status_code
            out.after, out.peak = server.memory()
    finally:
        server.stop()
    return out


PYMALLOC = "default allocator"
MALLOC = "(PYTHONMALLOC=malloc)"


def bench_memory(rounds: int) -> None:
    print(
        f"\n== memory: {N_HELD:,} finished requests held under result_ttl={MEMORY_TTL:g} s, "
        f"then expired (one round per allocator) =="
    )
    runs = {PYMALLOC: memory_round({}), MALLOC: memory_round({"PYTHONMALLOC": "malloc"})}

    def cells(moment: str) -> list[str]:
        out = []
        for run in runs.values():
            value: float = getattr(run, moment)
            out += [f"{value:.1f}", f"{value / run.start:.2f}x"]
        return out

    gone = "/".join(str(run.gone) for run in runs.values())
    print_table(
        "3. server RSS (MiB)",
        ["moment", f"{PYMALLOC} MiB", "vs start", f"{MALLOC} MiB", "vs start"],
        [
            ["fresh (started, no request yet)", *cells("fresh")],
            [f"start (after {CHUNK:,} warm-up requests)", *cells("start")],
            [f"{N_HELD:,} more finished, all held", *cells("held")],
            ["peak (VmHWM)", *cells("peak")],
            [f"after the TTL + 2 sweeps ({gone} for the first id)", *cells("after")],
        ],
    )
    for name, run in runs.items():
        print(
            f"{name}: submitted {N_HELD:,} in {run.submitted:.1f} s through requests:batch, all "
            f"SUCCESS after {run.done:.1f} s ({N_HELD / run.done:,.0f}/s); "
            f"{(run.held - run.start) * 2**20 / N_HELD:,.0f} bytes per held request"
        )
    ratio = runs[PYMALLOC].after / runs[PYMALLOC].start
    target("RSS after the TTL within 10% of the start", ratio, ratio <= TARGET_MEMORY)
    context = runs[MALLOC].after / runs[MALLOC].start
    print(
        f"(context) with PYTHONMALLOC=malloc: {context:.2f}x; CPython's small-object allocator "
        "keeps a 1 MiB arena while one block in it lives, glibc's malloc_trim returns pages"
    )


PARTS = {"throughput": bench_throughput, "batching": bench_batching, "memory": bench_memory}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--load"]:
        return load_main()
    if args[:1] == ["--raw-server"]:
        return raw_server_main(int(args[1]))
    parser = part_parser(
        "python -m benchmarks.serving",
        "Benchmark of af.Server under uvicorn against a bare Starlette route.",
        list(PARTS),
        ROUNDS,
    )
    parsed = parser.parse_args(args)
    print_header(("aioflows", "starlette", "uvicorn", "anyio"), parsed.rounds)
    print(f"uvicorn --loop asyncio --http {_http_impl()}; {CONNECTIONS} connections")
    run_parts(PARTS, parsed.part, parsed.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
