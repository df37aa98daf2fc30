"""``map`` and ``imap``: call an async function over many items with bounded concurrency.

Both run a fixed pool of ``concurrency`` workers that pull items from the input as they become
free, rather than one task per item: spawning a task (and often a semaphore wait) per item is
what makes ``gather``-style helpers slow and memory-hungry, and a pool pulling lazily from the
input is also what keeps an infinite generator from being materialised.

``imap`` hands results to a consumer that may stop at any moment. An async generator cannot own
a task group across its ``yield``, so the workers run in a *driver* task owned by the iterator
object; closing the iterator (``async with`` exit, ``aclose``, cancelling its consumer while it
waits, or dropping it) cancels the driver, and the pool with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
)
from types import TracebackType
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _validate
from .calls import CallPolicy, KeyedLimiterLike, LimiterLike, guard
from .errors import InvalidArgumentType
from .retry import RetryLike

__all__ = ["Driven", "IMap", "imap", "map"]

T = TypeVar("T")
R = TypeVar("R")

Items: TypeAlias = "Iterable[T] | AsyncIterable[T]"

_DONE: Any = object()
_BLOCKED: Any = object()  # "no item without waiting": take the awaiting path

#: How a sink hands one result to its stream (``_emit``, or a pipeline's, which may expand or
#: drop it), and the same without waiting: True if done, False if it would have to wait (and
#: then it has done nothing).
Emit: TypeAlias = "Callable[[MemoryObjectSendStream[Any], Any], Awaitable[None]]"
EmitNowait: TypeAlias = "Callable[[MemoryObjectSendStream[Any], Any], bool]"


def _check_concurrency(concurrency: int) -> int:
    return _validate.count("concurrency", concurrency)


class _Source(Generic[T]):
    """Hands out ``(index, item)`` to workers from a sync or async iterable, lazily.

    Async iterators cannot be advanced by two tasks at once, so pulls from them are serialised
    by a lock; a sync iterator is advanced directly (``next`` cannot be interleaved).
    """

    __slots__ = ("_aiter", "_count", "_done", "_iter", "_lock")

    def __init__(self, items: Items[T]) -> None:
        self._count = 0
        self._done = False
        self._iter: Iterator[T] | None = None
        self._aiter: AsyncIterator[T] | None = None
        self._lock: asyncio.Lock | None = None
        if isinstance(items, AsyncIterable):
            self._aiter = aiter(items)
            self._lock = asyncio.Lock()
        elif isinstance(items, Iterable):
            self._iter = iter(items)
        else:
            raise InvalidArgumentType(
                f"items must be an iterable or an async iterable, got {items!r}"
            )

    @property
    def is_sync(self) -> bool:
        return self._iter is not None

    def pull_nowait(self) -> tuple[int, T]:
        """:meth:`pull` when it needs no await (a sync iterator), else ``_BLOCKED``."""
        if self._iter is None or self._done:
            return _BLOCKED if not self._done else _DONE  # type: ignore[no-any-return]
        try:
            item = next(self._iter)
        except StopIteration:
            self._done = True
            return _DONE  # type: ignore[no-any-return]
        index = self._count
        self._count = index + 1
        return index, item

    async def pull(self) -> tuple[int, T]:
        """The next ``(index, item)``, or ``_DONE`` when exhausted; a source error propagates."""
        if self._done:
            return _DONE  # type: ignore[no-any-return]
        if self._iter is not None:
            try:
                item = next(self._iter)
            except StopIteration:
                self._done = True
                return _DONE  # type: ignore[no-any-return]
        else:
            assert self._lock is not None
            assert self._aiter is not None
            async with self._lock:
                if self._done:
                    return _DONE
                try:
                    item = await anext(self._aiter)
                except StopAsyncIteration:
                    self._done = True
                    return _DONE  # type: ignore[no-any-return]
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


class _Admit:
    """A counting semaphore whose uncontended acquire is a plain method call.

    Ordered pools take a slot per item; ``asyncio.Semaphore`` would cost a coroutine frame
    each time even when a slot is free. Slots are handed straight to the oldest waiter on
    release, so ``free > 0`` implies nobody waits.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class _Pool:
    """``concurrency`` workers that pull from a source, call, and hand each result to a sink.

    The first exception (unless ``return_exceptions``) is recorded, the pool is cancelled, and
    :meth:`run` raises that exception as itself; so is a BaseException that is not an Exception,
    which is never a result. A failure to deliver a result (a flat stage's outputs are made as
    they are delivered) fails the pool the same way. The pool holds no reference to whoever
    consumes its results, so a dropped :class:`IMap` can be collected while its driver still
    runs.
    """

    __slots__ = (
        "_call",
        "_call_sync",
        "_concurrency",
        "_return_exceptions",
        "_sink",
        "admit",
        "error",
        "source",
    )

    def __init__(
        self,
        call: Callable[[Any], Awaitable[Any]],
        source: _Source[Any],
        concurrency: int,
        return_exceptions: bool,
        sink: _Sink,
        admit: _Admit | None = None,
        call_sync: Callable[[Any], Any] | None = None,
    ) -> None:
        self._call = call
        self._call_sync = call_sync  # a plain function doing the same, called without await
        self.source = source
        self._concurrency = concurrency
        self._return_exceptions = return_exceptions
        self._sink = sink
        self.admit = admit
        self.error: BaseException | None = None

    async def run(self, workers: int | None = None) -> None:
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._concurrency if workers is None else workers):
                    tg.start_soon(self._worker, tg)
        finally:
            await self.source.aclose()
        if self.error is not None:
            raise self.error

    def fail(self, tg: TaskGroup, exc: BaseException) -> None:
        """Record the first failure and cancel the pool; later ones lose the race."""
        if self.error is None:
            self.error = exc
        tg.cancel_scope.cancel()

    async def _worker(self, tg: TaskGroup) -> None:
        # Each step first tries its no-wait path (a free admission slot, an item already
        # there, room downstream) and awaits only when it must: a hop through a stage then
        # costs a few microseconds instead of a checkpoint per step.
        source, call, sink, admit = self.source, self._call, self._sink, self.admit
        pull_nowait, deliver_nowait = source.pull_nowait, sink.deliver_nowait
        call_sync = self._call_sync
        while True:
            if admit is not None:
                if admit._free > 0:  # try_acquire, inlined: this runs once per item
                    admit._free -= 1
                else:
                    await admit.acquire()
            try:
                pulled = pull_nowait()
                if pulled is _BLOCKED:
                    pulled = await source.pull()
            except BaseException as exc:  # the input itself failed
                if _is_cancellation(exc):
                    raise
                self.fail(tg, exc)
                return
            if pulled is _DONE:
                if admit is not None:
                    admit.release()
                return
            index, item = pulled
            try:
                result: Any = await call(item) if call_sync is None else call_sync(item)
            except Exception as exc:
                if not self._return_exceptions:
                    self.fail(tg, exc)
                    return
                result = exc
            except BaseException as exc:
                # Not an Exception (KeyboardInterrupt, a test framework's failure): never a
                # result, and raised by run() as itself rather than leaving the worker, where
                # the task group would wrap it (and asyncio end the loop for some).
                if _is_cancellation(exc):
                    raise
                self.fail(tg, exc)
                return
            try:
                if not deliver_nowait(index, result):
                    await sink(index, result)
            except BaseException as exc:  # a flat stage makes its outputs as they go out
                if _is_cancellation(exc):
                    raise
                self.fail(tg, exc)
                return


