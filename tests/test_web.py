"""af.cancel_on_disconnect under a real uvicorn: a request whose client has gone stops calling the
upstream; one that completes, its body, its errors and outer cancellation are untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from serving_support import uvicorn_serving

import aioflows as af


class Upstream:
    """A stand-in for a slow upstream API that counts the calls it was sent."""

    def __init__(self) -> None:
        self.started = 0

    async def call(self, item: int) -> int:
        self.started += 1
        await anyio.sleep(0.05)
        return item * 2


class Handlers:
    """What the app's handlers did: how many entered their fan-out, how many were cut short."""

    def __init__(self) -> None:
        self.entered = 0
        self.cut_short = 0
        self.finished = 0


def make_app(
    upstream: Upstream, handlers: Handlers, limiter: af.RateLimiter, *, middleware: bool = False
) -> FastAPI:
    app = FastAPI()
    if middleware:  # a BaseHTTPMiddleware wraps receive(): the disconnect must still get through

        @app.middleware("http")
        async def passthrough(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            return await call_next(request)

    @app.get("/fan")
    async def fan(request: Request, n: int) -> Response:
        async with af.cancel_on_disconnect(request) as scope:
            handlers.entered += 1
            results = await af.map(upstream.call, range(n), concurrency=4, rate=limiter)
            handlers.finished += 1
            return JSONResponse({"results": results, "cut_short": scope.cancelled_caught})
        handlers.cut_short += 1
        return Response(status_code=499)

    @app.get("/plain")
    async def plain(n: int) -> dict[str, int]:
        # No helper: what FastAPI does by itself when the client leaves (nothing).
        handlers.entered += 1
        results = await af.map(upstream.call, range(n), concurrency=4, rate=limiter)
        handlers.finished += 1
        return {"count": len(results)}

    @app.post("/echo")
    async def echo(request: Request, payload: dict[str, Any]) -> dict[str, Any]:
        async with af.cancel_on_disconnect(request):
            streamed = b"".join([chunk async for chunk in request.stream()])
            return {"param": payload, "json": await request.json(), "stream": streamed.decode()}
        raise AssertionError("unreachable: the client waits for the answer")

    @app.post("/streamed")
    async def streamed(request: Request) -> dict[str, int]:
        size = sum([len(chunk) async for chunk in request.stream()])
        async with af.cancel_on_disconnect(request):  # the stream is read: receive() is free
            return {"size": size, "calls": len(await af.map(upstream.call, range(3)))}
        raise AssertionError("unreachable")

    @app.post("/upload")
    async def upload(request: Request) -> Response:
        async with af.cancel_on_disconnect(request) as scope:  # reads the body: the client leaves
            await anyio.lowlevel.checkpoint()
            handlers.finished += 1
        handlers.cut_short += scope.cancelled_caught
        return Response(status_code=499)

    @app.get("/missing")
    async def missing(request: Request) -> None:
        async with af.cancel_on_disconnect(request):
            await anyio.lowlevel.checkpoint()
            raise HTTPException(status_code=404, detail="no such order")

    @app.get("/deadline")
    async def deadline(request: Request) -> dict[str, bool]:
        with anyio.move_on_after(0.05) as outer:
            async with af.cancel_on_disconnect(request) as inner:
                await anyio.sleep(30)
        return {"outer": outer.cancelled_caught, "inner": inner.cancelled_caught}

    return app


async def wait_for(condition: Callable[[], bool], *, within: float = 15) -> None:
    """Hang guard, not a timing assertion: poll ``condition`` until it holds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (counters of another task's)
            await anyio.sleep(0.01)


async def connect(url: str, request: bytes) -> anyio.abc.SocketStream:
    """A raw client: a TCP connection that has sent ``request`` and can be closed mid-request."""
    host, port = url.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    await stream.send(request)
    return stream


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode()


async def close_all(streams: list[anyio.abc.SocketStream]) -> None:
    for stream in streams:
        await stream.aclose()


@pytest.mark.parametrize("middleware", [False, True], ids=["bare", "BaseHTTPMiddleware"])
async def test_ten_clients_that_leave_stop_their_upstream_calls(middleware: bool) -> None:
    upstream, handlers = Upstream(), Handlers()
    # One limiter shared by every request, as an app's lifespan would create it.
    app = make_app(upstream, handlers, af.RateLimiter("300/s", burst=10), middleware=middleware)
    async with uvicorn_serving(app) as url:
        # The control: without the helper, the calls go on after the client has left.
        plain = [await connect(url, get("/plain?n=100")) for _ in range(2)]
        await wait_for(lambda: handlers.entered == 2 and upstream.started >= 8)
        await close_all(plain)
        left_at = upstream.started
        await anyio.sleep(0.3)
        assert upstream.started - left_at >= 10, "the control should show the calls going on"
        await wait_for(lambda: handlers.finished == 2)  # all 200 calls ran for nobody
        assert upstream.started == 200

        upstream.started = handlers.entered = handlers.finished = 0
        leaving = [await connect(url, get("/fan?n=1000")) for _ in range(10)]
        answers: list[httpx.Response] = []

        async def stay() -> None:  # a request that completes, sharing the limiter with the ten
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                answers.append(await http.get("/fan", params={"n": 20}))

        await wait_for(lambda: handlers.entered == 10 and upstream.started >= 40)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stay)
            await close_all(leaving)
            left_at = upstream.started
            # 10,000 calls at 300/s would take half a minute: the ten must end long before.
            await wait_for(lambda: handlers.cut_short == 10)
            after_disconnect = upstream.started - left_at
            await anyio.sleep(0.3)
        calls_later = upstream.started - left_at - after_disconnect
    # A few may start between the close and uvicorn noticing it: a generous bound. The stayer
    # adds its 20.
    assert after_disconnect <= 20 + 60, after_disconnect
    assert calls_later <= 20, calls_later  # none of the ten's, at most the stayer's
    [answer] = answers
    assert answer.status_code == 200
    assert answer.json() == {"results": [2 * n for n in range(20)], "cut_short": False}
    assert handlers.finished == 1  # the one that stayed


async def test_the_body_errors_and_outer_cancellation_pass_through() -> None:
    upstream, handlers = Upstream(), Handlers()
    app = make_app(upstream, handlers, af.RateLimiter("1000/s"))
    async with uvicorn_serving(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            # The helper reads the body first; Starlette keeps it for the handler and FastAPI.
            echoed = await http.post("/echo", json={"order": 7})
            assert echoed.status_code == 200, echoed.text
            assert echoed.json() == {
                "param": {"order": 7},
                "json": {"order": 7},
                "stream": json.dumps({"order": 7}, separators=(",", ":")),
            }
            streamed = await http.post("/streamed", content=b"x" * 100_000)
            assert streamed.json() == {"size": 100_000, "calls": 3}
            # An exception comes out as itself, not in an ExceptionGroup (which would be a 500).
            missing = await http.get("/missing")
            assert (missing.status_code, missing.json()) == (404, {"detail": "no such order"})
            # Only a disconnect is absorbed: an outer deadline cancels through the helper.
            assert (await http.get("/deadline")).json() == {"outer": True, "inner": False}

        # A client that leaves while its body is being read: the block is cut at its start.
        head = b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 1000\r\n\r\n"
        uploading = await connect(url, head + b"x" * 10)
        await anyio.sleep(0.1)
        await uploading.aclose()
        await wait_for(lambda: handlers.cut_short == 1)
    assert handlers.finished == 0


def test_importing_aioflows_does_not_import_starlette() -> None:
    # Starlette is the server extra's: the helper imports it when it is entered.
    code = "import sys, aioflows; assert 'starlette' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
