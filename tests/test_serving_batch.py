"""Dynamic batching (``batch=af.Batch(size, timeout)``): grouping, sizes, the timeout flush,
per-request pre/postprocess, and how a batch fails."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from serving_support import uvicorn_serving

import aioflows as af


class Recording(af.Endpoint):
    """Each request's preprocess and postprocess see only their own state; process gets lists."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.seconds = seconds

    async def preprocess(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        state["body"] = body
        stats(requests=1)
        return body["i"]

    def process(self, items: Any, states: Any, stats: Any) -> Any:
        assert isinstance(items, list)
        assert len(items) == len(states) == len(stats)
        assert [s["body"]["i"] for s in states] == items
        self.batches.append(items)
        time.sleep(self.seconds)
        return [{"i": i, "batch": len(items)} for i in items]

    async def postprocess(self, result: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        assert result["i"] == state["body"]["i"]
        return result


async def test_concurrent_requests_are_grouped_within_the_size() -> None:
    endpoint = Recording(seconds=0.05)
    server = af.Server()
    server.add("batched", endpoint, batch=af.Batch(8, 0.05), concurrency=1)
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        ids = await client.submit_batch("batched", [{"i": i} for i in range(40)])
        records = [await client.wait(request_id, timeout=30) for request_id in ids]
        metrics = (await client._http.get("/metrics")).text
    assert [r["state"] for r in records] == ["SUCCESS"] * 40
    assert [r["result"]["i"] for r in records] == list(range(40))
    sizes = [len(batch) for batch in endpoint.batches]
    assert sum(sizes) == 40
    assert max(sizes) == 8  # while one batch runs the next fills up
    assert all(size <= 8 for size in sizes)
    assert sorted(i for batch in endpoint.batches for i in batch) == list(range(40))
    assert 'aioflows_endpoint_stat_sum{endpoint="batched",stat="requests"} 40.0' in metrics


async def test_the_timeout_flushes_a_partial_batch() -> None:
    endpoint = Recording()
    server = af.Server()
    server.add("batched", endpoint, batch=af.Batch(32, 0.2))
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        started = time.monotonic()
        ids = await client.submit_batch("batched", [{"i": i} for i in range(3)])
        records = [await client.wait(request_id, timeout=30) for request_id in ids]
        waited = time.monotonic() - started
    assert [r["result"]["batch"] for r in records] == [3, 3, 3]
    assert endpoint.batches == [[0, 1, 2]]
    assert waited >= 0.2 * 0.9  # held for the timeout: not sent one by one


async def test_predict_goes_through_the_batcher_too() -> None:
    endpoint = Recording()
    server = af.Server()
    server.add("batched", endpoint, batch=af.Batch(4, 0.05))
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        results: list[Any] = []

        async def one(i: int) -> None:
            results.append(await client.predict("batched", {"i": i}))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
    assert sorted(r["i"] for r in results) == list(range(8))
    assert max(len(batch) for batch in endpoint.batches) > 1


@pytest.mark.parametrize(
    ("process", "error"),
    [
        (lambda items, states, stats: 1 / 0, "ZeroDivisionError: division by zero"),
        (
            lambda items, states, stats: items[:-1],
            "ValueError: process of a batch of 3 must return a list of 3 results, got 2 results",
        ),
        (
            lambda items, states, stats: "not a list",
            "ValueError: process of a batch of 3 must return a list of 3 results, got 'not a list'",
        ),
    ],
)
async def test_a_failing_batch_fails_each_of_its_requests(process: Any, error: str) -> None:
    class Failing(af.Endpoint):
        def process(self, items: Any, states: Any, stats: Any) -> Any:
            return process(items, states, stats)

    server = af.Server()
    server.add("failing", Failing(), batch=af.Batch(3, 0.5))
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        ids = await client.submit_batch("failing", [1, 2, 3])
        records = [await client.wait(request_id, timeout=30) for request_id in ids]
        assert [r["state"] for r in records] == ["FAILURE"] * 3
        assert [r["error"] for r in records] == [error] * 3
        with pytest.raises(af.ServingError) as failed:
            await client.predict("failing", 4)
        assert failed.value.status_code == 500


async def test_a_request_cancelled_while_its_batch_forms_leaves_it() -> None:
    endpoint = Recording()
    server = af.Server()
    server.add("batched", endpoint, batch=af.Batch(8, 0.5))
    async with uvicorn_serving(server.asgi()) as url, af.Client(url) as client:
        ids = await client.submit_batch("batched", [{"i": i} for i in range(3)])
        with anyio.fail_after(10):  # all three wait in the forming batch
            while [(await client.get(i))["state"] for i in ids] != ["STARTED"] * 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert (await client.cancel(ids[1]))["state"] == "CANCELLED"
        records = [await client.wait(request_id, timeout=30) for request_id in ids]
    assert [r["state"] for r in records] == ["SUCCESS", "CANCELLED", "SUCCESS"]
    assert endpoint.batches == [[0, 2]]
