"""One call of a user function under a rate limit, a per-key limit, a timeout and a retry policy.

``map``/``imap`` (and the pipeline, flow and launcher layers) all need the same sequence —
acquire the limiters, call, bound by a timeout, tell a throttle from a failure, back off, try
again — so it is written once here. :func:`guard` builds the callable once per ``map`` call and
picks the leanest variant for the options given: with no options it is the function itself,
so the plain path costs nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeAlias, TypeVar

import anyio

from . import _validate
from .errors import InvalidArgument, InvalidArgumentType
from .limits import KeyedRateLimiter, RateLike, RateLimiter
from .retry import DEFAULT_MAX_WAIT, Retry, RetryLike, as_retry, throttle_delay

__all__ = ["LimiterLike", "KeyedLimiterLike", "as_keyed_limiter", "as_limiter", "guard"]

T = TypeVar("T")
R = TypeVar("R")

#: ``rate=``: a rate (a fresh limiter for this call) or a RateLimiter (shared across calls).
LimiterLike: TypeAlias = RateLike | RateLimiter
#: ``per_key_rate=``: a rate (fresh buckets for this call) or a KeyedRateLimiter (shared).
KeyedLimiterLike: TypeAlias = RateLike | KeyedRateLimiter


def as_limiter(value: LimiterLike | None) -> RateLimiter | None:
    """Coerce ``rate=``: a limiter instance is shared as is, anything else makes a new one."""
    if value is None or isinstance(value, RateLimiter):
        return value
    return RateLimiter(value)


def as_keyed_limiter(value: KeyedLimiterLike | None) -> KeyedRateLimiter | None:
    """Coerce ``per_key_rate=`` the same way."""
    if value is None or isinstance(value, KeyedRateLimiter):
        return value
    return KeyedRateLimiter(value)


def check_timeout(timeout: float | None) -> float | None:
    """Validate ``timeout=``: None or a number > 0."""
    if timeout is None:
        return None
    return _validate.number("timeout", timeout, strict=True)


def guard(
    fn: Callable[[T], Awaitable[R]],
    *,
    rate: LimiterLike | None = None,
    key: Callable[[T], Hashable] | None = None,
    per_key_rate: KeyedLimiterLike | None = None,
    retry: RetryLike = None,
    timeout: float | None = None,
) -> Callable[[T], Awaitable[R]]:
    """Wrap ``fn`` so that each call passes the limiters, the timeout and the retry policy.

    ``timeout`` is one budget for the whole call (attempts, backoffs and throttle waits; not
    the queueing for a limiter's tokens): a wait that would not fit in what is left fails the
    call at once with ``TimeoutError``. A throttle asking for more than ``Retry.max_wait``
    (``DEFAULT_MAX_WAIT`` without a policy) is raised at once, and no limiter or key is paused
    for longer than that. Every argument is validated here, before any call starts.

    Raises:
        TypeError: ``fn`` or ``key`` is not callable.
        ValueError: A rate, retry or timeout is invalid, or ``key`` and ``per_key_rate`` are
            not given together.
    """
    if not callable(fn):
        raise InvalidArgumentType(f"fn must be an async callable, got {fn!r}")
    if key is not None and not callable(key):
        raise InvalidArgumentType(f"key must be a callable of one item, got {key!r}")
    if (key is None) != (per_key_rate is None):
        raise InvalidArgument(
            "key and per_key_rate go together: key(item) picks the bucket of per_key_rate; "
            f"got key={key!r}, per_key_rate={per_key_rate!r}"
        )
    limiter = as_limiter(rate)
    keyed = as_keyed_limiter(per_key_rate)
    policy = as_retry(retry)
    limit = check_timeout(timeout)
    if limiter is None and keyed is None and policy is None and limit is None:
        return fn
    return _Guarded(fn, limiter, key, keyed, policy, limit)


class _Guarded(Generic[T, R]):
    """The callable :func:`guard` returns when any option is set."""

    __slots__ = ("_fn", "_key", "_keyed", "_limiter", "_retry", "_timeout")

    def __init__(
        self,
        fn: Callable[[T], Awaitable[R]],
        limiter: RateLimiter | None,
        key: Callable[[T], Hashable] | None,
        keyed: KeyedRateLimiter | None,
        retry: Retry | None,
        timeout: float | None,
    ) -> None:
        self._fn = fn
        self._limiter = limiter
        self._key = key
        self._keyed = keyed
        self._retry = retry
        self._timeout = timeout

    async def __call__(self, item: T) -> R:
        limiter, keyed, retry, timeout = self._limiter, self._keyed, self._retry, self._timeout
        bucket = self._key(item) if self._key is not None else None
        cap = retry.max_wait if retry is not None else DEFAULT_MAX_WAIT
        failures = throttles = 0
        # ``timeout`` is one budget for the whole call: its attempts, its backoffs and its
        # throttle waits all spend it; queueing for a limiter's tokens does not (that wait is
        # other callers' doing). Clocks are read only when there is a timeout.
        left = timeout
        started = 0.0
        while True:
            if limiter is not None:
                await limiter.acquire()
            if keyed is not None:
                await keyed.acquire(bucket)
            scope: anyio.CancelScope | None = None
            try:
                if left is None:
                    return await self._fn(item)
                started = anyio.current_time()
                with anyio.fail_after(left) as scope:
                    return await self._fn(item)
            except Exception as exc:
                if scope is not None and scope.cancelled_caught:
                    raise  # the budget ran out during this attempt: nothing left to retry with
                throttled, after = throttle_delay(exc)
                if throttled:
                    # Back-pressure, not failure: everyone behind these limiters should wait.
                    throttles += 1
                    wait = after
                    if wait is None:
                        wait = retry.delay(throttles) if retry is not None else 0.0
                    # The throttle is the key's (one host said 429) when there is a key;
                    # pausing the overall limiter then would stall every other host too.
                    # Never longer than the cap: `Retry-After: 1000000000` is valid HTTP.
                    if keyed is not None:
                        keyed.pause(bucket, min(wait, cap))
                    elif limiter is not None:
                        limiter.pause(min(wait, cap))
                    if retry is None or throttles > retry.max_throttles or wait > cap:
                        raise
                else:
                    failures += 1
                    if retry is None or failures >= retry.attempts or not retry.retries(exc):
                        raise
                    wait = retry.delay(failures)
                if left is not None:
                    left -= anyio.current_time() - started + wait
                    if left <= 0:
                        raise TimeoutError(
                            f"timeout of {timeout:g} s: no time left to wait {wait:.3g} s "
                            f"and call again after {type(exc).__name__}"
                        ) from exc
                if not throttled or (limiter is None and keyed is None):
                    await anyio.sleep(wait)