def _pool_size(items: object, concurrency: int) -> int:
    """No more workers than items, when the input knows its length."""
    try:
        return max(1, min(concurrency, len(items)))  # type: ignore[arg-type]
    except TypeError:
        return concurrency


async def map(
    fn: Callable[[T], Awaitable[R]],
    items: Items[T],
    *,
    concurrency: int = 16,
    rate: LimiterLike | None = None,
    key: Callable[[T], Hashable] | None = None,
    per_key_rate: KeyedLimiterLike | None = None,
    retry: RetryLike = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
) -> list[Any]:
    """Call ``fn`` on every item, at most ``concurrency`` at a time; results in input order.

    Usage::

        pages = await af.map(fetch, urls, concurrency=32, per_key_rate="10/s", key=host_of)

    ``items`` is consumed lazily, no further ahead than the calls in flight. On the first
    exception (after retries) the calls still in flight are cancelled and that exception is
    raised as itself — not wrapped in an ExceptionGroup — unless ``return_exceptions`` puts it
    in the result list instead; a BaseException that is not an Exception (KeyboardInterrupt)
    is always raised, as itself. Cancelling the caller cancels every call in flight.

    Args:
        fn: Async callable of one item.
        items: Iterable or async iterable.
        concurrency: Most calls in flight at once.
        rate: Limit on calls overall; a :class:`RateLimiter` is shared with whoever else uses it.
        key: ``key(item)`` picks the bucket of ``per_key_rate`` for the call.
        per_key_rate: Per-key limit; a :class:`KeyedRateLimiter` is shared as is.
        retry: A :class:`Retry` or a number of attempts.
        timeout: Seconds each call may take; an overrun is a ``TimeoutError``.
        return_exceptions: Put exceptions in the result list instead of raising.

    Raises:
        ValueError, TypeError: Bad arguments, before any call starts.
    """
    policy = CallPolicy(rate=rate, key=key, per_key_rate=per_key_rate, retry=retry, timeout=timeout)
    call = guard(fn, policy)
    _check_concurrency(concurrency)
    source = _Source(items)
    workers = _pool_size(items, concurrency)
    if source.is_sync:
        return await _map_sync(call, source, workers, return_exceptions)

    collected = _Collect()
    await _Pool(call, source, concurrency, return_exceptions, collected).run(workers)
    done = collected.results
    return [done[i] for i in range(len(done))]


