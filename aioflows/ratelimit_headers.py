"""What a provider says of a key's limits on each response: :class:`RateLimitInfo`.

LLM APIs report every key's request and token limits on every response, in one of two styles:

- OpenAI's ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
  ``x-ratelimit-reset-requests`` (and ``-tokens``), the reset a Go duration such as ``1s``,
  ``6m0s``, ``20ms`` or ``1h2m3.5s``;
- Anthropic's ``anthropic-ratelimit-requests-limit``, ``-remaining``, ``-reset`` (and
  ``anthropic-ratelimit-tokens-*``), the reset an RFC 3339 time.

Both resets say when the limit is whole again; both are read into seconds from now. The parse
is forgiving in one direction only: a header that is garbage (a word, a negative count, an
impossible date) leaves its field empty and is logged at debug level, never raised, because a
provider's header is never worth failing a call for. A reset in either form is accepted in
either style, and a plain number is seconds (a Unix time when it is that large).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeAlias

__all__ = ["HeadersLike", "RateLimitInfo", "parse_duration", "parse_reset"]

logger = logging.getLogger("aioflows.ratelimit")

#: What headers may come as: httpx's ``Headers``, a dict, ``requests``' or aiohttp's mapping
#: (any mapping of str), or a list of ``(name, value)`` pairs; names in any case.
HeadersLike: TypeAlias = "Mapping[str, Any] | Iterable[tuple[Any, Any]]"

#: (field, OpenAI header, Anthropic header)
_FIELDS = (
    ("requests_limit", "x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit"),
    (
        "requests_remaining",
        "x-ratelimit-remaining-requests",
        "anthropic-ratelimit-requests-remaining",
    ),
    ("requests_reset_s", "x-ratelimit-reset-requests", "anthropic-ratelimit-requests-reset"),
    ("tokens_limit", "x-ratelimit-limit-tokens", "anthropic-ratelimit-tokens-limit"),
    ("tokens_remaining", "x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining"),
    ("tokens_reset_s", "x-ratelimit-reset-tokens", "anthropic-ratelimit-tokens-reset"),
)
_WANTED = frozenset(name for _, *names in _FIELDS for name in names)

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}(?:h|ms|us|µs|ns|m|s))+")
_DURATION_PART = re.compile(rf"({_NUMBER})(h|ms|us|µs|ns|m|s)")
_PLAIN = re.compile(_NUMBER)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
#: A plain number this large is a Unix time (2001 on), not seconds from now.
_UNIX_TIME = 1e9
#: Nothing a provider says is worth more than this: a reset beyond a year is garbage.
_LONGEST = 366 * 86400.0


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or a plain
    number of seconds; None for anything else."""
    text = text.strip()
    if _PLAIN.fullmatch(text):
        return float(text)
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _rfc3339(text: str) -> float | None:
    """The Unix time of an RFC 3339 timestamp, offset and fraction included (by hand: Python
    3.10's ``fromisoformat`` knows neither ``Z`` nor fractions of any length)."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    if zone in ("Z", "z"):
        offset = timedelta(0)
    else:
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        offset = sign * timedelta(hours=hours, minutes=minutes)
    try:
        when = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=timezone(offset))
    except ValueError:  # February 30th, hour 25
        return None
    return when.timestamp() + (second == 60) + (float(fraction) if fraction else 0.0)


def parse_reset(text: str, now: float | None = None) -> float | None:
    """Seconds from ``now`` (Unix time; default the clock) until a reset given as a duration,
    a plain number of seconds (a Unix time when that large) or an RFC 3339 time; None for
    garbage. A time already past is 0 seconds away."""
    seconds = parse_duration(text)
    if seconds is not None and seconds < _UNIX_TIME:
        return seconds
    at = seconds if seconds is not None else _rfc3339(text)
    if at is None:
        return None
    return max(0.0, at - (time.time() if now is None else now))


def _rounding(text: str) -> float:
    """How far a reset, as written, may be off: one unit of its last digit (``120ms``: 1 ms;
    ``6m0s``: 1 s; ``1.3s``: 0.1 s; a whole-second RFC 3339 time: 1 s)."""
    text = text.strip()
    match = _RFC3339.fullmatch(text)
    if match is not None:
        fraction = match.group(7)
        return 10.0 ** -(len(fraction) - 1) if fraction else 1.0
    parts = _DURATION_PART.findall(text) or [(text, "s")]
    number, unit = parts[-1]
    decimals = len(number.partition(".")[2])
    return 10.0**-decimals * _UNIT_SECONDS[unit]


def _count(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _lowered(headers: HeadersLike) -> dict[str, str]:
    """The rate-limit headers of ``headers``, by lower-case name (the last of a repeated one)."""
    raw = getattr(headers, "raw", None)  # httpx's Headers: its bytes, not decoded (~0.5 us)
    if isinstance(raw, list):
        if b"ratelimit" not in b" ".join([name for name, _ in raw]).lower():
            return {}
        pairs: Iterable[tuple[Any, Any]] = raw
    else:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for name, value in pairs:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if not isinstance(name, str):
            continue
        name = name.lower()
        if name in _WANTED:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """A key's limits as one response reported them; each field None when not reported.

    Usage::

        info = af.RateLimitInfo.from_headers(response.headers)
        if info is not None and info.requests_remaining == 0:
            ...

    Attributes:
        requests_limit: Requests the key may make per window (a provider's per-minute limit).
        requests_remaining: Requests left in the window when the request was served.
        requests_reset_s: Seconds until the request limit is whole again.
        tokens_limit: Tokens the key may use per window.
        tokens_remaining: Tokens left when the request was served.
        tokens_reset_s: Seconds until the token limit is whole again.
        reset_rounding_s: How far the resets may be off as written (a unit of their last
            digit: 0.001 for ``120ms``, 1 for ``6m0s`` or a whole-second time); not compared.
    """

    requests_limit: float | None = None
    requests_remaining: float | None = None
    requests_reset_s: float | None = None
    tokens_limit: float | None = None
    tokens_remaining: float | None = None
    tokens_reset_s: float | None = None
    reset_rounding_s: float = field(default=0.0, compare=False, repr=False)

    @classmethod
    def from_headers(cls, headers: HeadersLike) -> RateLimitInfo | None:
        """The limits ``headers`` report, in OpenAI's or Anthropic's style; None if none.

        A header that cannot be read leaves its field None and is logged at debug level.
        Where a response carries both styles, OpenAI's wins field by field.

        Args:
            headers: A response's headers: httpx's ``Headers``, any mapping of str, or
                ``(name, value)`` pairs; names in any case.
        """
        found = _lowered(headers)
        if not found:
            return None
        values: dict[str, float] = {}
        now = time.time()
        rounding = 0.0
        for name_of_field, *names in _FIELDS:
            for name in names:
                text = found.get(name)
                if text is None:
                    continue
                reset = name_of_field.endswith("_s")
                value = parse_reset(text, now) if reset else _count(text)
                if value is not None and reset and value > _LONGEST:
                    value = None
                if value is None:
                    logger.debug("ignored the rate-limit header %s: %.60r", name, text)
                    continue
                values[name_of_field] = value
                if reset:
                    rounding = max(rounding, _rounding(text))
                break
        if values.get("requests_limit") == 0:
            logger.debug("ignored a request limit of 0")
            del values["requests_limit"]
        if values.get("tokens_limit") == 0:
            logger.debug("ignored a token limit of 0")
            del values["tokens_limit"]
        return cls(**values, reset_rounding_s=rounding) if values else None

    @classmethod
    def of(cls, response: Any) -> RateLimitInfo | None:
        """A response's limits, typed: what ``HttpClient`` put in ``response.rate_limit``,
        else read from ``response.headers`` (any client's response).

        Args:
            response: An ``httpx.Response`` (or anything with ``headers``).
        """
        own = getattr(response, "__dict__", {})
        if "rate_limit" in own:
            known = own["rate_limit"]
            return known if isinstance(known, RateLimitInfo) else None
        headers = getattr(response, "headers", None)
        return cls.from_headers(headers) if headers is not None else None
