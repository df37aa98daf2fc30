"""What the Redis-backed limiter and store share: a client from a URL or a client, and one
translation of redis-py's failures into :class:`~aioflows.errors.RedisUnavailable`.

redis-py is imported here only, and only when a Redis object is made, so ``import aioflows``
works without the ``redis`` extra.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentType, RedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis


def client(url_or_client: Any, what: str) -> tuple[Redis, bool]:
    """A ``redis.asyncio.Redis`` for ``url_or_client`` and whether the caller owns it (made from
    a URL here, so closed by the caller; a client passed in belongs to whoever passed it)."""
    try:
        from redis.asyncio import Redis
    except ImportError as exc:  # pragma: no cover - the extra is installed in every test run
        raise ImportError(f"{what} needs redis-py: pip install 'aioflows[redis]'") from exc
    if isinstance(url_or_client, Redis):
        return url_or_client, False
    if isinstance(url_or_client, str):
        return Redis.from_url(url_or_client), True
    raise InvalidArgumentType(
        f"{what} takes a redis URL or a redis.asyncio.Redis client, got {url_or_client!r}"
    )


def address(redis: Redis) -> str:
    """``host:port/db`` of the client's server: what an error may show (never a password)."""
    kwargs = redis.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def redacted(url: str) -> str:
    """``url`` without its password, for reprs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    netloc = f"{parts.username or ''}:***@{netloc}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def unavailable(redis: Redis) -> Iterator[None]:
    """Raise redis-py's connection, timeout and server errors as :class:`RedisUnavailable`."""
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:
        raise RedisUnavailable(
            f"Redis at {address(redis)} failed: {type(exc).__name__}: {exc}"
        ) from exc
