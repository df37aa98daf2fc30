"""A provider-like HTTP API on 127.0.0.1 for tests: per-key limits and rate-limit headers.

It behaves like an LLM provider's endpoint as far as limits go: each API key (a bearer token)
has a request bucket and, optionally, a token bucket (capacity = the limit, refilled
continuously over the window, as OpenAI and Anthropic describe theirs); every answer carries
the key's limits in OpenAI's style (``x-ratelimit-*``, resets as Go durations), Anthropic's
(``anthropic-ratelimit-*``, resets as RFC 3339 times), both, or none; a request over the limit
gets 429 with ``Retry-After`` (and the headers, remaining 0); an unknown bearer gets 401.
Limits can be changed mid-run (:meth:`ProviderServer.set_limit`), and every answer is counted
per key with its time, so a test can measure each key's served rate and its 429s (and
another process read the counts: ``GET /stats``).

A request may say its token cost in a JSON body ``{"tokens": n}`` (default 1 when the key has
a token limit). Reusable by any test::

    with ProviderServer({"sk-test-a": Limit(150)}, style="openai") as server:
        ... POST server.url + "/v1/chat" with "Authorization: Bearer sk-test-a" ...
        server.count("sk-test-a", 429)
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Style = Literal["openai", "anthropic", "both", "none"]


@dataclass
class Limit:
    """A key's limits: ``requests`` (and ``tokens``) per ``window`` seconds."""

    requests: float
    window: float = 1.0
    tokens: float | None = None


@dataclass
class _Bucket:
    capacity: float
    per_sec: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.per_sec)
            self.updated = now

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.per_sec)


@dataclass
class Answer:
    key: str
    status: int
    time: float


@dataclass
class _KeyState:
    limit: Limit
    requests: _Bucket
    tokens: _Bucket | None


def _bucket(limit: float, window: float, now: float) -> _Bucket:
    return _Bucket(limit, limit / window, limit, now)


def go_duration(seconds: float) -> str:
    """``seconds`` as OpenAI writes a reset: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def rfc3339(unix: float) -> str:
    """``unix`` as Anthropic writes a reset, with milliseconds: ``2026-01-01T00:00:01.250Z``."""
    moment = datetime.fromtimestamp(unix, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its connection (a cancelled call) is no error of the server's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ProviderServer:
    """The server, in a thread of its own from ``with`` to its end.

    Args:
        limits: Each API key's limits.
        style: Which rate-limit headers the answers carry.
        latency: Seconds each answer takes (after the limits are applied, as a model would).
    """

    def __init__(
        self, limits: dict[str, Limit], *, style: Style = "openai", latency: float = 0.0
    ) -> None:
        now = time.monotonic()
        self._lock = threading.Lock()
        self._keys = {key: self._state(limit, now) for key, limit in limits.items()}
        self.style: Style = style
        self.latency = latency
        self.answers: list[Answer] = []
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @staticmethod
    def _state(limit: Limit, now: float) -> _KeyState:
        tokens = _bucket(limit.tokens, limit.window, now) if limit.tokens else None
        return _KeyState(limit, _bucket(limit.requests, limit.window, now), tokens)

    def __enter__(self) -> ProviderServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def set_limit(self, key: str, limit: Limit) -> None:
        """Change a key's limits from now on; what its buckets hold is capped by the new ones."""
        with self._lock:
            now = time.monotonic()
            old = self._keys[key]
            new = self._state(limit, now)
            old.requests.refill(now)
            new.requests.level = min(new.requests.capacity, old.requests.level)
            if new.tokens is not None and old.tokens is not None:
                old.tokens.refill(now)
                new.tokens.level = min(new.tokens.capacity, old.tokens.level)
            self._keys[key] = new

    def count(self, key: str, status: int, since: float = -math.inf) -> int:
        """Answers of ``status`` to ``key`` at or after ``since`` (``time.monotonic()``)."""
        with self._lock:
            return sum(
                a.key == key and a.status == status and a.time >= since for a in self.answers
            )

    def served_rate(self, key: str, start: float, end: float) -> float:
        """Successful calls per second of ``key`` between two ``time.monotonic()`` times."""
        with self._lock:
            ok = sum(
                a.key == key and a.status == 200 and start <= a.time < end for a in self.answers
            )
        return ok / (end - start)

    def _decide(self, bearer: str, cost: float) -> tuple[int, dict[str, str]]:
        with self._lock:
            now = time.monotonic()  # under the lock: the buckets' times only go forward
            state = self._keys.get(bearer)
            if state is None:
                self.answers.append(Answer("?", 401, now))
                return 401, {}
            requests, tokens = state.requests, state.tokens
            requests.refill(now)
            if tokens is not None:
                tokens.refill(now)
                cost = min(cost, tokens.capacity)
            short = max(0.0, 1 - requests.level) / requests.per_sec
            if tokens is not None:
                short = max(short, max(0.0, cost - tokens.level) / tokens.per_sec)
            status = 429 if short > 0 else 200
            if status == 200:
                requests.level -= 1
                if tokens is not None:
                    tokens.level -= cost
            self.answers.append(Answer(bearer, status, now))
            headers = self._limit_headers(state)
            if status == 429:
                headers["retry-after"] = f"{short:.3f}"
            return status, headers

    def _limit_headers(self, state: _KeyState) -> dict[str, str]:
        headers: dict[str, str] = {}
        wall = time.time()
        kinds = [("requests", state.requests)]
        if state.tokens is not None:
            kinds.append(("tokens", state.tokens))
        for kind, bucket in kinds:
            limit, remaining = f"{bucket.capacity:g}", str(max(0, math.floor(bucket.level)))
            if self.style in ("openai", "both"):
                headers[f"x-ratelimit-limit-{kind}"] = limit
                headers[f"x-ratelimit-remaining-{kind}"] = remaining
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.reset_s())
            if self.style in ("anthropic", "both"):
                headers[f"anthropic-ratelimit-{kind}-limit"] = limit
                headers[f"anthropic-ratelimit-{kind}-remaining"] = remaining
                headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(wall + bucket.reset_s())
        return headers

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    cost = float(json.loads(body or b"{}").get("tokens", 1))
                except (ValueError, AttributeError):
                    cost = 1.0
                bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                status, headers = server._decide(bearer, cost)
                if status == 200 and server.latency:
                    time.sleep(server.latency)
                payload = json.dumps({"status": status, "usage": {"tokens": cost}}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path != "/stats":
                    self.do_POST()
                    return
                # What another process (a benchmark) reads: answers per key and status.
                stats: dict[str, dict[str, int]] = {}
                with server._lock:
                    for answer in server.answers:
                        counts = stats.setdefault(answer.key, {})
                        counts[str(answer.status)] = counts.get(str(answer.status), 0) + 1
                payload = json.dumps(stats).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


__all__ = ["Answer", "Limit", "ProviderServer", "Style", "go_duration", "rfc3339"]
