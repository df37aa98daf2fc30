"""A real redis-server for tests: one per test session, on a free loopback port, no persistence.

CI installs redis-server (``.ci/run``); on a machine without it the tests that need it fail with
a message that says how to install it, rather than being skipped, so that a missing server is
never mistaken for a pass.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: its URL and the process (tests that restart it use both)."""

    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(directory: Path, port: int | None = None) -> RedisServer:
    """Start redis-server on ``port`` (a free one by default) and wait until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: `apt-get install -y redis-server` (.ci/run does it)"
        )
    port = free_port() if port is None else port
    directory.mkdir(parents=True, exist_ok=True)
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--protected-mode", "no", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return RedisServer(port, process, directory)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


def stop(server: RedisServer) -> None:
    server.process.kill()
    server.process.wait()


@contextlib.contextmanager
def running(directory: Path) -> Iterator[RedisServer]:
    server = start(directory)
    try:
        yield server
    finally:
        stop(server)
