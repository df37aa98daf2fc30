"""Flows (API.md section 3): building, expanding, scheduling, failing, caching and resuming."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tasks import other_tasks

import aioflows as af

# --- helpers ------------------------------------------------------------------------------------


@af.task
async def source(n: int = 3) -> list[int]:
    return list(range(n))


@af.task
async def double(source: list[int]) -> list[int]:
    return [2 * x for x in source]


def pipeline() -> tuple[af.Flow, list[str]]:
    """load -> prep (2 options) -> train (3 lrs) -> best (reduce); calls are recorded."""
    calls: list[str] = []

    async def load(n: int) -> list[int]:
        calls.append("load")
        return list(range(n))

    async def prep(load: list[int], scale: int) -> list[int]:
        calls.append(f"prep{scale}")
        return [x * scale for x in load]

    def train(prep: list[int], lr: float) -> float:  # sync: runs in a worker thread
        calls.append(f"train{lr}")
        return sum(prep) * lr

    async def best(train: list[af.Sweep[float]]) -> dict[str, Any]:
        calls.append("best")
        return max(train, key=lambda s: s.value).config

    flow = af.Flow("pipeline")
    a = flow.add(load, {"n": 4})
    b = flow.add(prep, {"scale": [1, 2]}, requires=[a])
    c = flow.add(train, {"lr": [0.1, 0.2, 0.3]}, requires=[b])
    flow.add(best, requires=[c], reduce=True)
    return flow, calls


# --- inputs and results -------------------------------------------------------------------------


async def test_a_pipeline_runs_every_instance_and_reduces() -> None:
    flow, calls = pipeline()
    run = await flow.run()
    assert run.ok
    assert Counter(calls) == Counter(
        ["load", "prep1", "prep2"] + [f"train{lr}" for lr in (0.1, 0.2, 0.3)] * 2 + ["best"]
    )
    expected = sorted(total * lr for total in (6, 12) for lr in (0.1, 0.2, 0.3))
    assert sorted(run.values("train")) == pytest.approx(expected)
    [best] = run.values("best")
    assert best == {"lr": 0.3, "prep": {"scale": 2, "load": {"n": 4}}}
    assert set(run.states.values()) == {af.TaskState.FINISHED}
    assert len(run.states) == 1 + 2 + 6 + 1
    result = run.results["train"][0]
    assert result.state is af.TaskState.FINISHED
    assert result.attempts == 1
    assert result.duration is not None
    assert result.duration >= 0
    assert result.config == {"lr": 0.1}
    assert result.unique_config["prep"]["load"] == {"n": 4}


async def test_inputs_are_config_keys_predecessor_results_and_ctx() -> None:
    seen: dict[str, Any] = {}

    async def first() -> int:
        return 41

    async def second(first: int, k: str, context: af.TaskContext) -> int:
        seen.update(first=first, k=k, ctx=context)
        return first + 1

    async def third(second: int, ctx: Any, plain: int = 7) -> int:
        seen.update(second=second, ctx3=ctx, plain=plain)
        return second

    flow = af.Flow()
    a = flow.add(first)
    b = flow.add(second, {"k": "v"}, requires=[a])
    flow.add(third, requires=[b])
    await flow.run()
    assert (seen["first"], seen["k"], seen["second"], seen["plain"]) == (41, "v", 42, 7)
    assert isinstance(seen["ctx"], af.TaskContext)
    assert seen["ctx"].unique_name == "second-1"
    assert isinstance(seen["ctx3"], af.TaskContext)


async def test_a_predecessor_whose_result_is_not_taken_only_orders() -> None:
    order: list[str] = []

    async def a() -> None:
        order.append("a")

    async def b() -> None:
        order.append("b")

    flow = af.Flow()
    flow.add(b, requires=[flow.add(a)])
    await flow.run()
    assert order == ["a", "b"]


async def test_sync_functions_run_in_a_worker_thread() -> None:
    threads: list[int] = []

    def blocking() -> int:
        threads.append(threading.get_ident())
        return 1

    flow = af.Flow()
    flow.add(blocking)
    run = await flow.run()
    assert run.values("blocking") == [1]
    assert threads != [threading.get_ident()]


# --- bad input, before anything runs ------------------------------------------------------------


def bad_flows() -> list[tuple[str, Any]]:
    async def takes_x(x: int) -> None: ...

    async def needs_y(y: int) -> None: ...

    def cycle(flow: af.Flow) -> None:
        a = flow.add(takes_x, {"x": 1}, name="a")
        b = flow.add(takes_x, {"x": 1}, name="b", requires=[a])
        a.requires(b)

    def unknown(flow: af.Flow) -> None:
        flow.add(takes_x, {"x": 1}, requires=["ghost"])

    def bad_key(flow: af.Flow) -> None:
        flow.add(takes_x, {"x": 1, "z": 2})

    def missing(flow: af.Flow) -> None:
        flow.add(needs_y)

    def not_json(flow: af.Flow) -> None:
        flow.add(takes_x, {"x": {1, 2}})

    def empty_grid(flow: af.Flow) -> None:
        flow.add(takes_x, {"x": []})

    return [
        ("cycle", cycle),
        ("ghost", unknown),
        ("'z'", bad_key),
        ("'y'", missing),
        ("set", not_json),
        ("'x'", empty_grid),
    ]


@pytest.mark.parametrize(("culprit", "build"), bad_flows(), ids=lambda v: str(v)[:12])
async def test_a_badly_declared_flow_fails_before_any_task_runs(culprit: str, build: Any) -> None:
    ran: list[str] = []

    async def canary() -> None:
        ran.append("canary")

    flow = af.Flow()
    flow.add(canary)
    build(flow)
    with pytest.raises(af.FlowError, match=culprit):
        flow.graph()
    with pytest.raises(af.FlowError, match=culprit):
        await flow.run()
    assert ran == []


async def test_declaration_errors_are_raised_at_once() -> None:
    async def f() -> None: ...

    flow = af.Flow()
    flow.add(f)
    with pytest.raises(af.FlowError, match="duplicate task name 'f'"):
        flow.add(f)
    with pytest.raises(af.FlowError, match="expand method 'grid'"):
        flow.add(f, name="g", expand="grid")
    with pytest.raises(ValueError, match="concurrency"):  # as for map, a Stage, HttpClient
        af.task(concurrency=0)
    assert isinstance(af.FlowError("x"), ValueError)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"force": "nosuch"}, "force names no task: 'nosuch'"),
        ({"force": "nosuch+"}, "nosuch"),
        ({"targets": ["nosuch"]}, "targets names no task"),
        ({"resources": []}, "resources"),
        ({"store": "dir"}, "ResultStore"),
    ],
)
async def test_bad_run_options_fail_before_any_task_runs(
    options: dict[str, Any], match: str
) -> None:
    flow, calls = pipeline()
    with pytest.raises(af.FlowError, match=match):
        await flow.run(**options)
    assert calls == []


# --- expansion of the graph ---------------------------------------------------------------------


async def test_joins_never_combine_instances_of_different_ancestors() -> None:
    """fluidml's multi-branch shape: a task with two predecessors that descend from an
    expanded ancestor gets only the combinations that share the ancestor's instance."""

    async def root(seed: int) -> int:
        return seed

    async def left(root: int, width: int) -> tuple[int, int]:
        return (root, width)

    async def right(root: int) -> int:
        return root

    async def join(left: tuple[int, int], right: int) -> tuple[int, int, int]:
        return (*left, right)

    flow = af.Flow()
    r = flow.add(root, {"seed": [1, 2, 3]})
    a = flow.add(left, {"width": [10, 20]}, requires=[r])
    b = flow.add(right, requires=[r])
    flow.add(join, requires=[a, b])
    graph = flow.graph()
    assert Counter(n.task for n in graph.nodes) == {"root": 3, "left": 6, "right": 3, "join": 6}
    for node in graph.by_task("join"):
        left_node, right_node = node.predecessors
        assert left_node.predecessors[0] is right_node.predecessors[0]
    run = await flow.run()
    assert sorted(run.values("join")) == [(s, w, s) for s in (1, 2, 3) for w in (10, 20)]


