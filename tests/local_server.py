"""A real HTTP server on 127.0.0.1 for tests: scripted statuses, and a log of what it saw."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    path: str
    host: str
    authorization: str | None
    time: float


@dataclass
class ServerState:
    """What the server answers (per path, a list of (status, headers) consumed in order before
    answering 200) and what it has seen."""

    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    delay: float = 0.0
    keys: set[str] = field(default_factory=set)  # when set, a bearer among them is required
    throttle_every: int = 0  # every n-th request is a 429 with Retry-After: 0.05
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with state.lock:
                state.seen.append(
                    Seen(
                        self.path,
                        self.headers.get("host", ""),
                        self.headers.get("authorization"),
                        time.monotonic(),
                    )
                )
                state.in_flight += 1
                state.peak = max(state.peak, state.in_flight)
                script = state.scripts.get(self.path)
                status, headers = script.pop(0) if script else (200, {})
                bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                if state.keys and bearer not in state.keys:
                    status, headers = 401, {}
                elif state.throttle_every and len(state.seen) % state.throttle_every == 0:
                    status, headers = 429, {"retry-after": "0.05"}
            try:
                if state.delay:
                    time.sleep(state.delay)
                payload = json.dumps({"path": self.path, "echo": body.decode()}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            finally:
                with state.lock:
                    state.in_flight -= 1

        do_GET = _answer
        do_POST = _answer

    return Handler


@contextmanager
def serve() -> Iterator[tuple[str, ServerState]]:
    """Run the server in a background thread; yields (base URL, state)."""
    state = ServerState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
