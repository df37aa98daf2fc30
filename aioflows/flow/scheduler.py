"""The scheduling loop: run every task instance as soon as its own predecessors are done.

The instances run on the scheduler's own workers, fed by a ready queue (a
:class:`~aioflows.flow.readyqueue.ReadyQueue`): an instance is queued the moment its last
predecessor settles, so independent branches never wait for each other (no level-by-level
barrier). The workers grow lazily, up to ``concurrency``, only while queued instances wait for
a worker and every worker is inside an instance that waits. An instance costs a queue entry and
a small state record, never a task and an Event of its own.

A worker runs an instance in its own loop (no coroutine around it: the body's is the only one
made per instance), which is the generic :class:`aioflows._workers.Pool` specialised for the
flow: the pool's call per item, its sink and its item bookkeeping were half the CPU of running
10,000 no-op instances (cProfile, ``benchmarks/flows.py --part fanout``).

A task's own ``concurrency`` is a count of free slots: an instance taken while its task has
none is *parked* (it holds no worker, so other tasks run on) and queued again, with the slot,
when one frees; it was looked up in the store when first taken, so it is not looked up again.
With ``resources``, a running instance holds one item of the pool for its whole run.

Failure marks the failed instance's descendants UPSTREAM_FAILED; with ``fail_fast`` the
workers are cancelled, running instances see the cancellation and mark themselves KILLED (in
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
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._workers import STREAK
from ..stores.records import TaskState
from .events import HELD, SETTLED, now
from .graph import TaskNode
from .readyqueue import ReadyQueue

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
    """Runs ``nodes`` (a subset of ``graph``'s, closed under predecessors) on its workers.

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
        self.ready = ReadyQueue()
        self.stopping = False  # the workers are cancelled: by fail-fast or a fatal error
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
        # The workers: how many started, waiting for an instance, passing a checkpoint; and
        # whether one started is yet to run (see _take).
        self._group: TaskGroup | None = None
        self.workers = self._idle = self._pausing = 0
        self._spawning = False
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
        try:
            async with anyio.create_task_group() as tg:
                self._group = tg
                self.workers = 1
                tg.start_soon(self._worker)
        finally:
            self._group = None
            self.ready.close()
            self.ready.items.clear()  # what is still queued will not run

    def _enqueue(self, node: TaskNode) -> None:
        if self._quiet:
            self.slots[node].state = _SCHEDULED
        else:
            self._set(node, _SCHEDULED)
        self.ready.put(node)

    def _spawn(self) -> None:
        """Add a worker, at most one per loop pass (the one added is yet to run until then)."""
        if self._spawning or self.workers >= self.limit or self._group is None:
            return
        self._spawning = True
        self.workers += 1
        self._group.start_soon(self._worker)

    async def _worker(self) -> None:
        """Take instances from the ready queue and run them, until it is closed and empty.

        A worker passes a checkpoint every :data:`STREAK` instances it takes in a row (so a run
        of instances that never wait cannot starve the loop nor ignore a cancellation), "in a
        row" read off the indices the queue hands out, as :class:`aioflows._workers.Pool`
        does. Another worker is added when one takes an instance while more are queued and
        no other worker is idle or about to run (just started, or at its checkpoint, which
        looks again when back): so no-op instances are served by one or two workers, and
        instances that wait grow the pool by one per loop pass, up to ``concurrency``. The
        invariant: while instances are queued, some worker is about to look at the queue.
        """
        self._spawning = False
        ready, slots, begin = self.ready, self.slots, self.begin
        items, put, cancelled = ready.items, ready.put, self.cancelled
        popleft = items.popleft
        cache, resources, task_slots = self.cache, self.resources, self.task_slots
        waits = cache is not None or bool(task_slots)
        quiet = self._quiet
        countdown, after = STREAK, -1
        node: Any = None
        try:
            while True:
                if not items:
                    if ready.closed:
                        return
                    node = None  # an idle worker keeps nothing alive
                    self._idle += 1
                    try:
                        await ready.wait()
                    finally:
                        self._idle -= 1
                    after = -1  # it waited: the loop has run, the count starts again
                    continue
                node = popleft()
                index = ready.taken
                ready.taken = index + 1
                if items and not (self._idle or self._pausing or self._spawning):
                    self._spawn()
                countdown = countdown - 1 if index == after else STREAK
                if not countdown:
                    countdown = STREAK
                    self._pausing += 1
                    try:
                        await anyio.lowlevel.checkpoint()
                    finally:
                        self._pausing -= 1
                    # Another worker may have left instances queued for this one, which goes
                    # on with the instance it holds: if that one waits, someone must take them.
                    if items and not (self._idle or self._pausing or self._spawning):
                        self._spawn()
                after = index + 1
                slot = slots[node]
                if slot.state is not _SCHEDULED:
                    continue
                # Without a store or per-task slots there is nothing to wait for before the
                # run: no coroutine for _ready then (its cost is per instance).
                if waits and not await self._ready(node, slot):
                    continue
                # One instance, inline: every level more would be a frame and a traceback
                # entry per instance to unwind when the run is cancelled.
                resource: Any = None
                held = False
                try:
                    if resources is not None:
                        resource = await self.resource_receive.receive()
                        held = True
                    slot.started = _time_ns() // 1000
                    if quiet:
                        slot.state = _RUNNING
                    else:
                        self._set(node, _RUNNING)
                    slot.value = await begin(node, slot, resource)
                    slot.ended = _time_ns() // 1000
                    if cache is not None:
                        await cache.save_result(node, slot)
                except cancelled:
                    self._kill(node, slot)
                    # The workers are being cancelled (fail-fast, or from outside): this one
                    # ends. A CancelledError the task raised of its own kills only this
                    # instance. (The test of the deadline costs a look-up of the event loop:
                    # not for each of thousands of instances stopped by fail-fast.)
                    if self.stopping or anyio.current_effective_deadline() == -math.inf:
                        return
                except BaseException as exc:
                    await self._fail(node, slot, exc)
                else:
                    if quiet:
                        slot.state = _FINISHED
                    else:
                        self._set(node, _FINISHED)
                    # _done, inline (as _enqueue): it runs once per instance
                    self.unsettled -= 1
                    if not self.unsettled:
                        ready.close()
                    for succ in node.successors:
                        succ_slot = slots.get(succ)
                        if succ_slot is not None:
                            succ_slot.remaining -= 1
                            if not succ_slot.remaining and succ_slot.state is _PENDING:
                                if quiet:
                                    succ_slot.state = _SCHEDULED
                                else:
                                    self._set(succ, _SCHEDULED)
                                put(succ)
                finally:
                    if held:
                        self.resource_send.send_nowait(resource)
                    if task_slots and node.task in task_slots:
                        self._free_task_slot(node.task)
        except cancelled as exc:
            # Ends quietly: letting the cancellation out would keep it on the finished task,
            # with its traceback and every frame of the instance's stack, as a cycle only a
            # full garbage collection frees (thousands of workers: more than the cancel).
            # One no cancellation explains (a store raised its own) is a failure.
            if anyio.current_effective_deadline() != -math.inf:
                self._broken(exc)
        except BaseException as exc:  # the scheduling itself failed (a store's save_failed)
            self._broken(exc)

    def _broken(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._stop()

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
        self.ready.put(node)

    def _settle(self, node: TaskNode) -> None:
        self.unsettled -= 1
        if self.unsettled == 0:
            self.ready.close()

    def _done(self, node: TaskNode) -> None:
        """``node`` finished or was cached: queue the successors it was the last one for
        (the worker loop does the same inline for the instances it ran)."""
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
        if self._group is not None:
            self._group.cancel_scope.cancel()
