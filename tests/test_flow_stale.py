"""Stale caches run again (make's rule): a cached instance whose predecessors were computed again
since it consumed them is not loaded but run, in every store; the records saying so
(``TaskInfo.run_id``, ``TaskInfo.inputs``) round-trip through every store, and records without
them (older versions) still load and are taken as current."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis_server as rs

import aioflows as af
from aioflows.flow.runlog import stale_keys

STORES = ["memory", "local", "redis"]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[af.ResultStore]:
    if request.param == "memory":
        yield af.MemoryStore()
    elif request.param == "local":
        yield af.LocalFileStore(tmp_path / "store")
    else:
        server: rs.RedisServer = request.getfixturevalue("redis_server")
        async with af.RedisStore(server.url, prefix=f"stale-{uuid.uuid4().hex}") as redis_store:
            yield redis_store


def make_flow(calls: list[str], fail: set[str] | None = None) -> af.Flow:
    """load -> train (2 configs) -> best (reduce); ``fail`` names instances that raise."""
    fail = fail or set()

    async def load(n: int) -> int:
        calls.append("load")
        return n

    async def train(load: int, lr: int, ctx: af.TaskContext) -> int:
        calls.append(ctx.unique_name)
        if ctx.unique_name in fail:
            raise ValueError("train failed")
        return load * lr

    async def best(train: list[af.Sweep[int]]) -> int:
        calls.append("best")
        return max(s.value for s in train)

    flow = af.Flow("stale")
    lo = flow.add(load, {"n": 3})
    tr = flow.add(train, {"lr": [1, 2]}, requires=[lo])
    flow.add(best, requires=[tr], reduce=True)
    return flow


async def test_records_say_which_run_wrote_them_and_what_they_consumed(
    store: af.ResultStore,
) -> None:
    run = await make_flow([]).run(store=store)
    assert run.run_id
    infos = {i.unique_name: i for i in await store.list_infos()}
    assert {i.run_id for i in infos.values()} == {run.run_id}
    assert infos["load-1"].inputs == {}
    assert infos["train-1"].inputs == {"load": {infos["load-1"].config_hash: run.run_id}}
    assert infos["best-1"].inputs == {
        "train": {infos[n].config_hash: run.run_id for n in ("train-1", "train-2")}
    }
    # The same record read back by another call equals the one written (every store).
    again = await store.load_info(task="best", config_hash=infos["best-1"].config_hash)
    assert again == infos["best-1"]


async def test_force_without_plus_runs_the_stale_descendants_again(store: af.ResultStore) -> None:
    calls: list[str] = []
    first = await make_flow(calls).run(store=store)
    calls.clear()
    cached = await make_flow(calls).run(store=store)
    assert calls == []
    assert set(cached.states.values()) == {af.TaskState.CACHED}
    forced = await make_flow(calls).run(store=store, force="train")
    # best was cached from the old train values: stale, so it ran; load was not.
    assert sorted(calls) == ["best", "train-1", "train-2"]
    assert forced.states["best-1"] is af.TaskState.FINISHED
    assert forced.states["load-1"] is af.TaskState.CACHED
    best = (await store.list_infos("best"))[0]
    assert best.run_id == forced.run_id != first.run_id
    calls.clear()
    await make_flow(calls).run(store=store)
    assert calls == []  # everything current again


async def test_an_instance_that_failed_and_ran_again_makes_its_consumers_stale(
    store: af.ResultStore,
) -> None:
    calls: list[str] = []
    await make_flow(calls).run(store=store)
    # train-2 runs again (forced) and fails: its record is FAILED; best is not run.
    with pytest.raises(af.FlowFailed):
        await make_flow(calls, fail={"train-2"}).run(store=store, force="train", fail_fast=False)
    calls.clear()
    run = await make_flow(calls).run(store=store)
    # train-1 finished in the failed run (current), train-2 runs again, and best, computed
    # from the first run's train values, is stale.
    assert sorted(calls) == ["best", "train-2"]
    assert run.states["train-1"] is af.TaskState.CACHED


async def test_stale_keys_judges_records_alone(store: af.ResultStore) -> None:
    await make_flow([]).run(store=store)
    assert stale_keys(await store.list_infos()) == set()
    await make_flow([]).run(store=store, force="load", targets=["train"])
    infos = await store.list_infos()
    best = next(i for i in infos if i.task == "best")
    # load and train ran again; best (not a target) still holds the old train values.
    assert stale_keys(infos) == {("best", best.config_hash)}


async def test_records_of_older_versions_load_and_count_as_current(tmp_path: Path) -> None:
    store = af.LocalFileStore(tmp_path / "store")
    calls: list[str] = []
    await make_flow(calls).run(store=store)
    # Strip the new fields from every record, as an older aioflows wrote them.
    for path in (tmp_path / "store").glob("*/*/_taskinfo.json"):
        info = af.TaskInfo.from_json(path.read_bytes())
        old = info.model_dump(mode="json", exclude={"run_id", "inputs"})
        path.write_text(af.TaskInfo.model_validate(old).to_json(), encoding="utf-8")
        assert '"inputs": null' in path.read_text(encoding="utf-8")
    legacy = {"task": "t", "config_hash": "c", "unique_name": "t-1", "state": "finished"}
    assert af.TaskInfo.model_validate(legacy).inputs is None
    calls.clear()
    run = await make_flow(calls).run(store=store)
    assert calls == []
    assert set(run.states.values()) == {af.TaskState.CACHED}
    assert stale_keys(await store.list_infos()) == set()


def _chain(length: int, calls: list[str]) -> af.Flow:
    async def step(**inputs: Any) -> int:
        calls.append("step")
        return len(inputs)

    flow = af.Flow("chain")
    previous: af.TaskSpec | None = None
    for i in range(length):
        previous = flow.add(step, name=f"s{i}", requires=[previous] if previous else [])
    return flow


async def test_staleness_flows_down_a_chain(tmp_path: Path) -> None:
    store = af.LocalFileStore(tmp_path / "store")
    calls: list[str] = []
    make: Callable[[], af.Flow] = lambda: _chain(5, calls)  # noqa: E731
    await make().run(store=store)
    await make().run(store=store, force="s1", targets=["s1"])
    infos = await store.list_infos()
    assert {k[0] for k in stale_keys(infos)} == {"s2", "s3", "s4"}
    calls.clear()
    await make().run(store=store)
    assert len(calls) == 3  # s2, s3, s4 ran again; s0 and s1 were current
