"""The iterator that owns a driver task: :class:`Driven`, its driver :func:`drive`, and
:func:`feeding`, a pool's run that ends the stream it fills.

``imap`` and pipelines are async iterators whose work (one pool, or a pool per stage) goes on
while the consumer is between ``__anext__`` calls. An async generator cannot own a task group
across its ``yield``, so the work runs in a driver task that this object owns, and cancels and
awaits when it is closed. It is apart from the pool: a pool knows nothing of who consumes its
results (which is what lets a dropped iterator be collected while its driver still runs), and
``map``, the flow executor and the launcher run pools with no driver at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from .pool import Pool, is_cancellation

R = TypeVar("R")


class _Closable(Protocol):
    def close(self) -> None: ...


def feeding(pool: Pool, send: _Closable) -> Callable[[], Awaitable[None]]:
    """A run of ``pool`` that ends ``send`` (its sink's stream or channel) when the pool
    stops, so that the reader of the stream sees its end."""

    async def run() -> None:
        try:
            await pool.run()
        finally:
            send.close()

    return run


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

    async def __aexit__(self, *exc_info: object) -> None:
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
