"""The server: endpoints by name, their book of requests, and the task group they run in.

``async with server:`` loads every endpoint (a failing ``load`` fails the start with
:class:`~aioflows.EndpointLoadFailed`), recovers what a persistent store kept, and runs each
endpoint's pool and the expiry sweeper in one task group; leaving it drains. The ASGI app
(:meth:`Server.asgi`) only routes to a started server: as the root app its lifespan enters
``async with server:``; mounted in another app (whose lifespan Starlette does not propagate to
mounts, starlette#649), the host's lifespan must, and until then every route answers 503 saying
so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from .. import _validate
from ..calls import LimiterLike, check_timeout
from ..errors import EndpointLoadFailed, InvalidArgument, InvalidArgumentType
from ..flow.spec import Flow
from ..stores import ResultStore
from ..stream import Batch
from .endpoint import Endpoint
from .flows import FlowEndpoint
from .requests import Book, Record, State
from .runner import Runner

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .metrics import Metrics

__all__ = ["Server"]

logger = logging.getLogger("aioflows.serving")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Server:
    """Endpoints served over HTTP with submit-and-poll and synchronous routes (docs/serving.md).

    Usage::

        server = af.Server(af.LocalFileStore("requests"), api_keys=["s3cret"])
        server.add("sentiment", Sentiment(), concurrency=8, batch=af.Batch(32, 0.005))
        app = server.asgi()          # uvicorn module:app, or mount it

    Args:
        store: Where request records and results are kept. A persistent store (LocalFileStore,
            RedisStore) makes them survive a restart; None or a MemoryStore keeps them in this
            process only.
        api_keys: Bearer keys, one of which every route but ``/healthz`` requires.
        result_ttl: Seconds a finished request stays retrievable, from ``finished_at``.
        max_body: Largest request body in bytes (413 beyond, without reading the rest).
        drain_timeout: Seconds running requests get to finish when the server stops.
    """

    def __init__(
        self,
        store: ResultStore | None = None,
        *,
        api_keys: Sequence[str] | None = None,
        result_ttl: float = 3600,
        max_body: int = 16 * 2**20,
        drain_timeout: float = 30,
    ) -> None:
        if store is not None and not isinstance(store, ResultStore):
            raise InvalidArgumentType(f"store must be a ResultStore or None, got {store!r}")
        if api_keys is not None:
            if isinstance(api_keys, (str, bytes)) or not isinstance(api_keys, Sequence):
                raise InvalidArgumentType("api_keys must be a list of str (one str is not)")
            if not api_keys or not all(isinstance(k, str) and k for k in api_keys):
                raise InvalidArgument("api_keys must be non-empty strings (and at least one)")
        self.store = store
        self.api_keys: tuple[str, ...] | None = None if api_keys is None else tuple(api_keys)
        self.result_ttl = _validate.number("result_ttl", result_ttl, strict=True)
        self.max_body = _validate.count("max_body", max_body)
        self.drain_timeout = _validate.number("drain_timeout", drain_timeout)
        self.runners: dict[str, Runner] = {}
        self.book = Book(store, self.result_ttl)
        self.metrics: Metrics = _metrics(lambda: self.runners)
        #: "new" (not entered), "serving", "stopping" (draining), "stopped".
        self.phase = "new"
        self._task_group: TaskGroup | None = None
        self._app: Starlette | None = None

    def __repr__(self) -> str:  # never the api keys
        keys = "" if self.api_keys is None else f", api_keys=<{len(self.api_keys)}>"
        return f"Server(endpoints={list(self.runners)!r}, store={self.store!r}{keys})"

    def add(
        self,
        name: str,
        endpoint: Endpoint | Flow,
        *,
        concurrency: int = 8,
        rate: LimiterLike | None = None,
        timeout: float | None = None,
        batch: Batch | None = None,
        max_queued: int = 10_000,
    ) -> None:
        """Serve ``endpoint`` (an :class:`Endpoint` or a :class:`Flow`) under ``name``.

        Args:
            name: The endpoint's name in the routes: 1-128 letters, digits, ``.``, ``_`` or
                ``-`` (not first).
            endpoint: An :class:`Endpoint` instance, or a :class:`Flow` (run once per request,
                the body overriding task configs: ``{task_name: {config_key: value}}``).
            concurrency: Requests running at once (with ``batch``: batches running at once);
                sync hooks of the endpoint share that many worker threads.
            rate: The endpoint's rate limit, taken once per request as it starts (a rate, or a
                shared :class:`RateLimiter`).
            timeout: Seconds a request's hooks may take, all together (its wait for a batch
                included); past it the request is a FAILURE with a ``TimeoutError``, and
                ``/predict`` answers 504.
            batch: ``af.Batch(size, timeout)``: dynamic batching of ``process``.
            max_queued: Requests waiting to start beyond which a submission is refused with
                429.

        Raises:
            ValueError: A bad name (letters, digits, ``._-``), a name already taken, a bad
                option, or the server is already running.
            TypeError: ``endpoint`` is neither an Endpoint nor a Flow, or ``batch`` is not a
                Batch.
        """
        if self.phase != "new":
            raise InvalidArgument(f"add {name!r} before the server starts")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"an endpoint name must be 1-128 letters, digits, '.', '_' or '-' (not first), "
                f"got {name!r}"
            )
        if name in self.runners:
            raise InvalidArgument(f"an endpoint named {name!r} is already served")
        if isinstance(endpoint, Flow):
            endpoint = FlowEndpoint(endpoint, self.store)
        elif isinstance(endpoint, type) and issubclass(endpoint, Endpoint):
            raise InvalidArgumentType(
                f"pass an instance: server.add({name!r}, {endpoint.__name__}())"
            )
        elif not isinstance(endpoint, Endpoint):
            raise InvalidArgumentType(
                f"server.add takes an af.Endpoint or an af.Flow, got {type(endpoint).__name__}"
            )
        if batch is not None and not isinstance(batch, Batch):
            raise InvalidArgumentType(f"batch must be an af.Batch(size, timeout), got {batch!r}")
        self.runners[name] = Runner(
            name,
            endpoint,
            concurrency=_validate.count("concurrency", concurrency),
            rate=rate,
            timeout=check_timeout(timeout),
            batch=batch,
            max_queued=_validate.count("max_queued", max_queued),
        )

    def asgi(self) -> Starlette:
        """The Starlette app serving the routes (the same one on every call)."""
        if self._app is None:
            from .routes import app

            self._app = app(self)
        return self._app

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Server:
        if self.phase != "new":
            raise InvalidArgument(f"a Server is entered once (it is {self.phase})")
        self.phase = "starting"
        try:
            for name, runner in self.runners.items():
                try:
                    await runner.load()
                except Exception as exc:
                    raise EndpointLoadFailed(name, exc) from exc
            again = await self.book.recover()
        except BaseException:
            self.phase = "stopped"
            raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._task_group = tg
        for runner in self.runners.values():
            runner.bind(self.book, self.metrics)
            tg.start_soon(runner.run, tg, name=f"endpoint {runner.name}")
        tg.start_soon(self._sweep, name="aioflows request expiry")
        for record in again:
            self._requeue(record)
        self.phase = "serving"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._task_group = self._task_group, None
        assert tg is not None
        self.phase = "stopping"
        for runner in self.runners.values():
            runner.close()
        if exc is None:
            with anyio.move_on_after(self.drain_timeout, shield=True):
                for runner in self.runners.values():
                    await runner.stopped.wait()
        tg.cancel_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            self.phase = "stopped"

    def _requeue(self, record: Record) -> None:
        runner = self.runners.get(record.endpoint)
        if runner is None:
            record.state, record.error = (
                State.FAILURE,
                (f"endpoint {record.endpoint!r} is no longer served"),
            )
            assert self._task_group is not None
            self._task_group.start_soon(self.book.finish, record)
            return
        runner.reserve(force=True)
        runner.put(record)

    async def _sweep(self) -> None:
        """Forget expired requests now and then, and delete them from the store."""
        period = min(max(self.result_ttl / 4, 0.05), 5.0)
        while True:
            await anyio.sleep(period)
            await self.book.delete(self.book.sweep())


def _metrics(runners: Callable[[], Mapping[str, Runner]]) -> Metrics:
    """The server's metrics; starlette and prometheus-client are the ``server`` extra's, so
    they are imported when a server is made, not with aioflows."""
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"af.Server needs the server extra ({exc.name} is missing): "
            "pip install 'aioflows[server]'"
        ) from exc
    from .metrics import Metrics

    return Metrics(runners)
