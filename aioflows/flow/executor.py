"""The scheduling loop: run every task instance as soon as its own predecessors are done.

One task group holds a pool of worker tasks fed by a ready queue (a memory object stream).
Workers are started lazily, up to ``concurrency``, only when queued instances outnumber idle
workers; an instance is queued the moment its last predecessor settles, so independent branches
never wait for each other (no level-by-level barrier). An instance costs a queue entry and a
small state record, never a task and an Event of its own.

Failure marks the failed instance's descendants UPSTREAM_FAILED; with ``fail_fast`` the task
group is cancelled, running instances see the cancellation and mark themselves KILLED. A
cancellation from outside does the same marking and then propagates. Nothing outlives
:func:`run_flow`.

Marking an instance KILLED is in memory only (its state, its event): no await and no shield per
instance, so stopping thousands of instances costs little more than the cancellation itself.
Their KILLED records are written afterwards in one batch (``ResultStore._save_advice``), which
a store may write without fsync: a KILLED record is advice (a lost one means the instance runs
again, as it would anyway), a FINISHED one is a promise and is written durably as before.

A task that raises a ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
``SystemExit``, a test framework's failure) is FAILED like any failure, but it stops the whole
run whatever ``fail_fast`` says, and :func:`run_flow` raises that exception itself once
everything has stopped: it is not an error to collect into ``FlowFailed``.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import _validate
from .._callables import is_async_callable
from ..calls import guard
from ..errors import CorruptObject, FlowError, FlowFailed, MissingObject
from ..stores.base import ResultStore
from ..stores.jsontext import holds_text
from ..stores.memory import MemoryStore
from ..stores.records import RawInfos, TaskInfo, TaskState, from_micros, micros
from .context import TaskContext
from .graph import Graph, TaskNode
from .identity import strip_ignored
from .run import FlowRun, Sweep, TaskEvent, TaskResult
from .spec import Flow

__all__ = ["RESULT_NAME", "run_flow"]

_log = logging.getLogger("aioflows.flow")

#: Levels of predecessors a TaskInfo record's unique_config keeps in full.
_RECORD_DEPTH = 8

#: Instances a worker takes from the queue without yielding to the loop.
_STREAK = 64

#: The name a task instance's return value is saved under in the store.
RESULT_NAME = "result"

_SETTLED = frozenset(
    {
        TaskState.FINISHED,
        TaskState.CACHED,
        TaskState.FAILED,
        TaskState.KILLED,
        TaskState.UPSTREAM_FAILED,
    }
)


def _now() -> int:
    """Now, in integer microseconds since the epoch: what slots keep (a datetime per start and
    end of every instance would cost more than the bookkeeping around it)."""
    return time.time_ns() // 1000


class _Slot:
    """The mutable run state of one instance."""

    __slots__ = ("attempts", "ended", "error", "remaining", "started", "state", "value")

    def __init__(self, remaining: int) -> None:
        self.state = TaskState.PENDING
        self.remaining = remaining  # predecessors in the run not yet done
        self.value: Any = None
        self.attempts = 0
        self.started: int | None = None  # microseconds since the epoch (see _now)
        self.ended: int | None = None
        self.error: BaseException | None = None


class _Call:
    """One attempt's inputs, handed through the guard (limiters, timeout, retry)."""

    __slots__ = ("kwargs", "node", "slot")

    def __init__(self, node: TaskNode, slot: _Slot, kwargs: dict[str, Any]) -> None:
        self.node = node
        self.slot = slot
        self.kwargs = kwargs


def _recorded_config(node: TaskNode, prefix: str | None, depth: int = _RECORD_DEPTH) -> Any:
    """The unique_config written to a TaskInfo record, its nesting bounded.

    ``node.unique_config`` nests every ancestor's config, which in a chain of thousands grows
    with the depth of the graph (and past what JSON encoders recurse into). A record keeps
    ``depth`` levels of predecessors in full and names deeper ones by their config_hash, which
    identifies them as well.
    """
    own: dict[str, Any] = strip_ignored(node.config, prefix)
    for pred in node.predecessors:
        entry = _recorded_config(pred, prefix, depth - 1) if depth > 1 else pred.config_hash
        if node.reduce:
            own.setdefault(pred.task, []).append(entry)
        else:
            own[pred.task] = entry
    return own


