"""One call of a user function under a call policy: rate limits, a timeout and a retry policy.

``map``/``imap``, pipeline stages, flow tasks, ``HttpClient`` and the launcher all need the same
sequence — pass the limiters, call, bound by a timeout, tell a throttle from a failure, back
off, try again — so it is written once here, in :class:`Guard`. The options travel as one
frozen :class:`CallPolicy`, validated and converted where a user gives them (httpx's
``Timeout``/``Limits`` are the model), so every entry point means the same by them.

:func:`guard` builds the callable once per ``map`` call (per pipeline or flow run) and picks the
leanest variant for the policy: an empty policy gives back the function itself, so the plain
path costs nothing. The launcher subclasses :class:`Guard`: its "limiters" are the pick of an
API key, and its hooks count the attempts and retries of its records.

The semantics, one set for every caller (docs/limits.md, "RateLimited"):

- a *failure* (an exception matching ``Retry.on``) counts an attempt and waits the backoff;
- a *throttle* (:class:`~aioflows.RateLimited`, HTTP 429, 503 with ``Retry-After``) does not
  count an attempt: it rests what the attempt ran with (the key's bucket, else the overall
  limiter; the launcher's API key) for what the remote end asked, else the policy's backoff
  (``THROTTLE_BACKOFF`` with ``retry=None``), never longer than ``Retry.max_wait``, then the
  call goes again, at most ``Retry.max_throttles`` times;
- ``retry=None`` means the function is never called twice for one item: a failure or a
  throttle is raised at once (a throttle still rests its limiter or key first);
- a throttle asking for more than ``max_wait`` is raised at once, as itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import anyio

from . import _validate
from .errors import InvalidArgument, InvalidArgumentType
from .limits import KeyedRateLimiter, Rate, RateLike, RateLimiter, as_rate
from .redislimits import RedisRateLimiter
from .retry import (
    THROTTLE_BACKOFF,
    Retry,
    RetryLike,
    UseDefault,
    as_retry,
    throttle_delay,
    wait_cap,
)

__all__ = [
    "CallPolicy",
    "Guard",
    "KeyedLimiterLike",
    "LimiterLike",
    "as_keyed_limiter",
    "as_limiter",
    "check_timeout",
    "guard",
]

T = TypeVar("T")
H = TypeVar("H")
R = TypeVar("R")

#: ``rate=``: a rate (a fresh limiter for this call) or a RateLimiter (shared across calls).
LimiterLike: TypeAlias = RateLike | RateLimiter
#: ``per_key_rate=``: a rate (fresh buckets for this call) or a KeyedRateLimiter (shared), in
#: this process or in Redis (:class:`~aioflows.RedisRateLimiter`, shared by many processes).
KeyedLimiterLike: TypeAlias = RateLike | KeyedRateLimiter | RedisRateLimiter
#: A keyed limiter instance, local or in Redis.
KeyedLimiter: TypeAlias = KeyedRateLimiter | RedisRateLimiter


def as_limiter(value: LimiterLike | None) -> RateLimiter | None:
    """Coerce ``rate=``: a limiter instance is shared as is, anything else makes a new one."""
    if value is None or isinstance(value, RateLimiter):
        return value
    return RateLimiter(value)


def as_keyed_limiter(value: KeyedLimiterLike | None) -> KeyedLimiter | None:
    """Coerce ``per_key_rate=`` the same way."""
    if value is None or isinstance(value, (KeyedRateLimiter, RedisRateLimiter)):
        return value
    return KeyedRateLimiter(value)


def check_timeout(timeout: float | None) -> float | None:
    """Validate ``timeout=``: None or a number > 0."""
    if timeout is None:
        return None
    return _validate.number("timeout", timeout, strict=True)


@dataclass(frozen=True, slots=True, init=False, repr=False)
class CallPolicy:
    """How each call of a function is made: its limits, its retry policy and its timeout.

    Usage::

        policy = CallPolicy(rate="10/s", retry=3, timeout=30)
        call = guard(fetch, policy)

    Made once where the user gives the options (``map``, ``Stage``, ``@task``, ``HttpClient``),
    which validates and converts them all, before any call starts. A rate given as a value is
    kept as a :class:`Rate`, and :func:`guard` makes a fresh limiter of it each time it builds
    a callable (each ``map`` call, each pipeline or flow run); a ``RateLimiter`` or
    ``KeyedRateLimiter`` given is shared as is, by every callable built from the policy.

    Args:
        rate: Limit on the calls overall (a rate, or a shared ``RateLimiter``).
        key: ``key(item)`` picks the bucket of ``per_key_rate`` for a call.
        per_key_rate: The limit of each key's bucket (a rate, or a shared ``KeyedRateLimiter``).
        retry: A ``Retry``, an int meaning ``Retry(attempts=n)``, or None (no retry).
        timeout: Seconds the whole call may take, retries and their waits included.

    Raises:
        TypeError: ``key`` is not callable, or an option is of a wrong type.
        ValueError: A rate, retry or timeout is invalid, or ``key`` and ``per_key_rate`` are
            not given together.
    """

    rate: Rate | RateLimiter | None
    key: Callable[[Any], Hashable] | None
    per_key_rate: Rate | KeyedLimiter | None
    retry: Retry | None
    timeout: float | None

    def __init__(
        self,
        *,
        rate: LimiterLike | None = None,
        key: Callable[[Any], Hashable] | None = None,
        per_key_rate: KeyedLimiterLike | None = None,
        retry: RetryLike | UseDefault = None,
        timeout: float | None = None,
    ) -> None:
        if key is not None and not callable(key):
            raise InvalidArgumentType(f"key must be a callable of one item, got {key!r}")
        if (key is None) != (per_key_rate is None):
            raise InvalidArgument(
                "key and per_key_rate go together: key(item) picks the bucket of per_key_rate; "
                f"got key={key!r}, per_key_rate={per_key_rate!r}"
            )
        if rate is not None and not isinstance(rate, RateLimiter):
            rate = as_rate(rate)
        if per_key_rate is not None and not isinstance(
            per_key_rate, (KeyedRateLimiter, RedisRateLimiter)
        ):
            per_key_rate = as_rate(per_key_rate)
        # Frozen: the converted values are set once, here, and never again.
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "per_key_rate", per_key_rate)
        object.__setattr__(self, "retry", as_retry(retry))
        object.__setattr__(self, "timeout", check_timeout(timeout))

    @property
    def is_empty(self) -> bool:
        """True when the policy asks for nothing: calls go straight to the function."""
        return (
            self.rate is None
            and self.per_key_rate is None
            and self.retry is None
            and self.timeout is None
        )

    def __repr__(self) -> str:
        # Constructor-shaped, naming only what was given (as httpx's Timeout does).
        given = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("rate", "key", "per_key_rate", "retry", "timeout")
            if getattr(self, name) is not None
        )
        return f"CallPolicy({given})"


class Guard(Generic[T, H, R]):
    """The one guarded loop: before each attempt :meth:`enter`, then :meth:`attempt`, and on
    trouble the policy's answer. Subclasses fill in the hooks.

    ``timeout`` is one budget for the whole call (attempts, backoffs and throttle waits; not
    the wait in :meth:`enter`, which is other callers' doing): a wait that would not fit in
    what is left fails the call at once with ``TimeoutError``.
    """

    __slots__ = ("retry", "timeout")

    def __init__(self, retry: Retry | None, timeout: float | None) -> None:
        self.retry = retry
        self.timeout = timeout

    async def enter(self, item: T) -> H:
        """Before each attempt: take what it runs with (limiter tokens, an API key)."""
        raise NotImplementedError

    async def attempt(self, item: T, held: H) -> R:
        """One attempt of the call, with what :meth:`enter` gave."""
        raise NotImplementedError

    def throttled(self, item: T, held: H, seconds: float) -> bool | Awaitable[bool]:
        """A throttle: rest what ``held`` stands for ``seconds`` (already capped by
        ``max_wait``). True if the next :meth:`enter` waits the rest out itself, so the loop
        must not sleep as well; False (the default) makes the loop sleep ``seconds``. A
        limiter in Redis rests by a round trip: the hook then returns an awaitable of that
        answer, which the loop awaits (throttles are rare; the plain path stays a bool)."""
        return False

    def retrying(self, item: T, held: H, throttled: bool) -> None:
        """The call goes again after a throttle (``throttled``) or a failure; for counting."""

    async def __call__(self, item: T) -> R:
        retry, timeout = self.retry, self.timeout
        cap = wait_cap(retry)
        failures = throttles = 0
        # Clocks are read only when there is a timeout.
        left = timeout
        started = 0.0
        while True:
            held = await self.enter(item)
            scope: anyio.CancelScope | None = None
            try:
                if left is None:
                    return await self.attempt(item, held)
                started = anyio.current_time()
                with anyio.fail_after(left) as scope:
                    return await self.attempt(item, held)
            except Exception as exc:
                if scope is not None and scope.cancelled_caught:
                    raise  # the budget ran out during this attempt: nothing left to retry with
                throttled, asked = throttle_delay(exc)
                if throttled:
                    # Back-pressure, not failure: whatever the attempt ran with should rest.
                    # Never longer than the cap: `Retry-After: 1000000000` is valid HTTP.
                    throttles += 1
                    if asked is not None:
                        wait = min(asked, cap)
                    elif retry is not None:
                        wait = min(retry.delay(throttles), cap)
                    else:
                        wait = THROTTLE_BACKOFF
                    rested = self.throttled(item, held, wait)
                    if not isinstance(rested, bool):
                        rested = await rested
                    if (
                        retry is None
                        or throttles > retry.max_throttles
                        or (asked is not None and asked > cap)
                    ):
                        raise
                else:
                    failures += 1
                    if retry is None or failures >= retry.attempts or not retry.retries(exc):
                        raise
                    wait = retry.delay(failures)
                    rested = False
                if left is not None:
                    left -= anyio.current_time() - started + wait
                    if left <= 0:
                        raise TimeoutError(
                            f"timeout of {timeout:g} s: no time left to wait {wait:.3g} s "
                            f"and call again after {type(exc).__name__}"
                        ) from exc
                self.retrying(item, held, throttled)
                if not rested:
                    await anyio.sleep(wait)


def guard(fn: Callable[[T], Awaitable[R]], policy: CallPolicy) -> Callable[[T], Awaitable[R]]:
    """Wrap ``fn`` so that each call passes the limits, the timeout and the retry of ``policy``.

    The limiters of a rate given as a value are made here, fresh for the callable returned; an
    empty policy returns ``fn`` itself.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise InvalidArgumentType(f"fn must be an async callable, got {fn!r}")
    if policy.is_empty:
        return fn
    return _Limited(fn, policy)


class _Limited(Guard[T, Hashable, R]):
    """The callable :func:`guard` returns for a policy: ``fn`` behind the policy's limiters.

    A throttle rests the key's bucket when there is a key (one host said 429: pausing the
    overall limiter then would stall every other host too), else the overall limiter.
    """

    __slots__ = ("_fn", "_key", "_keyed", "_limiter")

    def __init__(self, fn: Callable[[T], Awaitable[R]], policy: CallPolicy) -> None:
        super().__init__(policy.retry, policy.timeout)
        self._fn = fn
        rate, per_key = policy.rate, policy.per_key_rate
        self._limiter = rate if rate is None or isinstance(rate, RateLimiter) else RateLimiter(rate)
        self._keyed: KeyedLimiter | None = (
            per_key
            if per_key is None or isinstance(per_key, (KeyedRateLimiter, RedisRateLimiter))
            else KeyedRateLimiter(per_key)
        )
        self._key = policy.key

    async def enter(self, item: T) -> Hashable:
        if self._limiter is not None:
            await self._limiter.acquire()
        if self._keyed is None:
            return None
        bucket = self._key(item) if self._key is not None else None
        await self._keyed.acquire(bucket)
        return bucket

    async def attempt(self, item: T, held: Hashable) -> R:
        return await self._fn(item)

    def throttled(self, item: T, held: Hashable, seconds: float) -> bool | Awaitable[bool]:
        keyed = self._keyed
        if isinstance(keyed, RedisRateLimiter):
            return _paused(keyed.pause(held, seconds))
        if keyed is not None:
            keyed.pause(held, seconds)
        elif self._limiter is not None:
            self._limiter.pause(seconds)
        else:
            return False
        return True


async def _paused(pausing: Awaitable[None]) -> bool:
    """A key paused in Redis: the next :meth:`Guard.enter` waits the pause out."""
    await pausing
    return True
