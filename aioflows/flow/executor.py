"""Running a flow: from an expanded graph and the run's options to a :class:`FlowRun`.

:func:`run_flow` checks the options, picks the instances (``targets``) and the forced tasks,
and puts together the run's parts, each in a module of its own:

- :mod:`aioflows.flow.scheduler` orders the instances (queue, workers, parking, per-task
  slots, resources, failure and fail-fast);
- :mod:`aioflows.flow.cache` is what the run reads from and writes to its store;
- :mod:`aioflows.flow.events` holds each instance's state and tells the listeners of changes;
- this module calls one instance: its inputs, its guard (limiters, timeout, retry) and its
  body, through :func:`run_body`, the seam where an :class:`Executor` running bodies
  elsewhere (``flow.run(executor=af.DaskExecutor(...))``) plugs in while scheduling, limits,
  retries and the store stay here.

A task that raises a ``BaseException`` that is not an ``Exception`` stops the whole run, and
:func:`run_flow` raises that exception itself once everything has stopped: it is not an error
to collect into ``FlowFailed``.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import anyio

from .. import _validate
from ..calls import guard
from ..errors import FlowError, FlowFailed
from ..stores.base import ResultStore
from ..stores.memory import MemoryStore
from ..stores.records import from_micros
from ._bulk import BULK, gc_paused
from .cache import RESULT_NAME, Cache
from .context import TaskContext
from .events import Events, Slot
from .run import FlowRun, NodeSweep, TaskEvent, TaskResult
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .graph import Graph, TaskNode

__all__ = ["RESULT_NAME", "Body", "Executor", "new_run_id", "run_body", "run_flow", "select"]

#: One attempt of one instance's body: ``(node, fn, kwargs, is_async)``, as :func:`run_body`.
Body: TypeAlias = Callable[["TaskNode", Callable[..., Any], dict[str, Any], bool], Awaitable[Any]]


@runtime_checkable
class Executor(Protocol):
    """Where the bodies of a run's instances run (``flow.run(executor=...)``).

    The default (None) runs them in the calling process: :func:`run_body`. An executor only
    replaces that one call; the scheduling, per-task limits, retries, timeouts, the store and
    the events stay in the calling process, so each attempt the guard makes is one call of the
    body it gives.
    """

    def session(self, graph: Graph, nodes: Sequence[TaskNode]) -> AbstractAsyncContextManager[Body]:
        """Get ready to run ``nodes`` of ``graph`` (connect, check what cannot run there) and
        give the body to call per attempt; leaving it releases everything it took.

        Raises:
            FlowError: Some instance cannot run on this executor (before anything runs).
        """
        ...


def run_body(
    node: TaskNode, fn: Callable[..., Any], kwargs: dict[str, Any], is_async: bool
) -> Awaitable[Any]:
    """One attempt of one instance's body: ``fn(**kwargs)``, awaited by the caller.

    This is the executor's seam. Everything around it stays in the calling process: the
    scheduling, the inputs (``kwargs`` holds the config, the predecessors' results and the
    ``ctx``), the guard (limiters, timeout, retry: each attempt is one call of this), the
    states and the store. An executor that runs bodies elsewhere (``flow.run(executor=...)``,
    a Dask cluster) replaces this function; ``node`` names the instance (``unique_name``)
    for it. Here an async ``fn`` is called in place and a sync one in a worker thread.

    It is a plain function returning the awaitable, not a coroutine of its own, so that it
    adds no frame to the stack of every running instance.
    """
    if is_async:
        awaitable: Awaitable[Any] = fn(**kwargs)
        return awaitable
    return anyio.to_thread.run_sync(functools.partial(fn, **kwargs))


class _Call:
    """One attempt's inputs, handed through the guard (limiters, timeout, retry)."""

    __slots__ = ("kwargs", "node", "slot")

    def __init__(self, node: TaskNode, slot: Slot, kwargs: dict[str, Any]) -> None:
        self.node = node
        self.slot = slot
        self.kwargs = kwargs


class _Plan:
    """How one task's instances are called, looked up once per instance (not a binding, a
    spec and a table of direct calls each)."""

    __slots__ = ("call", "ctx", "direct", "reduce", "results")

    def __init__(
        self,
        call: Callable[[_Call], Awaitable[Any]],
        direct: Callable[..., Any] | None,
        results: frozenset[str],
        ctx: str | None,
        reduce: bool,
    ) -> None:
        self.call = call
        self.direct = direct  # async, no limiter, retry or timeout: awaited by the worker
        self.results = results
        self.ctx = ctx
        self.reduce = reduce


