"""Where a pool's results go, and the admission that bounds how far ahead a pool runs.

A worker hands each result to a *sink* (:class:`Sink`): ``deliver_nowait`` first, awaited only
when that would have to wait, so a hop costs a method call, not a checkpoint. :class:`Collect`
is ``map``'s list; :class:`UnorderedSink` and :class:`OrderedSink` send into a memory object
stream with :func:`emit` / :func:`emit_nowait`, or with a pipeline's own :data:`Emit`
functions (a flat stage's expand or drop what they send).

:class:`Admit` is here with the sinks because an ordered sink is what releases it: each result
emitted in order frees one slot, so a pool never runs more than the admission's size ahead of
the next result to go out. The pool only takes the slots.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .sources import _Waiters


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
#: (and then it has done nothing). The first argument is the sink's ``send``: a memory object
#: stream for these defaults, whatever a pipeline's own functions put into (its outlet).
Emit: TypeAlias = "Callable[[Any, Any], Awaitable[None]]"
EmitNowait: TypeAlias = "Callable[[Any, Any], bool]"


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
        send: Any,
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
        send: Any,
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
