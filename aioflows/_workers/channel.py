"""The bounded stream between two pipeline stages, and the outlets a stage emits through.

:class:`Channel` is a FIFO of at most ``size`` items that is also a pool source (the pull
protocol of :mod:`.sources`). It replaces a memory object stream between stages because the
pipeline's hot path pays for what that stream does on every wait: anyio's ``receive`` passes a
checkpoint before it even looks, then builds an ``Event``, a receiver record and the task's
info to park; ``send`` does the same on the other side. Here a worker finding the channel empty
parks on a bare future that the sender completes with the item, one loop pass in all, and a
sender that finds room (:meth:`Channel.room`) puts without an exception or a checkpoint.

Items are numbered as they are put, in the order they go in, and come out with their number:
workers of the next stage that wait together may resume in any order, and the number is what
tells that stage's ordered sink each item's place. Knowing for sure that a put will not wait
(:meth:`Channel.room`) is also what lets a stage run a sync filter on an item just before it
goes in, exactly once, instead of in a stage of its own.

The outlets are what a pipeline stage's emitter puts into: a :class:`Channel`, a
:class:`StreamOutlet` (a memory object stream: the output a consumer iterates, or the stream an
ordered flat stage's sink needs), or a :class:`Collected` list (``Pipeline.run``'s result).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, Final, Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .sources import BLOCKED, DONE, Pulled, PulledNowait, _Waiters


class Outlet(Protocol):
    """Where a stage emits: ``put_nowait`` (False: it would wait, nothing done) and ``put``.

    ``room()`` True means that the next ``put_nowait`` succeeds, or None if the outlet cannot
    tell (then nothing may be done to an item that depends on its going in at once).
    """

    def room(self) -> bool | None: ...

    def put_nowait(self, item: Any) -> bool: ...

    async def put(self, item: Any) -> None: ...

    async def wait_room(self) -> None: ...

    def room_unused(self) -> None: ...

    def close(self) -> None: ...


class Channel:
    """A bounded FIFO of numbered items between two stages; its reading end is a pool source.

    Invariant: a reader waits only while no item is buffered (a put hands the item straight to
    the oldest waiting reader), so ``room()`` is just "fewer than ``size`` buffered". The one
    way past ``size``: an item handed to a reader cancelled before it could take it goes back
    at the front, full or not (a reader is cancelled only as its whole pipeline stops).

    Args:
        size: Most items buffered at once (items handed straight to a waiting reader are not
            buffered: they are that reader's).
    """

    __slots__ = ("_broken", "_closed", "_count", "_getters", "_items", "_putters", "_size")

    is_sync: Final = False
    iterator: Final = None
    blocks: Final = True
    backlog: Final = 1  # unknown, as for an iterable

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: collections.deque[tuple[int, Any]] = collections.deque()
        self._getters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._putters = _Waiters()
        self._count = 0
        self._closed = False  # the writing end is done: readers see DONE once it is empty
        self._broken = False  # the reading end is gone: puts fail

    # -- the writing end ------------------------------------------------------------------

    def room(self) -> bool:
        return len(self._items) < self._size or self._broken

    def put_nowait(self, item: Any) -> bool:
        if self._broken:
            raise anyio.BrokenResourceError
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():  # not a reader cancelled while it waited
                index = self._count
                self._count = index + 1
                getter.set_result((index, item))
                return True
        items = self._items
        if len(items) < self._size:
            index = self._count
            self._count = index + 1
            items.append((index, item))
            return True
        return False

    async def wait_room(self) -> None:
        putters = self._putters
        while not self.room():
            await putters.wait(putters.wake)

    async def put(self, item: Any) -> None:
        while not self.put_nowait(item):
            await self._putters.wait(self._putters.wake)

    def room_unused(self) -> None:
        """A writer woken for room did not use it (its item was filtered out): the next one
        waiting may."""
        if self._putters and self.room():
            self._putters.wake()

    def close(self) -> None:
        """The writing end is done: readers get the rest, then DONE."""
        self._closed = True
        getters = self._getters
        while getters:  # waiting readers: nothing is buffered, so this is the end for them
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(DONE)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the reading end: a pool source -----------------------------------------------------

    def pull_nowait(self) -> PulledNowait[Any]:
        items = self._items
        if items:
            pair = items.popleft()
            if self._putters:
                self._putters.wake()  # one slot freed: one writer may go on
            return pair
        return DONE if self._closed else BLOCKED

    async def pull(self) -> Pulled[Any]:
        pulled = self.pull_nowait()
        if pulled is not BLOCKED:
            return pulled
        getter = asyncio.get_running_loop().create_future()
        self._getters.append(getter)
        try:
            result: Pulled[Any] = await getter
        except BaseException:
            if getter.done() and not getter.cancelled():
                self._give_back(getter.result())  # handed an item just as it was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
            raise
        return result

    def _give_back(self, pulled: Pulled[Any]) -> None:
        """An item handed to a reader that was cancelled before it took it: to the next
        reader, or back at the front (it is older than anything buffered since)."""
        if pulled is DONE:
            return
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(pulled)
                return
        self._items.appendleft(pulled)

    async def aclose(self) -> None:
        """The reading end is done (its pool stopped): drop what is buffered, fail writers."""
        self._broken = True
        self._items.clear()
        self._putters.wake_all()


class StreamOutlet:
    """A memory object stream as an outlet, numbering items first if the next stage needs it.

    It cannot tell whether a send would wait without trying (``room()`` is None), so nothing
    that must happen exactly once per item (a fused filter) is put in front of it.

    Args:
        send: The stream.
        stamp: Send ``(number, item)`` pairs (for a :class:`~.sources.StreamSource`).
    """

    __slots__ = ("_count", "_send", "_stamp")

    def __init__(self, send: MemoryObjectSendStream[Any], stamp: bool) -> None:
        self._send = send
        self._stamp = stamp
        self._count = 0

    def room(self) -> None:
        return None

    def put_nowait(self, item: Any) -> bool:
        pair = (self._count, item) if self._stamp else item
        try:
            self._send.send_nowait(pair)
        except anyio.WouldBlock:
            return False
        self._count += 1
        return True

    async def put(self, item: Any) -> None:
        if self.put_nowait(item):
            return
        if self._stamp:
            item = (self._count, item)
            self._count += 1  # now: another writer waiting beside this one takes the next
        await self._send.send(item)

    async def wait_room(self) -> None:
        raise NotImplementedError("a memory object stream cannot tell whether it has room")

    def room_unused(self) -> None:
        return None

    def close(self) -> None:
        self._send.close()


class Collected:
    """A list as an outlet: ``Pipeline.run``'s result, which holds every output anyway, filled
    by the last stage itself instead of through a stream and a reader woken per batch."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Any] = []

    def room(self) -> bool:
        return True

    def put_nowait(self, item: Any) -> bool:
        self.items.append(item)
        return True

    async def put(self, item: Any) -> None:
        self.items.append(item)

    async def wait_room(self) -> None:
        return None

    def room_unused(self) -> None:
        return None

    def close(self) -> None:
        return None
