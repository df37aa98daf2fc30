"""The launcher's API keys, and keeping their secrets out of everything but the calls.

A :class:`KeyState` is one key with its buckets (requests, tokens) and its rest after a
throttle, shared by every call that uses it; a :class:`Key` is what one call gets (its label,
its secret, and ``report_usage`` for its token estimate). Records, logs, reprs and error texts
carry a key's label, never its string: :func:`redact` and :func:`describe` replace secrets in
text, and :func:`clean_error` turns the exception a pair failed with into a
:class:`LaunchFailed` holding nothing that could leak one (no chain, no frames).
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from . import _validate
from ._auto_limits import AUTO, AutoLimits, is_auto
from .errors import AioflowsError, InvalidArgument, InvalidArgumentType
from .limits import Rate, RateLike, RateLimiter, as_rate
from .ratelimit_headers import HeadersLike, RateLimitInfo

if TYPE_CHECKING:
    from .redislimits import RedisRateLimiter, _Spec

__all__ = [
    "Key",
    "KeyState",
    "SharedBuckets",
    "LaunchFailed",
    "clean_error",
    "describe",
    "make_keys",
    "redact",
    "redact_value",
    "text_of",
]


class LaunchFailed(AioflowsError):
    """What a run with ``fault_tolerant=False`` raises when a pair fails for good.

    The pair's own exception is not raised: its text, its chained ``__cause__`` and
    ``__context__``, and the locals of its traceback may all hold the key the call was made
    with. This error carries what can be said safely instead: ``error_type`` (the original
    class name), ``message`` (its text, secrets replaced by ``<key-N>``), and the pair
    (``id``, ``sample``, ``key`` label); it chains nothing. Where the original class can be
    subclassed, the error raised is also an instance of it, so ``except ValueError`` still
    catches a ``ValueError`` of ``fn``; its simple attributes (numbers, booleans, ``None``,
    strings scrubbed) are copied over, nothing else of the original is.

    Args:
        message: The original error's text, secrets replaced by ``<key-N>``.
        error_type: The original error's class name.
        id: The failed input's id.
        sample: The failed pair's sample number.
        key: The label of the key the call was made with (``"key-0"``), never its secret.
    """

    def __init__(self, message: str, *, error_type: str, id: Any, sample: int, key: str) -> None:
        # Not super().__init__: in the class mixed with the original type the next __init__
        # is the original's, whose signature is anyone's guess.
        Exception.__init__(self, message)
        self.message = message
        self.error_type = error_type
        self.id = id
        self.sample = sample
        self.key = key

    def __str__(self) -> str:
        return (
            f"{self.error_type}: {self.message} (id {self.id!r}, sample {self.sample}, {self.key})"
        )

    def __repr__(self) -> str:
        return f"LaunchFailed({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        mixed = type(self) is not LaunchFailed  # made by _launch_failed: (LaunchFailed, original)
        base = type(self).__bases__[1] if mixed else None
        fields = (self.message, self.error_type, self.id, self.sample, self.key)
        return (_launch_failed, (base, *fields), _simple_attributes(self.__dict__))


def _launch_failed(
    base: type[BaseException] | None, message: str, error_type: str, id: Any, sample: int, key: str
) -> LaunchFailed:
    """A LaunchFailed that is also a ``base``, when such a class can be made and instantiated."""
    fields: dict[str, Any] = {"error_type": error_type, "id": id, "sample": sample, "key": key}
    if base is not None and base is not LaunchFailed:
        try:
            cls: type[LaunchFailed] = types.new_class(
                "LaunchFailed", (LaunchFailed, base), exec_body=_name_as_ours
            )
            return cls(message, **fields)
        except Exception:  # a final class, a metaclass conflict, a __new__ wanting more
            pass
    return LaunchFailed(message, **fields)


def _name_as_ours(namespace: dict[str, Any]) -> None:
    namespace["__module__"] = LaunchFailed.__module__
    namespace["__qualname__"] = "LaunchFailed"


def _simple_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in attributes.items()
        if value is None or isinstance(value, (str, int, float))
    }


class KeyState:
    """One API key and its buckets, shared by every call that uses it.

    With a shared limiter (``Launcher(shared=...)``) the buckets live in Redis (:attr:`shared`)
    and ``requests``/``tokens`` only say their rates and bursts. A key whose limits are learned
    from the provider's headers has :attr:`auto` (:mod:`aioflows._auto_limits`), which changes
    its buckets as responses come.
    """

    __slots__ = ("auto", "label", "paused_until", "requests", "secret", "shared", "tokens")

    def __init__(
        self,
        label: str,
        secret: str | None,
        requests: RateLimiter | None,
        tokens: RateLimiter | None,
    ) -> None:
        self.label = label
        self.secret = secret
        self.requests = requests
        self.tokens = tokens
        self.paused_until = -math.inf  # a throttle rests the key even when it has no bucket
        self.shared: SharedBuckets | None = None
        self.auto: AutoLimits | None = None

    def delay(self, cost: float, now: float | None = None) -> float:
        """Seconds until a call costing ``cost`` could take this key's buckets; ``now``, the
        loop's clock when the caller has read it already (once for all its keys)."""
        if now is None:
            now = anyio.current_time()
        wait = self.requests._delay_at(1.0, now) if self.requests is not None else 0.0
        rest = self.paused_until - now
        if rest > wait:
            wait = rest
        if self.tokens is not None and cost > 0:
            wait = max(wait, self.tokens._delay_at(min(cost, self.tokens.burst), now))
        return wait

    def take_now(self, cost: float) -> bool:
        """Take the key's buckets for a call costing ``cost`` if that needs no wait at all (no
        rest, nobody queued, the tokens there); else take nothing and return False.

        A key that can go now has the least delay there is: the launcher tries the key whose
        turn it is this way first and compares every key's :meth:`delay` only when it cannot.
        """
        if self.paused_until > -math.inf and self.paused_until > anyio.current_time():
            return False
        requests, tokens = self.requests, self.tokens
        if requests is not None and not requests._take_now(1.0):
            return False
        if tokens is not None and cost > 0 and not tokens._take_now(min(cost, tokens.burst)):
            if requests is not None:
                requests.refund(1.0)  # the same instant: the bucket is as it was
            return False
        return True

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, anyio.current_time() + seconds)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.pause(seconds)


