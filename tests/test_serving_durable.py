"""Durable requests: a server with a LocalFileStore killed with SIGKILL and started again.

Every accepted request ends SUCCESS and stays retrievable; what had finished keeps its result
until ``result_ttl``, across a restart too; what was running runs again (``attempts`` says so).
Without a persistent store, nothing survives.
"""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from serving_support import child_server

import aioflows as af
from aioflows.serving.requests import STORE_RUN, STORE_TASK

SCRIPT = textwrap.dedent(
    """
    import os

    import anyio

    import aioflows as af


    class Slow(af.Endpoint):
        async def process(self, body, state, stats):
            await anyio.sleep(0.01)
            return {"i": body["i"], "pid": os.getpid()}


    store = af.LocalFileStore(os.environ["REQUESTS"]) if os.environ.get("REQUESTS") else None
    server = af.Server(store, result_ttl=float(os.environ.get("TTL", "3600")))
    server.add("slow", Slow(), concurrency=4)
    """
)


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "durable_server.py"
    path.write_text(SCRIPT)
    return path


def _wait_all(http: httpx.Client, ids: list[str], seconds: float = 60) -> list[dict[str, object]]:
    deadline, records = time.monotonic() + seconds, []
    for request_id in ids:
        while True:
            answer = http.get(f"/v1/requests/{request_id}", params={"wait": 5})
            assert answer.status_code == 200, answer.text
            record = answer.json()
            if record["state"] in ("SUCCESS", "FAILURE", "CANCELLED"):
                records.append(record)
                break
            assert time.monotonic() < deadline, f"{request_id} still {record['state']}"
    return records


def test_kill_9_with_500_requests_in_flight_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS", str(tmp_path / "requests"))
    script = _script(tmp_path)
    with (
        child_server(script, "server", cwd=tmp_path) as (process, url),
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        ids: list[str] = []
        for chunk in range(5):
            bodies = [{"i": chunk * 100 + i} for i in range(100)]
            answer = http.post("/v1/endpoints/slow/requests:batch", json=bodies)
            assert answer.status_code == 202
            ids += answer.json()["ids"]
        # Let some finish, then kill it mid-stream.
        while http.get(f"/v1/requests/{ids[20]}").json()["state"] != "SUCCESS":
            time.sleep(0.01)
        finished_before = {
            i: r for i in ids if (r := http.get(f"/v1/requests/{i}").json())["state"] == "SUCCESS"
        }
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert 20 <= len(finished_before) < 500

    stored = _stored(tmp_path / "requests")
    assert set(stored) == set(ids)  # every accepted request was in the store before its 202
    interrupted = {i for i, r in stored.items() if r["state"] == "STARTED"}
    unfinished = {i for i, r in stored.items() if r["state"] in ("PENDING", "STARTED")}
    assert unfinished  # the kill did cut the work short

    with (
        child_server(script, "server", cwd=tmp_path) as (_, url),
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        records = _wait_all(http, ids)
    by_id = {r["id"]: r for r in records}
    assert [r["state"] for r in records] == ["SUCCESS"] * 500
    assert [r["result"]["i"] for r in records] == list(range(500))  # type: ignore[index]
    for request_id, before in finished_before.items():
        assert by_id[request_id] == before  # served as it was, not run again
    for request_id in interrupted:
        assert by_id[request_id]["attempts"] == 2  # started, killed, started again
    pids = {by_id[i]["result"]["pid"] for i in unfinished}  # type: ignore[index]
    assert pids.isdisjoint({r["result"]["pid"] for r in finished_before.values()})


class Echo(af.Endpoint):
    async def process(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        return body


async def _served(server: af.Server, bodies: list[Any]) -> list[dict[str, Any]]:
    """Submit ``bodies`` to ``server`` (started) and wait for each final record."""
    transport = httpx.ASGITransport(app=server.asgi())
    async with af.Client("http://server", transport=transport) as client:
        ids = await client.submit_batch("echo", bodies)
        return [await client.wait(request_id, timeout=30) for request_id in ids]


async def _get(server: af.Server, request_id: str) -> int:
    transport = httpx.ASGITransport(app=server.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as http:
        return (await http.get(f"/v1/requests/{request_id}")).status_code


async def test_finished_results_outlive_a_restart_until_their_ttl(tmp_path: Path) -> None:
    store = tmp_path / "requests"
    first = af.Server(af.LocalFileStore(store), result_ttl=1.0)
    first.add("echo", Echo())
    async with first:
        records = await _served(first, [1, 2])
    again = af.Server(af.LocalFileStore(store), result_ttl=1.0)
    again.add("echo", Echo())
    async with again:
        for record in records:
            kept = again.book.local(record["id"])
            assert kept is not None
            assert kept.public() == record
            assert await _get(again, record["id"]) == 200
        await anyio.sleep(max(0.0, max(r["finished_at"] for r in records) + 1.0 - time.time()))
        assert [await _get(again, r["id"]) for r in records] == [404, 404]
        with anyio.fail_after(20):
            while await anyio.to_thread.run_sync(_stored, store):  # noqa: ASYNC110
                await anyio.sleep(0.05)  # the sweeper deletes them from the store too
    late = af.Server(af.LocalFileStore(store), result_ttl=1.0)
    late.add("echo", Echo())
    async with late:
        assert len(late.book) == 0


async def test_without_a_persistent_store_nothing_survives_a_restart() -> None:
    memory = af.MemoryStore()
    first = af.Server(memory)
    first.add("echo", Echo())
    async with first:
        (record,) = await _served(first, [1])
    assert await memory.list_infos() == []
    again = af.Server(memory)
    again.add("echo", Echo())
    async with again:
        assert await _get(again, record["id"]) == 404


def _stored(directory: Path) -> dict[str, dict[str, object]]:
    """The request records in the store, read with a store of its own (as a restart would)."""

    async def read() -> dict[str, dict[str, object]]:
        try:
            return await af.LocalFileStore(directory).get_results(
                task=STORE_TASK, config_hash=STORE_RUN
            )
        except af.MissingObject:
            return {}

    return anyio.run(read)
