"""Send 40 prompts, twice each, to a (fake, local) LLM API with two API keys; resume after a stop.

The script starts a small LLM-like HTTP server on 127.0.0.1 (a free port, in a thread of this
process): ``POST /v1/completions`` checks the ``Authorization: Bearer <key>`` header against the
two keys it knows, takes 10-30 ms, and answers a fake completion with the number of tokens it
used; about one request in seven is answered ``429 Too Many Requests`` with ``Retry-After: 0.05``.

It writes 40 prompts to a JSONL file in a temporary directory, then runs ``af.Launcher`` over
them with both keys and ``samples=2``, so 80 (id, sample) pairs in all:

    each key      at most 25 requests per second (``rate_per_key``) and a token budget of
                  4000 tokens per minute (``tokens_per_key``): a call reserves its estimate
                  (``cost``) and reports what it really used (``key.report_usage``)
    each call     one ``af.HttpClient`` shared by all calls, the key's secret as a bearer token;
                  a 429 pauses that key only, and the pair goes again, on either key
    each result   one JSON line in ``completions.jsonl``, written as it finishes

The first run is interrupted once 30 calls have finished, as Ctrl-C would interrupt it, and a
crash mid-write is simulated by appending half a line. The second run, with the same arguments,
skips the pairs already in the file and runs only the rest. The script then checks that every
pair is in the file exactly once without an error and that no key appears in it, and prints a
summary. Nothing leaves the machine. Run it with ``python examples/llm_batch.py``.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anyio
from rich.console import Console
from rich.table import Table

import aioflows as af

KEYS = ["sk-demo-0f3a9c2e7b1d", "sk-demo-84c61e5d0a97"]  # the fake server knows these two
N_PROMPTS = 40
SAMPLES = 2
MAX_TOKENS = 48  # the longest completion the server writes, in tokens
INTERRUPT_AFTER = 30  # finished calls before the first run is stopped

TOPICS = ("tides", "compilers", "bread", "comets", "jazz", "glaciers", "bees", "bridges")
STYLES = ("in one sentence", "as a haiku", "for a child", "with an example", "in two lines")


# --- the fake LLM API ---------------------------------------------------------------------------


class FakeLLM(BaseHTTPRequestHandler):
    """``POST /v1/completions``: 401 without a known key, now and then 429, else a completion."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections
    lock: ClassVar[threading.Lock] = threading.Lock()
    requests: ClassVar[int] = 0
    throttled: ClassVar[Counter[str]] = Counter()  # 429s answered, by key

    def handle(self) -> None:
        # The client may hang up mid-call: the first run below is stopped on purpose.
        with suppress(ConnectionError):
            super().handle()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in KEYS:
            self.answer(401, {"error": "unknown API key"})
            return
        with FakeLLM.lock:
            FakeLLM.requests += 1
            busy = FakeLLM.requests % 7 == 0
            if busy:
                FakeLLM.throttled[token] += 1
        if busy:
            self.answer(429, {"error": "slow down"}, {"Retry-After": "0.05"})
            return
        rng = random.Random(f"{body['prompt']}/{body['seed']}")
        time.sleep(rng.uniform(0.01, 0.03))  # "thinking": this is the server's own thread
        words = [rng.choice(("the", "a", "moon", "river", "slowly", "bright")) for _ in range(9)]
        completion = " ".join(words[: rng.randrange(3, 9)]) + "."
        prompt_tokens = len(body["prompt"].split())
        used = prompt_tokens + rng.randrange(8, MAX_TOKENS)
        self.answer(200, {"completion": completion, "usage": {"total_tokens": used}})

    def answer(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the summary says what happened


@contextmanager
def fake_llm_server() -> Iterator[str]:
    """Serve FakeLLM on a free port of 127.0.0.1 in a daemon thread; yield its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the batch job ------------------------------------------------------------------------------


def write_prompts(path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for n in range(N_PROMPTS):
            prompt = f"Explain {TOPICS[n % len(TOPICS)]} {STYLES[n % len(STYLES)]}."
            f.write(json.dumps({"id": f"q{n:02d}", "prompt": prompt}) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def estimate(sample: dict[str, Any]) -> float:
    """Tokens a call may use at most: its prompt plus the longest completion."""
    return len(sample["prompt"].split()) + MAX_TOKENS


def make_launcher(
    client: af.HttpClient, output: Path, on_finish: Callable[[], None] | None = None
) -> af.Launcher:
    """The same launcher each run, as a script restarted with the same arguments builds it."""

    async def complete(sample: dict[str, Any], key: af.Key) -> dict[str, Any]:
        response = await client.post(
            "/v1/completions",
            headers={"Authorization": f"Bearer {key.secret}"},
            json={"prompt": sample["prompt"], "seed": sample["sample"], "max_tokens": MAX_TOKENS},
        )
        response.raise_for_status()  # a 429 becomes a throttle the launcher recognises
        answer = response.json()
        key.report_usage(answer["usage"]["total_tokens"])  # refund what the estimate overshot
        if on_finish is not None:
            on_finish()
        return {"text": answer["completion"], "tokens": answer["usage"]["total_tokens"]}

    return af.Launcher(
        complete,
        keys=KEYS,
        rate_per_key="25/s",
        tokens_per_key="4000/min",
        cost=estimate,
        concurrency=8,
        samples=SAMPLES,
        retry=af.Retry(3, backoff=0.02),
        output=output,
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, fake_llm_server() as base_url:
        prompts_path, output = Path(tmp) / "prompts.jsonl", Path(tmp) / "completions.jsonl"
        write_prompts(prompts_path)
        prompts = read_jsonl(prompts_path)
        start = time.perf_counter()

        # max_throttles=0: the client hands a 429 straight back instead of waiting it out on
        # the same key, so the launcher handles it: it pauses that key alone and sends the
        # pair again on the key that frees first. The client still retries 502/503/504 and
        # connection errors.
        async with af.HttpClient(
            base_url, retry=af.Retry(3, backoff=0.02, max_throttles=0), timeout=5.0
        ) as client:
            # Run 1, stopped part way, as Ctrl-C or a timeout would stop it.
            finished = 0
            with anyio.CancelScope() as interrupt:

                def count() -> None:
                    nonlocal finished
                    finished += 1
                    if finished == INTERRUPT_AFTER:
                        interrupt.cancel()

                await make_launcher(client, output, count).run(prompts)
            assert interrupt.cancelled_caught, "the first run was meant to be interrupted"
            done_before = len(read_jsonl(output))
            with output.open("a", encoding="utf-8") as f:
                f.write('{"id": "q39", "sample": 1, "ke')  # a torn line, as kill -9 leaves one
            requests_before = FakeLLM.requests

            # Run 2: same arguments; only the pairs not yet in the file run.
            summary = await make_launcher(client, output).run(prompts)
        elapsed = time.perf_counter() - start

        text = output.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines()]

    total = N_PROMPTS * SAMPLES
    assert summary.total == total
    assert summary.skipped == done_before >= INTERRUPT_AFTER  # what run 1 finished is kept
    assert summary.succeeded == total - done_before
    assert summary.failed == 0
    assert FakeLLM.requests - requests_before >= summary.succeeded  # plus any 429s
    done = Counter((r["id"], r["sample"]) for r in records if r["error"] is None)
    assert len(done) == total, "every pair is done"
    assert set(done.values()) == {1}, "each pair exactly once"
    assert not any(secret in text for secret in KEYS), "a key reached the output file"
    assert {r["key"] for r in records} <= {"key-0", "key-1"}

    print(f"Launched {total} (id, sample) pairs over {len(KEYS)} keys in {elapsed:.2f} s")
    table = Table(title="completions.jsonl, by key")
    table.add_column("key")
    table.add_column("records", justify="right")
    table.add_column("tokens used", justify="right")
    table.add_column("answered 429", justify="right")
    for label, secret in zip(("key-0", "key-1"), KEYS, strict=True):
        mine = [r for r in records if r["key"] == label]
        tokens = sum(r["output"]["tokens"] for r in mine)
        table.add_row(label, str(len(mine)), str(tokens), str(FakeLLM.throttled[secret]))
    Console().print(table)
    print(
        f"Run 1 was stopped after {done_before} pairs; run 2 skipped those "
        f"(summary.skipped={summary.skipped}) and ran the other {summary.succeeded}. "
        f"Each 429 paused only its key and sent the pair again ({summary.retried} in run 2). "
        "Every pair is in the file exactly once, and no key is."
    )


if __name__ == "__main__":
    anyio.run(main)