class SharedBuckets:
    """A key's request and token buckets in a :class:`~aioflows.RedisRateLimiter`, named by a
    digest of the key's secret (never the secret), so every launcher process using the key
    shares them."""

    __slots__ = ("limiter", "requests", "tokens")

    def __init__(self, limiter: RedisRateLimiter, state: KeyState) -> None:
        from .redislimits import _KeyRate, _Spec

        def spec(kind: str, bucket: RateLimiter | None) -> _Spec | None:
            if bucket is None:
                return None
            name = limiter.bucket_name(("aioflows.launcher", kind, state.secret))
            return _Spec(name, _KeyRate(bucket.rate, bucket.burst))

        self.limiter = limiter
        self.requests = spec("requests", state.requests)
        self.tokens = spec("tokens", state.tokens)

    async def pause(self, state: KeyState, seconds: float) -> bool:
        """A throttle rests the key here and in Redis, for every process."""
        state.paused_until = max(state.paused_until, anyio.current_time() + seconds)
        for spec in (self.requests, self.tokens):
            if spec is not None:
                await self.limiter._one(b"pause", spec, seconds * 1e6)
        return True

    async def settle(self, difference: float) -> None:
        """Charge (or refund) what a call used beyond (or below) its estimate."""
        if self.tokens is None or difference == 0:
            return
        mode = b"charge" if difference > 0 else b"refund"
        await self.limiter._one(mode, self.tokens, abs(difference))


class Key:
    """The key a call runs with: ``label`` (``"key-0"``...) and ``secret`` (the key string).

    ``report_usage(tokens)`` tells the key's token budget what the call really used: the
    difference from the estimate reserved before the call is charged or refunded; the launcher
    also adds it to the run's usage (per key, overall, and the pair's record). The repr
    shows the label only, so a key can be logged safely. Made by the launcher for each call,
    not by hand.

    ``report_headers(headers)`` tells a key whose limits are learned (``rate_per_key="auto"``,
    or no rate) what a response said of them, for a client other than ``HttpClient`` (which
    reports on its own).

    Args:
        state: The key's own state: its label, secret and limiters.
        reserved: The tokens reserved for this call (its ``cost`` estimate).
    """

    __slots__ = ("_mark", "_reserved", "_state", "unsettled", "used")

    def __init__(self, state: KeyState, reserved: float) -> None:
        self._state = state
        self._reserved = reserved
        self.unsettled = 0.0  # reported but not yet sent to a shared bucket in Redis
        self.used: float | None = None  # the last report: the run's usage adds it up
        auto = state.auto
        self._mark = auto.start(reserved) if auto is not None else (0, 0.0, 0.0)

    @property
    def label(self) -> str:
        """``"key-0"``, ``"key-1"``... (its place in ``keys``), or ``"default"``: safe to log."""
        return self._state.label

    @property
    def secret(self) -> str | None:
        """The key string to authenticate the call with (None for the one default key)."""
        return self._state.secret

    def report_usage(self, tokens: float) -> None:
        """Reconcile this call's token estimate with ``tokens`` actually used.

        Reporting again replaces the previous report. The run's usage (the summary's
        ``tokens``, the record's ``usage``, with a cost under ``price_per_1k_tokens``) counts
        the last report of each call; without ``tokens_per_key`` no budget is touched.

        Args:
            tokens: The tokens the call really used (a response's usage count).
        """
        tokens = _validate.number("tokens", tokens)
        self.used = tokens
        bucket = self._state.tokens
        if bucket is None:
            return
        difference = tokens - self._reserved
        if self._state.shared is not None:
            # Sent to Redis when the call returns (report_usage is not a coroutine).
            self.unsettled += difference
        elif difference > 0:
            bucket.charge(difference)
        elif difference < 0:
            bucket.refund(-difference)
        self._reserved = tokens

    def report_headers(self, headers: HeadersLike) -> RateLimitInfo | None:
        """Tell the key what a response's rate-limit headers say (``x-ratelimit-*`` or
        ``anthropic-ratelimit-*``); returns them parsed, None if there were none.

        A key given an explicit rate ignores them (explicit rates always win); headers that
        cannot be read are ignored, never raised. Call it from the call's own async code,
        not from a worker thread (the key's buckets belong to the event loop).

        Args:
            headers: The response's headers: any mapping of str, or ``(name, value)`` pairs.
        """
        info = RateLimitInfo.from_headers(headers)
        if info is not None:
            self._report(info)
        return info

    def _report(self, info: RateLimitInfo) -> None:
        auto = self._state.auto
        if auto is not None:
            auto.learn(self._state, info, self._mark)

    def __repr__(self) -> str:
        return f"Key({self._state.label!r})"