def _json_faithful(value: Any, depth: int = 0) -> bool:
    """Whether a JSON round trip returns ``value`` as it is (types included)."""
    if type(value) is str:
        return holds_text(value)  # a surrogate pair kept as two characters reads back as one
    if value is None or type(value) in (int, bool):
        return True
    if type(value) is float:
        return math.isfinite(value)
    if depth > 50:
        return False
    if type(value) is list:
        return all(_json_faithful(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(
            type(k) is str and holds_text(k) and _json_faithful(v, depth + 1)
            for k, v in value.items()
        )
    return False


def _results(
    tasks: list[str], nodes: Sequence[TaskNode], slots: dict[TaskNode, _Slot]
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


def _select(graph: Graph, targets: Sequence[str] | None) -> list[TaskNode]:
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
    flow: Flow,
    *,
    store: ResultStore | None,
    concurrency: int | None,
    force: str | Sequence[str] | None,
    fail_fast: bool,
    resources: Sequence[Any] | None,
    targets: Sequence[str] | None,
    on_event: Callable[[TaskEvent], Any] | None,
    progress: bool,
) -> FlowRun:
    _check_options(store, concurrency, resources, on_event)
    graph = flow.graph()
    executor = _Executor(
        graph,
        _select(graph, targets),
        store=store,
        concurrency=concurrency,
        forced=_resolve_force(graph, force),
        fail_fast=fail_fast,
        resources=resources,
        on_event=on_event,
    )
    if not progress:
        return await executor.run()
    from .progress import FlowProgress

    async with FlowProgress(flow.name, executor.nodes) as display:
        executor.listeners.append(display.update)
        try:
            run = await executor.run()
        except FlowFailed as exc:
            display.finish(exc.run)
            raise
        display.finish(run)
        return run


class _Executor:
    def __init__(
        self,
        graph: Graph,
        nodes: list[TaskNode],
        *,
        store: ResultStore | None,
        concurrency: int | None,
        forced: frozenset[str],
        fail_fast: bool,
        resources: Sequence[Any] | None,
        on_event: Callable[[TaskEvent], Any] | None,
    ) -> None:
        self.graph = graph
        self.nodes = nodes
        self.store = store
        self.ctx_store: ResultStore = store if store is not None else MemoryStore()
        self.forced = forced
        self.fail_fast = fail_fast
        self.on_event = on_event
        self.listeners: list[Callable[[TaskEvent], None]] = []
        in_run = {id(n) for n in nodes} if len(nodes) != len(graph.nodes) else None
        self.slots: dict[TaskNode, _Slot] = {}
        for node in nodes:
            preds = node.predecessors
            if in_run is not None:
                preds = tuple(p for p in preds if id(p) in in_run)
            self.slots[node] = _Slot(len(preds))
        self.in_run = in_run
        limit = concurrency if concurrency is not None else max(1, len(nodes))
        if resources is not None:
            limit = min(limit, len(resources))
        self.limit = limit
        self.resources = list(resources) if resources is not None else None
        self.unsettled = len(nodes)
        self.workers = self.idle = self.queued = 0
        self.streak = 0  # instances taken from the queue since the last checkpoint
        self.spawning = False
        self.errors: dict[str, BaseException] = {}
        # Instances killed by a cancellation, their records written in one batch at the end.
        self.killed: list[TaskNode] = []
        # The first BaseException (not an Exception) a task raised: it ends the run.
        self.fatal: BaseException | None = None
        self.send: MemoryObjectSendStream[TaskNode]
        self.receive: MemoryObjectReceiveStream[TaskNode]
        self.task_group: anyio.abc.TaskGroup | None = None
        self.events: MemoryObjectSendStream[TaskEvent] | None = None
        self.async_events = on_event is not None and is_async_callable(on_event)
        self.cancelled = anyio.get_cancelled_exc_class()
        self.calls = {
            name: guard(self._attempt, spec.options.policy) for name, spec in graph.specs.items()
        }
        # Tasks whose function is awaited directly: no guard around it, one level less.
        self.direct = {
            name: spec.fn
            for name, spec in graph.specs.items()
            if self.calls[name] == self._attempt and graph.bindings[name].is_async
        }
        # Per-task concurrency: free slots, and the instances parked until one frees. A parked
        # instance holds no worker, so other tasks run on while it waits.
        self.task_slots = {
            name: spec.options.concurrency
            for name, spec in graph.specs.items()
            if spec.options.concurrency is not None
        }
        self.parked: dict[str, collections.deque[TaskNode]] = {
            name: collections.deque() for name in self.task_slots
        }

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> FlowRun:
        self.send, self.receive = anyio.create_memory_object_stream[TaskNode](math.inf)
        if self.resources is not None:
            res_send, res_receive = anyio.create_memory_object_stream[Any](math.inf)
            for item in self.resources:
                res_send.send_nowait(item)
            self.resource_send, self.resource_receive = res_send, res_receive
        try:
            if self.async_events:
                # Events are also raised from sync code (queueing, marking descendants), so an
                # async callback is fed through a stream by one dispatcher task. It lives in an
                # outer group so that fail-fast, which cancels the workers, still delivers them.
                async with anyio.create_task_group() as outer:
                    self.events, receive = anyio.create_memory_object_stream[TaskEvent](math.inf)
                    outer.start_soon(self._dispatch, receive)
                    with self.events:
                        await self._schedule_all()
            else:
                await self._schedule_all()
        finally:
            self.send.close()
            self.receive.close()
            if self.resources is not None:
                self.resource_send.close()
                self.resource_receive.close()
            if self.killed and self.store is not None:
                # Also after a cancellation from outside, hence the shield.
                with anyio.CancelScope(shield=True):
                    await self._record_killed()
        run = self._flow_run()
        if self.fatal is not None:
            raise self.fatal
        if self.errors:
            raise FlowFailed(run, dict(self.errors))
        return run

    async def _schedule_all(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self.task_group = tg
                if self.unsettled == 0:
                    self.send.close()
                for node in self.nodes:
                    if self.slots[node].remaining == 0:
                        self._enqueue(node)
        finally:
            self.task_group = None

    def _enqueue(self, node: TaskNode) -> None:
        self._set(node, TaskState.SCHEDULED)
        self.send.send_nowait(node)
        self.queued += 1
        if not self.idle:
            self._spawn()

    def _spawn(self) -> None:
        """Add a worker if all are busy, at most one per loop pass.

        Growing by one per pass (the new worker spawns the next if the queue still outruns
        the pool) keeps the pool as small as the work allows: instances that finish without
        waiting are served by few workers, while instances that wait grow the pool up to
        ``concurrency``. Thousands of idle tasks would cost memory and garbage-collector time.
        """
        if self.spawning or self.workers >= self.limit or self.task_group is None:
            return
        self.spawning = True
        self.workers += 1
        self.task_group.start_soon(self._worker)

    async def _worker(self) -> None:
        # A running instance's stack is this worker, then the task's own function (its guard
        # first, if it has limiters, a retry or a timeout): every level more is a frame and a
        # traceback entry per instance to unwind when the run is cancelled, so taking a node,
        # the cache lookup and the state changes are steps of their own, not levels around
        # the call.
        self.spawning = False
        slots = self.slots
        try:
            while True:
                node = await self._take()
                if node is None:
                    return
                slot = slots[node]
                if slot.state is not TaskState.SCHEDULED or not await self._ready(node):
                    continue
                resource: Any = None
                held = False
                try:
                    if self.resources is not None:
                        resource = await self.resource_receive.receive()
                        held = True
                    slot.value = await self._begin(node, slot, resource)
                    slot.ended = _now()
                    if self.store is not None:
                        await self._save_result(node, slot)
                except self.cancelled:
                    self._kill(node, slot)
                    raise
                except BaseException as exc:
                    await self._fail(node, slot, exc)
                else:
                    self._set(node, TaskState.FINISHED)
                    self._done(node)
                finally:
                    if held:
                        self.resource_send.send_nowait(resource)
                    if node.task in self.task_slots:
                        self._free_task_slot(node.task)
        except self.cancelled:
            # The task group is being cancelled: fail-fast, or from outside, where the host
            # task raises the cancellation on its own. The running instance has marked itself
            # KILLED; the worker just ends. Letting the exception out would keep it on the
            # finished task, and with it its traceback and every frame of the instance's
            # stack, as a reference cycle only a full garbage collection frees: with
            # thousands of instances that collection would cost more than the cancellation.
            return

    async def _take(self) -> TaskNode | None:
        """The next queued instance (None once the queue is closed and empty)."""
        receive = self.receive
        try:
            node = receive.receive_nowait()
            self.streak += 1
            if self.streak >= _STREAK:  # instances that never wait must not starve the loop
                self.streak = 0
                await anyio.lowlevel.checkpoint()
        except anyio.WouldBlock:
            self.streak = 0
            self.idle += 1
            try:
                node = await receive.receive()
            except anyio.EndOfStream:
                return None
            finally:
                self.idle -= 1
        except anyio.EndOfStream:
            return None
        self.queued -= 1
        if self.queued and not self.idle:
            self._spawn()
        return node

    def _settle(self, node: TaskNode) -> None:
        self.unsettled -= 1
        if self.unsettled == 0:
            self.send.close()

    def _done(self, node: TaskNode) -> None:
        """``node`` finished or was cached: queue the successors it was the last one for."""
        self._settle(node)
        slots = self.slots
        for succ in node.successors:
            slot = slots.get(succ)
            if slot is not None:
                slot.remaining -= 1
                if slot.remaining == 0 and slot.state is TaskState.PENDING:
                    self._enqueue(succ)

    def _failed(self, node: TaskNode, exc: BaseException) -> None:
        self.errors[node.unique_name] = exc
        self._settle(node)
        stack = list(node.successors)
        while stack:
            succ = stack.pop()
            slot = self.slots.get(succ)
            if slot is not None and slot.state not in _SETTLED:
                self._set(succ, TaskState.UPSTREAM_FAILED)
                self._settle(succ)
                stack.extend(succ.successors)
        if self.fail_fast and self.task_group is not None:
            self.task_group.cancel_scope.cancel()

    def _set(self, node: TaskNode, state: TaskState, error: BaseException | None = None) -> None:
        self.slots[node].state = state
        if self.on_event is None and not self.listeners:
            return
        event = TaskEvent(node.unique_name, node.task, state, datetime.now(timezone.utc), error)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("event listener failed for %s", event)
        if self.on_event is not None:
            if self.events is not None:
                self.events.send_nowait(event)  # an async callback, awaited in order
            else:
                try:
                    self.on_event(event)
                except Exception:
                    # An observer's bug must not fail (or half-cancel) the flow it watches.
                    _log.exception("on_event callback failed for %s", event)

    async def _dispatch(self, events: MemoryObjectReceiveStream[TaskEvent]) -> None:
        assert self.on_event is not None
        async with events:
            async for event in events:
                try:
                    await self.on_event(event)
                except Exception:
                    _log.exception("on_event callback failed for %s", event)

    # --- one instance -----------------------------------------------------------------------

    async def _ready(self, node: TaskNode) -> bool:
        """Whether ``node`` is to run now: False if it was cached, failed to read the store,
        or is parked until its task has a free slot (then that slot is taken here)."""
        slot = self.slots[node]
        store = self.store
        if store is not None and node.task not in self.forced:
            try:
                cached = await self._load_cached(node)
            except CorruptObject as exc:
                # The record or result is damaged: computing it again is the remedy.
                _log.warning(
                    "%s: cannot use the stored result (%s); running it", node.unique_name, exc
                )
                cached = False
            except Exception as exc:
                slot.error = exc
                self._set(node, TaskState.FAILED, exc)
                self._failed(node, exc)
                return False
            if cached:
                self._set(node, TaskState.CACHED)
                self._done(node)
                return False
        if node.task in self.task_slots:
            if not self.task_slots[node.task]:
                self.parked[node.task].append(node)  # stays SCHEDULED; its worker moves on
                return False
            self.task_slots[node.task] -= 1
        return True

    def _free_task_slot(self, task: str) -> None:
        self.task_slots[task] += 1
        parked = self.parked[task]
        if parked:  # the longest-parked instance of the task goes back in the queue
            self.send.send_nowait(parked.popleft())
            self.queued += 1
            if not self.idle:
                self._spawn()

    async def _load_cached(self, node: TaskNode) -> bool:
        assert self.store is not None
        info = await self.store.load_info(task=node.task, config_hash=node.config_hash)
        if info is None or info.state is not TaskState.FINISHED:
            return False
        try:
            value = await self.store.load(RESULT_NAME, task=node.task, config_hash=node.config_hash)
        except MissingObject:
            return False  # the record outlived its result (deleted by hand): run again
        slot = self.slots[node]
        slot.value = value
        slot.attempts = info.attempts
        slot.started, slot.ended = micros(info.started), micros(info.ended)
        return True

    def _inputs(self, node: TaskNode, resource: Any) -> dict[str, Any]:
        binding = self.graph.bindings[node.task]
        kwargs = dict(node.config)
        if binding.results:
            slots = self.slots
            if node.reduce:
                for name in binding.results:
                    kwargs[name] = [
                        Sweep(slots[p].value, p.unique_config, p.unique_name, p.config_hash)
                        for p in node.predecessors
                        if p.task == name
                    ]
            else:
                for p in node.predecessors:
                    if p.task in binding.results:
                        kwargs[p.task] = slots[p].value
        if binding.ctx is not None:
            kwargs[binding.ctx] = TaskContext(node, self.ctx_store, resource)
        return kwargs

    def _begin(self, node: TaskNode, slot: _Slot, resource: Any) -> Awaitable[Any]:
        """Mark ``node`` RUNNING and return the call of its function, for the worker to await."""
        slot.started = _now()
        self._set(node, TaskState.RUNNING)
        kwargs = self._inputs(node, resource)
        fn = self.direct.get(node.task)
        if fn is not None:  # async, no limiter, retry or timeout: awaited by the worker itself
            slot.attempts += 1
            awaitable: Awaitable[Any] = fn(**kwargs)
            return awaitable
        return self.calls[node.task](_Call(node, slot, kwargs))

    def _kill(self, node: TaskNode, slot: _Slot) -> None:
        """A cancelled running instance: KILLED in memory only, no await (the records of all
        of them are written at once, after the cancellation: run())."""
        if slot.state is not TaskState.RUNNING:  # cancelled while it waited for a resource
            return
        slot.ended = _now()
        self._set(node, TaskState.KILLED)
        self.killed.append(node)
        self._settle(node)

    async def _fail(self, node: TaskNode, slot: _Slot, exc: BaseException) -> None:
        slot.ended = _now()
        slot.error = exc
        self._set(node, TaskState.FAILED, exc)
        with anyio.CancelScope(shield=True):
            await self._save_info_quietly(node, slot, TaskState.FAILED)
        if not isinstance(exc, Exception):
            self._fatal(node, exc)
        self._failed(node, exc)

    def _fatal(self, node: TaskNode, exc: BaseException) -> None:
        """A BaseException that is not an Exception asks to stop, not to be collected: the
        whole run is cancelled (whatever ``fail_fast``) and run() raises it once all stopped.

        It is caught here rather than left to escape the worker, so that the instance is
        recorded FAILED, the others KILLED, and it comes out as itself, not wrapped in the task
        group's exception group.
        """
        if self.fatal is None:
            self.fatal = exc
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(f"raised by flow task instance {node.unique_name}; the run was stopped")
        if self.task_group is not None:
            self.task_group.cancel_scope.cancel()

    async def _attempt(self, call: _Call) -> Any:
        call.slot.attempts += 1
        fn = self.graph.specs[call.node.task].fn
        if self.graph.bindings[call.node.task].is_async:
            return await fn(**call.kwargs)
        return await anyio.to_thread.run_sync(functools.partial(fn, **call.kwargs))

    async def _save_result(self, node: TaskNode, slot: _Slot) -> None:
        assert self.store is not None
        key = {"task": node.task, "config_hash": node.config_hash}
        # JSON (readable with any tool) when it gives the value back unchanged; otherwise a
        # pickle (the store's own files, so trusted data) so a cached run sees what a fresh
        # one would: a tuple stays a tuple, int keys stay ints.
        type_ = "json" if _json_faithful(slot.value) else "pickle"
        await self.store.save(slot.value, RESULT_NAME, **key, type_=type_)
        # The record comes last: FINISHED on disk implies the result is there.
        await self._save_info(node, slot, TaskState.FINISHED)

    async def _save_info(self, node: TaskNode, slot: _Slot, state: TaskState) -> None:
        if self.store is None:
            return
        await self.store.save_info(self._info(node, slot, state))

    def _info(self, node: TaskNode, slot: _Slot, state: TaskState) -> TaskInfo:
        error = slot.error
        return TaskInfo(
            node.task,
            node.config_hash,
            node.unique_name,
            state,
            config=strip_ignored(node.config, self.graph.flow.config_ignore_prefix),
            unique_config=_recorded_config(node, self.graph.flow.config_ignore_prefix),
            started=from_micros(slot.started),
            ended=from_micros(slot.ended),
            attempts=slot.attempts,
            error=None if error is None else f"{type(error).__name__}: {error}",
        )

    async def _record_killed(self) -> None:
        """Write the KILLED records of this run in one batch, after the cancellation.

        One store call (for a LocalFileStore one worker-thread hop, no fsync), not one shielded
        write per instance inside the cancellation: that made stopping 10,000 instances take
        half a minute. The run already reports these states, so a store error is logged.
        """
        assert self.store is not None
        killed, self.killed = self.killed, []
        by_task: dict[str, list[TaskNode]] = {}
        for n in killed:
            by_task.setdefault(n.task, []).append(n)
        for task, nodes in by_task.items():
            try:
                await self.store._save_advice(self._killed_columns(task, nodes))
            except Exception:
                _log.exception("could not record %d KILLED instance(s) of %s", len(nodes), task)

    def _killed_columns(self, task: str, nodes: list[TaskNode]) -> RawInfos:
        """The KILLED records of ``nodes`` (all of ``task``), one list per field."""
        slots = [self.slots[n] for n in nodes]
        if any(n.predecessors for n in nodes):
            prefix = self.graph.flow.config_ignore_prefix
            configs = [strip_ignored(n.config, prefix) for n in nodes]
            uniques: list[dict[str, Any] | None] = [
                _recorded_config(n, prefix) if n.predecessors else None for n in nodes
            ]
        else:  # roots: unique_config is the config, stripped; the graph made it already
            configs, uniques = [n.unique_config for n in nodes], [None] * len(nodes)
        return RawInfos(
            task,
            [n.config_hash for n in nodes],
            [n.unique_name for n in nodes],
            [TaskState.KILLED] * len(nodes),
            list(configs),
            uniques,
            [s.started for s in slots],
            [s.ended for s in slots],
            [s.attempts for s in slots],
            [None] * len(nodes),
        )

    async def _save_info_quietly(self, node: TaskNode, slot: _Slot, state: TaskState) -> None:
        """Record a FAILED or KILLED state; the run already reports it, so a store error here
        is logged rather than raised over the error being recorded."""
        try:
            await self._save_info(node, slot, state)
        except Exception:
            _log.exception("%s: could not record state %s", node.unique_name, state.value)

    def _flow_run(self) -> FlowRun:
        slots = self.slots
        states = {node.unique_name: slots[node].state for node in self.nodes}
        # Results are built when first read, from what they need only (not the executor).
        results = functools.partial(_results, list(self.graph.specs), self.nodes, slots)
        return FlowRun(self.graph, results, states, self.errors)
