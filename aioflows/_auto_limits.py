"""A launcher key's limits learned from the provider's rate-limit headers ("auto" keys).

A key given no rate (``rate_per_key=None`` or ``"auto"``, or ``None``/``"auto"`` in the keys
mapping) does not know its limits until the provider says them. So it starts cautiously: one
call at a time, until the first call's response reports them (:class:`RateLimitInfo`, fed by
``HttpClient`` through the context variable this module sets around each call, or by
``key.report_headers``). From then on its request bucket follows what every response says:

- the limit ``L`` gives the rate, ``L`` per window, at :data:`HEADROOM` of it, and the burst,
  one second's worth (at least 1, at most ``L``), as for any rate: OpenAI enforces a per-minute
  limit over shorter spans too, so a key with 60/min must not fire 60 calls at once;
- the window is not in the headers. Under a token bucket (what both providers describe) the
  deficit ``L - remaining`` refills in ``reset`` seconds, so the window is ``reset * L /
  (L - remaining)``. But a reset is rounded (to the millisecond, or the second), and an RFC
  3339 one is read on arrival, up to the call's round trip late, so each report only says a
  range: from ``reset - rounding`` to ``reset + rounding + round trip``, over the deficit's
  share. The window starts at a minute (the providers' window) and stays while the reports'
  ranges hold it (within :data:`SNAP`); one that does not moves it to the nearest of a second,
  a minute, an hour or a day that its range holds. So a noisy report (a small deficit, a slow
  round trip) never moves it, and a clear one (a 429's: the whole limit) always can;
- ``remaining`` caps what the bucket holds now (never more): ``remaining`` less the calls
  started on the key after the reporting one, which the server had not counted yet. The first
  report sets it; later ones only lower it, so that the server's bucket, refilling at the full
  rate while ours refills at :data:`HEADROOM` of it, keeps a margin that absorbs the network's
  jitter instead of throttling us;
- a limit that changes mid-run (down or up) changes the rate and burst with the next response.

The token bucket learns the same way from the ``-tokens`` headers when the launcher has a
``cost`` estimate to reserve and ``tokens_per_key="auto"``. A key whose first call ends without
any report (the function uses another client and does not call ``report_headers``, or the API
sends no such headers) stops waiting: it is from then on what a key without a rate always was,
unlimited, so that existing users are not slowed; a later report still teaches it. Explicit
rates are never touched. Throttles (429 with ``Retry-After``) pause the key as before.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from .limits import Rate, RateLimiter, _loop_time
from .ratelimit_headers import RateLimitInfo

if TYPE_CHECKING:
    from .apikeys import KeyState

__all__ = ["AUTO", "AutoLimits", "enter", "is_auto", "leave", "report"]

logger = logging.getLogger("aioflows.launcher")

#: The value of ``rate_per_key`` (or of a key in the mapping) that asks for learned limits.
AUTO = "auto"
#: The share of a learned limit the key is paced at: the rest is the server's margin.
HEADROOM = 0.95
#: The window assumed until the headers let one be estimated: providers' limits are per minute.
DEFAULT_WINDOW = 60.0
#: The windows a key's may be (a report whose range holds none sets its own).
WINDOWS = (1.0, 60.0, 3600.0, 86400.0)
#: How far (a factor) outside a report's range a window may be and still be held by it.
SNAP = 1.5

#: What takes a response's report: the ``Key`` of the launcher call running.
Reporter: TypeAlias = "Callable[[RateLimitInfo], None]"
#: A call's place among its key's calls: calls and tokens started so far, its start time.
Mark: TypeAlias = "tuple[int, float, float]"
#: The call's token of :data:`_reporter`, to unset it with.
Entered: TypeAlias = "contextvars.Token[Reporter | None]"

#: What a call running for an auto key reports to (set by the launcher around ``fn``).
_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "aioflows_rate_limit_reporter", default=None
)


def is_auto(rate: object) -> bool:
    return rate is None or rate == AUTO


def report(info: RateLimitInfo | None) -> None:
    """Give ``info`` to the key of the launcher call running here, if any (``HttpClient``)."""
    if info is not None:
        reporter = _reporter.get()
        if reporter is not None:
            reporter(info)


def enter(reporter: Reporter | None) -> Entered | None:
    """Around a call of an auto key: what ``HttpClient`` reports goes to ``reporter``."""
    return None if reporter is None else _reporter.set(reporter)


def leave(state: KeyState, token: Entered | None) -> None:
    """After a call of ``state``: the reporter is unset, and a first call ends the probe."""
    if token is not None:
        _reporter.reset(token)
    if state.auto is not None and state.auto.probing:
        state.auto.probed(state)


class _LearnedBucket(RateLimiter):
    """A request or token bucket whose rate, burst and tokens change as responses say;
    its waiters stay queued across a change and are served by the new terms."""

    __slots__ = ()

    def retune(self, rate: Rate, burst: float, tokens: float | None) -> None:
        """New terms from now; ``tokens`` (if given) is what the bucket holds now."""
        self._refill(_loop_time())
        queued = max((cost for cost, fut in self._waiters if not fut.done()), default=0.0)
        burst = max(burst, queued)  # a queued cost above the new burst could never be served
        self._rate, self._per_sec = rate, rate.per_second
        self._burst, self._slack = burst, burst * 1e-9
        self._tokens = min(burst, self._tokens if tokens is None else tokens)
        if self._timer is not None:  # armed for the old rate
            self._timer.cancel()
            self._timer, self._timer_when = None, math.inf
        self._dispatch()

    def lower(self, tokens: float) -> None:
        """Hold at most ``tokens`` now (a debt if negative)."""
        self._refill(_loop_time())
        if tokens < self._tokens:
            self._tokens = tokens


def _probe() -> _LearnedBucket:
    """One call, then nothing until the first response (or the first call's end) says more."""
    return _LearnedBucket(Rate(1, period=1e9), burst=1)


class _Dimension:
    """What was learned of one limit of a key (requests or tokens)."""

    __slots__ = ("limit", "window")

    def __init__(self) -> None:
        self.limit: float | None = None
        self.window = DEFAULT_WINDOW

    def learn(
        self,
        limit: float | None,
        remaining: float | None,
        reset_s: float | None,
        slack: tuple[float, float],
    ) -> bool:
        """Take one response's figures in (``slack``: how far its reset may be off, early and
        late); whether the limit or the window changed."""
        if limit is None:
            return False
        window = self.window
        if remaining is not None and reset_s is not None and remaining < limit:
            share = (limit - remaining) / limit
            early, late = slack
            window = _fit(max(0.0, reset_s - early) / share, (reset_s + late) / share, window)
        changed = limit != self.limit or window != self.window
        self.limit, self.window = limit, window
        return changed


def _fit(low: float, high: float, window: float) -> float:
    """The window a report between ``low`` and ``high`` leaves: ``window`` itself if within
    :data:`SNAP` of that range (a noisy report does not move it), else the standard window in
    the range nearest to it, else ``low`` itself (a window of no standard length)."""
    if low / SNAP <= window <= high * SNAP:
        return window
    fits = [w for w in WINDOWS if low / SNAP <= w <= high * SNAP]
    if fits:
        return min(fits, key=lambda w: abs(math.log(w / window)))
    return low if low > 0 else window


class AutoLimits:
    """One auto key's learning: its probe, what it learned, and the calls started on it."""

    __slots__ = (
        "learn_requests",
        "learn_tokens",
        "probing",
        "requests",
        "started",
        "started_cost",
        "tokens",
    )

    def __init__(self, learn_requests: bool, learn_tokens: bool) -> None:
        self.learn_requests = learn_requests
        self.learn_tokens = learn_tokens
        self.probing = learn_requests  # one call at a time until the first response
        self.requests = _Dimension()
        self.tokens = _Dimension()
        # Calls (and their reserved tokens) started on the key so far: a report subtracts
        # those started after its own call from what the server said remains.
        self.started = 0
        self.started_cost = 0.0

    @staticmethod
    def probe() -> RateLimiter:
        return _probe()

    def start(self, cost: float) -> Mark:
        """A call starts on the key: its mark, to tell later calls from earlier ones."""
        self.started += 1
        self.started_cost += cost
        return self.started, self.started_cost, _loop_time()

    def probed(self, state: KeyState) -> None:
        """The first call ended: what was not learned by now is unlimited, as without a rate."""
        self.probing = False
        bucket = state.requests
        if isinstance(bucket, _LearnedBucket) and self.requests.limit is None:
            state.requests = None
            bucket.retune(Rate(1e12), 1e15, 1e15)  # whoever queued behind the probe goes now
            logger.debug(
                "%s: no rate-limit headers on its first call; unlimited until some come",
                state.label,
            )

    def learn(self, state: KeyState, info: RateLimitInfo, mark: Mark) -> None:
        """One response's report, for the call that started at ``mark``."""
        rounding = info.reset_rounding_s
        slack = (rounding, rounding + max(0.0, _loop_time() - mark[2]))
        if self.learn_requests:
            self._follow(
                state,
                "requests",
                self.requests,
                info.requests_limit,
                info.requests_remaining,
                info.requests_reset_s,
                self.started - mark[0],
                slack,
            )
        if self.learn_tokens:
            self._follow(
                state,
                "tokens",
                self.tokens,
                info.tokens_limit,
                info.tokens_remaining,
                info.tokens_reset_s,
                self.started_cost - mark[1],
                slack,
            )
        if self.probing and self.requests.limit is not None:
            self.probing = False

    def _follow(
        self,
        state: KeyState,
        kind: str,
        dimension: _Dimension,
        limit: float | None,
        remaining: float | None,
        reset_s: float | None,
        later: float,
        slack: tuple[float, float],
    ) -> None:
        changed = dimension.learn(limit, remaining, reset_s, slack)
        window = dimension.window
        bucket = state.requests if kind == "requests" else state.tokens
        learned = isinstance(bucket, _LearnedBucket) and not (kind == "requests" and self.probing)
        now = None if remaining is None else remaining - later
        if limit is None:
            if learned and now is not None:
                assert isinstance(bucket, _LearnedBucket)
                bucket.lower(now)
            return
        rate = Rate(limit * HEADROOM, period=window)
        # Tokens: the whole limit at once, as tokens_per_key does; requests: one second's worth.
        burst = limit if kind == "tokens" else min(limit, max(1.0, rate.per_second))
        if not learned:
            start = burst if now is None else now
            if isinstance(bucket, _LearnedBucket):
                bucket.retune(rate, burst, start)
            else:  # unlimited until now (no headers on the first call), or no token bucket
                fresh = _LearnedBucket(rate, burst=burst)
                fresh.retune(rate, burst, start)
                if kind == "requests":
                    state.requests = fresh
                else:
                    state.tokens = fresh
            logger.info(
                "%s: learned %g %s per %gs from the rate-limit headers",
                state.label,
                limit,
                kind,
                window,
            )
            return
        assert isinstance(bucket, _LearnedBucket)
        if changed:
            logger.info("%s: its limit is now %g %s per %gs", state.label, limit, kind, window)
            bucket.retune(rate, burst, None)
        if now is not None:
            bucket.lower(now)
