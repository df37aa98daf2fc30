"""HttpClient (API.md section 6) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from local_server import ServerState, serve

import aioflows as af


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with serve() as running:
        yield running


FAST = af.Retry(3, backoff=0.01, jitter=False)


async def test_a_plain_request_works_and_async_with_closes(
    server: tuple[str, ServerState],
) -> None:
    url, _ = server
    async with af.HttpClient(url) as client:
        response = await client.post("/echo", content=b"hi")
        assert response.status_code == 200
        assert response.json() == {"path": "/echo", "echo": "hi"}
    assert client.is_closed
    assert isinstance(client, httpx.AsyncClient)


async def test_429_waits_for_retry_after_seconds_and_is_not_an_attempt(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    state.scripts["/t"] = [(429, {"retry-after": "0.3"})] * 3  # more throttles than attempts
    async with af.HttpClient(url, retry=af.Retry(2, backoff=0.01)) as client:
        started = time.monotonic()
        response = await client.get("/t")
    assert response.status_code == 200
    assert state.count("/t") == 4  # three throttles did not use up the two attempts
    assert time.monotonic() - started >= 0.85  # it waited as asked, three times


async def test_429_with_an_http_date_retry_after_is_honoured(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    when = email.utils.formatdate(time.time() + 1.5, usegmt=True)  # whole seconds
    state.scripts["/d"] = [(429, {"retry-after": when})]
    async with af.HttpClient(url, retry=FAST) as client:
        started = time.monotonic()
        response = await client.get("/d")
    assert response.status_code == 200
    assert state.count("/d") == 2
    assert time.monotonic() - started >= 0.4  # at least what was left of the date


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_server_errors_are_retried_then_returned(
    server: tuple[str, ServerState], status: int
) -> None:
    url, state = server
    state.scripts["/s"] = [(status, {})] * 2
    async with af.HttpClient(url, retry=FAST) as client:
        assert (await client.get("/s")).status_code == 200
        assert state.count("/s") == 3
        state.scripts["/s"] = [(status, {})] * 5
        response = await client.get("/s")
    assert response.status_code == status  # attempts ran out: the last response, readable
    assert response.json()["path"] == "/s"
    assert state.count("/s") == 6


async def test_other_statuses_are_returned_at_once(server: tuple[str, ServerState]) -> None:
    url, state = server
    state.scripts["/nf"] = [(404, {})]
    async with af.HttpClient(url, retry=FAST) as client:
        assert (await client.get("/nf")).status_code == 404
    assert state.count("/nf") == 1


async def test_connection_errors_are_retried_then_raised() -> None:
    with serve() as (url, _):
        pass  # the server is gone: nothing listens on that port now
    attempts: list[str] = []

    async def count(request: httpx.Request) -> None:
        attempts.append(str(request.url))

    async with af.HttpClient(url, retry=FAST, event_hooks={"request": [count]}) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/gone")
    assert len(attempts) == 3


async def test_the_overall_rate_is_never_exceeded(server: tuple[str, ServerState]) -> None:
    url, state = server
    limited = af.HttpClient(url, rate=af.RateLimiter("20/s", burst=5))
    async with limited as client, anyio.create_task_group() as tg:
        for _ in range(25):
            tg.start_soon(client.get, "/r")
    times = sorted(s.time for s in state.seen)
    assert len(times) == 25
    # burst 5, then 20/s: the 25th request cannot start before 1 s (a little slack for clocks)
    assert times[-1] - times[0] >= 0.9


async def test_each_host_has_its_own_bucket(server: tuple[str, ServerState]) -> None:
    url, state = server
    port = url.rsplit(":", 1)[1]
    hosts = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    limited = af.HttpClient(per_host_rate=af.KeyedRateLimiter("10/s", burst=2))
    async with limited as client, anyio.create_task_group() as tg:
        for host in hosts:
            for _ in range(6):
                tg.start_soon(client.get, f"{host}/h")
    for host in ("127.0.0.1", "localhost"):
        times = sorted(s.time for s in state.seen if s.host.startswith(host))
        assert len(times) == 6
        assert times[-1] - times[0] >= 0.35  # burst 2, then 4 at 10/s: at least 0.4 s


async def test_concurrency_caps_requests_in_flight(server: tuple[str, ServerState]) -> None:
    url, state = server
    state.delay = 0.05
    async with af.HttpClient(url, concurrency=3) as client, anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(client.get, "/c")
    assert state.count("/c") == 12
    assert state.peak <= 3


def test_bad_options_fail_at_once() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        af.HttpClient(concurrency=0)
    with pytest.raises(ValueError, match="fast"):
        af.HttpClient(rate="fast")
    with pytest.raises(TypeError):
        af.HttpClient(retry="twice")  # type: ignore[arg-type]


async def test_a_retry_with_its_own_on_is_respected(server: tuple[str, ServerState]) -> None:
    url, state = server
    state.scripts["/o"] = [(503, {})]
    only_connections = af.Retry(3, backoff=0.01, on=httpx.ConnectError)
    kwargs: dict[str, Any] = {"retry": only_connections}
    async with af.HttpClient(url, **kwargs) as client:
        response = await client.get("/o")
    assert response.status_code == 503  # 503 is not a ConnectError: returned at once
    assert state.count("/o") == 1
