"""HttpClient: an ``httpx.AsyncClient`` whose requests pass limiters and retry what is transient.

The limits sit in a transport under the client (:class:`_LimitedTransport`), not around
``send``: httpx sends every real request through its transport, each redirect hop included, so
each hop takes the overall ``rate``, the bucket of *its own* host (``per_host_rate``) and a slot
of the ``concurrency`` cap. Each request goes through the one guarded call of
:mod:`aioflows.calls`, the same that ``map``, flows and pipelines use, so throttles, backoff,
``Retry.max_wait`` and the retry counts mean the same everywhere.

A 429 (or a 503 with ``Retry-After``) is a throttle: it pauses the host's bucket (or the overall
one) for as long as the server asked, in seconds or as an HTTP date, never longer than
``Retry.max_wait``, and is retried without counting an attempt; one asking for longer than
``max_wait`` is not waited for, the 429 is returned at once. 502, 503 and 504 and
connection-level errors are failures retried with backoff. When retries run out, the last
response is returned as httpx would return it (check ``status_code`` or call
``raise_for_status``); a connection error is raised.

Every response carries the provider's rate-limit headers parsed, as ``response.rate_limit``
(a :class:`~aioflows.RateLimitInfo`, or None). It is an attribute set on the ``httpx.Response``
itself, so that what the client returns stays httpx's own type (``client.get`` is still typed
``httpx.Response``; the type checker does not know the attribute, which is why
``af.RateLimitInfo.of(response)`` reads it typed). Each response is also reported, as it
arrives and 429s included, to the launcher key whose call is running
(:mod:`aioflows._auto_limits`), so that keys without a rate learn their limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Literal

import anyio
import httpx

from . import _auto_limits, _validate
from .calls import CallPolicy, KeyedLimiterLike, LimiterLike, as_keyed_limiter, as_limiter, guard
from .errors import InvalidArgument, InvalidArgumentType
from .ratelimit_headers import RateLimitInfo
from .retry import USE_DEFAULT, RetryLike, UseDefault, as_retry

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
    """A response whose status says "try again"; carries the response, its body already read."""


def _host_key(request: httpx.Request) -> str:
    """The ``per_host_rate`` bucket of a request: its ``Host``, the port included unless it is
    the scheme's default (``api.example.com``, ``127.0.0.1:8080``), as servers count."""
    return request.url.netloc.decode("ascii")


class HttpClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` with rate limits, a concurrency cap and retries.

    Args:
        base_url: As for ``httpx.AsyncClient``.
        rate: Requests per unit of time over all hosts (a rate, or a shared ``RateLimiter``).
        per_host_rate: Requests per unit of time to each host (a rate, or a shared
            ``KeyedRateLimiter``); a host is its ``Host`` header: ``api.example.com``, or
            ``127.0.0.1:8080`` with a port that is not the scheme's default).
        concurrency: At most this many requests in flight at once, a request holding its slot
            until its response is closed (None: httpx's own limits).
        retry: Retry policy (a ``Retry``, a number of attempts, or None: no retry; by
            default ``Retry(3)``). Its default ``on`` (any exception) is narrowed to the
            transient kinds above; give ``on=`` to choose.
        transport: An ``httpx.AsyncBaseTransport`` as for httpx, or ``"aiohttp"``: aiohttp's
            connection pool under httpx's client (the ``http`` extra, ``httpx-aiohttp``),
            built from ``limits``, ``verify``, ``cert`` and ``trust_env``. It costs about a
            fifth of the client CPU per request of httpx's own pool at tens of connections
            (docs/http.md); it speaks HTTP/1.1 only, so ``http2=True`` is refused with it.
        httpx_kwargs: Passed to ``httpx.AsyncClient`` (headers, timeout, mounts, http2,
            limits, verify...).

    Each real request, every redirect hop and every retry, passes the limits; event hooks see
    each hop once, its retries being the transport's business. Streaming requests
    (``client.stream(...)``) are limited and retried the same way.

    Raises:
        ValueError, TypeError: A bad option, at once.
    """

    def __init__(
        self,
        base_url: str | httpx.URL = "",
        *,
        rate: LimiterLike | None = None,
        per_host_rate: KeyedLimiterLike | None = None,
        concurrency: int | None = None,
        retry: RetryLike | UseDefault = USE_DEFAULT,
        transport: httpx.AsyncBaseTransport | Literal["aiohttp"] | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        if concurrency is not None:
            _validate.count("concurrency", concurrency)
        if transport == "aiohttp":
            transport = _aiohttp_transport(httpx_kwargs)
        elif transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise InvalidArgumentType(
                f"transport must be an httpx.AsyncBaseTransport or 'aiohttp', got {transport!r}"
            )
        if transport is not None:
            httpx_kwargs["transport"] = transport
        policy = as_retry(retry)
        if policy is not None and policy.on is Exception:
            policy = dataclasses.replace(policy, on=(_RetryableStatus, *RETRY_ERRORS))
        # The limiters are made here, once: every transport of the client shares them.
        keyed = as_keyed_limiter(per_host_rate)
        limits = CallPolicy(
            rate=as_limiter(rate),
            key=_host_key if keyed is not None else None,
            per_key_rate=keyed,
            retry=policy,
        )
        super().__init__(base_url=base_url, **httpx_kwargs)
        slots = anyio.Semaphore(concurrency) if concurrency is not None else None

        def limited(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
            return _LimitedTransport(inner, limits, slots)

        # httpx has built the transports from the kwargs (transport=, http2, limits, verify,
        # mounts=, proxies from the environment): wrap what it built rather than build it again,
        # so that every option keeps meaning what httpx says, and every route is limited.
        self._transport = limited(self._transport)
        self._mounts = {
            pattern: None if transport is None else limited(transport)
            for pattern, transport in self._mounts.items()
        }


def _aiohttp_transport(httpx_kwargs: dict[str, Any]) -> httpx.AsyncBaseTransport:
    """httpx-aiohttp's transport, from the options httpx would have built its own pool with
    (taken out of ``httpx_kwargs``: httpx ignores them once a transport is given)."""
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        raise ImportError(
            "transport='aiohttp' needs httpx-aiohttp: pip install 'aioflows[http]'"
        ) from None
    if httpx_kwargs.pop("http2", False):
        raise InvalidArgument("transport='aiohttp' speaks HTTP/1.1 only: drop http2=True")
    options = {
        name: httpx_kwargs.pop(name)
        for name in ("verify", "cert", "trust_env", "limits")
        if name in httpx_kwargs
    }
    if "trust_env" in options:
        httpx_kwargs["trust_env"] = options["trust_env"]  # the client reads it too
    made: httpx.AsyncBaseTransport = AiohttpTransport(**options)
    return made


class _LimitedTransport(httpx.AsyncBaseTransport):
    """Under the client: each request through the limiters, the slots and the retry policy.

    The limiters and the slots are the client's, shared by all its transports (mounts too).
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        policy: CallPolicy,
        slots: anyio.Semaphore | None,
    ) -> None:
        self._inner = inner
        self._slots = slots
        self._send: Callable[[httpx.Request], Awaitable[httpx.Response]] = guard(
            self._attempt, policy
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._send(request)
        except _RetryableStatus as exc:
            # Retries ran out (or were not allowed): the response itself, read in _read.
            return _noted(exc.response)

    async def _attempt(self, request: httpx.Request) -> httpx.Response:
        slots = self._slots
        if slots is not None:
            try:
                slots.acquire_nowait()  # the uncontended path, without a checkpoint
            except anyio.WouldBlock:
                await slots.acquire()
        try:
            response = _noted(await self._inner.handle_async_request(request))
            if response.status_code in RETRY_STATUS:
                # Read now and release the connection: the response is either dropped for a
                # retry or returned as the last word, and in both cases must not hold a socket.
                raise _RetryableStatus(
                    f"{response.status_code} from {request.url}",
                    request=request,
                    response=await _read(response, request),
                )
        except BaseException:
            if slots is not None:
                slots.release()
            raise
        if slots is not None:
            if response.is_stream_consumed or not isinstance(
                response.stream, httpx.AsyncByteStream
            ):
                slots.release()  # already in memory (a MockTransport's): nothing left in flight
            else:
                response.stream = _ReleasingStream(response.stream, slots)
        return response

    async def __aenter__(self) -> _LimitedTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _noted(response: httpx.Response) -> httpx.Response:
    """``response`` with its ``rate_limit`` (parsed once), reported to a learning key."""
    if "rate_limit" not in response.__dict__:
        info = RateLimitInfo.from_headers(response.headers)
        # In the instance's __dict__: an attribute httpx.Response does not declare.
        response.__dict__["rate_limit"] = info
        _auto_limits.report(info)
    return response


async def _read(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """``response`` with its raw body read and its connection closed, as a fresh response that
    the client decodes (and streams, if asked) as it would the original."""
    if response.is_stream_consumed:
        return response  # built in memory (a MockTransport's): it holds no connection
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    fresh = httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(body),
        extensions=response.extensions,
        request=request,
    )
    if "rate_limit" in response.__dict__:  # parsed and reported already
        fresh.__dict__["rate_limit"] = response.__dict__["rate_limit"]
    return fresh


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its concurrency slot back when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, slots: anyio.Semaphore) -> None:
        self._stream = stream
        self._slots: anyio.Semaphore | None = slots

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        slots, self._slots = self._slots, None
        try:
            await self._stream.aclose()
        finally:
            if slots is not None:
                slots.release()
