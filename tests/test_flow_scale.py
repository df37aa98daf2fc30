"""What the million-node work (issue 15) must keep: the same identities, and a run that reuses
the graph ``flow.graph()`` built while the flow is unchanged (and only then)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pickle
from typing import Any

from pydantic import BaseModel

import aioflows as af
from aioflows.flow.identity import config_hash


class M(BaseModel):  # its repr (class name included) is in GOLDEN_UNIQUE
    a: int = 1
    b: tuple[int, ...] = (2, 3)


def load(n: int, _verbose: bool = False) -> int:
    return n


def prep(load: int, scale: float, opts: Any = None) -> float:
    return load * scale


def train(prep: float, lr: float, model: Any = None) -> float:
    return prep * lr


def best(train: list[af.Sweep[float]]) -> float:
    return max(s.value for s in train)


def golden_flow() -> af.Flow:
    flow = af.Flow("golden")
    a = flow.add(load, {"n": [4, 5], "_verbose": [True]})
    p = flow.add(
        prep,
        {"scale": [1, 2.5], "opts": {"k": ["x", "é"], "t": (1, [2, {"z": None}])}},
        requires=[a],
    )
    t = flow.add(train, {"lr": [0.1, 1e-3], "model": [M(), {"_skip": 1, "d": 2}]}, requires=[p])
    flow.add(best, requires=[t], reduce=True)
    return flow


# Computed by aioflows before issue 15's changes: stored results are keyed by these.
GOLDEN = [
    "57cdcdf2548f1d8d",
    "44dae7b30c7e1fef",
    "e6b21422f4532e1a",
    "984f1f98422c1070",
    "9840fee71f60e112",
    "c2d65c7f53b3352a",
    "31ec820b808d2eb3",
    "67d27ff6ecb188f8",
    "d0ecdc7872f0c1c5",
    "f92ada7bd004ea1d",
    "7d7c92841e54afd5",
    "5a288f3accf918b2",
    "89c0ccf229b81876",
    "5de76cbb787b536a",
    "608c7bf490043d6b",
    "78f27d4f4002e154",
    "a52a075eafa35078",
    "74dcf67de15df744",
    "c967b47cc57d7d88",
    "ca439f7b3a47992a",
    "fc88c22d9edf759e",
    "7b1adea91611ae04",
    "57760e3effa8386e",
    "aed47b8289456529",
    "1c98b8df3a601af9",
    "0ba7592398c6186d",
    "cdb78719d7de335e",
    "82e0d6ed7eff7783",
    "564eb07971017304",
    "a8146760c225c4be",
    "f3595fd60e533f4b",
    "00fb566b44349e56",
    "25bbaf63a1d92162",
    "61ff7e69d1525e99",
    "6e78ccff0857a9f0",
    "5ee256cb90251429",
    "5342987a7c2810eb",
    "b0d8bb680e51a891",
    "d4e82186a0a99c61",
    "3d25c7820ee88082",
    "bb6ef1921b735b44",
    "03480f7b4e056761",
    "df95ee8ba919f621",
]
GOLDEN_UNIQUE = "e467c8e495d3b541"  # digest of every node's unique_config
GOLDEN_FANOUT = [
    "37e95971a608a89d",
    "4aa35d67184b1a3b",
    "4f76249b9c1834ac",
    "c2769ffb5df15db9",
    "9626dd074db0adc8",
    "bb264cb94004be75",
    "c3ba741d58c6ca1a",
]


async def noop(*args: Any, **kwargs: Any) -> None:
    return None


def fanout_flow(n: int) -> af.Flow:
    flow = af.Flow("fanout")
    src = flow.add(noop, name="source")
    work = flow.add(noop, {"i": list(range(n))}, name="work", requires=[src])
    flow.add(noop, name="sink", requires=[work], reduce=True)
    return flow


def test_config_hashes_unchanged() -> None:
    graph = golden_flow().graph()
    assert [n.config_hash for n in graph.nodes] == GOLDEN
    uniques = json.dumps([n.unique_config for n in graph.nodes], sort_keys=True, default=repr)
    assert hashlib.sha256(uniques.encode()).hexdigest()[:16] == GOLDEN_UNIQUE
    assert [n.config_hash for n in fanout_flow(5).graph().nodes] == GOLDEN_FANOUT
    pairs = [("x", "0123456789abcdef"), ("a", "fedcba9876543210")]
    assert config_hash("t", {"a": [1, (2, 3)], "b": {"c": "é"}}, pairs) == "932dfa93783afa7e"


async def test_run_reuses_the_graph_while_the_flow_is_unchanged() -> None:
    flow = golden_flow()
    graph = flow.graph()
    assert flow.graph() is graph
    run = await flow.run()
    assert run.ok
    assert run.graph is graph
    assert run.values("best") == [5 * 2.5 * 0.1]


async def test_any_change_to_the_flow_builds_a_new_graph() -> None:
    flow = fanout_flow(3)
    first = flow.graph()
    extra = flow.add(noop, name="extra")
    second = flow.graph()
    assert second is not first
    assert len(second) == len(first) + 1
    extra.requires("source")  # a new edge
    third = flow.graph()
    assert third is not second
    assert third.by_task("extra")[0].predecessors
    flow.specs[1].config = {"i": [0, 1, 2, 3]}  # a spec's attribute set anew
    fourth = flow.graph()
    assert fourth is not third
    assert len(fourth.by_task("work")) == 4
    flow.config_ignore_prefix = None
    assert flow.graph() is not fourth
    run = await flow.run()
    assert len(run.states) == 1 + 4 + 1 + 1


async def test_a_failed_run_does_not_spoil_the_graph_for_the_next() -> None:
    calls: list[int] = []

    async def flaky(i: int) -> int:
        calls.append(i)
        if len(calls) == 1:
            raise RuntimeError("first")
        return i

    flow = af.Flow("flaky")
    flow.add(flaky, {"i": [1]})
    with contextlib.suppress(af.FlowFailed):
        await flow.run()
    run = await flow.run()
    assert run.ok
    assert run.values("flaky") == [1]


async def test_a_reduce_gets_sweeps_as_before_their_configs_read_when_asked() -> None:
    seen: list[af.Sweep[int]] = []

    async def part(i: int, _tag: str = "x") -> int:
        return i * 10

    async def total(part: list[af.Sweep[int]]) -> int:
        seen.extend(part)
        return sum(s.value for s in part)

    flow = af.Flow("reduce")
    p = flow.add(part, {"i": [1, 2, 3]})
    flow.add(total, requires=[p], reduce=True)
    run = await flow.run()
    assert run.values("total") == [60]
    nodes = flow.graph().by_task("part")
    expected = [
        af.Sweep(i * 10, {"i": i}, n.unique_name, n.config_hash)
        for i, n in zip([1, 2, 3], nodes, strict=True)
    ]
    assert seen == expected
    assert [repr(s) for s in seen] == [repr(s) for s in expected]
    copies = [pickle.loads(pickle.dumps(s)) for s in seen]
    assert copies == expected
    assert all(type(c) is af.Sweep for c in copies)
    assert dataclasses.asdict(seen[0]) == dataclasses.asdict(expected[0])
