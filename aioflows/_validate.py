"""Argument checks for every public entry point, with one rule for which error they raise.

The rule: a value of the wrong type (a str where a count goes, or a bool, which Python counts
as an int, anywhere a number goes) raises :class:`~aioflows.errors.InvalidArgumentType`, a
``TypeError``; a value of the right type but out of range raises
:class:`~aioflows.errors.InvalidArgument`, a ``ValueError``. Both are ``AioflowsError``, and
both messages name the argument, what it must be, and what it got. Written once so that
``concurrency="3"`` means the same error in ``map``, a ``Stage``, a ``task`` and ``HttpClient``.
"""

from __future__ import annotations

import math

from .errors import InvalidArgument, InvalidArgumentType

__all__ = ["count", "number"]


def count(name: str, value: object, *, low: int = 1) -> int:
    """``value`` as an int >= ``low`` (a count of workers, attempts, items...)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise InvalidArgument(f"{name} must be an int >= {low}, got {value!r}")
    return value


def number(name: str, value: object, *, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float >= ``low`` (> ``low`` if ``strict``): seconds, tokens..."""
    bound = f"{'>' if strict else '>='} {low:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(f"{name} must be a number {bound}, got {value!r}")
    if not (value > low if strict else value >= low) or not value < math.inf:
        raise InvalidArgument(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)
