"""Keys that learn their limits from the provider's rate-limit headers.

Two API keys of different tiers, and no rate written anywhere: the launcher starts each key
with one call at a time, reads its limits from the first response's ``x-ratelimit-*``
headers (OpenAI's style; Anthropic's ``anthropic-ratelimit-*`` work the same), and from then
on paces each key at its own limit. The provider here is a small HTTP server on 127.0.0.1,
in a thread of this script: per-key token buckets, the headers on every answer, 429 with
``Retry-After`` when a key goes over, 401 for an unknown key.

Run it: ``python examples/llm_auto_limits.py`` (about three seconds, offline).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aioflows as af

#: Each key's limit at the provider, per second (a real one's would be per minute).
LIMITS = {"sk-demo-tier2-5d1e0c9a77": 60.0, "sk-demo-tier1-0b8f3a2c14": 20.0}
CALLS = 120


class Provider:
    """Per-key token buckets (capacity = the limit, refilled over one second)."""

    def __init__(self, limits: dict[str, float]) -> None:
        self.lock = threading.Lock()
        now = time.monotonic()
        self.buckets = {key: [limit, now] for key, limit in limits.items()}
        self.limits = limits
        self.served = dict.fromkeys(limits, 0)
        self.throttled = dict.fromkeys(limits, 0)

    def answer(self, key: str) -> tuple[int, dict[str, str]]:
        with self.lock:
            if key not in self.buckets:
                return 401, {}
            limit, now = self.limits[key], time.monotonic()
            level, updated = self.buckets[key]
            level = min(limit, level + (now - updated) * limit)
            status = 200 if level >= 1 else 429
            if status == 200:
                level -= 1
                self.served[key] += 1
            else:
                self.throttled[key] += 1
            self.buckets[key] = [level, now]
            reset_ms = math.ceil((limit - level) / limit * 1000)
            headers = {
                "x-ratelimit-limit-requests": f"{limit:g}",
                "x-ratelimit-remaining-requests": str(max(0, math.floor(level))),
                "x-ratelimit-reset-requests": f"{reset_ms}ms",
            }
            if status == 429:
                headers["retry-after"] = f"{(1 - level) / limit:.3f}"
            return status, headers


def serve(provider: Provider) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            key = (self.headers.get("authorization") or "").removeprefix("Bearer ")
            status, headers = provider.answer(key)
            body = json.dumps({"text": "an answer"}).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def main() -> None:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("aioflows").setLevel(logging.INFO)  # what each key learned
    provider = Provider(LIMITS)
    server = serve(provider)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # max_throttles=0: a 429 comes back to the call, and the launcher rests that key;
        # a dropped connection is still retried by the client.
        retry = af.Retry(3, backoff=0.01, max_throttles=0)
        async with af.HttpClient(url, retry=retry, timeout=10) as client:

            async def ask(sample: dict[str, Any], key: af.Key) -> str:
                response = await client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key.secret}"},
                    json={"messages": [{"role": "user", "content": sample["prompt"]}]},
                )
                response.raise_for_status()
                return str(response.json()["text"])

            started = time.monotonic()
            summary = await af.Launcher(ask, keys=list(LIMITS), rate_per_key="auto").run(
                {"id": n, "prompt": f"question {n}"} for n in range(CALLS)
            )
            took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    print(summary)
    assert summary.succeeded == CALLS
    for label, (key, limit) in zip(("key-0", "key-1"), LIMITS.items(), strict=True):
        print(
            f"{label}: limit {limit:g}/s, served {provider.served[key]} "
            f"({provider.served[key] / took:.0f}/s over the run), "
            f"{provider.throttled[key]} throttled"
        )
    assert summary.per_key["key-0"] > summary.per_key["key-1"]
    print("Learned limits from the headers")


if __name__ == "__main__":
    asyncio.run(main())
