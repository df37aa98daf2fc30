"""Real servers for the serving tests: uvicorn in this process on a free port, or in a child
process that a test can kill -9."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn


def listening_socket() -> socket.socket:
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP (else each
    # keep-alive response waits out a delayed ACK, 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, *, lifespan: str = "on") -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) for the block; its base URL."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(20):
                while not server.started:
                    if server.should_exit:
                        raise RuntimeError("uvicorn did not start")
                    await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


# A server in a child process: the script is written by the test, started with `python -m
# aioflows serve`, and its port is read from the listening line on stderr.


@contextlib.contextmanager
def child_server(
    script: Path, target: str, *, cwd: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "aioflows", "serve", f"{script}:{target}", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _free_port() -> int:
    with contextlib.closing(listening_socket()) as sock:
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"the server exited with {process.returncode}:\n{err}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not become healthy within 60 s")
