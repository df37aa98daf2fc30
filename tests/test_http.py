"""HttpClient (API.md section 6) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import email.utils
import json
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
    # At least what was left of the date (0.5 s or more; loose for a loaded machine).
    assert time.monotonic() - started >= 0.3


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


class Counting(httpx.AsyncBaseTransport):
    """A user's own transport: counts the requests that reach it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(str(request.url))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_connection_errors_are_retried_then_raised() -> None:
    with serve() as (url, _):
        pass  # the server is gone: nothing listens on that port now
    hooked: list[str] = []

    async def count(request: httpx.Request) -> None:
        hooked.append(str(request.url))

    transport = Counting(httpx.AsyncHTTPTransport())  # a transport= of one's own is honoured
    async with af.HttpClient(
        url, retry=FAST, transport=transport, event_hooks={"request": [count]}
    ) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/gone")
    assert len(transport.seen) == 3  # each attempt is a real request...
    assert len(hooked) == 1  # ...of one request as the client's hooks see it


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
        # burst 2, then 4 at 10/s: 0.4 s between the grants (loose: the first connects)
        assert times[-1] - times[0] >= 0.25


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


# --- issue 10: bounded pauses; per-host limits on every real request -------------------------


async def test_a_429_asking_more_than_max_wait_is_returned_at_once_issue10(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    state.scripts["/far"] = [(429, {"retry-after": "1000000000"})] * 2  # valid: 31 years
    per_host = af.KeyedRateLimiter(100)
    async with af.HttpClient(url, per_host_rate=per_host, retry=af.Retry(3, max_wait=0.3)) as c:
        with anyio.fail_after(10):  # a hang guard: the call must not wait 31 years
            response = await c.get("/far")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1000000000"
        assert state.count("/far") == 1
        with anyio.fail_after(10):  # the host's bucket rests for max_wait at most
            assert (await c.get("/next")).status_code == 200
    async with af.HttpClient(url) as client:  # the default Retry: max_wait 300 s
        with anyio.fail_after(10):
            assert (await client.get("/far")).status_code == 429
    assert state.count("/far") == 2


async def test_a_redirect_hop_takes_the_bucket_of_its_own_host_issue10() -> None:
    with serve() as (url_a, state_a), serve() as (url_b, state_b):
        url_b = url_b.replace("127.0.0.1", "localhost")  # another host, another port
        a_key, b_key = url_a.removeprefix("http://"), url_b.removeprefix("http://")
        state_a.scripts["/go"] = [(302, {"location": f"{url_b}/landed"})] * 4
        per_host = af.KeyedRateLimiter("1/min", burst=10)
        async with af.HttpClient(per_host_rate=per_host, follow_redirects=True) as client:
            for _ in range(3):
                response = await client.get(f"{url_a}/go")
                assert response.status_code == 200
                assert response.json()["path"] == "/landed"
            assert per_host.available(a_key) == pytest.approx(7, abs=0.5)
            assert per_host.available(b_key) == pytest.approx(7, abs=0.5)  # each hop counted

            per_host.pause(b_key, 0.3)  # B asked for a rest: the hop to B waits for it
            with anyio.fail_after(10):
                await client.get(f"{url_a}/go")
        assert state_b.count("/landed") == 4
        # B saw the fourth hop at least the pause after A saw its request (loose: the pause
        # started a moment before A's request left).
        assert state_b.seen[-1].time - state_a.seen[-1].time >= 0.2


async def test_mounted_transports_are_limited_too_issue10(server: tuple[str, ServerState]) -> None:
    url, _ = server
    mounted = Counting(httpx.AsyncHTTPTransport())
    per_host = af.KeyedRateLimiter("1/min", burst=5)
    mounts = {"http://127.0.0.1": mounted}
    async with af.HttpClient(url, per_host_rate=per_host, mounts=mounts) as client:
        assert (await client.get("/m")).status_code == 200
    assert len(mounted.seen) == 1
    assert per_host.available(url.removeprefix("http://")) == pytest.approx(4, abs=0.5)


async def test_streams_are_retried_and_hold_their_slot_until_closed_issue10(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    state.scripts["/s"] = [(503, {})]
    async with af.HttpClient(url, retry=FAST, concurrency=1) as client:
        async with client.stream("GET", "/s") as response, anyio.create_task_group() as tg:
            assert response.status_code == 200  # the 503 was retried
            tg.start_soon(client.get, "/second")
            await anyio.sleep(0.1)
            assert state.count("/second") == 0  # the one slot is the open stream's
            assert json.loads(await response.aread())["path"] == "/s"
            await response.aclose()  # the slot comes back: /second goes
        assert state.count("/second") == 1
        state.scripts["/s"] = [(503, {})] * 5
        async with client.stream("GET", "/s") as response:
            assert response.status_code == 503  # attempts ran out: the last one, readable
            assert json.loads(await response.aread())["path"] == "/s"
    assert state.count("/s") == 5


async def test_retried_responses_are_closed_so_their_connection_is_reused(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    state.scripts["/l"] = [(503, {})] * 2
    one = httpx.Limits(max_connections=1)  # a retried response left open would hold it
    timeout = httpx.Timeout(5, pool=1)
    async with af.HttpClient(url, retry=FAST, limits=one, timeout=timeout) as client:
        with anyio.fail_after(10):
            response = await client.get("/l")
    assert response.status_code == 200
    assert state.count("/l") == 3


async def test_in_memory_responses_give_their_slot_back() -> None:
    # A MockTransport's responses are read before the client sees them: nothing to wait for.
    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"path": request.url.path})

    transport = httpx.MockTransport(ok)
    async with af.HttpClient(concurrency=1, transport=transport) as client:
        with anyio.fail_after(10):
            for n in range(3):
                assert (await client.get(f"https://a.example/{n}")).json() == {"path": f"/{n}"}


@pytest.mark.looptime
async def test_with_retry_none_a_429_is_returned_at_once_and_its_host_rests_issue11() -> None:
    # The rules of map (docs/limits.md): retry=None sends each request once; a throttle with
    # no Retry-After still rests the host's bucket, for 1 s (THROTTLE_BACKOFF), not 0 s.
    sent: list[float] = []

    def throttling(request: httpx.Request) -> httpx.Response:
        sent.append(anyio.current_time())
        return httpx.Response(429 if len(sent) == 1 else 200)

    transport = httpx.MockTransport(throttling)
    async with af.HttpClient(per_host_rate=1000, retry=None, transport=transport) as client:
        start = anyio.current_time()
        assert (await client.get("https://a.example/")).status_code == 429
        assert (await client.get("https://a.example/")).status_code == 200
    assert [round(t - start, 3) for t in sent] == [0.0, 1.0]


async def test_the_aiohttp_transport_keeps_limits_retries_and_the_httpx_api(
    server: tuple[str, ServerState],
) -> None:
    from httpx_aiohttp import AiohttpTransport

    url, state = server
    state.scripts["/t"] = [(503, {}), (429, {"retry-after": "0.05"})]
    async with af.HttpClient(
        url, transport="aiohttp", retry=FAST, concurrency=2, limits=httpx.Limits(max_connections=4)
    ) as client:
        assert isinstance(client, httpx.AsyncClient)
        assert isinstance(client._transport._inner, AiohttpTransport)  # type: ignore[attr-defined]
        response = await client.get("/t")
        assert response.status_code == 200
        assert state.count("/t") == 3  # a failure and a throttle retried, through aiohttp
        echoed = await client.post("/echo", json={"a": 1})
        assert echoed.json() == {"path": "/echo", "echo": '{"a":1}'}

        async def one(i: int) -> None:
            assert (await client.get(f"/p{i}")).status_code == 200

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
    assert state.peak <= 2  # the concurrency cap holds over the aiohttp pool too


def test_the_aiohttp_transport_refuses_http2_and_unknown_transports() -> None:
    with pytest.raises(ValueError, match=r"HTTP/1\.1 only"):
        af.HttpClient(transport="aiohttp", http2=True)
    with pytest.raises(TypeError, match="'aiohttp'"):
        af.HttpClient(transport="curl")  # type: ignore[arg-type]