def test_graph_expands_without_running_and_in_topological_order() -> None:
    flow, calls = pipeline()
    graph = flow.graph()
    assert calls == []
    assert len(graph) == 10
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        assert all(position[id(p)] < position[id(node)] for p in node.predecessors)
    names = [n.unique_name for n in graph.nodes]
    assert len(set(names)) == len(names)
    assert names[:3] == ["load-1", "prep-1", "prep-2"]
    [best] = graph.by_task("best")
    assert len(best.predecessors) == 6
    assert best.unique_config["train"][0]["prep"]["load"] == {"n": 4}
    node = graph.by_task("train")[0]
    assert node.config == {"lr": 0.1}
    assert node.unique_config == {"lr": 0.1, "prep": {"scale": 1, "load": {"n": 4}}}
    assert len(node.config_hash) >= 16
    assert int(node.config_hash, 16) >= 0


def test_ignored_keys_are_passed_but_left_out_of_the_identity() -> None:
    async def work(x: int, _workers: int) -> None: ...

    def hash_with(workers: int) -> str:
        flow = af.Flow()
        flow.add(work, {"x": 1, "_workers": workers})
        [node] = flow.graph().nodes
        assert node.config == {"x": 1, "_workers": workers}
        assert node.unique_config == {"x": 1}
        return node.config_hash

    assert hash_with(4) == hash_with(8)


