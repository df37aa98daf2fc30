"""Where a pool's items come from: the pull protocol, its three sources, and the wait queue.

Every worker of a :class:`~aioflows._workers.pool.Pool` takes its items the same way, whatever
feeds them: ``pull_nowait()`` gives an ``(index, item)`` pair, :data:`DONE` or :data:`BLOCKED`
(take the awaiting path), ``await pull()`` a pair or :data:`DONE`. One protocol over three
sources is what lets ``map``, pipelines, the flow executor and the launcher share one worker
loop; the indices a source hands out, in the order items are taken, are what a worker's
checkpoint count and an ordered sink go by.

- :class:`Source` over an iterable or async iterable (``map``, ``imap``, the launcher, a
  pipeline's first stage), pulled lazily so that an infinite generator is never materialised.
- :class:`StreamSource` over a memory object stream of numbered items: a pipeline stage's input.
- :class:`QueueSource`, fed by ``put`` and ended by ``close``: the flow scheduler's ready queue
  (which a pool's drain loop pops directly).

The wait queue (:class:`_Waiters`) under :class:`QueueSource` and
:class:`~aioflows._workers.sinks.Admit` lives here, with the first of the two, so that the
sinks import from the sources and never the reverse.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeAlias, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import InvalidArgumentType

if TYPE_CHECKING:
    from .channel import Channel
    from .kept import KeptSource

T = TypeVar("T")


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
    """A source fed by :meth:`put` and ended by :meth:`close`: the flow scheduler's ready
    queue and a served endpoint's queue of requests.

    Items are numbered as they are pulled. ``put`` never blocks (the queue is unbounded: what
    is queued is already in memory, as the flow's instances are), and :attr:`backlog` (items
    put, not yet pulled) is what drives a growing pool: it also adds a worker on a ``put`` that
    wakes no idle one.

    Besides the pull protocol, the queue is open to a pool's drain loop
    (a :class:`~aioflows._workers.pool.Pool` with no sink): :attr:`items`, popped directly,
    :attr:`taken`, counted as they are popped, :attr:`closed` and :meth:`wait`. A pull's call
    and its tuple per item were a third of the calls per instance of a flow's no-op run.
    """

    __slots__ = ("_waiters", "closed", "items", "on_put", "taken")

    is_sync: Final = False
    iterator: Final = None
    blocks: Final = True

    def __init__(self) -> None:
        #: What is queued, oldest first.
        self.items: collections.deque[T] = collections.deque()
        #: Items pulled so far: whoever pops one counts it (the index of the next).
        self.taken = 0
        #: Nothing more will be put.
        self.closed = False
        self._waiters = _Waiters()
        #: Called after a put that woke no waiting worker; a growing :class:`Pool` sets it.
        self.on_put: Callable[[], None] | None = None

    @property
    def backlog(self) -> int:
        return len(self.items)

    def put(self, item: T) -> None:
        """Queue ``item``; a worker waiting for one gets it."""
        if self.closed:
            raise RuntimeError("put() on a closed QueueSource")
        self.items.append(item)
        if self._waiters and self._waiters.wake():
            return
        if self.on_put is not None:
            self.on_put()

    def feed(self, item: T) -> None:
        """:meth:`put` from inside a call of the pool that pulls from this queue (or before
        the pool runs): the worker making that call looks at the queue as soon as it returns,
        so no worker is added for ``item`` (a flow instance queueing its successors: a call
        per instance less). An idle worker is still woken."""
        if self.closed:
            raise RuntimeError("put() on a closed QueueSource")
        self.items.append(item)
        if self._waiters:
            self._waiters.wake()

    def close(self) -> None:
        """End the stream once the queued items are pulled; waiting workers see DONE."""
        self.closed = True
        self._waiters.wake_all()

    def pull_nowait(self) -> PulledNowait[T]:
        items = self.items
        if items:
            index = self.taken
            self.taken = index + 1
            return index, items.popleft()
        return DONE if self.closed else BLOCKED

    async def pull(self) -> Pulled[T]:
        while True:
            pulled = self.pull_nowait()
            if pulled is not BLOCKED:
                return pulled
            await self.wait()

    async def wait(self) -> None:
        """Until an item is put or the queue is closed (then look again: another worker may
        have taken it). A waiter cancelled just as it was woken passes the wake-up on."""
        await self._waiters.wait(self._waiters.wake)

    async def aclose(self) -> None:
        """Close, dropping what is still queued (the pool that pulled from it has stopped)."""
        self.close()
        self.items.clear()


#: The pull protocol every pool source follows.
AnySource: TypeAlias = (
    "Source[Any] | StreamSource[Any] | QueueSource[Any] | KeptSource[Any] | Channel"
)
