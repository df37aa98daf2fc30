"""Serving (API.md §7): routes, status codes, hooks, lifecycle, auth, limits, metrics, shutdown.

Every test talks HTTP to a real uvicorn on 127.0.0.1 (in this process), with httpx or
``af.Client``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from serving_support import uvicorn_serving

import aioflows as af
from aioflows.serving import routes


class Double(af.Endpoint):
    async def process(self, data: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        return {"y": data["x"] * 2}


class Gate(af.Endpoint):
    """process waits until the test opens the gate; it records starts and cancellations."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.started: list[Any] = []
        self.cancelled: list[Any] = []

    async def process(self, data: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        self.started.append(data)
        try:
            await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(data)
            raise
        return data


@contextlib.asynccontextmanager
async def serving_double() -> AsyncIterator[str]:
    """A server with the one endpoint ``double``, under uvicorn. (Not a fixture: pytest-asyncio
    tears an async fixture down in another task than it set it up in, and a task group must
    be left by the task that entered it.)"""
    server = af.Server()
    server.add("double", Double())
    async with uvicorn_serving(server.asgi()) as url:
        yield url


async def _until(predicate: Any, seconds: float = 10) -> None:
    """Wait until ``predicate()`` holds: what the server's tasks change has no event to wait on
    from a test."""
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_submit_then_wait_then_predict() -> None:
    async with serving_double() as url, httpx.AsyncClient(base_url=url) as http:
        answer = await http.post("/v1/endpoints/double/requests", json={"x": 21})
        assert answer.status_code == 202
        submitted = answer.json()
        assert submitted["state"] == "PENDING"
        assert uuid.UUID(hex=submitted["id"]).version == 4  # unguessable ids
        record = (await http.get(f"/v1/requests/{submitted['id']}", params={"wait": 10})).json()
        assert record["state"] == "SUCCESS"
        assert record["result"] == {"y": 42}
        assert record["endpoint"] == "double"
        assert record["error"] is None
        assert record["created_at"] <= record["started_at"] <= record["finished_at"]
        predicted = await http.post("/v1/endpoints/double/predict", json={"x": 5})
        assert predicted.status_code == 200
        assert predicted.json() == {"result": {"y": 10}}
        batch = await http.post("/v1/endpoints/double/requests:batch", json=[{"x": 1}, {"x": 2}])
        assert batch.status_code == 202
        ids = batch.json()["ids"]
        assert len(ids) == len(set(ids)) == 2
        async with af.Client(url) as client:
            results = [(await client.wait(i))["result"] for i in ids]
            assert results == [{"y": 2}, {"y": 4}]
            assert await client.predict("double", {"x": 4}) == {"y": 8}
            listed = await client.endpoints()
            assert [e["name"] for e in listed] == ["double"]
            assert (await client.healthz()) == {"status": "ok"}


async def test_sync_hooks_run_in_threads_and_async_ones_on_the_loop() -> None:
    threads: dict[str, int] = {}

    class Mixed(af.Endpoint):
        def preprocess(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            threads["pre"] = threading.get_ident()
            return body["n"]

        async def process(self, n: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            threads["process"] = threading.get_ident()
            return n + 1

        def postprocess(self, n: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            threads["post"] = threading.get_ident()
            return {"n": n}

    server = af.Server()
    server.add("mixed", Mixed())
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        assert await client.predict("mixed", {"n": 1}) == {"n": 2}
    loop_thread = threading.get_ident()
    assert threads["process"] == loop_thread
    assert threads["pre"] != loop_thread
    assert threads["post"] != loop_thread


async def test_state_and_stats_are_per_request_under_50_concurrent_requests() -> None:
    class Isolated(af.Endpoint):
        async def preprocess(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            assert state == {}
            assert len(stats) == 0
            state["mine"] = body["i"]
            stats({"items": 1, "weight": body["i"]})
            await anyio.sleep(0.01)
            return body

        def process(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            time.sleep(0.001)
            stats(items=1)
            return state["mine"]

        async def postprocess(self, mine: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            await anyio.sleep(0.01)
            return {"mine": mine, "state": state["mine"], "items": stats["items"]}

    server = af.Server()
    server.add("iso", Isolated(), concurrency=50)
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await client.predict("iso", {"i": i})

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        assert results == {i: {"mine": i, "state": i, "items": 2} for i in range(50)}
        metrics = (await client._http.get("/metrics")).text
    assert 'aioflows_endpoint_stat_sum{endpoint="iso",stat="items"} 100.0' in metrics
    assert 'aioflows_endpoint_stat_count{endpoint="iso",stat="items"} 50.0' in metrics
    assert (
        f'aioflows_endpoint_stat_sum{{endpoint="iso",stat="weight"}} {sum(range(50))}.0' in metrics
    )
    assert 'aioflows_requests_total{endpoint="iso",state="SUCCESS"} 50.0' in metrics
    assert 'aioflows_request_duration_seconds_count{endpoint="iso"} 50.0' in metrics
    assert 'aioflows_queue_depth{endpoint="iso"} 0.0' in metrics


async def test_a_full_queue_answers_429_with_retry_after_and_counts_only_waiting_requests() -> None:
    gate = Gate()
    server = af.Server()
    server.add("gate", gate, concurrency=1, max_queued=2)
    async with uvicorn_serving(server.asgi()) as url, httpx.AsyncClient(base_url=url) as http:
        first = (await http.post("/v1/endpoints/gate/requests", json=0)).json()["id"]
        await _until(lambda: gate.started == [0])  # running: not counted by max_queued
        for i in (1, 2):
            assert (await http.post("/v1/endpoints/gate/requests", json=i)).status_code == 202
        refused = await http.post("/v1/endpoints/gate/requests", json=3)
        assert refused.status_code == 429
        assert float(refused.headers["Retry-After"]) > 0
        assert "max_queued=2" in refused.json()["error"]
        batch = await http.post("/v1/endpoints/gate/requests:batch", json=[4])
        assert batch.status_code == 429
        metrics = (await http.get("/metrics")).text
        assert 'aioflows_queue_depth{endpoint="gate"} 2.0' in metrics
        assert 'aioflows_requests_running{endpoint="gate"} 1.0' in metrics
        gate.gate.set()
        done = (await http.get(f"/v1/requests/{first}", params={"wait": 10})).json()
        assert done["state"] == "SUCCESS"
        await _until(lambda: server.runners["gate"].queued == 0)
        assert (await http.post("/v1/endpoints/gate/requests", json=5)).status_code == 202
    assert sorted(gate.started) == [0, 1, 2, 5]


async def test_delete_cancels_a_queued_and_a_running_request() -> None:
    gate = Gate()
    server = af.Server()
    server.add("gate", gate, concurrency=1)
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        running = await client.submit("gate", "running")
        await _until(lambda: gate.started == ["running"])
        queued = await client.submit("gate", "queued")
        assert (await client.get(queued))["state"] == "PENDING"
        assert (await client.get(running))["state"] == "STARTED"

        cancelled = await client.cancel(queued)
        assert cancelled["state"] == "CANCELLED"
        cancelled = await client.cancel(running)  # answered once the hook has stopped
        assert cancelled["state"] == "CANCELLED"
        assert cancelled["finished_at"] is not None
        assert gate.cancelled == ["running"]  # the hook itself was cancelled
        assert (await client.get(running)) == cancelled

        with pytest.raises(af.ServingError) as again:
            await client.cancel(running)
        assert again.value.status_code == 409
        assert again.value.payload["state"] == "CANCELLED"
        with pytest.raises(af.ServingError) as unknown:
            await client.cancel(uuid.uuid4().hex)
        assert unknown.value.status_code == 404

        gate.gate.set()
        assert await client.predict("gate", "after") == "after"
        assert (await client.get(queued))["state"] == "CANCELLED"
        metrics = (await client._http.get("/metrics")).text
    assert "queued" not in gate.started  # a cancelled queued request never starts
    assert 'aioflows_requests_total{endpoint="gate",state="CANCELLED"} 2.0' in metrics


async def test_a_finished_request_expires_after_result_ttl_and_memory_follows() -> None:
    server = af.Server(result_ttl=0.5)
    server.add("double", Double())
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        ids = await client.submit_batch("double", [{"x": i} for i in range(20)])
        for request_id in ids:
            assert (await client.wait(request_id, timeout=10))["state"] == "SUCCESS"
        assert len(server.book) == 20
        await anyio.sleep(0.6)
        for request_id in ids[:3]:
            with pytest.raises(af.ServingError) as gone:
                await client.get(request_id)
            assert gone.value.status_code == 404
        await _until(lambda: len(server.book) == 0)  # the sweeper forgot them all


async def test_api_keys_guard_every_route_but_healthz_and_never_show(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "sk-very-secret-0123456789"
    server = af.Server(api_keys=["other-key", key])
    server.add("double", Double())
    assert key not in repr(server)
    async with uvicorn_serving(server.asgi()) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/healthz")).status_code == 200
            for method, path in [
                ("GET", "/v1/endpoints"),
                ("GET", "/metrics"),
                ("POST", "/v1/endpoints/double/requests"),
                ("POST", "/v1/endpoints/double/predict"),
                ("POST", "/v1/endpoints/double/requests:batch"),
                ("GET", f"/v1/requests/{uuid.uuid4().hex}"),
                ("DELETE", f"/v1/requests/{uuid.uuid4().hex}"),
            ]:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
                    answer = await http.request(method, path, json={"x": 1}, headers=headers)
                    assert answer.status_code == 401, (method, path, headers)
                    assert "API key" in answer.json()["error"]
                    assert key not in answer.text
        async with af.Client(url, api_key=key) as client:
            assert await client.predict("double", {"x": 2}) == {"y": 4}
            assert key not in repr(client)
        async with af.Client(url, api_key="wrong") as client:
            with pytest.raises(af.ServingError) as refused:
                await client.endpoints()
            assert refused.value.status_code == 401
            assert key not in str(refused.value)
    assert all(key not in record.getMessage() for record in caplog.records)


def _raw_request(url: str, head: bytes, chunks: list[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` one by one until the server answers; what it answered and
    how many body bytes had been sent when it did."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(0.2)
        for chunk in chunks:
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                answer = b""
            if answer:
                return _rest_of(sock, answer), sent
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(10)
        return _rest_of(sock, sock.recv(65536)), sent


def _rest_of(sock: socket.socket, answer: bytes) -> bytes:
    """Read the rest of a response whose start is ``answer`` (headers, then content-length)."""
    sock.settimeout(10)
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


async def test_a_body_over_max_body_is_413_without_being_read() -> None:
    server = af.Server(max_body=4096)
    server.add("double", Double())
    async with uvicorn_serving(server.asgi()) as url:
        # Declared too big: refused from the header, before any of the 100 MB is sent.
        head = (
            b"POST /v1/endpoints/double/requests HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        answer, sent = await anyio.to_thread.run_sync(_raw_request, url, head, [b"x" * 1024] * 1000)
        assert answer.startswith(b"HTTP/1.1 413")
        assert b"max_body of 4096 bytes" in answer
        assert sent < 64 * 1024

        # Chunked, with no length: refused once 4096 bytes have arrived, not at the end.
        head = (
            b"POST /v1/endpoints/double/requests HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        answer, sent = await anyio.to_thread.run_sync(_raw_request, url, head, [chunk] * 1000)
        assert answer.startswith(b"HTTP/1.1 413")
        assert sent < 64 * 1024
        async with httpx.AsyncClient(base_url=url) as http:  # the server is still fine
            assert (
                await http.post("/v1/endpoints/double/predict", json={"x": 1})
            ).status_code == 200


async def test_bad_input_is_a_json_error_with_its_status() -> None:
    missing = uuid.uuid4().hex
    async with serving_double() as url, httpx.AsyncClient(base_url=url) as http:
        cases = [
            (http.post("/v1/endpoints/double/requests", content=b"{not json"), 400),
            (http.post("/v1/endpoints/double/requests", content=b""), 400),
            (http.post("/v1/endpoints/double/requests:batch", json={"x": 1}), 400),
            (http.post("/v1/endpoints/nope/requests", json={}), 404),
            (http.post("/v1/endpoints/nope/predict", json={}), 404),
            (http.get(f"/v1/requests/{missing}"), 404),
            (http.get(f"/v1/requests/{missing}", params={"wait": "soon"}), 400),
            (http.get(f"/v1/requests/{missing}", params={"wait": "-1"}), 400),
            (http.get("/no/such/route"), 404),
            (http.put("/v1/endpoints"), 405),
        ]
        for call, status in cases:
            answer = await call
            assert answer.status_code == status, (answer.request.url, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert isinstance(answer.json()["error"], str)


async def test_a_hook_exception_is_the_request_failure_and_never_a_crash() -> None:
    class Fragile(af.Endpoint):
        def preprocess(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            if body == "bad":
                raise ValueError("cannot read this body")
            return body

        async def process(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            if body == "slow":
                await anyio.sleep(30)
            if body == "object":
                return object()
            return body

    server = af.Server()
    server.add("fragile", Fragile(), timeout=0.2)
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        failed = await client.wait(await client.submit("fragile", "bad"), timeout=10)
        assert failed["state"] == "FAILURE"
        assert failed["error"] == "ValueError: cannot read this body"
        assert failed["result"] is None
        with pytest.raises(af.ServingError) as predicted:
            await client.predict("fragile", "bad")
        assert predicted.value.status_code == 500
        assert predicted.value.error == "ValueError: cannot read this body"
        assert (await client.get(predicted.value.payload["id"]))["state"] == "FAILURE"
        with pytest.raises(af.ServingError) as slow:
            await client.predict("fragile", "slow")
        assert slow.value.status_code == 504
        assert slow.value.error == "TimeoutError: the endpoint's timeout of 0.2 s passed"
        not_json = await client.wait(await client.submit("fragile", "object"), timeout=10)
        assert not_json["state"] == "FAILURE"
        assert "not JSON" in not_json["error"]
        assert await client.predict("fragile", "fine") == "fine"  # still serving
        states = [r.state.value for r in server.book._records.values()]
        assert "STARTED" not in states
        assert "PENDING" not in states


async def test_a_failing_load_fails_the_start_with_the_endpoint_name() -> None:
    loaded: list[str] = []

    class Good(af.Endpoint):
        def load(self) -> None:
            loaded.append("good")

    class Broken(af.Endpoint):
        async def load(self) -> None:
            raise FileNotFoundError("weights.bin")

    server = af.Server()
    server.add("good", Good())
    server.add("broken", Broken())
    with pytest.raises(af.EndpointLoadFailed, match="'broken' failed to load") as failed:
        async with server:
            pytest.fail("a server whose endpoint failed to load must not serve")
    assert failed.value.endpoint == "broken"
    assert isinstance(failed.value.__cause__, FileNotFoundError)
    assert loaded == ["good"]
    assert server.phase == "stopped"


async def test_an_app_whose_server_was_not_started_answers_503_saying_how_to_fix_it() -> None:
    server = af.Server()
    server.add("double", Double())
    async with (
        uvicorn_serving(server.asgi(), lifespan="off") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        for answer in (
            await http.post("/v1/endpoints/double/predict", json={"x": 1}),
            await http.get("/healthz"),
        ):
            assert answer.status_code == 503
            assert "async with server:" in answer.json()["error"]


async def test_a_flow_endpoint_merges_overrides_and_refuses_unknown_tasks_and_keys() -> None:
    flow = af.Flow("experiment")

    def data(size: int = 3, seed: int = 0) -> list[int]:
        return list(range(seed, seed + size))

    def total(data: list[int], scale: int = 1) -> int:
        return sum(data) * scale

    flow.add(data, {"size": 3, "seed": 0})
    flow.add(total, {"scale": 1}, requires=["data"])
    server = af.Server()
    server.add("experiment", flow)
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        default = await client.predict("experiment", {})
        assert default["ok"] is True
        assert default["results"] == {"data": [[0, 1, 2]], "total": [3]}
        assert set(default["states"].values()) == {"finished"}
        result = await client.predict("experiment", {"data": {"size": 4}, "total": {"scale": 10}})
        assert result["results"]["total"] == [60]
        for bad, word in [
            ({"nope": {}}, "unknown task 'nope'"),
            ({"data": {"colour": 1}}, "unknown config key(s) ['colour']"),
            ({"data": 3}, "must be an object"),
            ([1, 2], "takes {task_name"),
        ]:
            with pytest.raises(af.ServingError) as refused:
                await client.submit("experiment", bad)
            assert refused.value.status_code == 400
            assert word in refused.value.error
        assert server.runners["experiment"].queued == 0


async def test_the_endpoint_rate_limits_its_requests() -> None:
    server = af.Server()
    server.add("double", Double(), rate=af.RateLimiter("20/s", burst=1))
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        started = time.monotonic()
        ids = await client.submit_batch("double", [{"x": i} for i in range(6)])
        for request_id in ids:
            await client.wait(request_id, timeout=20)
        assert time.monotonic() - started >= 5 / 20 * 0.9  # a lower bound: never tight


async def test_wait_is_capped_and_client_wait_keeps_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routes, "MAX_WAIT", 0.2)
    gate = Gate()
    server = af.Server()
    server.add("gate", gate)
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        request_id = await client.submit("gate", 1)
        started = time.monotonic()
        record = await client.get(request_id, wait=1000)
        assert record["state"] in ("PENDING", "STARTED")
        assert time.monotonic() - started < 20
        with pytest.raises(TimeoutError, match="still"):
            await client.wait(request_id, timeout=0.3)

        async def release() -> None:
            await anyio.sleep(0.5)
            gate.gate.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            final = await client.wait(request_id, timeout=20)  # several capped polls
        assert final["state"] == "SUCCESS"


async def test_shutdown_refuses_new_requests_drains_running_ones_then_cancels() -> None:
    class Slow(af.Endpoint):
        async def process(self, seconds: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            await anyio.sleep(seconds)
            return seconds

    server = af.Server(drain_timeout=1.0)
    server.add("slow", Slow(), concurrency=4)
    transport = httpx.ASGITransport(app=server.asgi())
    async with af.Client("http://server", transport=transport) as client:
        stopped = anyio.Event()
        records: dict[str, Any] = {}

        async def serve() -> None:
            async with server:
                records["quick"] = await client.submit("slow", 0.3)
                records["long"] = await client.submit("slow", 30)
                await anyio.sleep(0.05)
            stopped.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await _until(lambda: server.phase == "stopping")
            with pytest.raises(af.ServingError) as refused:
                await client.submit("slow", 0)
            assert refused.value.status_code == 503
            assert "shutting down" in refused.value.error
            # What it holds can still be read, and waited for, while it drains.
            assert (await client.wait(records["quick"], timeout=10))["state"] == "SUCCESS"
            with anyio.fail_after(10):
                await stopped.wait()
    quick = server.book.local(records["quick"])
    long = server.book.local(records["long"])
    assert quick is not None
    assert long is not None
    assert quick.state is af.serving.requests.State.SUCCESS  # finished within drain_timeout
    assert long.state is af.serving.requests.State.CANCELLED  # cancelled past it


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    server = af.Server()
    with pytest.raises(ValueError, match="endpoint name"):
        server.add("has space", Double())
    with pytest.raises(TypeError, match="instance"):
        server.add("cls", Double)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Endpoint or an af\.Flow"):
        server.add("fn", print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Batch"):
        server.add("b", Double(), batch=(8, 0.1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        server.add("c", Double(), concurrency=0)
    with pytest.raises(ValueError, match="max_queued"):
        server.add("q", Double(), max_queued=0)
    with pytest.raises(ValueError, match="timeout"):
        server.add("t", Double(), timeout=-1)
    server.add("ok", Double())
    with pytest.raises(ValueError, match="already served"):
        server.add("ok", Double())
    with pytest.raises(TypeError, match="api_keys"):
        af.Server(api_keys="one-key")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="api_keys"):
        af.Server(api_keys=[""])
    with pytest.raises(ValueError, match="result_ttl"):
        af.Server(result_ttl=0)
    with pytest.raises(af.InvalidArgument, match="finite number"):
        af.Stats()({"tokens": "many"})


def test_records_are_json_and_ids_do_not_repeat() -> None:
    from aioflows.serving.requests import Record, new_id

    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in list(ids)[:100])
    record = Record(new_id(), "e", {"x": 1})
    assert json.loads(json.dumps(record.stored()))["body"] == {"x": 1}
    assert Record.from_stored(record.stored()).public() == record.public()


async def test_a_predict_lives_as_long_as_its_http_request(tmp_path: Any) -> None:
    """/predict answers with the result itself: nothing of a successful one is kept (memory
    would grow with the request rate for the whole TTL), nor written to the store; a failed one
    is kept, since its 500 gives the id to look it up."""

    class Picky(af.Endpoint):
        async def process(self, data: Any, state: dict[str, Any], stats: af.Stats) -> Any:
            if data == "bad":
                raise ValueError("bad")
            return data

    store = af.LocalFileStore(tmp_path)
    server = af.Server(store)
    server.add("picky", Picky())
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        for i in range(20):
            assert await client.predict("picky", i) == i
        assert len(server.book) == 0
        with pytest.raises(af.ServingError) as failed:
            await client.predict("picky", "bad")
        assert (await client.get(failed.value.payload["id"]))["state"] == "FAILURE"
        assert len(server.book) == 1
        request_id = await client.submit("picky", 1)  # a submitted one is written
        await client.wait(request_id, timeout=10)
    stored = await store.get_results(task="aioflows-serving", config_hash="requests")
    assert list(stored) == [request_id]