def test_the_hash_depends_on_config_and_predecessors() -> None:
    def hashes(seed: int, x: int) -> tuple[str, str]:
        flow = af.Flow()
        s = flow.add(source, {"n": seed})
        flow.add(double, requires=[s])
        graph = flow.graph()
        return graph.nodes[0].config_hash, graph.nodes[1].config_hash

    assert hashes(3, 0) == hashes(3, 0)
    assert hashes(3, 0)[0] != hashes(4, 0)[0]
    assert hashes(3, 0)[1] != hashes(4, 0)[1]  # a predecessor's change reaches descendants


HASH_SCRIPT = """
import sys
sys.path.insert(0, "tests")  # as pytest does, for the tests' shared helpers
from test_flows import pipeline
flow, _ = pipeline()
print(" ".join(n.config_hash for n in flow.graph().nodes))
"""


def test_hashes_are_the_same_in_every_process(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    outputs = set()
    for seed in ("0", "1", "4242"):
        proc = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    flow, _ = pipeline()
    assert outputs.pop().split() == [n.config_hash for n in flow.graph().nodes]


def test_expand_config_is_exported_with_fluidml_semantics() -> None:
    config = {"a": [1, 2, "@x"], "b": [1, 2, 3], "c": [1, 2, "@x"]}
    assert len(af.expand_config(config)) == 6
    assert af.expand_config({"v": [[1, 2]]}) == [{"v": [1, 2]}]
    assert len(af.expand_config({"a": [1, 2], "b": [3, 4]}, expand="zip")) == 2
    with pytest.raises(af.FlowError):
        af.expand_config({"a": [1]}, expand="nope")


# --- scheduling ---------------------------------------------------------------------------------


async def test_scheduling_is_not_level_by_level() -> None:
    """b (second level) must start while c (first level) still runs: c waits for it."""
    b_started = anyio.Event()

    async def a() -> None: ...

    async def b() -> None:
        b_started.set()

    async def c() -> None:
        await b_started.wait()

    flow = af.Flow()
    flow.add(b, requires=[flow.add(a)])
    flow.add(c)
    with anyio.fail_after(10):  # level-by-level scheduling would deadlock here
        run = await flow.run()
    assert run.ok


async def test_global_and_per_task_concurrency_are_never_exceeded() -> None:
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    async def work(i: int) -> None:
        running["all"] += 1
        running["work"] += 1
        peak["all"] = max(peak["all"], running["all"])
        peak["work"] = max(peak["work"], running["work"])
        await anyio.sleep(0.01)
        running["all"] -= 1
        running["work"] -= 1

    async def other(j: int) -> None:
        running["all"] += 1
        peak["all"] = max(peak["all"], running["all"])
        await anyio.sleep(0.01)
        running["all"] -= 1

    flow = af.Flow()
    flow.add(af.task(concurrency=2)(work), {"i": list(range(12))})
    flow.add(other, {"j": list(range(12))})
    await flow.run(concurrency=3)
    assert peak["all"] == 3
    assert peak["work"] == 2


async def test_resources_are_never_shared_at_once() -> None:
    in_use: set[str] = set()
    used: list[str] = []

    async def work(i: int, ctx: af.TaskContext) -> None:
        assert ctx.resource not in in_use
        in_use.add(ctx.resource)
        used.append(ctx.resource)
        await anyio.sleep(0.005)
        in_use.remove(ctx.resource)

    flow = af.Flow()
    flow.add(work, {"i": list(range(10))})
    run = await flow.run(resources=["gpu0", "gpu1"])
    assert run.ok
    assert set(used) == {"gpu0", "gpu1"}
    assert len(used) == 10


@pytest.mark.looptime
async def test_per_task_rate_paces_instance_starts() -> None:
    starts: list[float] = []

    @af.task(rate="2/s")
    async def ping(i: int) -> None:
        starts.append(anyio.current_time())

    flow = af.Flow()
    flow.add(ping, {"i": list(range(6))})
    t0 = anyio.current_time()
    await flow.run()
    # burst of 2, then one every 0.5 s
    assert [round(t - t0, 3) for t in starts] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]


