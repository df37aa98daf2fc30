"""The one worker pool: sources, admission, workers, sinks, and the iterator that owns a driver.

Everything that calls a function over many items (``map``, ``imap``, every pipeline step, the
flow executor, the launcher) runs on :class:`Pool`: a few worker tasks that pull ``(index,
item)`` pairs from a *source* as they become free, call, and hand each result to a *sink*. A
task per item (and often a semaphore wait per item) is what makes ``gather``-style helpers slow
and memory-hungry; a pool pulling lazily is also what keeps an infinite generator from being
materialised.

- Sources: :class:`Source` over an iterable or async iterable, :class:`StreamSource` over a
  memory object stream of numbered items (a pipeline stage's input), :class:`QueueSource` fed
  by ``put`` and ended by ``close`` (the flow executor's ready queue). They share one pull
  protocol: ``pull_nowait()`` gives a pair, :data:`DONE` or :data:`BLOCKED` (take the awaiting
  path), ``await pull()`` a pair or :data:`DONE`.
- Admission: :class:`Admit`, a counter of items a pool may hold at once, released by an
  ordered sink as results go out in order.
- Sinks: :class:`Collect` (``map``'s list), :class:`UnorderedSink`, :class:`OrderedSink`; a
  pipeline passes its own :data:`Emit` functions to the latter two.
- :class:`Driven`, the async iterator that owns the driver task running the pools, and
  :func:`drive`, that driver.

Each step of a worker first tries its no-wait path (a free admission slot, an item already
there, room downstream) and awaits only when it must: a hop through a stage then costs a few
microseconds instead of a checkpoint per step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import math
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from types import TracebackType
from typing import Any, Final, Generic, Literal, Protocol, TypeAlias, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import InvalidArgumentType

__all__ = [
    "BLOCKED",
    "DONE",
    "STREAK",
    "Admit",
    "Collect",
    "Driven",
    "AnySource",
    "Emit",
    "EmitNowait",
    "OrderedSink",
    "Pool",
    "Pulled",
    "PulledNowait",
    "QueueSource",
    "Sink",
    "Source",
    "StreamSource",
    "UnorderedSink",
    "drive",
    "emit",
    "emit_nowait",
    "feeding",
    "is_cancellation",
]

T = TypeVar("T")
R = TypeVar("R")


class _Signal(enum.Enum):
    """What a source's pull gives instead of an item: typed, so that ``pulled is DONE``
    narrows a pull's result to the ``(index, item)`` pair without a cast."""

    DONE = "done"
    BLOCKED = "blocked"


#: The source is exhausted (or closed): the worker that pulled it ends.
DONE: Final = _Signal.DONE
#: ``pull_nowait`` found no item without waiting: take the awaiting path, ``await pull()``.
BLOCKED: Final = _Signal.BLOCKED

Pulled: TypeAlias = "tuple[int, T] | Literal[_Signal.DONE]"
PulledNowait: TypeAlias = "tuple[int, T] | Literal[_Signal.DONE, _Signal.BLOCKED]"