class _Instances:
    """Calls instances of ``graph``: what the scheduler's ``begin`` does for each."""

    def __init__(
        self,
        graph: Graph,
        slots: dict[TaskNode, Slot],
        store: ResultStore,
        body: Body,
    ) -> None:
        self.graph = graph
        self.slots = slots
        self.store = store  # what ctx.store is: the run's store, else one in memory
        self.body = body
        self.plans: dict[str, _Plan] = {}
        attempt = self._attempt  # one bound method for every task without a guard
        specs = graph.specs
        with gc_paused() if len(specs) > BULK else contextlib.nullcontext():
            for name, spec in specs.items():
                call = guard(attempt, spec.options.policy)
                binding = graph.bindings[name]
                # Awaited directly: no guard around it, one level less.
                direct = call == attempt and binding.is_async and body is run_body
                self.plans[name] = _Plan(
                    call, spec.fn if direct else None, binding.results, binding.ctx, spec.reduce
                )

    def begin(self, node: TaskNode, slot: Slot, resource: Any) -> Awaitable[Any]:
        """The call of ``node``'s function (the scheduler marked it RUNNING), for the worker
        to await."""
        plan = self.plans[node.task]
        kwargs = dict(node.config)
        results = plan.results
        if results:
            if plan.reduce:
                self._gather(node, results, kwargs)
            else:
                slots = self.slots
                for p in node.predecessors:
                    if p.task in results:
                        kwargs[p.task] = slots[p].value
        if plan.ctx is not None:
            kwargs[plan.ctx] = TaskContext(node, self.store, resource)
        fn = plan.direct
        if fn is not None:
            slot.attempts += 1
            awaitable: Awaitable[Any] = fn(**kwargs)
            return awaitable
        return plan.call(_Call(node, slot, kwargs))

    def _gather(self, node: TaskNode, results: frozenset[str], kwargs: dict[str, Any]) -> None:
        """A reduce's inputs: a :class:`NodeSweep` per predecessor instance, by task."""
        slots = self.slots
        preds = node.predecessors
        with gc_paused() if len(preds) > BULK else contextlib.nullcontext():
            for name in results:
                kwargs[name] = [NodeSweep(slots[p].value, p) for p in preds if p.task == name]

    async def _attempt(self, call: _Call) -> Any:
        call.slot.attempts += 1
        node = call.node
        fn = self.graph.specs[node.task].fn
        return await self.body(node, fn, call.kwargs, self.graph.bindings[node.task].is_async)


def _results(
    tasks: list[str], nodes: Sequence[TaskNode], slots: dict[TaskNode, Slot]
) -> dict[str, list[TaskResult]]:
    """Every instance's TaskResult, by task, in graph order."""
    results: dict[str, list[TaskResult]] = {name: [] for name in tasks}
    for node in nodes:  # positional TaskResult arguments: thousands of them
        slot = slots[node]
        results[node.task].append(
            TaskResult(
                node.unique_name,
                slot.value,
                node.config,
                node.unique_config,
                node.config_hash,
                slot.state,
                slot.attempts,
                from_micros(slot.started),
                from_micros(slot.ended),
                slot.error,
            )
        )
    return results


def _resolve_force(graph: Graph, force: str | Sequence[str] | None) -> frozenset[str]:
    if force is None:
        return frozenset()
    items = [force] if isinstance(force, str) else list(force)
    tasks = graph.specs
    forced: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise FlowError(f"force takes task names, got {item!r}")
        if item == "all":
            return frozenset(tasks)
        name, plus = (item[:-1], True) if item.endswith("+") else (item, False)
        if name not in tasks:
            raise FlowError(f"force names no task: {item!r}; tasks are {', '.join(tasks)}")
        if not plus:
            forced.add(name)
            continue
        # `name` and every task downstream of it (specs come in topological order).
        downstream = {name}
        for spec_name, spec in tasks.items():
            if any(p in downstream for p in spec.predecessors):
                downstream.add(spec_name)
        forced |= downstream
    return frozenset(forced)


def select(graph: Graph, targets: Sequence[str] | None) -> list[TaskNode]:
    """The instances a run with ``targets`` runs: theirs and their ancestors', in graph order
    (the CLI's progress display counts these)."""
    if targets is None:
        return graph.nodes
    if isinstance(targets, str):
        targets = [targets]
    for name in targets:
        if name not in graph.specs:
            raise FlowError(f"targets names no task: {name!r}")
    wanted: set[int] = set()
    stack = [n for n in graph.nodes if n.task in targets]
    while stack:
        node = stack.pop()
        if id(node) not in wanted:
            wanted.add(id(node))
            stack.extend(node.predecessors)
    return [n for n in graph.nodes if id(n) in wanted]