async def test_retries_then_success_counts_attempts() -> None:
    failures = [ValueError("flaky"), ValueError("flaky")]

    @af.task(retry=af.Retry(attempts=3, backoff=0.001, jitter=False))
    async def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    flow = af.Flow()
    flow.add(flaky)
    store = af.MemoryStore()
    run = await flow.run(store=store)
    [result] = run.results["flaky"]
    assert (result.value, result.attempts, result.state) == ("ok", 3, af.TaskState.FINISHED)
    info = await store.load_info(task="flaky", config_hash=result.config_hash)
    assert info is not None
    assert info.attempts == 3


@pytest.mark.looptime
async def test_a_timeout_fails_the_instance() -> None:
    @af.task(timeout=1)
    async def slow() -> None:
        await anyio.sleep(5)

    flow = af.Flow()
    flow.add(slow)
    with pytest.raises(af.FlowFailed) as info:
        await flow.run()
    assert isinstance(info.value.errors["slow-1"], TimeoutError)


# --- failure ------------------------------------------------------------------------------------


def failing_flow(log: list[str]) -> af.Flow:
    """boom fails at once; after_boom depends on it; slow runs alongside; tail follows slow."""
    release = anyio.Event()
    slow_started = anyio.Event()

    async def boom() -> None:
        await slow_started.wait()
        raise RuntimeError("boom")

    async def after_boom(boom: None) -> None:
        log.append("after_boom")

    async def slow() -> None:
        slow_started.set()
        with anyio.fail_after(5):
            await release.wait()  # released by nobody under fail_fast: gets cancelled
        log.append("slow")

    async def releaser() -> None:
        await anyio.sleep(0.05)
        release.set()

    async def tail(slow: None) -> None:
        log.append("tail")

    flow = af.Flow("failing")
    flow.add(after_boom, requires=[flow.add(boom)])
    flow.add(tail, requires=[flow.add(slow)])
    flow.add(releaser)
    return flow


async def test_fail_fast_kills_running_instances_and_marks_descendants() -> None:
    log: list[str] = []
    events: list[af.TaskEvent] = []
    before = other_tasks()
    with pytest.raises(af.FlowFailed) as info:
        await failing_flow(log).run(on_event=events.append)
    run = info.value.run
    assert isinstance(run, af.FlowRun)
    assert not run.ok
    assert run.states["boom-1"] is af.TaskState.FAILED
    assert run.states["after_boom-1"] is af.TaskState.UPSTREAM_FAILED
    assert run.states["slow-1"] is af.TaskState.KILLED
    assert run.states["tail-1"] is not af.TaskState.FINISHED
    assert "tail" not in log
    assert "slow" not in log
    assert isinstance(info.value.errors["boom-1"], RuntimeError)
    assert run.results["boom"][0].error is info.value.errors["boom-1"]
    assert "boom-1: RuntimeError: boom" in str(info.value)
    killed = [e for e in events if e.state is af.TaskState.KILLED]
    assert sorted(e.unique_name for e in killed) == ["releaser-1", "slow-1"]
    assert other_tasks() == before


async def test_without_fail_fast_independent_branches_finish() -> None:
    log: list[str] = []
    with pytest.raises(af.FlowFailed) as info:
        await failing_flow(log).run(fail_fast=False)
    run = info.value.run
    assert run.states["slow-1"] is af.TaskState.FINISHED
    assert run.states["tail-1"] is af.TaskState.FINISHED
    assert run.states["after_boom-1"] is af.TaskState.UPSTREAM_FAILED
    assert sorted(log) == ["slow", "tail"]
    assert list(info.value.errors) == ["boom-1"]


async def test_cancelling_the_run_from_outside_kills_and_propagates() -> None:
    started = anyio.Event()
    events: list[af.TaskEvent] = []

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    flow = af.Flow()
    flow.add(forever)
    store = af.MemoryStore()
    before = other_tasks()
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await flow.run(store=store, on_event=events.append)
            raise AssertionError("flow.run returned after cancellation")

        tg.start_soon(run)
        await started.wait()
        tg.cancel_scope.cancel()
    assert [e.state for e in events][-1] is af.TaskState.KILLED
    [info] = await store.list_infos()
    assert info.state is af.TaskState.KILLED
    assert other_tasks() == before


class Abort(BaseException):
    """Not an Exception, as a test framework's failure or a custom stop signal is not."""


