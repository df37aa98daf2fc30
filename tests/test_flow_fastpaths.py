"""Issue 15, target 1: the fast paths of ``Flow.run`` give what the general paths gave.

A flat grid of scalars is expanded by :func:`aioflows.flow.flatgrid.flat_grid` (the same
configs as ``expand_config``) and its instances are hashed when first read (the same digests
as hashing at expansion). The scheduler runs instances on the one pool's drain loop: instances
that never wait are served by one or two workers, instances that wait grow it as far as they
need (up to ``concurrency``), and a large reduce gathers its inputs with the collector paused.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import sys
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aioflows as af
from aioflows.flow.config import expand_config
from aioflows.flow.flatgrid import flat_grid
from aioflows.flow.identity import config_hash, strip_ignored

scalars = st.one_of(
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.text(alphabet="ab_@é", max_size=3),
)
flat_grids = st.dictionaries(
    st.text(alphabet="xyz_", min_size=1, max_size=3),
    st.one_of(scalars, st.lists(scalars, min_size=1, max_size=4)),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(flat_grids)
def test_flat_grid_expands_as_expand_config(config: dict[str, Any]) -> None:
    fast = flat_grid(config, "product", "@", "_")
    try:
        slow = expand_config(config, "product", "@")
    except af.FlowError:  # a list of a lone group marker, say
        assert fast is None
        return
    if fast is not None:
        assert fast == slow
        assert [list(c) for c in fast] == [list(c) for c in slow]  # key order too
        assert [[type(v) for v in c.values()] for c in fast] == [
            [type(v) for v in c.values()] for c in slow
        ]
        assert len({id(c) for c in fast}) == len(fast)  # dicts of their own


@pytest.mark.parametrize(
    "config",
    [
        {"i": [1, 2, "@g"], "j": [3, 4, "@g"]},  # a zip group
        {"a": {"b": [1, 2]}},  # a nested dict
        {"a": [[1, 2]]},  # a literal list value
        {"a": [1, 1]},  # a repeated alternative
        {"a": [1.0, float("nan")]},  # not JSON
        {"_a": [1, 2]},  # instances differing only in an ignored key
        {"a": []},
        {1: 2},
    ],
)
def test_flat_grid_leaves_the_rest_to_the_general_path(config: Any) -> None:
    assert flat_grid(config, "product", "@", "_") is None
    assert flat_grid({"a": [1, 2]}, "zip", "@", "_") is None


async def noop(**kwargs: Any) -> None:
    return None


def mixed_flow() -> af.Flow:
    """Lazily hashed tasks (flat grids) and hashed ones (nested configs) in both orders."""
    flow = af.Flow("mixed")
    a = flow.add(noop, {"i": [1, 2, 3], "_verbose": True, "s": "x"}, name="a")
    b = flow.add(noop, {"opts": {"depth": [1, 2]}}, name="b", requires=[a])
    c = flow.add(noop, {"lr": [0.1, 0.01], "n": [1, 2]}, name="c", requires=[b])
    flow.add(noop, name="d", requires=[c], reduce=True)
    return flow


def eager(node: af.TaskNode, prefix: str | None) -> str:
    preds = [(p.task, eager(p, prefix)) for p in node.predecessors]
    return config_hash(node.task, strip_ignored(node.config, prefix), preds)


def test_lazy_hashes_are_what_hashing_at_expansion_gives() -> None:
    graph = mixed_flow().graph()
    assert len(graph) == 3 + 3 * 2 + 3 * 2 * 4 + 1
    for node in reversed(graph.nodes):  # the sink first: its ancestors are hashed on the way
        assert node.config_hash == eager(node, "_")
    assert len({n.config_hash for n in graph.nodes}) == len(graph)


def test_a_long_lazily_hashed_chain_is_hashed_without_recursion() -> None:
    flow = af.Flow("chain")
    prev = flow.add(noop, {"k": [0]}, name="t0")
    for i in range(1, 3_000):
        prev = flow.add(noop, {"k": i}, name=f"t{i}", requires=[prev])
    graph = flow.graph()
    last = graph.nodes[-1]
    digest = last.config_hash
    expected = ""
    for node in graph.nodes:
        preds = [(p.task, p.config_hash) for p in node.predecessors]
        expected = config_hash(node.task, node.config, preds)
        assert node.config_hash == expected
    assert digest == expected


def test_a_lazily_hashed_node_pickles_before_and_after_its_hash_is_read() -> None:
    graph = mixed_flow().graph()
    first, last = graph.by_task("c")[0], graph.nodes[-1]
    copy = pickle.loads(pickle.dumps(first))  # not hashed yet
    assert first._hash is None
    assert copy._hash is None
    assert copy.config_hash == first.config_hash == eager(first, "_")
    digest = last.config_hash
    assert pickle.loads(pickle.dumps(last)).config_hash == digest


@pytest.mark.parametrize("config", [{"i": [1, 2, 1]}, {"i": [1, 2], "_v": [True, False]}])
def test_a_repeated_instance_is_still_refused(config: dict[str, Any]) -> None:
    flow = af.Flow("dup")
    flow.add(noop, config, name="t")
    with pytest.raises(af.FlowError, match="same instance twice"):
        flow.graph()


async def test_a_run_without_a_store_hashes_nothing() -> None:
    flow = af.Flow("fanout")
    src = flow.add(noop, name="source")
    work = flow.add(noop, {"i": list(range(50))}, name="work", requires=[src])
    flow.add(noop, name="sink", requires=[work], reduce=True)
    run = await flow.run()
    assert run.ok
    assert all(node._hash is None for node in run.graph.nodes)
    # Read afterwards, they are the digests hashing at expansion would have given.
    assert [r.config_hash for r in run.results["work"]] == [
        eager(n, "_") for n in run.graph.by_task("work")
    ]


async def test_instances_that_never_wait_are_served_by_few_workers() -> None:
    tasks: set[int] = set()

    async def quick(i: int) -> int:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(id(task))
        return i

    flow = af.Flow("quick")
    flow.add(quick, {"i": list(range(3_000))})
    run = await flow.run()
    assert run.values("quick") == list(range(3_000))
    assert 1 <= len(tasks) <= 3


@pytest.mark.parametrize("concurrency", [None, 40])
async def test_instances_that_wait_get_as_many_workers_as_they_need(
    concurrency: int | None,
) -> None:
    """Every instance waits until all that may run at once are running: the run ends only if
    the workers grow that far, and never beyond."""
    n, width = 300, concurrency or 300
    running = 0
    most = 0
    enough = anyio.Event()

    async def meet(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running >= width:
            enough.set()
        await enough.wait()
        await anyio.lowlevel.checkpoint()
        running -= 1
        return i

    flow = af.Flow("meet")
    flow.add(meet, {"i": list(range(n))})
    with anyio.fail_after(60):
        run = await flow.run(concurrency=concurrency)
    assert run.values("meet") == list(range(n))
    assert most == width


async def test_a_worker_back_from_its_checkpoint_adds_a_worker_if_instances_wait() -> None:
    """129 instances that never wait, then 3 that wait for one another. The first worker
    passes its checkpoint on its 65th instance; the second, added meanwhile, takes the next 65
    and holds the first ``meet`` through its own checkpoint; the first then takes the second
    ``meet`` without adding a worker (one is at its checkpoint, about to run). The third
    ``meet`` runs only if the worker back from its checkpoint, seeing it queued, adds one."""
    met = 0
    everyone = anyio.Event()

    async def fast(i: int) -> int:
        return i

    async def meet(j: int) -> int:
        nonlocal met
        met += 1
        if met == 3:
            everyone.set()
        await everyone.wait()
        return j

    flow = af.Flow("checkpoint")
    flow.add(fast, {"i": list(range(129))})
    flow.add(meet, {"j": [0, 1, 2]})
    assert [n.task for n in flow.graph().nodes][128:] == ["fast", "meet", "meet", "meet"]
    with anyio.fail_after(20):
        run = await flow.run()
    assert run.values("meet") == [0, 1, 2]


async def test_a_large_reduce_gathers_its_inputs_without_a_collection() -> None:
    in_gather: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        frame: Any = sys._getframe(1)
        while phase == "start" and frame is not None:
            if frame.f_code.co_name == "_gather":
                in_gather.append(info["generation"])
                return
            frame = frame.f_back

    async def ident(i: int) -> int:
        return i

    async def total(part: list[af.Sweep[int]]) -> int:
        return sum(s.value for s in part)

    flow = af.Flow("reduce")
    flow.add(noop, name="source")
    part = flow.add(ident, {"i": list(range(5_000))}, name="part")
    flow.add(total, name="total", requires=[part], reduce=True)
    gc.callbacks.append(watch)
    try:
        run = await flow.run()
    finally:
        gc.callbacks.remove(watch)
    assert run.values("total") == [sum(range(5_000))]
    # 5,000 sweeps would set off 7 young collections; paused, there is at most the one that
    # was due, when the collector is enabled again on the way out.
    assert len(in_gather) <= 1
