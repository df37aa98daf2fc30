"""The workers: :class:`Pool`, which pulls items from a source, calls, and delivers to a sink.

This is the hot path of everything in aioflows that calls a function over many items, so the
module holds only the worker loops and what they decide per item: :data:`STREAK` (how many items
a worker takes in a row before it passes a checkpoint) and :func:`is_cancellation` (an exception
that must propagate rather than be recorded). What the loops look up (the pull signals, the
sinks) is imported here once as module-level names: no indirection per item.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .sinks import _DISCARD, Admit, Collect, Sink
from .sources import BLOCKED, DONE, AnySource, Pulled, QueueSource

#: Items a worker takes in a row before it passes a checkpoint: a run of items that never wait
#: (cached flow instances, a sync filter over a list, calls answered from a cache) must not
#: starve the event loop, while a checkpoint per item would cost a loop pass each.
STREAK: Final = 64


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` cancels the task it reached: that one must propagate, not be recorded."""
    return isinstance(exc, anyio.get_cancelled_exc_class())


class Pool:
    """Workers that pull from a source, call, and hand each result to a sink.

    Args:
        call: ``call(item)``, awaited per item.
        source: A :class:`Source`, :class:`StreamSource` or :class:`QueueSource`.
        concurrency: Most workers (the default of :meth:`run`, the cap of ``grow``).
        sink: Where results go (None: they are dropped, the calls keep what they need).
        return_exceptions: An ``Exception`` of ``call`` is a result, not a failure.
        admit: Taken per item before its pull, released by the sink (an ordered sink does).
        call_sync: A plain function doing what ``call`` does, called without an await.
        grow: Start one worker and add one (at most one per loop pass) whenever a worker takes
            an item while items are still backlogged and no other worker is idle or about to
            run (just started, or passing its checkpoint), up to ``concurrency``: the flow
            scheduler's and the server's lazy growth. Instances that finish without waiting
            are then served by one or two workers, while instances that wait grow the pool;
            thousands of idle tasks would cost memory and garbage-collector time. The
            invariant: while items are queued, some worker is about to look at the queue (a
            worker back from its checkpoint looks again, as does a ``put`` from outside that
            wakes no idle worker).

    A worker passes a checkpoint every :data:`STREAK` items it takes in a row, so a run of
    items that never wait cannot starve the event loop (nor ignore a cancel()). "In a row" is
    read off the indices, which every source hands out in the order items are taken: when
    another worker has taken one since, this worker has yielded, and its count starts again;
    so it does when its pull had to wait. Telling that costs a comparison per item, where a
    checkpoint every 64 items of workers that yield anyway costs a loop pass each time, and
    more in a pipeline, where it breaks up the bursts a one-worker stage drains (measured
    with callgrind: +4 % instructions per item of the streams benchmark's pipeline).

    With no ``sink``, no ``admit`` and no ``call_sync`` over a :class:`QueueSource` (the flow
    scheduler's ready queue, a server's requests), a worker runs the drain loop: it pops the
    queue's deque and awaits the call, nothing else per item (no pull call and tuple, no
    delivery). Over 10,000 no-op flow instances those were half the CPU the pool added.

    The first exception of ``call`` (unless ``return_exceptions``), of the source or of the
    sink (a flat stage makes its outputs as they are delivered) is recorded in :attr:`error`,
    the pool is cancelled, and :meth:`run` raises it as itself, not in an exception group; so
    is a BaseException that is not an Exception (KeyboardInterrupt, a test framework's
    failure), which is never a result, and which asyncio would otherwise treat as fatal when it
    leaves a task. The pool holds no reference to whoever consumes its results, so a dropped
    iterator can be collected while its driver still runs.
    """

    __slots__ = (
        "_call",
        "_call_sync",
        "_concurrency",
        "_grow",
        "_idle",
        "_pausing",
        "_return_exceptions",
        "_sink",
        "_spawning",
        "_stopped",
        "_task_group",
        "_workers",
        "admit",
        "error",
        "source",
    )

    def __init__(
        self,
        call: Callable[[Any], Awaitable[Any]],
        source: AnySource,
        concurrency: int,
        *,
        sink: Sink | None = None,
        return_exceptions: bool = False,
        admit: Admit | None = None,
        call_sync: Callable[[Any], Any] | None = None,
        grow: bool = False,
    ) -> None:
        self._call = call
        self._call_sync = call_sync
        self.source = source
        self._concurrency = concurrency
        self._sink: Sink = _DISCARD if sink is None else sink
        self._return_exceptions = return_exceptions
        self.admit = admit
        self._grow = grow
        self.error: BaseException | None = None
        self._task_group: TaskGroup | None = None
        self._workers = self._idle = self._pausing = 0
        self._spawning = self._stopped = False

    async def run(self, workers: int | None = None) -> None:
        """Run until the source is exhausted, then close it; raise the first failure.

        ``workers`` (default ``concurrency``) is how many start; with ``grow``, one starts
        and more are added as the work needs them. A cancellation from outside propagates
        (the task group raises it in this task), and the source is closed then too.
        """
        if self._grow and isinstance(self.source, QueueSource):
            self.source.on_put = self._wanted
        try:
            if not self._stopped:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    count = 1 if self._grow else self._concurrency if workers is None else workers
                    self._workers = count
                    for _ in range(count):
                        self._start(tg)
        finally:
            self._task_group = None
            if isinstance(self.source, QueueSource):
                self.source.on_put = None
            await self.source.aclose()
        if self.error is not None:
            raise self.error

    @property
    def workers(self) -> int:
        """Workers started so far (with ``grow``, what the work has needed)."""
        return self._workers

    def cancel(self) -> None:
        """Stop: admit nothing more and cancel every worker (fail-fast). :meth:`run` then
        returns, or raises :attr:`error` if a failure was recorded."""
        self._stopped = True
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    def fail(self, exc: BaseException) -> None:
        """Record the first failure and cancel the pool; later ones lose the race."""
        if self.error is None:
            self.error = exc
        self.cancel()

    def _wanted(self) -> None:
        """An item was queued and woke no idle worker: add one unless a worker is about to
        look at the queue (one passing its checkpoint looks again when back)."""
        if not (self._idle or self._pausing):
            self._spawn()

    def _spawn(self) -> None:
        """Add a worker, at most one per loop pass: the new one spawns the next if the work
        still outruns the pool, so the pool grows only as far as the work waits."""
        if self._spawning or self._workers >= self._concurrency or self._task_group is None:
            return
        self._spawning = True
        self._workers += 1
        self._start(self._task_group)

    def _start(self, tg: TaskGroup) -> None:
        """Start a worker: the fast path's loop where it applies, else the general one. Each
        is the task itself, not a level under a common wrapper: every level is one more frame
        that each resume of the worker (once per item that waits) passes through."""
        sink, source = self._sink, self.source
        iterator = source.iterator
        if self.admit is not None or self._call_sync is not None:
            tg.start_soon(self._serve)
        elif type(sink) is Collect and iterator is not None and not self._grow:
            tg.start_soon(self._collect, iterator, sink.results)
        elif sink is _DISCARD and type(source) is QueueSource:
            tg.start_soon(self._drain, source)
        else:
            tg.start_soon(self._serve)

    def _cancelled(self, exc: BaseException) -> None:
        """A worker was cancelled: by the pool (a failure, cancel()) or from outside, where the
        task that runs the pool raises the cancellation on its own. The worker just ends:
        letting the exception out would keep it on the finished task, and with it its
        traceback and every frame of the call's stack, as a reference cycle only a full garbage
        collection frees (with thousands of workers and calls, that collection costs more than
        the cancellation). A CancelledError that no cancellation explains (a call raised one of
        its own) is a failure, so that it is not lost."""
        if anyio.current_effective_deadline() != -math.inf:
            self.fail(exc)

    def _settle(self, exc: BaseException) -> bool:
        """What a worker does with an exception from a call, the source or the sink: True if
        it is the item's result (``return_exceptions``), False if the pool has failed (the
        worker ends); a cancellation is raised again, to end the worker."""
        if isinstance(exc, Exception):
            if self._return_exceptions:
                return True
        elif is_cancellation(exc):
            # Raised again without keeping it in this frame: the frame goes on its traceback,
            # and holding ``exc`` there would make a cycle per cancelled worker that only a
            # full garbage collection frees (fail-fast of 10,000 flow instances: +250 ms).
            try:
                raise exc
            finally:
                del exc
        # Not an Exception (KeyboardInterrupt, a test framework's failure) is never a result,
        # and is raised by run() as itself rather than leaving the worker, where the task
        # group would wrap it (and asyncio end the loop for some).
        self.fail(exc)
        return False

    def _failed(self, exc: BaseException) -> None:
        """The source or the sink failed: never a result."""
        if is_cancellation(exc):
            try:
                raise exc  # without keeping it in this frame, as in _settle
            finally:
                del exc
        self.fail(exc)

    async def _collect(self, iterator: Iterator[Any], results: list[Any]) -> None:
        """The fast path (``map`` over a sync iterable): ``next``, an append, the call.

        Workers share one iterator (``next`` cannot interleave on one thread) and write
        straight into the result list, so an item costs nothing beyond the call but one
        ``next``, one append and the checkpoint every :data:`STREAK` items.
        """
        call, append, countdown, after = self._call, results.append, STREAK, -1
        try:
            while True:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                except BaseException as exc:  # the input itself failed
                    self._failed(exc)
                    return
                index = len(results)
                append(None)
                # Another worker took an item since this one's last: this one has yielded.
                countdown = countdown - 1 if index == after else STREAK
                if not countdown:
                    countdown = STREAK
                    await anyio.lowlevel.checkpoint()
                after = index + 1
                try:
                    results[index] = await call(item)
                except BaseException as exc:
                    if not self._settle(exc):
                        return
                    results[index] = exc
        except anyio.get_cancelled_exc_class() as exc:
            self._cancelled(exc)

    async def _drain(self, queue: QueueSource[Any]) -> None:
        """The loop of a pool with no sink over a queue: pop, count, await the call.

        The call returns nothing the pool keeps (the flow scheduler's per-instance function
        settles the instance itself), so an item costs the pop, the count the checkpoint goes
        by, the growth test and the call's own coroutine.
        """
        self._spawning = False
        items, call, grow = queue.items, self._call, self._grow
        popleft = items.popleft
        countdown, after = STREAK, -1
        item: Any = None  # dropped before the worker waits: an idle worker keeps nothing alive
        try:
            while True:
                if not items:
                    if queue.closed:
                        return
                    item = None
                    self._idle += 1
                    try:
                        await queue.wait()
                    finally:
                        self._idle -= 1
                    after = -1  # it waited: the loop has run, the count starts again
                    continue
                item = popleft()
                index = queue.taken
                queue.taken = index + 1
                if grow and items and not (self._idle or self._pausing or self._spawning):
                    self._spawn()
                # Another worker took an item since this one's last: this one has yielded.
                countdown = countdown - 1 if index == after else STREAK
                if not countdown:
                    countdown = STREAK
                    await self._pause()
                after = index + 1
                try:
                    await call(item)
                except BaseException as exc:
                    if not self._settle(exc):
                        return
        except anyio.get_cancelled_exc_class() as exc:
            self._cancelled(exc)

    async def _pause(self) -> None:
        """A growing worker's checkpoint, every :data:`STREAK` items: it counts as about to run
        while there, and adds a worker when back if items are still queued, since it goes on
        with the item it holds (if that one waits, someone must take the rest)."""
        self._pausing += 1
        try:
            await anyio.lowlevel.checkpoint()
        finally:
            self._pausing -= 1
        if self._grow and self.source.backlog and not (self._idle or self._pausing):
            self._spawn()

    async def _pull_idle(self) -> Pulled[Any]:
        """A growing pool's awaited pull: the worker counts as idle while it waits."""
        self._idle += 1
        try:
            return await self.source.pull()
        finally:
            self._idle -= 1

    async def _serve(self) -> None:
        """The worker loop: admission, pull, call, deliver; each without waiting if it can."""
        self._spawning = False
        source, call, sink, admit = self.source, self._call, self._sink, self.admit
        pull_nowait, deliver_nowait = source.pull_nowait, sink.deliver_nowait
        call_sync, grow, blocks = self._call_sync, self._grow, source.blocks
        countdown, after = STREAK, -1
        # The last item and its result, dropped before the worker waits: an idle worker must
        # not keep them alive (a server's idle workers held their last requests, each pinning
        # a 1 MiB arena of the allocator long after the rest was freed).
        item: Any = None
        result: Any = None
        try:
            while True:
                if admit is not None:
                    if admit.free > 0:  # try_acquire, inlined: this runs once per item
                        admit.free -= 1
                    else:
                        item = result = None
                        await admit.acquire()
                try:
                    pulled = pull_nowait()
                    if pulled is BLOCKED:
                        item = result = None
                        pulled = await (self._pull_idle() if grow else source.pull())
                        if blocks:
                            after = -1  # it waited: the loop has run, the count starts again
                except BaseException as exc:  # the input itself failed
                    self._failed(exc)
                    return
                if pulled is DONE:
                    if admit is not None:
                        admit.release()
                    return
                if grow and source.backlog and not (self._idle or self._pausing):
                    self._spawn()
                index, item = pulled
                # Another worker took an item since this one's last: this one has yielded.
                countdown = countdown - 1 if index == after else STREAK
                if not countdown:
                    countdown = STREAK
                    await (self._pause() if grow else anyio.lowlevel.checkpoint())
                after = index + 1
                try:
                    result = await call(item) if call_sync is None else call_sync(item)
                except BaseException as exc:
                    if not self._settle(exc):
                        return
                    result = exc
                try:
                    if not deliver_nowait(index, result):
                        await sink(index, result)
                except BaseException as exc:  # a flat stage makes its outputs as they go out
                    self._failed(exc)
                    return
        except anyio.get_cancelled_exc_class() as exc:
            self._cancelled(exc)