def aborting_flow(abort_exc: BaseException, *, sync: bool) -> af.Flow:
    """``abort`` raises ``abort_exc`` once ``slow`` runs; ``after_abort`` needs abort."""
    slow_started = threading.Event()  # set from the loop, waited for from either side

    async def slow() -> None:
        slow_started.set()
        await anyio.sleep_forever()

    def abort_sync() -> None:
        assert slow_started.wait(10)
        raise abort_exc

    async def abort_async() -> None:
        while not slow_started.is_set():  # set by slow, on this loop, at its first step
            await anyio.lowlevel.checkpoint()  # a threading.Event, so the sync variant can wait
        raise abort_exc

    async def after_abort(abort: None) -> None: ...

    flow = af.Flow("aborting")
    flow.add(slow)
    flow.add(after_abort, requires=[flow.add(abort_sync if sync else abort_async, name="abort")])
    return flow


@pytest.mark.parametrize("fail_fast", [True, False])
@pytest.mark.parametrize(
    ("make", "sync"),
    [
        (lambda: Abort("stop here"), False),
        (lambda: pytest.fail.Exception("a test's assertion", pytrace=False), False),
        (lambda: Abort("stop here"), True),
    ],
    ids=["custom", "pytest-fail", "custom-sync"],
)
async def test_a_base_exception_in_a_task_ends_the_run_with_it(
    make: Any, sync: bool, fail_fast: bool
) -> None:
    abort_exc = make()
    events: list[af.TaskEvent] = []
    store = af.MemoryStore()
    before = other_tasks()
    with pytest.raises(type(abort_exc)) as info:
        await aborting_flow(abort_exc, sync=sync).run(
            store=store, fail_fast=fail_fast, on_event=events.append
        )
    assert info.value is abort_exc  # itself: not wrapped in an exception group or FlowFailed
    assert other_tasks() == before  # whatever fail_fast says, everything stopped
    final = {e.unique_name: e.state for e in events}
    assert final == {
        "abort-1": af.TaskState.FAILED,
        "slow-1": af.TaskState.KILLED,
        "after_abort-1": af.TaskState.UPSTREAM_FAILED,
    }
    [failed_event] = [e for e in events if e.state is af.TaskState.FAILED]
    assert failed_event.error is abort_exc
    records = {i.unique_name: i for i in await store.list_infos()}
    assert records["abort-1"].state is af.TaskState.FAILED
    assert type(abort_exc).__name__ in str(records["abort-1"].error)
    assert records["slow-1"].state is af.TaskState.KILLED


def sleeping_flow(n: int, all_running: anyio.Event | None = None, *, boom: bool = True) -> af.Flow:
    """``n`` instances of ``sleeper`` sleep for ever; ``boom`` fails once all of them run."""
    running = 0
    all_running = all_running if all_running is not None else anyio.Event()

    async def sleeper(i: int) -> None:
        nonlocal running
        running += 1
        if running == n:
            all_running.set()
        await anyio.sleep_forever()

    async def fail() -> None:
        await all_running.wait()
        raise RuntimeError("boom")

    flow = af.Flow("sleeping")
    flow.add(sleeper, {"i": list(range(n))})
    if boom:
        flow.add(fail)
    return flow


async def test_fail_fast_marks_every_running_instance_killed_in_states_events_and_records(
    store: af.ResultStore,
) -> None:
    n = 300
    events: list[af.TaskEvent] = []
    before = other_tasks()
    with pytest.raises(af.FlowFailed) as info:
        await sleeping_flow(n).run(store=store, on_event=events.append)
    assert other_tasks() == before
    states = info.value.run.states
    assert Counter(states.values()) == {af.TaskState.KILLED: n, af.TaskState.FAILED: 1}
    killed_events = {e.unique_name for e in events if e.state is af.TaskState.KILLED}
    assert killed_events == {name for name, s in states.items() if s is af.TaskState.KILLED}
    infos = await store.list_infos()
    assert Counter(i.state for i in infos) == {af.TaskState.KILLED: n, af.TaskState.FAILED: 1}
    for result in info.value.run.results["sleeper"][:3]:
        record = await store.load_info(task="sleeper", config_hash=result.config_hash)
        assert record is not None
        assert record.state is af.TaskState.KILLED
        assert record.unique_name == result.unique_name
        assert record.config == result.config
        assert record.attempts == 1
        assert (record.started, record.ended) == (result.started, result.ended)
    # A rerun runs every killed instance again (and stops the same way).
    with pytest.raises(af.FlowFailed) as again:
        await sleeping_flow(n).run(store=store)
    assert Counter(again.value.run.states.values())[af.TaskState.KILLED] == n


