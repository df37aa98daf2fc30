"""The scheduling loop: run every task instance as soon as its own predecessors are done.

The instances run on the one worker pool (:class:`aioflows._workers.Pool`), fed by a ready
queue (a :class:`~aioflows._workers.QueueSource`): an instance is queued the moment its last
predecessor settles, so independent branches never wait for each other (no level-by-level
barrier). The pool grows lazily, up to ``concurrency``, only while queued instances wait for
a worker and every worker is inside an instance that waits. An instance costs a queue entry and
a small state record, never a task and an Event of its own.

The pool has no sink: :meth:`Scheduler._instance`, its call, settles the instance itself and
returns nothing, so a worker runs the pool's drain loop (pop the queue's deque, await the
call). The pool's pull, sink and item bookkeeping were half the CPU of running 10,000 no-op
instances (cProfile, ``benchmarks/flows.py --part fanout``); that loop has none of them.

A task's own ``concurrency`` is a count of free slots: an instance taken while its task has
none is *parked* (it holds no worker, so other tasks run on) and queued again, with the slot,
when one frees; it was looked up in the store when first taken, so it is not looked up again.
With ``resources``, a running instance holds one item of the pool for its whole run.

Failure marks the failed instance's descendants UPSTREAM_FAILED; with ``fail_fast`` the
pool is cancelled, running instances see the cancellation and mark themselves KILLED (in
memory only: see :mod:`aioflows.flow.cache`). A cancellation from outside does the same marking
and then propagates. Nothing outlives :meth:`Scheduler.run`.

A task that raises a ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
``SystemExit``, a test framework's failure) is FAILED like any failure, but it stops the whole
run whatever ``fail_fast`` says (:attr:`Scheduler.fatal`).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._workers import Pool, QueueSource
from ..stores.records import TaskState
from .events import HELD, SETTLED, now
from .graph import TaskNode

if TYPE_CHECKING:
    from .cache import Cache
    from .events import Events, Slot
    from .graph import Graph

__all__ = ["Begin", "Scheduler"]

#: Gives the call of one instance's body, for the scheduler to await (given the node, its slot
#: and the resource it holds, None without resources); the scheduler has marked it RUNNING.
Begin = Callable[[TaskNode, "Slot", Any], Awaitable[Any]]

_SCHEDULED, _RUNNING, _FINISHED = TaskState.SCHEDULED, TaskState.RUNNING, TaskState.FINISHED
_PENDING = TaskState.PENDING
_time_ns = time.time_ns


class Scheduler:
    """Runs ``nodes`` (a subset of ``graph``'s, closed under predecessors) on one worker pool.

    Args:
        graph: The expanded flow (its specs' per-task ``concurrency``).
        nodes: The instances to run, in topological order.
        slots: Their slots (predecessor counts set: only predecessors in the run count).
        events: Where states change.
        cache: The run's store, None without one.
        begin: Gives one instance's call (the executor's part).
        concurrency: At most this many instances at once (None: as many as there are).
        fail_fast: A failure cancels every running instance and starts nothing more.
        resources: Items a running instance holds one of (None: none).
    """

    def __init__(
        self,
        graph: Graph,
        nodes: list[TaskNode],
        *,
        slots: dict[TaskNode, Slot],
        events: Events,
        cache: Cache | None,
        begin: Begin,
        concurrency: int | None,
        fail_fast: bool,
        resources: Sequence[Any] | None,
    ) -> None:
        self.nodes = nodes
        self.slots = slots
        self.events = events
        self._set = events.set  # bound once: a state change is the commonest call here
        self.cache = cache
        self.begin = begin
        self.fail_fast = fail_fast
        limit = concurrency if concurrency is not None else max(1, len(nodes))
        if resources is not None:
            limit = min(limit, len(resources))
        self.limit = limit
        self.resources = list(resources) if resources is not None else None
        self.unsettled = len(nodes)
        self.errors: dict[str, BaseException] = {}
        # The first BaseException (not an Exception) a task raised: it ends the run.
        self.fatal: BaseException | None = None
        # A failure of the scheduling itself (not of an instance): run() raises it.
        self.error: BaseException | None = None
        self.ready: QueueSource[TaskNode] = QueueSource()
        self.pool = Pool(self._instance, self.ready, limit, grow=True)
        self.stopping = False  # the pool is cancelled: by fail-fast or a fatal error
        self.resource_send: MemoryObjectSendStream[Any]
        self.resource_receive: MemoryObjectReceiveStream[Any]
        self.cancelled = anyio.get_cancelled_exc_class()
        # Per-task concurrency: free slots, and the instances parked until one frees.
        self.task_slots = {
            name: spec.options.concurrency
            for name, spec in graph.specs.items()
            if spec.options.concurrency is not None
        }
        self.parked: dict[str, collections.deque[TaskNode]] = {
            name: collections.deque() for name in self.task_slots
        }
        # Nobody listens to state changes: a change is then an assignment, not a call (set in
        # run(): the progress display adds its listener after this is made).
        self._quiet = False

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every instance; failures are in :attr:`errors` and :attr:`fatal` after."""
        if self.resources is not None:
            res_send, res_receive = anyio.create_memory_object_stream[Any](math.inf)
            for item in self.resources:
                res_send.send_nowait(item)
            self.resource_send, self.resource_receive = res_send, res_receive
        events = self.events
        self._quiet = events.on_event is None and not events.listeners
        try:
            await events.delivering(self._schedule_all)
        finally:
            self.ready.close()
            if self.resources is not None:
                self.resource_send.close()
                self.resource_receive.close()
            cache = self.cache
            if cache is not None and cache.killed:
                # Also after a cancellation from outside, hence the shield.
                with anyio.CancelScope(shield=True):
                    await cache.record_killed()
        if self.error is not None:
            raise self.error

    async def _schedule_all(self) -> None:
        if self.unsettled == 0:
            self.ready.close()
        for node in self.nodes:
            if self.slots[node].remaining == 0:
                self._enqueue(node)
        pool = self.pool
        try:
            await pool.run()
        except BaseException as exc:
            if exc is not pool.error:
                raise
            # The scheduling itself failed (a store's save_failed): run() raises it, as
            # itself, once the run has stopped (not wrapped by the event dispatcher's group).
            self.error = exc
        finally:
            self.ready.items.clear()  # what is still queued will not run

    def _enqueue(self, node: TaskNode) -> None:
        if self._quiet:
            self.slots[node].state = _SCHEDULED
        else:
            self._set(node, _SCHEDULED)
        self.ready.feed(node)

    async def _instance(self, node: TaskNode) -> None:
        """Run one queued instance: the pool's call.

        A running instance's stack is the pool's worker, this, then the task's own function
        (its guard first, if it has limiters, a retry or a timeout): every level more is a
        frame and a traceback entry per instance to unwind when the run is cancelled, so the
        cache lookup, the state changes and the queueing of successors are steps in here,
        not levels around the call.
        """
        slot = self.slots[node]
        if slot.state is not _SCHEDULED:
            return
        task_slots = self.task_slots
        # Without a store or per-task slots there is nothing to wait for before the run: no
        # coroutine for _ready then (its cost is per instance).
        if (self.cache is not None or task_slots) and not await self._ready(node, slot):
            return
        resource: Any = None
        held = False
        quiet = self._quiet
        try:
            if self.resources is not None:
                resource = await self.resource_receive.receive()
                held = True
            slot.started = _time_ns() // 1000
            if quiet:
                slot.state = _RUNNING
            else:
                self._set(node, _RUNNING)
            slot.value = await self.begin(node, slot, resource)
            slot.ended = _time_ns() // 1000
            if self.cache is not None:
                await self.cache.save_result(node, slot)
        except self.cancelled:
            self._kill(node, slot)
            # The pool is being cancelled (fail-fast, or from outside): its worker ends. A
            # CancelledError the task raised of its own kills only this instance. (The test
            # of the deadline costs a look-up of the event loop: not for each of thousands
            # of instances stopped by fail-fast.)
            if self.stopping or anyio.current_effective_deadline() == -math.inf:
                raise
        except BaseException as exc:
            await self._fail(node, slot, exc)
        else:
            if quiet:
                slot.state = _FINISHED
            else:
                self._set(node, _FINISHED)
            # _done, inline (as _enqueue): it runs once per instance
            self.unsettled -= 1
            ready = self.ready
            if not self.unsettled:
                ready.close()
            slots = self.slots
            for succ in node.successors:
                succ_slot = slots.get(succ)
                if succ_slot is not None:
                    succ_slot.remaining -= 1
                    if not succ_slot.remaining and succ_slot.state is _PENDING:
                        if quiet:
                            succ_slot.state = _SCHEDULED
                        else:
                            self._set(succ, _SCHEDULED)
                        ready.feed(succ)
        finally:
            if held:
                self.resource_send.send_nowait(resource)
            if task_slots and node.task in task_slots:
                self._free_task_slot(node.task)

    # --- one instance -----------------------------------------------------------------------

    async def _ready(self, node: TaskNode, slot: Slot) -> bool:
        """Whether ``node`` is to run now: False if it was cached, failed to read the store,
        or is parked until its task has a free slot (then that slot is taken here)."""
        if slot.remaining == HELD:  # parked before: looked up then, handed its slot when queued
            return True
        cache = self.cache
        if cache is not None and node.task not in cache.forced:
            try:
                cached = await cache.load(node, slot)
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
        parked = self.parked[task]
        if not parked:
            self.task_slots[task] += 1
            return
        # The longest-parked instance of the task goes back in the queue with the slot, so
        # no instance queued meanwhile takes it first and the parked one parks again.
        node = parked.popleft()
        self.slots[node].remaining = HELD
        self.ready.feed(node)

    def _settle(self, node: TaskNode) -> None:
        self.unsettled -= 1
        if self.unsettled == 0:
            self.ready.close()

    def _done(self, node: TaskNode) -> None:
        """``node`` finished or was cached: queue the successors it was the last one for
        (:meth:`_instance` does the same inline for the instances it ran)."""
        self._settle(node)
        slots = self.slots
        for succ in node.successors:
            slot = slots.get(succ)
            if slot is not None:
                slot.remaining -= 1
                if slot.remaining == 0 and slot.state is _PENDING:
                    self._enqueue(succ)

    def _failed(self, node: TaskNode, exc: BaseException) -> None:
        self.errors[node.unique_name] = exc
        self._settle(node)
        stack = list(node.successors)
        while stack:
            succ = stack.pop()
            slot = self.slots.get(succ)
            if slot is not None and slot.state not in SETTLED:
                self._set(succ, TaskState.UPSTREAM_FAILED)
                self._settle(succ)
                stack.extend(succ.successors)
        if self.fail_fast:
            self._stop()

    def _kill(self, node: TaskNode, slot: Slot) -> None:
        """A cancelled running instance: KILLED in memory only, no await (the records of all
        of them are written at once, after the cancellation: run())."""
        if slot.state is not TaskState.RUNNING:  # cancelled while it waited for a resource
            return
        slot.ended = now()
        self._set(node, TaskState.KILLED)
        if self.cache is not None:
            self.cache.killed.append(node)
        self._settle(node)

    async def _fail(self, node: TaskNode, slot: Slot, exc: BaseException) -> None:
        slot.ended = now()
        slot.error = exc
        self._set(node, TaskState.FAILED, exc)
        if self.cache is not None:
            with anyio.CancelScope(shield=True):
                await self.cache.save_failed(node, slot)
        if not isinstance(exc, Exception):
            self._fatal(node, exc)
        self._failed(node, exc)

    def _fatal(self, node: TaskNode, exc: BaseException) -> None:
        """A BaseException that is not an Exception asks to stop, not to be collected: the
        whole run is cancelled (whatever ``fail_fast``) and the executor raises it once all
        stopped.

        It is caught here rather than left to escape the worker, so that the instance is
        recorded FAILED, the others KILLED, and it comes out as itself, not wrapped in the task
        group's exception group.
        """
        if self.fatal is None:
            self.fatal = exc
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(f"raised by flow task instance {node.unique_name}; the run was stopped")
        self._stop()

    def _stop(self) -> None:
        """Cancel every running instance and start none more."""
        self.stopping = True
        self.pool.cancel()
