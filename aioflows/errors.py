"""The exceptions aioflows raises.

Every error the library raises derives from :class:`AioflowsError`, so one ``except`` clause
catches them all. Where the contract promises a builtin (``ValueError`` for a bad argument,
``TypeError`` for something that is not callable), the class derives from both, so code written
against the builtin keeps working::

    AioflowsError
     ├── InvalidArgument (also ValueError)   a bad value, reported before any work starts
     ├── InvalidArgumentType (also TypeError)   a value of the wrong kind
     └── RateLimited                          the remote end throttled a call
"""

from __future__ import annotations

__all__ = ["AioflowsError", "InvalidArgument", "InvalidArgumentType", "RateLimited"]


class AioflowsError(Exception):
    """Base class of every error raised by aioflows."""


class InvalidArgument(AioflowsError, ValueError):
    """An argument has a value aioflows cannot accept; the message names it and what is."""


class InvalidArgumentType(AioflowsError, TypeError):
    """An argument is of a kind aioflows cannot accept (e.g. ``fn`` is not callable)."""


class RateLimited(AioflowsError):
    """Raised by a callable to say "the remote end throttled me".

    A retry loop (``map``, ``imap``, and later ``Stage``, ``task`` and ``Launcher``) treats it as
    back-pressure, not failure: it pauses the limiter the call went through for ``retry_after``
    seconds (or its backoff when ``None``), then calls again without counting a failed attempt.
    Throttles are bounded separately (``Retry.max_throttles``) so a call throttled forever still
    ends, with this exception.

    Args:
        retry_after: Seconds the remote end asked us to wait, if it said.
    """

    def __init__(self, retry_after: float | None = None) -> None:
        if retry_after is not None and (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, (int, float))
            or not 0 <= retry_after < float("inf")
        ):
            raise InvalidArgument(f"retry_after must be None or a number >= 0, got {retry_after!r}")
        self.retry_after = retry_after
        when = "" if retry_after is None else f" (retry after {retry_after:g} s)"
        super().__init__(f"the remote end throttled the call{when}")

    def __reduce__(self) -> tuple[type[RateLimited], tuple[float | None]]:
        return (type(self), (self.retry_after,))