async def _map_sync(
    call: Callable[[Any], Awaitable[Any]],
    source: _Source[Any],
    workers: int,
    return_exceptions: bool,
) -> list[Any]:
    """``map`` over a sync iterable: the hot path, with no per-item overhead beyond the call.

    Workers share one iterator (``next`` cannot interleave on one thread) and write straight
    into the result list, so each item costs one ``next``, one append and the call itself.
    """
    results: list[Any] = []
    append = results.append
    failure: list[BaseException] = []
    iterator = source._iter
    assert iterator is not None

    async def worker(tg: TaskGroup) -> None:
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except BaseException as exc:  # the input itself failed
                _fail(tg, failure, exc)
                return
            index = len(results)
            append(None)
            try:
                results[index] = await call(item)
            except Exception as exc:
                if not return_exceptions:
                    _fail(tg, failure, exc)
                    return
                results[index] = exc
            except BaseException as exc:  # as in _Pool._worker
                if _is_cancellation(exc):
                    raise
                _fail(tg, failure, exc)
                return

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker, tg)
    if failure:
        raise failure[0]
    return results


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` cancels the task it reached: that one must propagate, not be recorded."""
    return isinstance(exc, anyio.get_cancelled_exc_class())


def _fail(tg: TaskGroup, failure: list[BaseException], exc: BaseException) -> None:
    if not failure:
        failure.append(exc)
    tg.cancel_scope.cancel()


def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Items[T],
    *,
    ordered: bool = False,
    concurrency: int = 16,
    rate: LimiterLike | None = None,
    key: Callable[[T], Hashable] | None = None,
    per_key_rate: KeyedLimiterLike | None = None,
    retry: RetryLike = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
) -> IMap[R]:
    """Like :func:`map`, but yield results as they finish (in input order with ``ordered``).

    Usage::

        async with af.imap(fetch, urls, concurrency=8) as pages:
            async for page in pages:
                ...

        async for page in af.imap(fetch, urls):   # also fine: stops the workers on break
            ...

    Memory stays bounded whatever the input: at most ``concurrency`` results wait for the
    consumer, and with ``ordered=True`` at most ``2 * concurrency`` items are pulled ahead of
    the next one to emit, so one slow item holds back admission instead of letting finished
    results pile up. The first exception stops the workers and is raised by the iterator, as
    itself (a BaseException too).

    Raises:
        ValueError, TypeError: Bad arguments, before any call starts.
    """
    policy = CallPolicy(rate=rate, key=key, per_key_rate=per_key_rate, retry=retry, timeout=timeout)
    call = guard(fn, policy)
    _check_concurrency(concurrency)
    return IMap(call, _Source(items), concurrency, bool(ordered), bool(return_exceptions))


_D = TypeVar("_D", bound="Driven[Any]")


class Driven(Generic[R]):
    """An async iterator (and async context manager) over a stream that a driver task fills.

    An async generator cannot own a task group across its ``yield``, so the work runs in a
    driver task owned by this object instead; closing it (``async with`` exit, ``aclose``,
    the consumer cancelled while it waits, or the object dropped) cancels the driver and waits
    for it. ``imap`` and pipelines both work this way. The driver coroutine must not refer to
    this object, so that a dropped iterator can be collected while its driver still runs.
    Subclasses give the driver (:meth:`_launch`), the failure to raise (:meth:`_failure`) and
    what to close after it (:meth:`_release`, :meth:`_drop`).
    """

    __slots__ = ("_closed", "_driver", "_receive")

    def __init__(self) -> None:
        self._driver: asyncio.Task[None] | None = None
        self._receive: MemoryObjectReceiveStream[Any] | None = None
        self._closed = False

    def _launch(self) -> Coroutine[Any, Any, None]:
        """Set up ``_receive`` and return the driver coroutine."""
        raise NotImplementedError

    def _failure(self) -> BaseException | None:
        raise NotImplementedError

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
            return receive.receive_nowait()  # type: ignore[no-any-return]
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return await self._end()
        try:
            return await receive.receive()  # type: ignore[no-any-return]
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


class IMap(Driven[R]):
    """The async iterator, and async context manager, that :func:`imap` returns."""

    __slots__ = ("_pool", "_send")

    def __init__(
        self,
        call: Callable[[Any], Awaitable[R]],
        source: _Source[Any],
        concurrency: int,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        super().__init__()
        self._send, self._receive = anyio.create_memory_object_stream[Any](concurrency)
        admit = _Admit(2 * concurrency) if ordered else None
        sink = _OrderedSink(self._send, admit) if admit is not None else _UnorderedSink(self._send)
        self._pool = _Pool(call, source, concurrency, return_exceptions, sink, admit)

    def _launch(self) -> Coroutine[Any, Any, None]:
        return _drive(self._pool, self._send)

    def _failure(self) -> BaseException | None:
        return self._pool.error

    async def _release(self) -> None:
        self._drop()
        await self._pool.source.aclose()

    def _drop(self) -> None:
        self._send.close()
        if self._receive is not None:
            self._receive.close()


async def _drive(pool: _Pool, send: MemoryObjectSendStream[Any]) -> None:
    """The driver task of an :class:`IMap`: runs the pool, then ends the stream."""
    with send:
        try:
            await pool.run()
        except BaseException as exc:
            # The consumer reads ``pool.error``; a cancellation means it closed us.
            if pool.error is None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                pool.error = exc


class _Sink(Protocol):
    """Where a pool's workers hand results: without waiting if possible, else awaited.

    When ``deliver_nowait`` returns False the worker awaits ``sink(index, result)``, which
    finishes that delivery whatever part of it the attempt did: an ordered sink may already
    have stored the result, or emitted it, before it met a result that had to wait.
    """

    def deliver_nowait(self, index: int, result: Any) -> bool: ...

    async def __call__(self, index: int, result: Any) -> None: ...


class _Collect:
    """``map``'s sink: results by input index, for the list in input order."""

    __slots__ = ("results",)

    def __init__(self) -> None:
        self.results: dict[int, Any] = {}

    def deliver_nowait(self, index: int, result: Any) -> bool:
        self.results[index] = result
        return True

    async def __call__(self, index: int, result: Any) -> None:
        self.results[index] = result


class _UnorderedSink:
    """Sends each result as soon as it is ready."""

    __slots__ = ("_emit", "_emit_nowait", "_send")

    def __init__(
        self,
        send: MemoryObjectSendStream[Any],
        emit: Emit | None = None,
        emit_nowait: EmitNowait | None = None,
    ) -> None:
        self._send = send
        self._emit = emit or _emit
        self._emit_nowait = emit_nowait or _emit_nowait

    def deliver_nowait(self, index: int, result: Any) -> bool:
        return self._emit_nowait(self._send, result)

    async def __call__(self, index: int, result: Any) -> None:
        await self._emit(self._send, result)


class _OrderedSink:
    """Holds results that finish early and emits the completed prefix in input order.

    Each emitted result releases one admission slot, so the pool never runs more than the
    admission's size ahead of the next result to emit.
    """

    __slots__ = ("_admit", "_emit", "_emit_nowait", "_flushing", "_next", "_pending", "_send")

    def __init__(
        self,
        send: MemoryObjectSendStream[Any],
        admit: _Admit,
        emit: Emit | None = None,
        emit_nowait: EmitNowait | None = None,
    ) -> None:
        self._send = send
        self._admit = admit
        self._emit = emit or _emit
        self._emit_nowait = emit_nowait or _emit_nowait
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


def _emit_nowait(send: MemoryObjectSendStream[Any], item: Any) -> bool:
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        return False
    return True


async def _emit(send: MemoryObjectSendStream[Any], item: Any) -> None:
    """Send, skipping the checkpoint when the stream has room (a hop then costs ~1 µs)."""
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        await send.send(item)
