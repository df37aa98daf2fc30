"""Retry policy: :class:`Retry`, and how a throttle (:class:`RateLimited`, HTTP 429) is recognised.

Two kinds of trouble are told apart. A *failure* (any exception matching ``Retry.on``) counts an
attempt and waits an exponential backoff. A *throttle* — the remote end saying "too many
requests" — is not the call's fault: it pauses the limiters the call went through, waits the
time the remote end asked for, and does not count an attempt; it is bounded separately by
``max_throttles`` so a call throttled forever still ends, and by ``max_wait`` so that no single
throttle makes anything wait longer than that (``Retry-After: 1000000000`` is valid HTTP).
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
import sys
import time
from dataclasses import KW_ONLY, dataclass
from typing import Final, Literal, TypeAlias

from . import _validate
from .errors import InvalidArgumentType, RateLimited

__all__ = [
    "DEFAULT_MAX_WAIT",
    "DEFAULT_RETRY",
    "THROTTLE_BACKOFF",
    "USE_DEFAULT",
    "RateLimited",
    "Retry",
    "RetryLike",
    "UseDefault",
    "as_retry",
    "parse_retry_after",
    "throttle_delay",
    "wait_cap",
]


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently to call again after a failure.

    Usage::

        Retry(5, backoff=1.0, on=(httpx.TransportError, TimeoutError))

    Args:
        attempts: Tries in all, the first one included (``1`` means no retry).
        backoff: Seconds to wait after the first failure.
        multiplier: Factor applied to the wait after each further failure.
        max_backoff: Upper bound of any single wait.
        jitter: Randomise each wait within [50 %, 100 %] of its nominal value, so that many
            callers failing together do not retry in lock-step.
        on: Exception type(s) worth retrying; anything else is raised at once.
        max_throttles: Throttles (:class:`RateLimited`, HTTP 429) tolerated per call before the
            throttle itself is raised; they do not count as attempts.
        max_wait: The longest wait a throttle may ask for, in seconds. A remote end asking for
            more (``Retry-After: 1000000000`` is valid delta-seconds) is not waited for: the
            call gives up on that throttle at once, and no limiter or key is ever paused for
            longer than this.

    Raises:
        ValueError: A count or duration is out of range.
    """

    attempts: int = 3
    _: KW_ONLY
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: bool = True
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception
    max_throttles: int = 10
    max_wait: float = 300.0

    def __post_init__(self) -> None:
        for name, value, low in (
            ("attempts", self.attempts, 1),
            ("max_throttles", self.max_throttles, 0),
        ):
            _validate.count(f"Retry {name}", value, low=low)
        _validate.number("Retry max_wait", self.max_wait, strict=True)
        _validate.number("Retry backoff", self.backoff)
        _validate.number("Retry max_backoff", self.max_backoff)
        _validate.number("Retry multiplier", self.multiplier, low=1)
        kinds = self.on if isinstance(self.on, tuple) else (self.on,)
        if not kinds or not all(
            isinstance(k, type) and issubclass(k, BaseException) for k in kinds
        ):
            raise InvalidArgumentType(
                f"Retry on must be an exception type or a tuple of them, got {self.on!r}"
            )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure.

        Args:
            failures: Consecutive failures so far, 1 for the first.

        Returns:
            ``backoff * multiplier ** (failures - 1)``, at most ``max_backoff``, jittered.
        """
        nominal = min(self.max_backoff, self.backoff * self.multiplier ** max(0, failures - 1))
        return nominal * random.uniform(0.5, 1.0) if self.jitter else nominal

    def retries(self, exc: BaseException) -> bool:
        """True if ``exc`` is a kind this policy retries (an instance of ``on``).

        Args:
            exc: The exception a call raised.
        """
        return isinstance(exc, self.on)


#: The throttle wait cap where no :class:`Retry` is given (``retry=None``): the same as
#: ``Retry().max_wait``.
DEFAULT_MAX_WAIT: float = 300.0

#: Seconds a throttle that did not say how long (no ``Retry-After``) rests the limiter or key
#: when there is no :class:`Retry` whose backoff would say it (``retry=None``): never 0, which
#: would let every caller behind that limiter hit the throttled end again at once.
THROTTLE_BACKOFF: float = 1.0

#: The policy of the entry points whose ``retry`` defaults to a policy (``Launcher``,
#: ``launch``, ``HttpClient``).
DEFAULT_RETRY: Final = Retry(3)


def wait_cap(retry: Retry | None) -> float:
    """The longest any throttle under ``retry`` may rest a limiter or key: ``max_wait``."""
    return retry.max_wait if retry is not None else DEFAULT_MAX_WAIT


#: Wherever ``retry`` is accepted: a :class:`Retry`, an int meaning ``Retry(attempts=n)``, or None.
RetryLike: TypeAlias = Retry | int | None


class _UseDefault(enum.Enum):
    """The type of :data:`USE_DEFAULT` (an enum member, so that ``is`` narrows it for mypy)."""

    USE_DEFAULT = "USE_DEFAULT"

    def __repr__(self) -> str:
        # What it stands for, so that signatures (help(), the API docs) read ``retry=Retry(3)``.
        return f"Retry({DEFAULT_RETRY.attempts})"


#: ``retry=`` not given: the entry point's default policy, :data:`DEFAULT_RETRY` (httpx's
#: ``USE_CLIENT_DEFAULT``). A sentinel rather than a ``Retry(3)`` in the signature: one policy
#: object, defined once, and ``None`` stays free to mean "no retry".
USE_DEFAULT: Final = _UseDefault.USE_DEFAULT
UseDefault: TypeAlias = Literal[_UseDefault.USE_DEFAULT]


def as_retry(value: RetryLike | UseDefault) -> Retry | None:
    """Coerce ``retry=`` once, at the API edge (:data:`USE_DEFAULT` is :data:`DEFAULT_RETRY`)."""
    if value is None or isinstance(value, Retry):
        return value
    if value is USE_DEFAULT:
        return DEFAULT_RETRY
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"retry must be a Retry, an int or None, got {value!r}")
    return Retry(value)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None when the header is absent or unreadable; never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


#: The throttle status codes: 429 always, 503 when it says when to come back.
_THROTTLE_STATUS = (429, 503)


def throttle_delay(exc: BaseException) -> tuple[bool, float | None]:
    """Tell whether ``exc`` means "throttled", and for how long the remote end asked to wait.

    :class:`RateLimited` is a throttle; so is an ``httpx.HTTPStatusError`` with status 429, or
    503 with a ``Retry-After`` header.
    """
    if isinstance(exc, RateLimited):
        return True, exc.retry_after
    # An httpx error can only exist if httpx was imported: avoid importing it for nothing.
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        if response.status_code in _THROTTLE_STATUS:
            after = parse_retry_after(response.headers.get("retry-after"))
            if response.status_code == 429 or after is not None:
                return True, after
    return False, None
