"""``map`` and ``imap``: call an async function over many items with bounded concurrency.

Both run on the one worker pool (:mod:`aioflows._workers`): ``concurrency`` workers that pull
items from the input as they become free, rather than one task per item, which is what makes
``gather``-style helpers slow and memory-hungry; pulling lazily is also what keeps an infinite
generator from being materialised. ``map`` collects into a list (over a sync iterable, the
pool's fast path: one ``next``, one append and the call per item).

``imap`` hands results to a consumer that may stop at any moment. An async generator cannot own
a task group across its ``yield``, so the workers run in a *driver* task owned by the iterator
object (:class:`~aioflows._workers.Driven`); closing the iterator (``async with`` exit,
``aclose``, cancelling its consumer while it waits, or dropping it) cancels the driver, and the
pool with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Hashable, Iterable, Sized
from typing import Any, Literal, TypeAlias, TypeVar, overload

import anyio

from . import _validate
from ._workers import (
    Admit,
    Collect,
    Driven,
    OrderedSink,
    Pool,
    Source,
    UnorderedSink,
    drive,
    feeding,
)
from .calls import CallPolicy, KeyedLimiterLike, LimiterLike, guard
from .retry import RetryLike

__all__ = ["IMap", "imap", "map"]

T = TypeVar("T")
R = TypeVar("R")

Items: TypeAlias = "Iterable[T] | AsyncIterable[T]"


def _check_concurrency(concurrency: int) -> int:
    return _validate.count("concurrency", concurrency)


def _pool_size(items: object, concurrency: int) -> int:
    """No more workers than items, when the input knows its length."""
    return max(1, min(concurrency, len(items))) if isinstance(items, Sized) else concurrency


@overload
async def map(
    fn: Callable[[T], Awaitable[R]],
    items: Items[T],
    *,
    concurrency: int = ...,
    rate: LimiterLike | None = ...,
    key: Callable[[T], Hashable] | None = ...,
    per_key_rate: KeyedLimiterLike | None = ...,
    retry: RetryLike = ...,
    timeout: float | None = ...,
    return_exceptions: Literal[False] = ...,
) -> list[R]: ...


@overload
async def map(
    fn: Callable[[T], Awaitable[R]],
    items: Items[T],
    *,
    concurrency: int = ...,
    rate: LimiterLike | None = ...,
    key: Callable[[T], Hashable] | None = ...,
    per_key_rate: KeyedLimiterLike | None = ...,
    retry: RetryLike = ...,
    timeout: float | None = ...,
    return_exceptions: bool,
) -> list[R | Exception]: ...


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
) -> list[R] | list[R | Exception]:
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
    source = Source(items)
    collected = Collect()
    pool = Pool(call, source, concurrency, sink=collected, return_exceptions=return_exceptions)
    await pool.run(_pool_size(items, concurrency))
    return collected.results


@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Items[T],
    *,
    ordered: bool = ...,
    concurrency: int = ...,
    rate: LimiterLike | None = ...,
    key: Callable[[T], Hashable] | None = ...,
    per_key_rate: KeyedLimiterLike | None = ...,
    retry: RetryLike = ...,
    timeout: float | None = ...,
    return_exceptions: Literal[False] = ...,
) -> IMap[R]: ...


@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Items[T],
    *,
    ordered: bool = ...,
    concurrency: int = ...,
    rate: LimiterLike | None = ...,
    key: Callable[[T], Hashable] | None = ...,
    per_key_rate: KeyedLimiterLike | None = ...,
    retry: RetryLike = ...,
    timeout: float | None = ...,
    return_exceptions: bool,
) -> IMap[R | Exception]: ...


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
) -> IMap[R] | IMap[R | Exception]:
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

    Args:
        fn: Async callable of one item.
        items: Iterable or async iterable, pulled no further ahead than the calls in flight.
        ordered: Yield results in input order instead of as they finish.
        concurrency: Most calls in flight at once.
        rate: Limit on calls overall; a :class:`RateLimiter` is shared with whoever else uses it.
        key: ``key(item)`` picks the bucket of ``per_key_rate`` for the call.
        per_key_rate: Per-key limit; a :class:`KeyedRateLimiter` is shared as is.
        retry: A :class:`Retry` or a number of attempts.
        timeout: Seconds each call may take; an overrun is a ``TimeoutError``.
        return_exceptions: Yield exceptions in place of results instead of raising.

    Returns:
        An async iterator of the results, also an async context manager that stops the
        workers on exit.

    Raises:
        ValueError, TypeError: Bad arguments, before any call starts.
    """
    policy = CallPolicy(rate=rate, key=key, per_key_rate=per_key_rate, retry=retry, timeout=timeout)
    call = guard(fn, policy)
    _check_concurrency(concurrency)
    return IMap(call, Source(items), concurrency, bool(ordered), bool(return_exceptions))


class IMap(Driven[R]):
    """The async iterator, and async context manager, that :func:`imap` returns."""

    __slots__ = ("_pool", "_send")

    def __init__(
        self,
        call: Callable[[Any], Awaitable[R]],
        source: Source[Any],
        concurrency: int,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        super().__init__()
        self._send, self._receive = anyio.create_memory_object_stream[R](concurrency)
        admit = Admit(2 * concurrency) if ordered else None
        sink = OrderedSink(self._send, admit) if admit is not None else UnorderedSink(self._send)
        self._pool = Pool(
            call, source, concurrency, sink=sink, return_exceptions=return_exceptions, admit=admit
        )

    def _launch(self) -> Coroutine[Any, Any, None]:
        return drive([feeding(self._pool, self._send)], self._error)

    async def _release(self) -> None:
        self._drop()
        await self._pool.source.aclose()

    def _drop(self) -> None:
        self._send.close()
        if self._receive is not None:
            self._receive.close()
