"""Two server replicas sharing one RedisStore: either answers for a request the other accepted."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
import redis_server as rs
from serving_support import uvicorn_serving

import aioflows as af


class Slow(af.Endpoint):
    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = anyio.Event()

    async def process(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        await self.gate.wait()
        return {"body": body, "by": self.name}


async def test_two_replicas_on_one_redis_store_answer_for_each_other(
    redis_server: rs.RedisServer,
) -> None:
    prefix = f"serving-{uuid.uuid4().hex}"
    first_endpoint, second_endpoint = Slow("first"), Slow("second")
    first_store = af.RedisStore(redis_server.url, prefix=prefix)
    second_store = af.RedisStore(redis_server.url, prefix=prefix)
    first = af.Server(first_store)
    first.add("slow", first_endpoint)
    second = af.Server(second_store)
    second.add("slow", second_endpoint)
    async with (
        first_store,  # a store is its owner's to close, not the server's
        second_store,
        uvicorn_serving(first.asgi()) as first_url,
        uvicorn_serving(second.asgi()) as second_url,
        af.Client(first_url) as one,
        af.Client(second_url) as two,
    ):
        request_id = await one.submit("slow", 1)
        seen = await two.get(request_id)  # the record was in Redis before the 202
        assert seen["state"] in ("PENDING", "STARTED")
        assert seen["endpoint"] == "slow"
        with pytest.raises(af.ServingError) as refused:
            await two.cancel(request_id)
        assert refused.value.status_code == 409  # only the server running it can cancel it
        assert "another server" in refused.value.error
        async with anyio.create_task_group() as tg:
            tg.start_soon(_open_later, first_endpoint.gate)
            final = await two.wait(request_id, timeout=20)  # polls the store: no shared event
        assert final["state"] == "SUCCESS"
        assert final["result"] == {"body": 1, "by": "first"}
        assert await one.get(request_id) == final
        second_endpoint.gate.set()
        other = await two.submit("slow", 2)
        assert (await one.wait(other, timeout=20))["result"] == {"body": 2, "by": "second"}
        unknown = uuid.uuid4().hex
        for client in (one, two):
            with pytest.raises(af.ServingError) as missing:
                await client.get(unknown)
            assert missing.value.status_code == 404  # on every replica


async def _open_later(gate: anyio.Event) -> None:
    await anyio.sleep(0.3)
    gate.set()
