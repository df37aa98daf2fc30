"""RedisStore beyond the common store contract (tests/test_stores.py runs that on it too): its
layout in Redis, one command per object operation and no KEYS, writers in several processes,
a lost server, and which client it closes."""

from __future__ import annotations

import asyncio
import gc
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis_server as rs

import aioflows as af
from aioflows.errors import CorruptObject

KEY = {"task": "train", "config_hash": "c0ffee"}


@pytest.fixture
async def store(redis_server: rs.RedisServer) -> AsyncIterator[af.RedisStore]:
    async with af.RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}") as store:
        yield store


async def keys(store: af.RedisStore) -> dict[bytes, bytes]:
    """Every key under the store's prefix and its Redis type."""
    found = {}
    async for key in store.redis.scan_iter(match=f"{store.prefix}:*"):
        found[key] = await store.redis.type(key)
    return found


async def test_one_hash_per_run_and_index_sets_that_delete_run_cleans_up(
    store: af.RedisStore,
) -> None:
    p = store.prefix.encode()
    await store.save({"acc": 1}, "metrics", **KEY)
    await store.save(b"\x00w", "weights", **KEY, type_="bytes")
    run = p + b":run:train/c0ffee"
    assert await keys(store) == {run: b"hash"}  # objects alone are not indexed
    assert await store.redis.hget(run, "metrics") == b'json\x00{"acc": 1}'
    assert await store.redis.hget(run, "weights") == b"bin\x00\x00w"
    await store.save_info(af.TaskInfo("train", "c0ffee", "train-0", "finished"))
    await store.save_info(af.TaskInfo("train", "other", "train-1", "finished"))
    assert await keys(store) == {
        run: b"hash",
        p + b":run:train/other": b"hash",
        p + b":infos:train": b"set",
        p + b":tasks": b"set",
    }
    await store.delete_run(**KEY)
    assert set(await keys(store)) == {p + b":run:train/other", p + b":infos:train", p + b":tasks"}
    await store.delete_run(task="train", config_hash="other")
    assert await keys(store) == {}  # nothing left behind, index included


async def test_deleting_the_last_object_leaves_no_key(store: af.RedisStore) -> None:
    await store.save(1, "m", **KEY)
    await store.delete("m", **KEY)
    assert await keys(store) == {}


async def test_each_object_operation_is_one_command_and_nothing_uses_keys_or_scan(
    store: af.RedisStore,
) -> None:
    await store.redis.ping()  # connected before the counts start
    await store.redis.config_resetstat()
    n = 20
    for i in range(n):
        key = {"task": "requests", "config_hash": f"r{i}"}
        await store.save({"id": i, "status": "queued"}, "record", **key)
        assert await store.exists("record", **key)
        assert await store.load("record", **key) == {"id": i, "status": "queued"}
        await store.delete("record", **key)
    stats = await store.redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): entry["calls"] for name, entry in stats.items()}
    assert {k: v for k, v in calls.items() if k not in {"config|resetstat", "info"}} == {
        "hset": n,
        "hexists": n,
        "hget": n,
        "hdel": n,
    }
    # The rest of the API, records included, still without KEYS or SCAN.
    await store.save(1, "m", **KEY)
    await store.load("m", **KEY, lazy=True)
    await store.get_results(**KEY)
    await store.save_info(af.TaskInfo("train", "c0ffee", "train-0", "finished"))
    assert await store.load_info(**KEY) is not None
    assert len(await store.list_infos()) == len(await store.list_infos("train")) == 1
    await store.delete_run(**KEY)
    stats = await store.redis.info("commandstats")
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats)
    assert "cmdstat_evalsha" in stats  # delete_run is one script


async def test_a_stopped_flows_records_are_one_transaction(store: af.RedisStore) -> None:
    from aioflows.stores.records import RawInfos

    n = 200
    batch = RawInfos(
        "train",
        [f"h{i}" for i in range(n)],
        [f"train-{i}" for i in range(n)],
        [af.TaskState.KILLED] * n,
        [{"i": i} for i in range(n)],
        [None] * n,
        [1_700_000_000_000_000] * n,
        [None] * n,
        [1] * n,
        [None] * n,
    )
    await store.redis.ping()
    await store.redis.config_resetstat()
    await store._save_advice(batch)
    stats = await store.redis.info("commandstats")
    assert stats["cmdstat_multi"]["calls"] == stats["cmdstat_exec"]["calls"] == 1
    assert stats["cmdstat_hset"]["calls"] == n
    infos = await store.list_infos("train")
    assert len(infos) == n
    assert {(i.state, i.attempts) for i in infos} == {(af.TaskState.KILLED, 1)}
    five = await store.load_info(task="train", config_hash="h5")
    assert five is not None
    assert five.config == five.unique_config == {"i": 5}
    assert five.started == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)


