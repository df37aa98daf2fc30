"""Two launcher processes over the same two API keys, within each key's limit together.

Each key of an API allows 20 requests per second, whoever sends them. Two batch jobs, in two
processes, use the same two keys: apart, each would allow itself 20 per second per key, and the
API would see 40. With ``Launcher(..., shared=af.RedisRateLimiter(...))`` the keys' buckets live
in Redis, so both processes draw from the same buckets and the API sees at most 20 per second
per key (plus the burst the limit allows at the start).

The script starts what it needs on 127.0.0.1, on free ports: a redis-server (no persistence, in
a temporary directory; if redis-server is not installed it says how to install it and stops)
and a tiny HTTP API in a thread of this process, which checks the bearer key and records when
each request for each key arrived. It then runs itself twice more, as the two workers
(``--worker``), each sending 80 prompts through ``af.Launcher`` with both keys into its own JSONL
file, waits for both, and prints what the API saw per key and per second. Nothing leaves the
machine. Run it with ``python examples/shared_keys.py`` (a few seconds).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anyio
import httpx

import aioflows as af

KEYS = ["sk-demo-7c1e94a20b3f", "sk-demo-d05b8e6f1a42"]  # the fake API knows these two
RATE = 20  # requests per second per key, the API's limit
PROMPTS = 80  # per worker: 40 per key, twice what a key allows in its first second


# --- the fake API ------------------------------------------------------------------------------


class FakeAPI(BaseHTTPRequestHandler):
    """``POST /v1/answer``: 401 without a known key, else an answer; records arrivals per key."""

    arrivals: ClassVar[dict[str, list[float]]] = defaultdict(list)
    lock: ClassVar[threading.Lock] = threading.Lock()
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        key = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        if key not in KEYS:
            status, payload = 401, {"error": "unknown key"}
        else:
            with self.lock:
                self.arrivals[key].append(time.monotonic())
            status, payload = 200, {"answer": f"answer to {body['prompt']!r}"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def fake_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- redis-server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A redis-server of our own on a free port, without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        print(
            "This example needs a redis-server on this machine. Install one with\n"
            "    sudo apt-get install -y redis-server      (Debian, Ubuntu)\n"
            "    brew install redis                        (macOS)\n"
            "or run one with `docker run -p 6379:6379 redis`, then start the example again."
        )
        sys.exit(0)
    port = free_port()
    no_persistence = ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", *no_persistence],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


# --- a worker: one launcher process ------------------------------------------------------------


async def worker(redis_url: str, api: str, output: str, name: str) -> None:
    async with (
        af.RedisRateLimiter(redis_url, RATE) as shared,  # the launcher gives each key its rate
        httpx.AsyncClient(base_url=api) as client,
    ):

        async def ask(sample: dict[str, Any], key: af.Key) -> str:
            response = await client.post(
                "/v1/answer",
                json={"prompt": sample["prompt"]},
                headers={"authorization": f"Bearer {key.secret}"},
            )
            response.raise_for_status()
            answer: str = response.json()["answer"]
            return answer

        launcher = af.Launcher(
            ask,
            keys=KEYS,
            rate_per_key=f"{RATE}/s",
            concurrency=8,
            output=output,
            shared=shared,  # the keys' buckets live in Redis, shared with the other worker
        )
        prompts = [{"id": i, "prompt": f"{name} question {i}"} for i in range(PROMPTS)]
        summary = await launcher.run(prompts)
        print(json.dumps({"worker": name, "succeeded": summary.succeeded, **summary.per_key}))


# --- the demo ------------------------------------------------------------------------------------


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    most, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        most = max(most, j - i)
    return most


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        with fake_api() as api:
            outputs = [Path(tmp) / f"{name}.jsonl" for name in ("first", "second")]
            workers = [
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", redis_url, api, str(output)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for output in outputs
            ]
            reports = [json.loads(proc.communicate(timeout=120)[0]) for proc in workers]
            if any(proc.returncode for proc in workers):
                raise SystemExit("a worker failed")
        for output in outputs:
            records = [json.loads(line) for line in output.read_text().splitlines()]
            pairs = sorted(r["id"] for r in records if r["error"] is None)
            assert pairs == list(range(PROMPTS)), f"{output.name}: not every pair exactly once"
            assert not any(key in output.read_text() for key in KEYS), "a secret in the output"
    for report in reports:
        print(f"worker {report['worker']}: {report['succeeded']} answers", end="")
        print(f" (key-0: {report['key-0']} calls, key-1: {report['key-1']} calls)")
    print(
        f"\nwhat the API saw, each key limited to {RATE}/s (burst {RATE}) across both workers, "
        f"so at most {2 * RATE} in a second (apart, they would allow themselves {4 * RATE}):"
    )
    within = True
    for label, key in zip(("key-0", "key-1"), KEYS, strict=True):
        times = FakeAPI.arrivals[key]
        most = busiest_second(times)
        # The burst and one second of refill; 15 % more for the time between a grant and the
        # request's arrival, which a busy machine stretches. Apart, the workers would send 80.
        within &= most <= 2 * RATE * 1.15
        print(f"  {label}: {len(times)} requests, at most {most} in any one second")
    print(
        "Shared limits held: both workers together stayed within each key's limit."
        if within
        else "Shared limits did NOT hold."
    )
    if not within:
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        redis_url, api, output = sys.argv[2:5]
        anyio.run(worker, redis_url, api, output, Path(output).stem)
    else:
        main()