def make_keys(
    keys: Sequence[str] | Mapping[str, RateLike | None],
    rate_per_key: RateLike | None,
    tokens_per_key: RateLike | None,
    *,
    burst: float | None = None,
    learn: bool = True,
) -> list[KeyState]:
    """One state per key; ``burst`` is every request bucket's capacity (None: one second's).

    A key with no rate, or ``"auto"``, learns its request limits from the provider's headers
    (and its token limits with ``tokens_per_key="auto"``); but the ``"default"`` key of a
    launcher without keys only with ``"auto"`` itself (nothing says it is an API key), and
    none with ``learn=False`` (buckets shared in Redis), where ``"auto"`` is refused.
    """
    if isinstance(keys, str):
        raise InvalidArgumentType(
            "keys must be a sequence or a mapping of key strings, not one str"
        )
    pairs: list[tuple[str, RateLike | None]]
    if isinstance(keys, Mapping):
        pairs = [(k, r if r is not None else rate_per_key) for k, r in keys.items()]
    else:
        pairs = [(k, rate_per_key) for k in keys]
    learn_tokens = tokens_per_key == AUTO
    if not learn and (learn_tokens or AUTO in (rate_per_key, *(r for _, r in pairs))):
        raise InvalidArgument(
            "limits learned from headers ('auto') are this process's own: not with shared="
        )
    token_rate = (
        as_rate(tokens_per_key, "tokens_per_key")
        if tokens_per_key is not None and not learn_tokens
        else None
    )
    states = []
    for i, (secret, rate) in enumerate(pairs):
        if not isinstance(secret, str) or not secret:
            raise InvalidArgument(f"key #{i} must be a non-empty str")
        states.append(_state(f"key-{i}", secret, rate, token_rate, burst, learn, learn_tokens))
    if len({s.secret for s in states}) != len(states):
        raise InvalidArgument("keys holds the same key twice")
    if not states:
        learn = learn and rate_per_key == AUTO
        states.append(_state("default", None, rate_per_key, token_rate, burst, learn, learn_tokens))
    return states


def _state(
    label: str,
    secret: str | None,
    rate: RateLike | None,
    token_rate: Rate | None,
    burst: float | None,
    learn: bool,
    learn_tokens: bool,
) -> KeyState:
    """A key's state; ``learn``: its request limits may be learned (when it has no rate)."""
    learn_requests = learn and is_auto(rate)
    if learn_requests:
        requests: RateLimiter | None = AutoLimits.probe()
    else:
        requests = (
            RateLimiter(rate, burst=burst)._on_ticks()
            if rate is not None and rate != AUTO
            else None
        )
    tokens = RateLimiter(token_rate, burst=token_rate.limit)._on_ticks() if token_rate else None
    state = KeyState(label, secret, requests, tokens)
    if learn_requests or learn_tokens:
        state.auto = AutoLimits(learn_requests, learn_tokens)
    return state


def redact(text: str, keys: Sequence[KeyState]) -> str:
    for key in keys:
        if key.secret:
            text = text.replace(key.secret, f"<{key.label}>")
    return text


def redact_value(value: Any, keys: Sequence[KeyState]) -> Any:
    """``value`` with secrets replaced inside its strings (never in its structure)."""
    if isinstance(value, str):
        return redact(value, keys)
    if isinstance(value, dict):
        return {redact_value(k, keys): redact_value(v, keys) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v, keys) for v in value]
    return value


def text_of(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose own ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"


def describe(exc: BaseException, keys: Sequence[KeyState]) -> str:
    """A record's ``error``: ``"Type: message"``, secrets replaced."""
    return redact(f"{type(exc).__name__}: {text_of(exc)}", keys)


def clean_error(
    exc: BaseException, keys: Sequence[KeyState], ident: Any, sample: int, key: str
) -> LaunchFailed:
    """The error to raise for ``exc``: its type and scrubbed text, none of its chain or frames."""
    error = _launch_failed(
        type(exc),
        redact(text_of(exc), keys),
        type(exc).__name__,
        ident,
        sample,
        key,
    )
    with contextlib.suppress(Exception):  # vars() of an exotic exception, a read-only name
        for name, value in _simple_attributes(vars(exc)).items():
            if name not in vars(error):
                setattr(error, name, redact(value, keys) if isinstance(value, str) else value)
    return error