def _slots(graph: Graph, nodes: list[TaskNode]) -> dict[TaskNode, Slot]:
    """A slot per instance to run, counting only the predecessors that are in the run."""
    with gc_paused() if len(nodes) > BULK else contextlib.nullcontext():
        if len(nodes) == len(graph.nodes):
            return {node: Slot(len(node.predecessors)) for node in nodes}
        in_run = {id(n) for n in nodes}
        return {node: Slot(sum(1 for p in node.predecessors if id(p) in in_run)) for node in nodes}


def new_run_id() -> str:
    """A run's id: its start (UTC, so ids sort by time) and random bits (so two runs started
    in the same second, by two processes sharing a store, differ)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def _check_options(
    store: ResultStore | None,
    concurrency: int | None,
    resources: Sequence[Any] | None,
    on_event: Callable[[TaskEvent], Any] | None,
) -> None:
    if store is not None and not isinstance(store, ResultStore):
        raise FlowError(f"store must be a ResultStore, got {type(store).__name__}")
    if concurrency is not None:
        _validate.count("concurrency", concurrency)
    if resources is not None and (isinstance(resources, (str, bytes)) or not len(resources)):
        raise FlowError("resources must be a non-empty sequence (one item per running instance)")
    if on_event is not None and not callable(on_event):
        raise FlowError(f"on_event must be callable, got {on_event!r}")


async def run_flow(
    graph: Graph,
    *,
    store: ResultStore | None,
    concurrency: int | None,
    force: str | Sequence[str] | None,
    fail_fast: bool,
    resources: Sequence[Any] | None,
    targets: Sequence[str] | None,
    on_event: Callable[[TaskEvent], Any] | None,
    progress: bool,
    executor: Executor | None = None,
) -> FlowRun:
    """Run ``graph``'s instances (those ``targets`` need) and report how each ended.

    Raises:
        FlowError: An option is invalid, or an instance cannot run on ``executor`` (before
            anything runs).
        FlowFailed: Some instances failed; ``.run`` holds every state and result.
    """
    _check_options(store, concurrency, resources, on_event)
    if executor is not None and not isinstance(executor, Executor):
        raise FlowError(f"executor must be an Executor (e.g. af.DaskExecutor), got {executor!r}")
    nodes = select(graph, targets)
    forced = _resolve_force(graph, force)
    bodies: AbstractAsyncContextManager[Body] = (
        contextlib.nullcontext(run_body) if executor is None else executor.session(graph, nodes)
    )
    async with bodies as body:
        return await _start(
            graph, nodes, forced, body, store, concurrency, fail_fast, resources, on_event, progress
        )


async def _start(
    graph: Graph,
    nodes: list[TaskNode],
    forced: frozenset[str],
    body: Body,
    store: ResultStore | None,
    concurrency: int | None,
    fail_fast: bool,
    resources: Sequence[Any] | None,
    on_event: Callable[[TaskEvent], Any] | None,
    progress: bool,
) -> FlowRun:
    """Put the run's parts together around ``body`` and run them."""
    slots = _slots(graph, nodes)
    events = Events(slots, on_event)
    prefix = graph.flow.config_ignore_prefix
    run_id = new_run_id()
    own_store = store if store is not None else MemoryStore()
    instances = _Instances(graph, slots, own_store, body)
    scheduler = Scheduler(
        graph,
        nodes,
        slots=slots,
        events=events,
        cache=Cache(store, slots, forced, prefix, run_id) if store is not None else None,
        begin=instances.begin,
        concurrency=concurrency,
        fail_fast=fail_fast,
        resources=resources,
    )
    if not progress:
        return await _run(graph, scheduler, run_id)
    from .progress import FlowProgress

    async with FlowProgress(graph.flow.name, nodes) as display:
        events.listeners.append(display.update)
        try:
            run = await _run(graph, scheduler, run_id)
        except FlowFailed as exc:
            display.finish(exc.run)
            raise
        display.finish(run)
        return run


async def _run(graph: Graph, scheduler: Scheduler, run_id: str) -> FlowRun:
    """Run the scheduler, then make the FlowRun, or raise what stopped the run."""
    await scheduler.run()
    nodes, slots = scheduler.nodes, scheduler.slots
    states = {node.unique_name: slots[node].state for node in nodes}
    # Results are built when first read, from what they need only (not the scheduler).
    results = functools.partial(_results, list(graph.specs), nodes, slots)
    run = FlowRun(graph, results, states, scheduler.errors, run_id)
    if scheduler.fatal is not None:
        raise scheduler.fatal
    if scheduler.errors:
        raise FlowFailed(run, dict(scheduler.errors))
    return run
