"""HttpClient: an ``httpx.AsyncClient`` whose requests pass limiters and retry what is transient.

Every request goes through the one guarded call of :mod:`aioflows.calls`, the same that
``map``, flows and pipelines use: the overall ``rate``, a bucket per host (``per_host_rate``),
a ``concurrency`` cap on requests in flight, and the retry policy. A 429 (or a 503 with
``Retry-After``) is a throttle: it pauses the host's bucket (or the overall one) for as long as
the server asked, in seconds or as an HTTP date, and is retried without counting an attempt.
502, 503 and 504 and connection-level errors are failures retried with backoff. When retries
run out, the last response is returned as httpx would return it (check ``status_code`` or call
``raise_for_status``); a connection error is raised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

import anyio
import httpx

from .calls import KeyedLimiterLike, LimiterLike, as_keyed_limiter, as_limiter, guard
from .errors import InvalidArgument
from .retry import Retry, RetryLike, as_retry

__all__ = ["HttpClient"]

#: Statuses worth another try: throttled, or a gateway/server that may recover.
RETRY_STATUS = frozenset({429, 502, 503, 504})

#: Transport errors worth another try: the connection failed or broke, or the pool was full.
RETRY_ERRORS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


class _RetryableStatus(httpx.HTTPStatusError):
    """A response whose status says "try again"; carries the (fully read) response."""


def _host(call: _Send) -> Hashable:
    return call.request.url.host


class HttpClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` with rate limits, a concurrency cap and retries.

    Args:
        base_url: As for ``httpx.AsyncClient``.
        rate: Requests per unit of time over all hosts (a rate, or a shared ``RateLimiter``).
        per_host_rate: Requests per unit of time to each host (a rate, or a shared
            ``KeyedRateLimiter``).
        concurrency: At most this many requests in flight at once (None: httpx's own limits).
        retry: Retry policy (a ``Retry`` or a number of attempts). Its default ``on``
            (any exception) is narrowed to the transient kinds above; give ``on=`` to choose.
        httpx_kwargs: Passed to ``httpx.AsyncClient`` (headers, timeout, transport...).

    Streaming requests (``client.stream(...)``) pass the limiters and are retried on
    connection errors, but a retryable status is returned as it is: its body is the caller's
    to read.
    """

    def __init__(
        self,
        base_url: str | httpx.URL = "",
        *,
        rate: LimiterLike | None = None,
        per_host_rate: KeyedLimiterLike | None = None,
        concurrency: int | None = None,
        retry: RetryLike = Retry(3),  # noqa: B008 - a frozen dataclass: safe to share
        **httpx_kwargs: Any,
    ) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise InvalidArgument(f"concurrency must be None or an int >= 1, got {concurrency!r}")
        policy = as_retry(retry)
        if policy is not None and policy.on is Exception:
            policy = dataclasses.replace(policy, on=(_RetryableStatus, *RETRY_ERRORS))
        limiter = as_limiter(rate)
        keyed = as_keyed_limiter(per_host_rate)
        super().__init__(base_url=base_url, **httpx_kwargs)
        self._slots = anyio.CapacityLimiter(concurrency) if concurrency is not None else None
        self._guarded = guard(
            self._attempt,
            rate=limiter,
            key=_host if keyed is not None else None,
            per_key_rate=keyed,
            retry=policy,
        )

    async def send(
        self, request: httpx.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send ``request`` through the limiters and the retry policy."""
        call = _Send(request, stream, kwargs)
        try:
            return await self._guarded(call)
        except _RetryableStatus as exc:
            return exc.response  # retries ran out: the response, as httpx returns it

    async def _attempt(self, call: _Send) -> httpx.Response:
        if self._slots is None:
            response = await super().send(call.request, stream=call.stream, **call.kwargs)
        else:
            async with self._slots:
                response = await super().send(call.request, stream=call.stream, **call.kwargs)
        if response.status_code in RETRY_STATUS and not call.stream:
            # Read now: the response stays usable if it turns out to be the last one.
            await response.aread()
            raise _RetryableStatus(
                f"{response.status_code} from {call.request.url}",
                request=call.request,
                response=response,
            )
        return response


class _Send:
    """One ``send`` call's arguments, handed through the guard to each attempt."""

    __slots__ = ("kwargs", "request", "stream")

    def __init__(self, request: httpx.Request, stream: bool, kwargs: dict[str, Any]) -> None:
        self.request = request
        self.stream = stream
        self.kwargs = kwargs
