"""Rates and token buckets: :class:`Rate`, :class:`RateLimiter`, :class:`KeyedRateLimiter`.

A :class:`RateLimiter` is one token bucket with continuous refill and a FIFO queue of waiters.
Its design follows anyio's and trio's locks: an uncontended ``acquire`` takes its tokens without
yielding to the event loop (the fast path; measured ~0.5 µs against ~8 µs for a checkpoint), and
a contended one parks on a future that a single loop timer resolves when the head of the queue
can be served. Nothing polls, but for one case: a head of the queue due within ``_LATE``
(0.2 ms) past a whole millisecond, in a bucket that would be full before epoll's rounded-up
wake-up, is looked at on every loop iteration for that short while (see ``RateLimiter._arm``).

No over-grant, ever: every grant is accounted at the moment it is released, so over any window
of length ``T`` the tokens handed out stay within ``burst + T * rate`` as callers see them, not
only on some internal clock. The price is paid only by buckets whose burst barely exceeds one
request: asyncio wakes timers with epoll's millisecond granularity, so a waiter due at ``t`` is
released at ``t + ~0.07 ms``, and a bucket that is full during that lateness cannot bank it.
With ``burst=1`` at 1000/s that is about -6 % of the nominal rate (aiolimiter: -7 % on the same
machine); with a burst of two requests or more the lateness is banked in the bucket, and the
short polling above keeps a bucket of two from overflowing while wake-ups are less than 0.2 ms
late (docs/benchmarks.md: -0.02 % on a clock that sleeps like epoll, 0.15 ms late).
Granting late wake-ups "back in time" would recover those 7 % only by handing callers more than
``burst`` tokens in some short window, which is what the caller set ``burst`` to forbid.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import re
import time
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from . import _validate
from .errors import InvalidArgument, InvalidArgumentType

__all__ = ["KeyedRateLimiter", "Rate", "RateLike", "RateLimiter"]

#: asyncio runs a timer up to one clock resolution early. A deadline closer than this is
#: re-checked on the next loop iteration (``call_soon``) rather than by a timer, which epoll
#: would round up to a whole millisecond.
_EARLY = 1e-6

#: How late past its whole millisecond epoll wakes a timer, give or take (kernel timer slack and
#: the loop's own work): a bucket that would be full before then is looked at by polling instead,
#: for at most this long (see ``RateLimiter._arm``).
_LATE = 2e-4

#: The period of the ticks the queue of a bucket that asked for them is served on
#: (``RateLimiter._on_ticks``, the launcher's key buckets): such a bucket, if it refills more
#: than one token per tick and has room to bank them, wakes its head waiter at the next whole
#: multiple of this on the loop's clock rather than the moment its tokens are there, so that
#: every such bucket of the loop wakes at once and each wake-up serves several waiters. At
#: 4 x 500/s that is 200 wake-ups a second instead of 2,000, each a sleep of the process and a
#: pass of the event loop. A waiter is served at most this much later; the rate and the
#: no-over-grant rule are untouched (tokens are granted when they are there, never before).
_TICK = 5e-3

#: Tolerance for float rounding in token arithmetic (0.3 - 0.2 is not 0.1), as a fraction of the
#: bucket's capacity: without it a token that exists on paper after exactly ``1/rate`` seconds
#: could be refused. Relative, not absolute, so that a bucket of a millionth of a token is not
#: granted a thousand times its capacity.
_ROUNDING = 1e-9

#: The rates a :class:`Rate` may have, in events per second: one per 31.7 years to a trillion per
#: second (bytes of a fast link). Outside it the arithmetic stops meaning anything: the time one
#: event is worth overflows to infinity or vanishes below the clock's resolution.
MIN_PER_SECOND = 1e-9
MAX_PER_SECOND = 1e12

#: The largest ``limit`` of a Rate and ``burst`` of a bucket: below 2**53 (9.007e15) a token
#: count still changes when one token is taken, so a cost of 1 is never lost to rounding.
MAX_TOKENS = 1e15

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_RATE_RE = re.compile(rf"({_NUMBER})/({_NUMBER})?({'|'.join(_UNITS)})")
_ACCEPTED = (
    '"N/s", "N/sec", "N/second", "N/m", "N/min", "N/h", "N/hour", "N/d", "N/day", '
    'or a count of periods such as "5/10s" or "90000/1min"'
)


def _positive_number(value: object, what: str) -> float:
    """Return ``value`` as a finite float > 0, or raise naming ``what``."""
    return _validate.number(what, value, strict=True)


def _token_count(value: object, what: str) -> float:
    """Return ``value`` as a float in ``(0, MAX_TOKENS]``, or raise naming ``what``."""
    number = _positive_number(value, what)
    if number > MAX_TOKENS:
        raise InvalidArgument(f"{what} must be at most {MAX_TOKENS:g}, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` events per ``period`` seconds.

    Usage::

        Rate(100)                 # 100 per second
        Rate(600, period=60)      # 600 per minute
        Rate.parse("90000/1min")  # the same thing, as text

    Args:
        limit: Events per period, a finite number > 0 (fractions allowed: ``Rate(0.5)`` is one
            event every two seconds).
        period: Seconds the ``limit`` is spread over.

    Raises:
        ValueError: ``limit`` or ``period`` is not a finite number > 0, ``limit`` is above
            ``MAX_TOKENS`` (1e15), or ``limit / period`` is outside ``MIN_PER_SECOND`` (1e-9)
            to ``MAX_PER_SECOND`` (1e12) per second.
    """

    limit: float
    period: float = 1.0

    def __post_init__(self) -> None:
        _token_count(self.limit, "Rate limit")
        _positive_number(self.period, "Rate period")
        per_second = self.limit / self.period
        if not MIN_PER_SECOND <= per_second <= MAX_PER_SECOND:
            raise InvalidArgument(
                f"Rate({self.limit!r}, period={self.period!r}) is {per_second:g} per second, "
                f"outside the supported range {MIN_PER_SECOND:g} to {MAX_PER_SECOND:g} per second"
            )

    @property
    def per_second(self) -> float:
        """Events per second: ``limit / period``."""
        return self.limit / self.period

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"100/s"``, ``"600/min"``, ``"5/10s"`` and the other forms of the API contract.

        Args:
            text: ``"<limit>/<period>"``, the period one of ``s``/``sec``/``second``,
                ``m``/``min``, ``h``/``hour``, ``d``/``day``, with an optional count of them
                before it (``"5/10s"``).

        Raises:
            TypeError: ``text`` is not a string.
            ValueError: ``text`` is not one of the accepted forms; the message lists them.
        """
        if not isinstance(text, str):
            raise InvalidArgumentType(f"Rate.parse expects a string, got {text!r}")
        match = _RATE_RE.fullmatch(text)
        if match is None:
            raise InvalidArgument(f"invalid rate {text!r}: expected {_ACCEPTED}")
        count, periods, unit = match.groups()
        limit, span = float(count), float(periods) if periods is not None else 1.0
        if limit <= 0 or span <= 0:
            raise InvalidArgument(
                f"invalid rate {text!r}: the count and the period must be > 0; expected {_ACCEPTED}"
            )
        try:
            return cls(int(limit) if limit.is_integer() else limit, span * _UNITS[unit])
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid rate {text!r}: {exc}") from None

    def __str__(self) -> str:
        if self.period == 1:
            return f"{self.limit:g}/s"
        return f"{self.limit:g}/{self.period:g}s"


#: What a ``rate=`` option accepts: a :class:`Rate`, its text form, or a number meaning per second.
RateLike: TypeAlias = Rate | str | float | int


def as_rate(value: RateLike, what: str = "rate") -> Rate:
    """Coerce a rate-like value once, at the API edge."""
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        try:
            return Rate.parse(value)
        except InvalidArgument as exc:
            if what == "rate":
                raise
            raise InvalidArgument(f"{what}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(
            f"{what} must be a Rate, a string such as '100/s', or a number per second; "
            f"got {value!r}"
        )
    return Rate(_positive_number(value, what))


def _check_cost(cost: float, burst: float) -> None:
    """A cost must be > 0 and fit in the bucket, or it could never be granted."""
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise InvalidArgumentType(f"cost must be a number, got {cost!r}")
    if not 0 < cost <= burst:
        raise InvalidArgument(
            f"cost must be > 0 and <= burst ({burst:g}), got {cost!r}: "
            "a cost above the bucket's capacity could never be granted"
        )


_running_loop = asyncio.get_running_loop


def _loop_time() -> float:
    """The event loop's clock (fake under looptime), or the monotonic clock outside a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class RateLimiter:
    """One token bucket: ``rate`` tokens per period, refilled continuously up to ``burst``.

    Usage::

        limiter = RateLimiter("600/min")        # 10/s, burst 10
        async with limiter:                     # acquire(1)
            await client.get(url)

    ``acquire`` serves waiters first-in-first-out, so a big request is never starved by small
    ones, and it is cancellation-safe: a waiter cancelled while waiting takes no tokens and
    does not hold up the waiters behind it. An uncontended ``acquire`` returns without
    yielding to the event loop (it is then *not* a checkpoint).

    A limiter is bound to no event loop until it has waiters, and is not thread-safe.

    Args:
        rate: A :class:`Rate`, a string such as ``"100/s"``, or a number per second.
        burst: Bucket capacity; defaults to one second's worth of tokens, at least 1.

    Raises:
        ValueError: The rate or burst is invalid.
    """

    __slots__ = (
        "_burst",
        "_loop",
        "_paused_until",
        "_per_sec",
        "_queued",
        "_rate",
        "_slack",
        "_soon_at",
        "_ticks",
        "_timer",
        "_timer_when",
        "_tokens",
        "_updated",
        "_waiters",
    )

    def __init__(self, rate: RateLike, *, burst: float | None = None) -> None:
        parsed = as_rate(rate)
        per_sec = parsed.per_second
        self._setup(
            parsed,
            per_sec,
            max(1.0, per_sec) if burst is None else _token_count(burst, "burst"),
        )

    def _setup(self, rate: Rate, per_sec: float, burst: float) -> None:
        self._rate = rate
        self._per_sec = per_sec
        self._burst = burst
        self._slack = burst * _ROUNDING
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        # The cost of the waiters not yet granted nor abandoned: delay() in O(1), not O(queue).
        self._queued = 0.0
        # Whether a queue is served on the loop's shared ticks (see _on_ticks).
        self._ticks = False
        self._timer: asyncio.Handle | None = None
        self._timer_when = math.inf
        # Loop time of the last wake-up asked for with call_soon (see _arm).
        self._soon_at = math.nan
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokens = burst
        # Time of the last refill; -inf makes the first refill fill the bucket.
        self._updated = -math.inf
        self._paused_until = -math.inf

    def _on_ticks(self) -> RateLimiter:
        """Serve this bucket's queue on the loop's shared ticks (``_TICK``) if it refills more
        than a token per tick; returns the bucket.

        For the launcher's key buckets: a few fast keys with many calls queued on each, where
        being served up to a tick later costs a call nothing, while a wake-up of the loop per
        grant costs the process CPU (a sleep and a wake-up of the event loop: 30-50 µs of CPU
        each on a 2-core machine, measured; 2,000 a second at 4 x 500/s). Other buckets are
        served the moment their tokens are there.
        """
        self._ticks = self._per_sec * _TICK > 1.0
        return self

    @classmethod
    def _trusted(cls, rate: Rate, burst: float) -> RateLimiter:
        """Build a bucket from already validated parts (a key that starts to need one)."""
        self = cls.__new__(cls)
        self._setup(rate, rate.per_second, burst)
        return self

    # -- inspection ---------------------------------------------------------------------------

    @property
    def rate(self) -> Rate:
        """The refill rate."""
        return self._rate

    @property
    def burst(self) -> float:
        """The bucket capacity."""
        return self._burst

    @property
    def available(self) -> float:
        """Tokens in the bucket now; negative while in debt after :meth:`charge`."""
        self._refill(_loop_time())
        return self._tokens

    @property
    def waiting(self) -> int:
        """Number of tasks waiting in :meth:`acquire`."""
        return sum(1 for _, fut in self._waiters if not fut.done())

    def delay(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` more tokens could be granted, after the waiters already
        queued and any pause: how to pick, among several limiters, the one that frees soonest.

        Args:
            cost: The tokens a caller would ask for.
        """
        return self._delay_at(cost, _loop_time())

    def _delay_at(self, cost: float, now: float) -> float:
        """:meth:`delay` on a clock read already (the launcher reads it once for every key)."""
        self._refill(now)
        queued = self._queued if self._waiters else 0.0
        short = queued + cost - self._tokens
        wait = short / self._per_sec if short > self._slack else 0.0
        return max(wait, self._paused_until - now, 0.0)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rate={str(self._rate)!r}, burst={self._burst:g}, "
            f"available={self.available:.3g}, waiting={self.waiting})"
        )

    # -- the bucket ---------------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        if now > self._updated:
            tokens = self._tokens + (now - self._updated) * self._per_sec
            self._tokens = tokens if tokens < self._burst else self._burst
            self._updated = now

    def _check_cost(self, cost: float) -> None:
        _check_cost(cost, self._burst)

    def _is_idle_and_full(self, now: float) -> bool:
        """True if dropping this bucket and making a fresh one later would change nothing."""
        if self._waiters or now < self._paused_until:
            return False
        return self._tokens + (now - self._updated) * self._per_sec >= self._burst

    def _full_at(self, now: float) -> float:
        """A time after ``now`` before which this bucket (not idle and full now) is not full.

        Exact for a bucket in debt or paused; for one with waiters a lower bound (whatever they
        take still has to refill), so a sweep that looks again then does so once per waiter at
        most.
        """
        tokens = self._tokens + (now - self._updated) * self._per_sec
        at = now + (self._burst - tokens) / self._per_sec if tokens < self._burst else now
        if self._waiters:
            at = max(at, now + self._burst / self._per_sec)
        at = max(at, self._paused_until)
        return at if at > now else math.nextafter(now, math.inf)

    # -- acquiring ----------------------------------------------------------------------------

    async def acquire(self, cost: float = 1.0) -> None:
        """Wait until ``cost`` tokens are available and take them.

        Waiters are served in arrival order. Returns without yielding when no one is waiting
        and the bucket holds enough tokens; otherwise it is a checkpoint. A waiter cancelled
        while it waits takes no tokens.

        Args:
            cost: Tokens to take, ``0 < cost <= burst``.

        Raises:
            ValueError: ``cost <= 0`` or ``cost > burst``.
        """
        if cost != 1.0 or self._burst < 1.0:
            self._check_cost(cost)
        if not self._waiters:
            now = asyncio.get_running_loop().time()
            # _refill, inlined: this is the hot path (measured ~100 ns per call saved)
            if now > self._updated:
                tokens = self._tokens + (now - self._updated) * self._per_sec
                self._tokens = tokens if tokens < self._burst else self._burst
                self._updated = now
            if self._tokens + self._slack >= cost and now >= self._paused_until:
                self._tokens -= cost
                return
        await self._wait(cost)

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if that needs no waiting (and nobody is queued); never waits.

        Args:
            cost: Tokens to take, ``0 < cost <= burst``.

        Returns:
            Whether the tokens were taken.
        """
        if cost != 1.0 or self._burst < 1.0:
            self._check_cost(cost)
        if self._waiters:
            self._dispatch()  # drop abandoned waiters: they must not make us refuse
            if self._waiters:
                return False
        now = _loop_time()
        self._refill(now)
        if self._tokens + self._slack >= cost and now >= self._paused_until:
            self._tokens -= cost
            return True
        return False

    def _take_now(self, cost: float) -> bool:
        """Take ``cost`` (known valid) if there are the tokens and nobody is queued, abandoned
        waiters included: the launcher's pick of a key without a scan, which otherwise takes
        the slow way (where they are dropped). Called in a running loop only."""
        if self._waiters:
            return False
        now = _running_loop().time()
        if now > self._updated:  # _refill, inlined as in acquire
            tokens = self._tokens + (now - self._updated) * self._per_sec
            self._tokens = tokens if tokens < self._burst else self._burst
            self._updated = now
        if self._tokens + self._slack >= cost and now >= self._paused_until:
            self._tokens -= cost
            return True
        return False

    async def _wait(self, cost: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((cost, fut))
        self._queued += cost
        self._dispatch()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # Granted, but cancelled before we could resume: give the tokens back.
                self._tokens = min(self._burst, self._tokens + cost)
            else:
                fut.cancel()  # _dispatch skips abandoned futures
                self._queued -= cost
            self._dispatch()
            raise

    def _dispatch(self) -> None:
        """Grant queued waiters that can be served now; arm the timer for the next one."""
        loop = self._loop
        if loop is None:
            return
        waiters = self._waiters
        now = loop.time()
        while waiters:
            cost, fut = waiters[0]
            if fut.done():
                waiters.popleft()
                continue
            self._refill(now)
            tokens = self._tokens + self._slack
            if tokens < cost or now < self._paused_until:
                # Not yet. The decision is made on the tokens, never on the time: a wait shorter
                # than the clock's resolution rounds ``due`` to ``now``, and granting then would
                # hand out tokens that do not exist. Look again at the next tick instead.
                due = now + (cost - tokens) / self._per_sec if tokens < cost else now
                if due < self._paused_until:
                    due, full = self._paused_until, math.inf
                else:  # when the bucket caps: a wake-up after that loses tokens for good
                    full = now + (self._burst - self._tokens) / self._per_sec
                if self._ticks:
                    # A fast bucket with room to bank what refills meanwhile is served on the
                    # next tick, with every other such bucket of the loop: one wake-up grants
                    # many waiters instead of one each (what the waiters get is the same).
                    tick = math.ceil(due / _TICK) * _TICK
                    if tick + _TICK < full:
                        due = tick if tick > due else due
                self._arm(loop, due if due > now else math.nextafter(now, math.inf), full)
                return
            self._tokens -= cost
            self._queued -= cost
            waiters.popleft()
            fut.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_when = None, math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float, full: float = math.inf) -> None:
        """Wake :meth:`_dispatch` at ``when``, or soon enough that the bucket (full at ``full``)
        does not overflow while the head of the queue waits for the timer."""
        if self._timer is not None:
            if self._timer_when <= when:
                return  # fires earlier and re-dispatches
            self._timer.cancel()
        now = loop.time()
        wait = when - now
        if wait > _EARLY and now != self._soon_at:
            # epoll sleeps whole milliseconds, rounded up, and wakes ~0.1 ms later still. If the
            # bucket would be full by then, what it refills meanwhile is lost (at burst 2 and
            # 1000/s, 1-3 % of the rate). When the head is due less than _LATE past a whole
            # millisecond, sleep that whole millisecond and look again on every loop iteration
            # for the rest (at most _LATE of polling) rather than overflow.
            ms = wait * 1e3
            if full - now < math.ceil(ms) * 1e-3 + _LATE and wait - math.floor(ms) * 1e-3 <= _LATE:
                whole = math.floor(ms) * 1e-3
                if whole > 0:
                    self._timer_when = now + whole
                    self._timer = loop.call_at(now + whole, self._on_timer)
                else:
                    self._soon_at = now
                    self._timer_when = now
                    self._timer = loop.call_soon(self._on_timer)
                return
        if wait <= _EARLY:
            if now != self._soon_at:
                self._soon_at = now
                self._timer_when = when
                self._timer = loop.call_soon(self._on_timer)
                return
            # A call_soon wake-up came back to the very same clock reading: a virtual clock
            # (looptime) or a coarse one moves only while the loop waits, and asyncio runs a timer
            # due within its clock resolution at once. Wait a little, or this would spin.
            when = now + _EARLY
        self._timer_when = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_when = None, math.inf
        self._dispatch()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    # -- reconciling --------------------------------------------------------------------------

    def charge(self, cost: float) -> None:
        """Take ``cost`` tokens now without waiting; the bucket may go into debt.

        Debt delays later waiters until it is refilled; it never lets them over-draw.

        Args:
            cost: Tokens used beyond what was acquired (e.g. a response's real token count).
        """
        _positive_number(cost, "cost")
        self._refill(_loop_time())
        self._tokens -= cost

    def refund(self, cost: float) -> None:
        """Give ``cost`` tokens back (never above ``burst``), serving waiters that now fit.

        Args:
            cost: Tokens acquired but not used (e.g. an estimate above the real count).
        """
        _positive_number(cost, "cost")
        self._refill(_loop_time())
        self._tokens = min(self._burst, self._tokens + cost)
        if self._waiters:
            self._dispatch()

    def pause(self, seconds: float) -> None:
        """Grant nothing until ``seconds`` from now (e.g. a 429's ``Retry-After``), and resume
        with an empty bucket.

        A throttle says the remote end's budget is spent: a bucket that refilled during the
        pause would burst at its end and be throttled again (measured in docs/benchmarks.md,
        "Launcher: after a throttle"). So what refills during the pause only pays the bucket
        back to zero: it holds 0 tokens when the pause ends (less, if it was in debt beyond
        that), and ``available`` reads negative meanwhile. Pauses only extend: a shorter pause
        never cuts a longer one short.

        Args:
            seconds: How long to grant nothing, from now.
        """
        _validate.number("pause seconds", seconds)
        now = _loop_time()
        self._refill(now)
        until = now + seconds
        if until > self._paused_until:
            self._paused_until = until
        # Empty at the end of the (longest) pause: a debt that the pause itself pays back.
        empty = (now - self._paused_until) * self._per_sec
        if self._tokens > empty:
            self._tokens = empty


class _Keyed(Protocol):
    """What a key slot enters: a keyed limiter, local or in Redis."""

    async def acquire(self, key: Hashable, cost: float = 1.0) -> None: ...


class _KeySlot:
    """``async with keyed(key):`` — acquires the key's bucket on entry (for
    :class:`KeyedRateLimiter` and :class:`~aioflows.RedisRateLimiter` alike)."""

    __slots__ = ("_key", "_keyed")

    def __init__(self, keyed: _Keyed, key: Hashable) -> None:
        self._keyed = keyed
        self._key = key

    async def __aenter__(self) -> None:
        await self._keyed.acquire(self._key)

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class _KeyRate:
    """A key's rate with what the hot path needs precomputed."""

    __slots__ = ("burst", "horizon", "per_sec", "rate", "span")

    def __init__(self, rate: Rate, burst: float | None) -> None:
        self.rate = rate
        self.per_sec = rate.per_second
        self.burst = max(1.0, self.per_sec) if burst is None else burst
        self.span = self.burst / self.per_sec  # seconds an empty bucket takes to fill
        # How far ahead of now a key's "full again" time may be after a grant: an empty bucket,
        # give or take the rounding tolerance (relative to the burst, like RateLimiter's).
        self.horizon = self.span * (1.0 + _ROUNDING)


class KeyedRateLimiter:
    """One independent token bucket per key, e.g. per host or per API key.

    Usage::

        per_host = KeyedRateLimiter("10/s", overrides={"api.example.com": "2/s"})
        async with per_host(url.host):
            ...

    Waiting on one key never delays another.

    Cost per key: a key nobody waits on is held as one float, the time its bucket will be full
    again (the "theoretical arrival time" of GCRA), so a new key costs no allocation. A key
    becomes a full :class:`RateLimiter` only when a caller must wait on it or it is charged,
    refunded or paused.

    Memory stays bounded, by time and not only by new keys: every key is filed with the time its
    bucket will be full, and any call that finds that time passed drops the keys that are full
    and idle by then (a new bucket would be full too) and files the others again for when they
    can be. Each key is dropped once and filed again only after it was used, so the sweeping
    costs amortised O(1) per call, and a quiet limiter holds nothing but keys in use, whether
    or not new keys arrive. Below ``_SWEEP_FLOOR`` keys calls do not sweep at all, so a handful
    of hot keys are not dropped and rebuilt on every call. Keys waited on, in debt or paused
    are never dropped.

    The default rate's keys are filed in a FIFO of (time, key), which is cheap: their times
    come in nearly in order (each lies within one bucket span of when it was filed). Override
    keys (other spans) and keys that became a RateLimiter (debts and pauses of any length) are
    filed in a heap.

    Args:
        rate: Default rate of every key.
        burst: Bucket capacity of every key (default: one second's worth of its rate, at least 1).
        overrides: Per-key rates that replace the default for those keys.
    """

    __slots__ = (
        "_buckets",
        "_burst",
        "_default",
        "_due",
        "_fifo",
        "_heap",
        "_next_sweep",
        "_overrides",
        "_seq",
        "_swept_at",
    )

    #: Below this many keys calls do not sweep.
    _SWEEP_FLOOR = 1024

    #: Seconds between two sweeps at least, so that one sweep drops many keys at once; the keys
    #: held stay bounded by those used within a bucket span and this long, plus the floor.
    _SWEEP_EVERY = 1e-3

    def __init__(
        self,
        rate: RateLike,
        *,
        burst: float | None = None,
        overrides: Mapping[Hashable, RateLike] | None = None,
    ) -> None:
        self._burst = None if burst is None else _token_count(burst, "burst")
        self._default = _KeyRate(as_rate(rate), self._burst)
        self._overrides = {
            key: _KeyRate(as_rate(value, f"overrides[{key!r}]"), self._burst)
            for key, value in (overrides or {}).items()
        }
        # key -> the time its bucket is full again (float), or a RateLimiter once it has waiters
        self._buckets: dict[Hashable, float | RateLimiter] = {}
        # Every held key is filed exactly once: in the FIFO (_fifo keys, _due their times) or in
        # the heap of (time, sequence number, key); the sequence number keeps keys uncompared.
        self._fifo: deque[Hashable] = deque()
        self._due: deque[float] = deque()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        # The loop time at which a call should sweep: the earliest filed time while more than
        # _SWEEP_FLOOR keys are held, else never.
        self._next_sweep = math.inf
        self._swept_at = -math.inf

    @property
    def rate(self) -> Rate:
        """The default rate of a key."""
        return self._default.rate

    def rate_for(self, key: Hashable) -> Rate:
        """The rate that applies to ``key``: its override, or the default.

        Args:
            key: Any hashable key.
        """
        return self._overrides.get(key, self._default).rate

    def __len__(self) -> int:
        """Buckets held now: keys that are full by now are dropped first, whatever their number."""
        self._sweep(_loop_time())
        return len(self._buckets)

    def __bool__(self) -> bool:
        """Always true: a limiter with no bucket held is still a limiter (``if limiter:``)."""
        return True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rate={str(self._default.rate)!r}, "
            f"overrides={len(self._overrides)}, buckets={len(self)})"
        )

    # -- the hot path -------------------------------------------------------------------------

    def _take(self, key: Hashable, cost: float, now: float) -> bool:
        """Grant ``cost`` to a key held as a float if its bucket has room; the hot path."""
        if now >= self._next_sweep:
            self._sweep(now)
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is not None and entry.__class__ is not float:
            return False
        kr = self._overrides.get(key, self._default) if self._overrides else self._default
        if cost != 1.0 or kr.burst < 1.0:
            _check_cost(cost, kr.burst)
        full_at = now if entry is None or entry < now else entry
        step = cost / kr.per_sec
        after = full_at + step
        if after - full_at < step:
            # Rounded down: at a large loop time (a long uptime) a short step loses bits, and a
            # step below half the clock's resolution vanishes. Credit one unit more rather than
            # less time than the cost is worth, or the bucket would grant without limit.
            after = math.nextafter(after, math.inf)
        if after - now > kr.horizon:
            return False  # not enough tokens: the caller goes the slow way
        buckets[key] = after
        if entry is None:
            if kr is self._default:  # _file, inlined: with many keys every call files one
                self._fifo.append(key)
                self._due.append(after)
                if len(buckets) == self._SWEEP_FLOOR + 1:
                    self._arm_sweep()
            else:
                self._file(key, kr, after)
        return True

    def _file(self, key: Hashable, kr: _KeyRate, when: float) -> None:
        """File a key that has just been added to ``_buckets``, to be looked at ``when``."""
        if kr is self._default:
            self._fifo.append(key)
            self._due.append(when)
            if len(self._buckets) == self._SWEEP_FLOOR + 1:
                self._arm_sweep()
        else:
            heapq.heappush(self._heap, (when, next(self._seq), key))
            if len(self._buckets) > self._SWEEP_FLOOR:
                self._arm_sweep()

    def _arm_sweep(self) -> None:
        if len(self._buckets) <= self._SWEEP_FLOOR:
            self._next_sweep = math.inf
            return
        fifo_first = self._due[0] if self._due else math.inf
        heap_first = self._heap[0][0] if self._heap else math.inf
        first = fifo_first if fifo_first < heap_first else heap_first
        # Not sooner than _SWEEP_EVERY after the last sweep: many keys that are full again a
        # microsecond after use would otherwise make every call sweep one key.
        spaced = self._swept_at + self._SWEEP_EVERY
        self._next_sweep = first if first > spaced else spaced

    def _sweep(self, now: float) -> None:
        """Drop every filed key that is due and full; file the others for when they can be."""
        self._swept_at = now
        buckets, fifo, due, heap = self._buckets, self._fifo, self._due, self._heap
        while due and due[0] <= now:
            due.popleft()
            key = fifo.popleft()
            entry = buckets[key]
            if isinstance(entry, float):
                if entry <= now:
                    del buckets[key]
                else:  # used since it was filed; full by ``entry`` unless used again
                    fifo.append(key)
                    due.append(entry)
            elif entry._is_idle_and_full(now):
                del buckets[key]
            else:  # waited on, in debt or paused: for as long as that takes
                heapq.heappush(heap, (entry._full_at(now), next(self._seq), key))
        while heap and heap[0][0] <= now:
            key = heapq.heappop(heap)[2]
            entry = buckets[key]
            if isinstance(entry, float):
                if entry <= now:
                    del buckets[key]
                    continue
                when = entry
            elif entry._is_idle_and_full(now):
                del buckets[key]
                continue
            else:
                when = entry._full_at(now)
            heapq.heappush(heap, (when, next(self._seq), key))
        self._arm_sweep()

    # -- the slow path ------------------------------------------------------------------------

    def _bucket(self, key: Hashable) -> RateLimiter:
        """The key's RateLimiter, made from its float state (or new) if need be."""
        now = _loop_time()
        if now >= self._next_sweep:
            self._sweep(now)
        entry = self._buckets.get(key)
        if isinstance(entry, RateLimiter):
            return entry
        kr = self._overrides.get(key, self._default)
        bucket = RateLimiter._trusted(kr.rate, kr.burst)
        if entry is not None:  # already filed
            bucket._tokens = kr.burst - max(0.0, entry - now) * kr.per_sec
            bucket._updated = now
            self._buckets[key] = bucket
        else:
            self._buckets[key] = bucket
            self._file(key, kr, now + kr.span)
        return bucket

    async def acquire(self, key: Hashable, cost: float = 1.0) -> None:
        """Wait for ``cost`` tokens from ``key``'s bucket (see :meth:`RateLimiter.acquire`).

        Args:
            key: The bucket's key (a host, an API key...).
            cost: Tokens to take, ``0 < cost <= burst``.
        """
        if not self._take(key, cost, _running_loop().time()):
            await self._bucket(key).acquire(cost)

    def try_acquire(self, key: Hashable, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if that needs no waiting; never waits.

        Args:
            key: The bucket's key.
            cost: Tokens to take, ``0 < cost <= burst``.

        Returns:
            Whether the tokens were taken.
        """
        try:  # _loop_time, inlined: this is the hot path
            now = _running_loop().time()
        except RuntimeError:
            now = time.monotonic()
        return self._take(key, cost, now) or self._bucket(key).try_acquire(cost)

    def __call__(self, key: Hashable) -> _KeySlot:
        """``async with keyed(key):`` acquires one token of ``key`` on entry.

        Args:
            key: The bucket's key.
        """
        return _KeySlot(self, key)

    def charge(self, key: Hashable, cost: float) -> None:
        """Take ``cost`` tokens from ``key`` now; its bucket may go into debt.

        Args:
            key: The bucket's key.
            cost: Tokens used beyond what was acquired.
        """
        self._bucket(key).charge(cost)

    def refund(self, key: Hashable, cost: float) -> None:
        """Give ``cost`` tokens back to ``key`` (a key with no bucket is full already).

        Args:
            key: The bucket's key.
            cost: Tokens acquired but not used.
        """
        if key not in self._buckets:
            _positive_number(cost, "cost")
            return
        self._bucket(key).refund(cost)

    def pause(self, key: Hashable, seconds: float) -> None:
        """Grant nothing to ``key`` until ``seconds`` from now; other keys are unaffected.

        Args:
            key: The bucket's key.
            seconds: How long to grant nothing, from now.
        """
        self._bucket(key).pause(seconds)

    def available(self, key: Hashable) -> float:
        """Tokens in ``key``'s bucket now (a key never seen holds a full bucket).

        Args:
            key: The bucket's key.
        """
        entry = self._buckets.get(key)
        if isinstance(entry, RateLimiter):
            return entry.available
        kr = self._overrides.get(key, self._default)
        if entry is None:
            return kr.burst
        return kr.burst - max(0.0, entry - _loop_time()) * kr.per_sec