#: Items a worker takes in a row before it passes a checkpoint: a run of items that never wait
#: (cached flow instances, a sync filter over a list, calls answered from a cache) must not
#: starve the event loop, while a checkpoint per item would cost a loop pass each.
STREAK: Final = 64


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` cancels the task it reached: that one must propagate, not be recorded."""
    return isinstance(exc, anyio.get_cancelled_exc_class())


class _Waiters(collections.deque["asyncio.Future[None]"]):
    """A FIFO of tasks parked until woken: the one wait queue under :class:`Admit` and
    :class:`QueueSource`.

    A waiter cancelled while it waits leaves the queue; one cancelled just as it was woken
    hands what woke it on (``pass_on``), so no wake-up is ever lost. Waking pops the oldest
    live waiter. (A deque itself, so that "anyone waiting?" is a C-level truth test on the
    hot paths that release or put.)
    """

    __slots__ = ()

    def wake(self) -> bool:
        """Wake the oldest waiter; False if none waits."""
        while self:
            waiter = self.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def wake_all(self) -> None:
        while self.wake():
            pass

    async def wait(self, pass_on: Callable[[], object]) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                pass_on()  # woken just as we were cancelled: what woke us is another's
            else:
                with contextlib.suppress(ValueError):
                    self.remove(waiter)
            raise


# --- sources -------------------------------------------------------------------------------


class Source(Generic[T]):
    """Hands out ``(index, item)`` to workers from a sync or async iterable, lazily.

    Async iterators cannot be advanced by two tasks at once, so pulls from them are serialised
    by a lock; a sync iterator is advanced directly (``next`` cannot be interleaved), which is
    the fast path: ``pull_nowait`` serves it, and a pool collecting into a list iterates
    :attr:`iterator` itself.
    """

    __slots__ = ("_aiter", "_count", "_done", "_lock", "iterator")

    #: Whether BLOCKED means that the pull will wait (nothing there yet). Here it only means
    #: that it must be awaited (an async iterator), which may never suspend.
    blocks: Final = False

    def __init__(self, items: Iterable[T] | AsyncIterable[T]) -> None:
        self._count = 0
        self._done = False
        #: The sync iterator, or None for an async iterable.
        self.iterator: Iterator[T] | None = None
        self._aiter: AsyncIterator[T] | None = None
        self._lock: asyncio.Lock | None = None
        if isinstance(items, AsyncIterable):
            self._aiter = aiter(items)
            self._lock = asyncio.Lock()
        elif isinstance(items, Iterable):
            self.iterator = iter(items)
        else:
            raise InvalidArgumentType(
                f"items must be an iterable or an async iterable, got {items!r}"
            )

    @property
    def is_sync(self) -> bool:
        return self.iterator is not None

    @property
    def backlog(self) -> int:
        """An iterable does not say how much is left: 1 until exhausted, so a growing pool
        over it adds a worker whenever every worker is busy."""
        return 0 if self._done else 1

    def pull_nowait(self) -> PulledNowait[T]:
        """:meth:`pull` when it needs no await (a sync iterator), else :data:`BLOCKED`."""
        if self._done:
            return DONE
        if self.iterator is None:
            return BLOCKED
        try:
            item = next(self.iterator)
        except StopIteration:
            self._done = True
            return DONE
        index = self._count
        self._count = index + 1
        return index, item

    async def pull(self) -> Pulled[T]:
        """The next ``(index, item)``, or :data:`DONE` when exhausted; a source error
        propagates."""
        pulled = self.pull_nowait()
        if pulled is not BLOCKED:
            return pulled
        assert self._lock is not None
        assert self._aiter is not None
        async with self._lock:
            if self._done:
                return DONE
            try:
                item = await anext(self._aiter)
            except StopAsyncIteration:
                self._done = True
                return DONE
        return self._number(item)

    def _number(self, item: T) -> tuple[int, T]:
        index = self._count
        self._count = index + 1
        return index, item

    async def aclose(self) -> None:
        """Close an async generator source we consumed (its ``finally`` runs now, not at GC)."""
        self._done = True
        closer = getattr(self._aiter, "aclose", None)
        if closer is not None:
            with anyio.CancelScope(shield=True):
                await closer()


class StreamSource(Generic[T]):
    """A memory object stream of ``(index, item)`` pairs, as a source: a pipeline stage's
    input, numbered by the stage that sent it.

    Several workers may receive from one memory stream at once, so no lock is needed, and a
    waiting item is taken without a checkpoint.
    """

    __slots__ = ("_done", "_receive")

    is_sync: Final = False
    iterator: Final = None
    blocks: Final = True
    backlog: Final = 1  # unknown, as for an iterable

    def __init__(self, receive: MemoryObjectReceiveStream[tuple[int, T]]) -> None:
        self._receive = receive
        self._done = False

    def pull_nowait(self) -> PulledNowait[T]:
        if self._done:
            return DONE
        try:
            return self._receive.receive_nowait()
        except anyio.WouldBlock:
            return BLOCKED
        except anyio.EndOfStream:
            self._done = True
            return DONE

    async def pull(self) -> Pulled[T]:
        pulled = self.pull_nowait()
        if pulled is not BLOCKED:
            return pulled
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            self._done = True
            return DONE

    async def aclose(self) -> None:
        self._done = True
        self._receive.close()


class QueueSource(Generic[T]):
    """A source fed by :meth:`put` and ended by :meth:`close`: the flow executor's ready queue.

    Items are numbered as they are pulled. ``put`` never blocks (the queue is unbounded: what
    is queued is already in memory, as the flow's instances are), and :attr:`backlog` (items
    put, not yet pulled) is what drives a growing pool: it also adds a worker on a ``put`` that
    finds none idle.
    """

    __slots__ = ("_closed", "_count", "_items", "_waiters", "on_put")

    is_sync: Final = False
    iterator: Final = None
    blocks: Final = True

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._count = 0
        self._closed = False
        self._waiters = _Waiters()
        #: Called after each put; a growing :class:`Pool` sets it.
        self.on_put: Callable[[], None] | None = None

    @property
    def backlog(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        """Queue ``item``; a worker waiting for one gets it."""
        if self._closed:
            raise RuntimeError("put() on a closed QueueSource")
        self._items.append(item)
        if self._waiters:
            self._waiters.wake()
        if self.on_put is not None:
            self.on_put()

    def close(self) -> None:
        """End the stream once the queued items are pulled; waiting workers see DONE."""
        self._closed = True
        self._waiters.wake_all()

    def pull_nowait(self) -> PulledNowait[T]:
        items = self._items
        if items:
            index = self._count
            self._count = index + 1
            return index, items.popleft()
        return DONE if self._closed else BLOCKED

    async def pull(self) -> Pulled[T]:
        while True:
            pulled = self.pull_nowait()
            if pulled is not BLOCKED:
                return pulled
            await self._waiters.wait(self._waiters.wake)

    async def aclose(self) -> None:
        """Close, dropping what is still queued (the pool that pulled from it has stopped)."""
        self.close()
        self._items.clear()


#: The pull protocol every pool source follows.
AnySource: TypeAlias = "Source[Any] | StreamSource[Any] | QueueSource[Any]"


# --- admission -----------------------------------------------------------------------------


class Admit:
    """A counting semaphore whose uncontended acquire is a plain method call.

    Ordered pools take a slot per item; ``asyncio.Semaphore`` would cost a coroutine frame
    each time even when a slot is free. Slots are handed straight to the oldest waiter on
    release, so ``free > 0`` implies nobody waits.
    """

    __slots__ = ("_waiters", "free")

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiters = _Waiters()

    def try_acquire(self) -> bool:
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if not self.try_acquire():
            await self._waiters.wait(self.release)  # granted, then cancelled: passed on

    def release(self) -> None:
        waiters = self._waiters
        if not (waiters and waiters.wake()):  # a slot goes straight to the oldest waiter
            self.free += 1


# --- sinks ---------------------------------------------------------------------------------


class Sink(Protocol):
    """Where a pool's workers hand results: without waiting if possible, else awaited.

    When ``deliver_nowait`` returns False the worker awaits ``sink(index, result)``, which
    finishes that delivery whatever part of it the attempt did: an ordered sink may already
    have stored the result, or emitted it, before it met a result that had to wait.
    """

    def deliver_nowait(self, index: int, result: Any) -> bool: ...

    async def __call__(self, index: int, result: Any) -> None: ...


#: How a sink hands one result to its stream (:func:`emit`, or a pipeline's, which may expand
#: or drop it), and the same without waiting: True if done, False if it would have to wait
#: (and then it has done nothing).
Emit: TypeAlias = "Callable[[MemoryObjectSendStream[Any], Any], Awaitable[None]]"
EmitNowait: TypeAlias = "Callable[[MemoryObjectSendStream[Any], Any], bool]"


def emit_nowait(send: MemoryObjectSendStream[Any], item: Any) -> bool:
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        return False
    return True


async def emit(send: MemoryObjectSendStream[Any], item: Any) -> None:
    """Send, skipping the checkpoint when the stream has room (a hop then costs ~1 µs)."""
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        await send.send(item)


class Collect:
    """``map``'s sink: the results, in input order, as a list.

    A pool over a sync iterable with this sink appends to :attr:`results` itself (its fast
    path: the input order is the order items are taken); otherwise results arrive by index.
    """

    __slots__ = ("results",)

    def __init__(self) -> None:
        self.results: list[Any] = []

    def deliver_nowait(self, index: int, result: Any) -> bool:
        results = self.results
        missing = index + 1 - len(results)
        if missing > 0:
            results.extend([None] * missing)
        results[index] = result
        return True

    async def __call__(self, index: int, result: Any) -> None:
        self.deliver_nowait(index, result)


class _Discard:
    """The sink of a pool whose results are not wanted (its calls record their own)."""

    __slots__ = ()

    def deliver_nowait(self, index: int, result: Any) -> bool:
        return True

    async def __call__(self, index: int, result: Any) -> None:
        return None


_DISCARD: Final = _Discard()


class UnorderedSink:
    """Sends each result as soon as it is ready."""

    __slots__ = ("_emit", "_emit_nowait", "_send")

    def __init__(
        self,
        send: MemoryObjectSendStream[Any],
        emit: Emit = emit,
        emit_nowait: EmitNowait = emit_nowait,
    ) -> None:
        self._send = send
        self._emit = emit
        self._emit_nowait = emit_nowait

    def deliver_nowait(self, index: int, result: Any) -> bool:
        return self._emit_nowait(self._send, result)

    async def __call__(self, index: int, result: Any) -> None:
        await self._emit(self._send, result)


class OrderedSink:
    """Holds results that finish early and emits the completed prefix in input order.

    Each emitted result releases one admission slot, so the pool never runs more than the
    admission's size ahead of the next result to emit.
    """

    __slots__ = ("_admit", "_emit", "_emit_nowait", "_flushing", "_next", "_pending", "_send")

    def __init__(
        self,
        send: MemoryObjectSendStream[Any],
        admit: Admit,
        emit: Emit = emit,
        emit_nowait: EmitNowait = emit_nowait,
    ) -> None:
        self._send = send
        self._admit = admit
        self._emit = emit
        self._emit_nowait = emit_nowait
        self._pending: dict[int, Any] = {}
        self._next = 0
        self._flushing = False

    def deliver_nowait(self, index: int, result: Any) -> bool:
        """Store the result and emit what the prefix allows without waiting; False if an
        emit would have to wait (the caller then awaits ``self(index, result)``, which goes
        on from there: the result may be stored, or out already)."""
        pending = self._pending
        if index == self._next and not pending and not self._flushing:
            # The common case: this result is next and nothing waits behind it.
            if self._emit_nowait(self._send, result):
                self._next = index + 1
                self._admit.release()
                return True
            pending[index] = result
            return False
        pending[index] = result
        if self._flushing:
            return True  # the worker already flushing will see it
        send, emit_nowait, release = self._send, self._emit_nowait, self._admit.release
        nxt = self._next
        while nxt in pending:
            if not emit_nowait(send, pending[nxt]):
                self._next = nxt
                return False
            del pending[nxt]
            nxt += 1
            release()
        self._next = nxt
        return True

    async def __call__(self, index: int, result: Any) -> None:
        pending = self._pending
        if index >= self._next:
            pending[index] = result
        # else a ``deliver_nowait`` that then had to stop has emitted it already: storing it
        # again would keep it below ``_next``, where no flush ever looks, for good.
        if self._flushing:
            return  # the worker already flushing will see it
        self._flushing = True
        try:
            while self._next in pending:
                ready = pending.pop(self._next)
                self._next += 1
                await self._emit(self._send, ready)
                self._admit.release()
        finally:
            self._flushing = False


# --- the pool ------------------------------------------------------------------------------


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
            an item while items are still backlogged and no worker is idle, up to
            ``concurrency``: the flow executor's lazy growth. Instances that finish without
            waiting are then served by few workers, while instances that wait grow the pool;
            thousands of idle tasks would cost memory and garbage-collector time.

    A worker passes a checkpoint every :data:`STREAK` items it takes in a row, so a run of
    items that never wait cannot starve the event loop (nor ignore a cancel()). "In a row" is
    read off the indices, which every source hands out in the order items are taken: when
    another worker has taken one since, this worker has yielded, and its count starts again;
    so it does when its pull had to wait. Telling that costs a comparison per item, where a
    checkpoint every 64 items of workers that yield anyway costs a loop pass each time, and
    more in a pipeline, where it breaks up the bursts a one-worker stage drains (measured
    with callgrind: +4 % instructions per item of the streams benchmark's pipeline).

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
        self._workers = self._idle = 0
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
        """An item was queued: add a worker if none is idle to take it."""
        if not self._idle:
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
        sink, iterator = self._sink, self.source.iterator
        if (
            type(sink) is Collect
            and iterator is not None
            and self.admit is None
            and self._call_sync is None
            and not self._grow
        ):
            tg.start_soon(self._collect, iterator, sink.results)
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
            raise exc
        # Not an Exception (KeyboardInterrupt, a test framework's failure) is never a result,
        # and is raised by run() as itself rather than leaving the worker, where the task
        # group would wrap it (and asyncio end the loop for some).
        self.fail(exc)
        return False

    def _failed(self, exc: BaseException) -> None:
        """The source or the sink failed: never a result."""
        if is_cancellation(exc):
            raise exc
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
        try:
            while True:
                if admit is not None:
                    if admit.free > 0:  # try_acquire, inlined: this runs once per item
                        admit.free -= 1
                    else:
                        await admit.acquire()
                try:
                    pulled = pull_nowait()
                    if pulled is BLOCKED:
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
                if grow and source.backlog and not self._idle:
                    self._spawn()
                index, item = pulled
                # Another worker took an item since this one's last: this one has yielded.
                countdown = countdown - 1 if index == after else STREAK
                if not countdown:
                    countdown = STREAK
                    await anyio.lowlevel.checkpoint()
                after = index + 1
                try:
                    result: Any = await call(item) if call_sync is None else call_sync(item)
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


def feeding(pool: Pool, send: MemoryObjectSendStream[Any]) -> Callable[[], Awaitable[None]]:
    """A run of ``pool`` that ends ``send`` (its sink's stream) when the pool stops, so that
    the reader of the stream sees its end."""

    async def run() -> None:
        with send:
            await pool.run()

    return run


# --- the driver-owned iterator -------------------------------------------------------------


async def drive(
    runs: Sequence[Callable[[], Awaitable[None]]], failure: list[BaseException]
) -> None:
    """The driver task of a :class:`Driven`: every run (a pool, a batch step) concurrently.

    The first failure wins, goes in ``failure`` (the iterator raises it) and stops
    everything; it is kept as itself, a BaseException too (left to the task group, it would
    end the stream as if the input had, and the reader would never see it). A lone run (an
    ``imap``) is awaited directly, without a task group of its own.
    """
    if len(runs) == 1:
        await _run_one(runs[0], failure, None)
        return
    async with anyio.create_task_group() as tg:
        for run in runs:
            tg.start_soon(_run_one, run, failure, tg)


async def _run_one(
    run: Callable[[], Awaitable[None]], failure: list[BaseException], tg: TaskGroup | None
) -> None:
    try:
        await run()
    except BaseException as exc:
        if is_cancellation(exc):
            raise
        if not failure:
            failure.append(exc)
        if tg is not None:
            tg.cancel_scope.cancel()


_D = TypeVar("_D", bound="Driven[Any]")


class Driven(Generic[R]):
    """An async iterator (and async context manager) over a stream that a driver task fills.

    An async generator cannot own a task group across its ``yield``, so the work runs in a
    driver task owned by this object instead; closing it (``async with`` exit, ``aclose``,
    the consumer cancelled while it waits, or the object dropped) cancels the driver and waits
    for it. ``imap`` and pipelines both work this way. The driver coroutine must not refer to
    this object, so that a dropped iterator can be collected while its driver still runs: it
    records a failure in ``_error``, a list both share. Subclasses give the driver
    (:meth:`_launch`, usually :func:`drive`) and what to close after it (:meth:`_release`,
    :meth:`_drop`).
    """

    __slots__ = ("_closed", "_driver", "_error", "_receive")

    def __init__(self) -> None:
        self._driver: asyncio.Task[None] | None = None
        self._receive: MemoryObjectReceiveStream[R] | None = None
        self._closed = False
        self._error: list[BaseException] = []

    def _launch(self) -> Coroutine[Any, Any, None]:
        """Set up ``_receive`` and return the driver coroutine."""
        raise NotImplementedError

    def _failure(self) -> BaseException | None:
        return self._error[0] if self._error else None

    async def _release(self) -> None:
        """Close what the driver would have closed, had it run (it may not have, yet)."""

    def _drop(self) -> None:
        """The same without awaiting, for an iterator dropped unclosed."""

    def _start(self) -> None:
        if self._driver is not None:
            raise RuntimeError(f"this {type(self).__name__} has already been started")
        self._driver = asyncio.get_running_loop().create_task(self._launch())

    def __aiter__(self: _D) -> _D:
        return self

    async def __anext__(self) -> R:
        if self._closed:
            raise StopAsyncIteration
        if self._driver is None:
            self._start()
        failure = self._failure()
        if failure is not None:
            await self.aclose()
            raise failure
        receive = self._receive
        assert receive is not None
        try:
            return receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return await self._end()
        try:
            return await receive.receive()
        except anyio.EndOfStream:
            return await self._end()
        except BaseException:
            # The consumer was cancelled while it waited: the work goes with it.
            await self.aclose()
            raise

    async def _end(self) -> R:
        await self.aclose()
        failure = self._failure()
        if failure is not None:
            raise failure
        raise StopAsyncIteration

    async def __aenter__(self: _D) -> _D:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the work and wait until it has stopped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        driver = self._driver
        if driver is not None and not driver.done():
            driver.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([driver])
        await self._release()

    def __del__(self) -> None:
        # Dropped unclosed, e.g. by ``break`` out of a plain ``async for``.
        driver = self._driver
        if driver is not None and not driver.done():
            driver.cancel()
        self._drop()