class CountingStore(af.MemoryStore):
    """A MemoryStore that notes every record write: single, or one of a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.single: list[af.TaskState] = []  # written one by one, outside any batch
        self.batches: list[list[af.TaskState]] = []
        self._in_batch = False

    async def _save_info(self, info: af.TaskInfo) -> None:
        if not self._in_batch:
            self.single.append(info.state)
        await super()._save_info(info)

    async def _save_advice(self, infos: Any) -> None:
        self.batches.append(list(infos.state))  # one task's records, in columns
        self._in_batch = True
        try:
            await super()._save_advice(infos)  # the default: save_info for each
        finally:
            self._in_batch = False


@pytest.mark.parametrize("how", ["fail_fast", "outside"])
async def test_killed_records_are_written_in_one_batch_after_the_cancellation(how: str) -> None:
    n = 50
    store = CountingStore()
    if how == "fail_fast":
        with pytest.raises(af.FlowFailed):
            await sleeping_flow(n).run(store=store)
    else:
        all_running = anyio.Event()
        flow = sleeping_flow(n, all_running, boom=False)

        async def run() -> None:
            await flow.run(store=store)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await all_running.wait()
            tg.cancel_scope.cancel()
    # One batch of every KILLED record, none written one by one inside the cancellation.
    assert [Counter(b) for b in store.batches] == [{af.TaskState.KILLED: n}]
    assert af.TaskState.KILLED not in store.single
    assert Counter(store.single) == ({af.TaskState.FAILED: 1} if how == "fail_fast" else {})


# --- events -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_every_state_change_is_an_event(kind: str) -> None:
    events: list[af.TaskEvent] = []

    async def async_listener(event: af.TaskEvent) -> None:
        await anyio.lowlevel.checkpoint()
        events.append(event)

    flow, _ = pipeline()
    listener = events.append if kind == "sync" else async_listener
    await flow.run(on_event=listener)
    by_instance: dict[str, list[af.TaskState]] = {}
    for event in events:
        by_instance.setdefault(event.unique_name, []).append(event.state)
        assert event.task == event.unique_name.rsplit("-", 1)[0]
        assert event.time.tzinfo is not None
    assert len(by_instance) == 10
    S = af.TaskState
    assert set(map(tuple, by_instance.values())) == {(S.SCHEDULED, S.RUNNING, S.FINISHED)}


# --- persistence, caching, force, resume --------------------------------------------------------


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> af.ResultStore:
    return af.MemoryStore() if request.param == "memory" else af.LocalFileStore(tmp_path / "s")


async def test_results_and_records_are_saved_and_a_rerun_is_cached(store: af.ResultStore) -> None:
    flow, calls = pipeline()
    first = await flow.run(store=store)
    infos = await store.list_infos()
    assert len(infos) == 10
    assert {i.state for i in infos} == {af.TaskState.FINISHED}
    node = flow.graph().by_task("train")[0]
    assert await store.load("result", task="train", config_hash=node.config_hash) == pytest.approx(
        0.6
    )
    info = await store.load_info(task="train", config_hash=node.config_hash)
    assert info is not None
    assert info.unique_name == node.unique_name
    assert info.config == {"lr": 0.1}
    assert info.started is not None
    assert info.ended is not None

    calls.clear()
    second = await flow.run(store=store)
    assert calls == []
    assert set(second.states.values()) == {af.TaskState.CACHED}
    assert second.values("best") == first.values("best")
    assert sorted(second.values("train")) == sorted(first.values("train"))


async def test_non_json_results_are_kept_too(store: af.ResultStore) -> None:
    async def make() -> set[int]:
        return {1, 2}

    flow = af.Flow()
    flow.add(make)
    await flow.run(store=store)
    run = await flow.run(store=store)
    assert run.states["make-1"] is af.TaskState.CACHED
    assert run.values("make") == [{1, 2}]


@pytest.mark.parametrize(
    ("force", "rerun", "trained"),
    [
        ("all", ["load", "prep1", "prep2", "best"], 6),
        # prep ran again: train and best, cached from its old results, are stale and run too
        ("prep", ["prep1", "prep2", "best"], 6),
        ("prep+", ["prep1", "prep2", "best"], 6),
        ("best", ["best"], 0),
        (["load", "best"], ["load", "prep1", "prep2", "best"], 6),
    ],
)
async def test_force_reruns_the_named_tasks(force: Any, rerun: list[str], trained: int) -> None:
    flow, calls = pipeline()
    store = af.MemoryStore()
    await flow.run(store=store)
    calls.clear()
    await flow.run(store=store, force=force)
    assert sorted(c for c in calls if not c.startswith("train")) == sorted(rerun)
    assert len([c for c in calls if c.startswith("train")]) == trained


async def test_targets_run_only_those_tasks_and_their_ancestors() -> None:
    flow, calls = pipeline()
    run = await flow.run(targets=["prep"])
    assert sorted(calls) == ["load", "prep1", "prep2"]
    assert set(run.states) == {"load-1", "prep-1", "prep-2"}


async def test_a_rerun_after_a_failure_runs_only_what_did_not_finish(
    store: af.ResultStore,
) -> None:
    broken = {"on": True}
    calls: list[str] = []

    async def good(i: int) -> int:
        calls.append(f"good{i}")
        return i

    async def fragile(good: int) -> int:
        calls.append(f"fragile{good}")
        if broken["on"] and good == 1:
            raise RuntimeError("broken")
        return good

    flow = af.Flow()
    flow.add(fragile, requires=[flow.add(good, {"i": [0, 1, 2]})])
    with pytest.raises(af.FlowFailed):
        await flow.run(store=store, fail_fast=False)
    failed = [i for i in await store.list_infos("fragile") if i.state is af.TaskState.FAILED]
    assert len(failed) == 1
    assert failed[0].error == "RuntimeError: broken"
    broken["on"] = False
    calls.clear()
    run = await flow.run(store=store)
    assert calls == ["fragile1"]
    assert run.ok


async def test_ctx_saves_loads_and_opens_in_the_instances_run(tmp_path: Path) -> None:
    async def produce(ctx: af.TaskContext) -> None:
        await ctx.save({"w": [1, 2]}, "weights")
        async with ctx.open("log", "w") as f:
            await f.write("trained\n")

    async def consume(produce: None, ctx: af.TaskContext) -> dict[str, Any]:
        weights = await ctx.load("weights", task="produce")
        return {"weights": weights, "same_store": ctx.store is store, "hash": ctx.config_hash}

    flow = af.Flow()
    flow.add(consume, requires=[flow.add(produce)])
    store = af.LocalFileStore(tmp_path)
    run = await flow.run(store=store)
    [out] = run.values("consume")
    assert out["weights"] == {"w": [1, 2]}
    assert out["same_store"]
    [node] = flow.graph().by_task("produce")
    assert await store.load("log", task="produce", config_hash=node.config_hash) == "trained\n"


async def test_ctx_works_without_a_store() -> None:
    async def produce(ctx: af.TaskContext) -> int:
        await ctx.save(5, "five")
        return await ctx.load("five")

    flow = af.Flow()
    flow.add(produce)
    assert (await flow.run()).values("produce") == [5]


async def test_no_task_outlives_a_successful_run() -> None:
    flow, _ = pipeline()
    before = other_tasks()
    await flow.run(concurrency=2)
    assert other_tasks() == before


async def test_force_plus_in_a_list_forces_only_that_tasks_descendants() -> None:
    from aioflows.flow.executor import _resolve_force

    flow, _ = pipeline()
    # (What runs then is more: load's descendants are stale once it ran again.)
    assert _resolve_force(flow.graph(), ["load", "best+"]) == {"load", "best"}
    assert _resolve_force(flow.graph(), ["prep+"]) == {"prep", "train", "best"}


async def test_cached_values_come_back_with_their_types(tmp_path: Path) -> None:
    async def shapes() -> dict[str, Any]:
        return {"pair": (1, 2), "by_id": {1: "x"}, "plain": [1, "a", None, 2.5]}

    flow = af.Flow()
    flow.add(shapes)
    store = af.LocalFileStore(tmp_path)
    fresh = (await flow.run(store=store)).values("shapes")
    cached = await flow.run(store=store)
    assert cached.states["shapes-1"] is af.TaskState.CACHED
    assert cached.values("shapes") == fresh
    assert cached.values("shapes")[0]["pair"] == (1, 2)


async def test_a_failing_event_callback_does_not_fail_the_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: af.TaskEvent) -> None:
        raise RuntimeError("observer bug")

    flow, _ = pipeline()
    run = await flow.run(on_event=broken)
    assert run.ok
    assert "on_event callback failed" in caplog.text


@pytest.mark.looptime
async def test_a_task_rate_is_per_run_unless_a_limiter_is_shared() -> None:
    async def runs_take(task_rate: Any) -> float:
        @af.task(rate=task_rate)
        async def ping(i: int) -> None: ...

        flow = af.Flow()
        flow.add(ping, {"i": [1, 2]})
        t0 = anyio.current_time()
        await flow.run()
        await flow.run()
        return anyio.current_time() - t0

    assert await runs_take("2/s") == 0  # each run has its own full bucket of 2
    assert await runs_take(af.RateLimiter("2/s")) == pytest.approx(1.0)  # one bucket for both


async def test_a_reduce_task_can_reach_each_instances_saved_objects() -> None:
    async def part(i: int, ctx: af.TaskContext) -> int:
        await ctx.save({"i": i}, "detail")
        return i

    async def gather(part: list[af.Sweep[int]], ctx: af.TaskContext) -> list[Any]:
        return [
            await ctx.store.load("detail", task="part", config_hash=s.config_hash) for s in part
        ]

    flow = af.Flow()
    flow.add(gather, requires=[flow.add(part, {"i": [1, 2]})], reduce=True)
    run = await flow.run()
    assert run.values("gather") == [[{"i": 1}, {"i": 2}]]


async def test_a_corrupt_cache_record_reruns_the_instance(tmp_path: Path) -> None:
    flow, calls = pipeline()
    store = af.LocalFileStore(tmp_path)
    await flow.run(store=store)
    node = flow.graph().by_task("load")[0]
    (tmp_path / "load" / node.config_hash / "_taskinfo.json").write_text("{torn")
    calls.clear()
    run = await flow.run(store=store)
    assert run.ok
    assert calls[0] == "load"
    assert run.states["load-1"] is af.TaskState.FINISHED
    # load was computed again, so everything cached from its old result is stale and runs too
    assert set(run.states.values()) == {af.TaskState.FINISHED}


def test_task_names_a_store_cannot_hold_are_flow_errors() -> None:
    async def f() -> None: ...

    for bad in ("a/b", "..", ".hidden", "x\\y"):
        with pytest.raises(af.FlowError, match="task name"):
            af.Flow().add(f, name=bad)


async def test_a_deep_chain_is_recorded_with_bounded_nesting(tmp_path: Path) -> None:
    async def step(**inputs: Any) -> int:
        return 1

    flow = af.Flow()
    previous: list[af.TaskSpec] = []
    for i in range(300):  # deeper than JSON encoders recurse
        previous = [flow.add(step, {"i": i}, name=f"s{i}", requires=previous)]
    store = af.LocalFileStore(tmp_path)
    assert (await flow.run(store=store)).ok
    last = flow.graph().nodes[-1]
    info = await store.load_info(task="s299", config_hash=last.config_hash)
    assert info is not None
    assert info.unique_config is not None
    config, depth = info.unique_config, 0
    while isinstance(config, dict) and len(config) > 1:
        config = config[next(k for k in config if k != "i")]
        depth += 1
    assert config == flow.graph().nodes[-1 - depth].config_hash  # deeper ones by their hash
    assert 1 <= depth <= 10
    again = await flow.run(store=store)
    assert set(again.states.values()) == {af.TaskState.CACHED}


async def test_an_instance_waiting_for_its_tasks_concurrency_holds_no_global_slot() -> None:
    quick_done = anyio.Event()
    quick = 0

    @af.task(concurrency=1)
    async def slow(i: int) -> None:
        await quick_done.wait()  # released only once every quick instance has run

    async def fast(j: int) -> None:
        nonlocal quick
        quick += 1
        if quick == 3:
            quick_done.set()

    flow = af.Flow()
    flow.add(slow, {"i": [1, 2, 3]})
    flow.add(fast, {"j": [1, 2, 3]})
    with anyio.fail_after(10):  # a slow instance parked on a worker would deadlock this
        run = await flow.run(concurrency=2)
    assert run.ok


async def test_a_parked_instance_is_looked_up_in_the_store_once() -> None:
    class LookupCounter(af.MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.lookups: Counter[str] = Counter()

        async def load_info(self, *, task: str, config_hash: str) -> Any:
            self.lookups[config_hash] += 1
            return await super().load_info(task=task, config_hash=config_hash)

    order: list[int] = []

    @af.task(concurrency=1)
    async def one_at_a_time(i: int) -> None:
        order.append(i)
        await anyio.lowlevel.checkpoint()

    flow = af.Flow()
    flow.add(one_at_a_time, {"i": [1, 2, 3, 4]})
    store = LookupCounter()
    run = await flow.run(store=store)
    assert run.ok
    assert sorted(store.lookups.values()) == [1, 1, 1, 1]  # parked ones are not looked up again
    assert order == [1, 2, 3, 4]  # parked instances run in the order they came