async def test_a_registered_type_is_stored_by_its_extension(store: af.RedisStore) -> None:
    store.register_type("csv", save=lambda rows: "\n".join(map(",".join, rows)), load=str)
    await store.save([["a", "b"]], "table", **KEY, type_="csv")
    run = f"{store.prefix}:run:train/c0ffee"
    assert await store.redis.hget(run, "table") == b"csv\x00a,b"
    # Another store on the same prefix that has not registered the type says so.
    other = af.RedisStore(store.redis, prefix=store.prefix)
    with pytest.raises(CorruptObject, match=r"extension 'csv'.*not registered"):
        await other.load("table", **KEY)


async def test_values_it_did_not_write_are_corrupt_objects_naming_the_key(
    store: af.RedisStore,
) -> None:
    run = f"{store.prefix}:run:train/c0ffee"
    await store.redis.hset(run, "plain", b"no type here")
    await store.redis.hset(run, "bad", b"json\x00{not json")
    with pytest.raises(CorruptObject, match=r"'plain'.*no type"):
        await store.load("plain", **KEY)
    with pytest.raises(CorruptObject, match=rf"{run}.*'bad'.*not a valid 'json'"):
        await store.load("bad", **KEY)
    await store.redis.hset(run, "_taskinfo", b'{"task": "train"}')
    with pytest.raises(CorruptObject, match="not a TaskInfo record"):
        await store.load_info(**KEY)


async def test_any_usable_str_is_a_key_and_reads_back_the_same(store: af.RedisStore) -> None:
    task, config_hash, name = "tâche:é \udc80", "hh:*?[ {x}", "n \ud800 ✓"
    await store.save(1, name, task=task, config_hash=config_hash)
    await store.save_info(af.TaskInfo(task, config_hash, "u", "finished"))
    assert await store.get_results(task=task, config_hash=config_hash) == {name: 1}
    assert [(i.task, i.config_hash) for i in await store.list_infos()] == [(task, config_hash)]
    assert [i.config_hash for i in await store.list_infos(task)] == [config_hash]


async def test_prefixes_keep_stores_apart(store: af.RedisStore) -> None:
    other = af.RedisStore(store.redis, prefix=store.prefix + "-other")
    same = af.RedisStore(store.redis, prefix=store.prefix)
    await store.save(1, "m", **KEY)
    await store.save_info(af.TaskInfo("train", "c0ffee", "u", "finished"))
    assert not await other.exists("m", **KEY)
    assert await other.list_infos() == []
    assert await same.load("m", **KEY) == 1
    assert len(await same.list_infos()) == 1


async def test_a_client_passed_in_is_not_closed_one_made_from_a_url_is(
    redis_server: rs.RedisServer,
) -> None:
    tag = uuid.uuid4().hex
    watcher = redis.asyncio.Redis.from_url(redis_server.url)

    async def connected(name: str) -> bool:
        clients = await watcher.client_list()
        return any(c.get("name") == name for c in clients)

    async def gone(name: str) -> bool:
        for _ in range(500):  # the server notices a closed socket soon, if not at once
            if not await connected(name):
                return True
            await anyio.sleep(0.02)
        return False

    theirs = redis.asyncio.Redis.from_url(redis_server.url, client_name=f"theirs-{tag}")
    try:
        async with af.RedisStore(theirs, prefix=f"test-{tag}") as store:
            await store.save(1, "m", **KEY)
        assert await theirs.hget(f"test-{tag}:run:train/c0ffee", "m") == b"json\x001"
        assert await connected(f"theirs-{tag}")

        url = f"{redis_server.url}?client_name=ours-{tag}"
        async with af.RedisStore(url, prefix=f"test-{tag}") as store:
            assert await store.load("m", **KEY) == 1
            assert await connected(f"ours-{tag}")
        assert await gone(f"ours-{tag}")
        assert await connected(f"theirs-{tag}")
        await theirs.delete(f"test-{tag}:run:train/c0ffee")
    finally:
        await theirs.aclose()
        await watcher.aclose()


async def test_a_lost_server_is_redis_unavailable_and_a_restarted_one_is_used_again(
    tmp_path: Path,
) -> None:
    server = rs.start(tmp_path / "redis")
    try:
        async with af.RedisStore(server.url) as store:
            await store.save({"v": 1}, "m", **KEY)
            rs.stop(server)
            for call in (store.load("m", **KEY), store.save(2, "m", **KEY), store.list_infos()):
                with pytest.raises(af.RedisUnavailable, match=f"127.0.0.1:{server.port}/0"):
                    await call
            server = rs.start(tmp_path / "redis", server.port)
            # No persistence: the object went with the server, but the store works again.
            assert not await store.exists("m", **KEY)
            await store.save(3, "m", **KEY)
            assert await store.load("m", **KEY) == 3
    finally:
        rs.stop(server)


def test_the_password_of_a_url_stays_out_of_the_repr_and_bad_arguments_are_refused() -> None:
    store = af.RedisStore("redis://user:s3cret@127.0.0.1:1/0", prefix="p")
    assert "s3cret" not in repr(store)
    assert repr(store) == "RedisStore('redis://user:***@127.0.0.1:1/0', prefix='p')"
    with pytest.raises(TypeError, match=r"redis URL or a redis\.asyncio\.Redis"):
        af.RedisStore(6379)
    with pytest.raises(ValueError, match="prefix"):
        af.RedisStore("redis://127.0.0.1:1/0", prefix="")
    decoding = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        af.RedisStore(decoding)


# The first loop's connection is left open on purpose, as a script that never closes the store
# leaves it: it can only be collected, which warns.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_store_from_a_url_is_used_in_one_event_loop_after_another(
    redis_server: rs.RedisServer,
) -> None:
    store = af.RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")

    async def save(store: af.RedisStore) -> None:
        await store.save(1, "m", **KEY)  # not closed: its connection stays with this loop

    async def load_and_close(store: af.RedisStore) -> Any:
        async with store:
            value = await store.load("m", **KEY)
            await store.delete_run(**KEY)
            return value

    asyncio.run(save(store))
    assert asyncio.run(load_and_close(store)) == 1  # a new client for the new loop
    with pytest.raises(af.MissingObject):  # and again, after it was closed
        asyncio.run(load_and_close(store))
    del store
    gc.collect()  # the first loop's connection is collected here, not in another test


def test_open_is_for_file_stores_only() -> None:
    with pytest.raises(NotImplementedError, match="LocalFileStore"):
        af.RedisStore("redis://127.0.0.1:1/0").open("m", "r", **KEY)


# Each writer process saves its own payload again and again, and records each write in a list,
# so the test can see that the two really overlapped.
WRITER = textwrap.dedent(
    """
    import sys, anyio, aioflows as af

    async def main(url, prefix, writer):
        async with af.RedisStore(url, prefix=prefix) as store:
            await store.redis.incr(prefix + ":ready")
            while int(await store.redis.get(prefix + ":ready")) < 2:  # start together
                await anyio.sleep(0.001)
            payload = {"writer": writer, "data": [writer] * 20000}
            for _ in range(150):
                await store.save(payload, "shared", task="train", config_hash="c0ffee")
                await store.redis.rpush(prefix + ":log", writer)

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def test_two_processes_writing_one_name_end_with_one_whole_value(
    store: af.RedisStore, redis_server: rs.RedisServer
) -> None:
    payloads = [{"writer": w, "data": [w] * 20000} for w in (0, 1)]
    args = [sys.executable, "-c", WRITER, redis_server.url, store.prefix]
    seen = 0
    writers = [await anyio.open_process([*args, str(w)]) for w in (0, 1)]
    try:
        while any(p.returncode is None for p in writers):
            if await store.exists("shared", **KEY):
                assert await store.load("shared", **KEY) in payloads  # never a torn value
                seen += 1
            await anyio.sleep(0.005)
    finally:
        with anyio.fail_after(60):
            for p in writers:
                await p.wait()
    assert [p.returncode for p in writers] == [0, 0]
    assert await store.load("shared", **KEY) in payloads
    log = [int(w) for w in await store.redis.lrange(f"{store.prefix}:log", 0, -1)]
    assert sorted(log) == [0] * 150 + [1] * 150
    # They overlapped: some write of each came between two writes of the other.
    first, last = {w: log.index(w) for w in (0, 1)}, {w: 299 - log[::-1].index(w) for w in (0, 1)}
    assert first[0] < last[1]
    assert first[1] < last[0]
    assert seen > 0


async def test_a_flow_runs_and_caches_on_a_redis_store(store: af.RedisStore) -> None:
    calls: list[str] = []

    async def square(x: int) -> dict[str, Any]:
        calls.append(f"square{x}")
        return {"x": x, "sq": x * x}

    def total(square: list[af.Sweep[dict[str, Any]]]) -> set[int]:  # a set: pickled
        calls.append("total")
        return {s.value["sq"] for s in square}

    flow = af.Flow("redis")
    a = flow.add(square, {"x": [1, 2, 3]})
    flow.add(total, requires=[a], reduce=True)
    first = await flow.run(store=store)
    assert sorted(calls) == ["square1", "square2", "square3", "total"]
    infos = await store.list_infos()
    assert [(i.task, i.state) for i in infos] == [("square", af.TaskState.FINISHED)] * 3 + [
        ("total", af.TaskState.FINISHED)
    ]
    node = flow.graph().by_task("square")[1]
    assert await store.load("result", task="square", config_hash=node.config_hash) == {
        "x": 2,
        "sq": 4,
    }
    calls.clear()
    again = await flow.run(store=store)
    assert calls == []  # everything came from Redis
    assert set(again.states.values()) == {af.TaskState.CACHED}
    assert again.values("total") == first.values("total") == [{1, 4, 9}]
    # A record torn by someone else is a CorruptObject, which the flow answers by re-running.
    await store.redis.hset(f"{store.prefix}:run:square/{node.config_hash}", "_taskinfo", "{torn")
    third = await flow.run(store=store)
    assert calls == ["square2"]
    assert third.values("total") == [{1, 4, 9}]
