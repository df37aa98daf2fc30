"""How an endpoint runs its requests: a queue, the project's worker pool and guard, and a batcher.

Each endpoint has a :class:`~aioflows._workers.QueueSource` of accepted requests and a growing
:class:`~aioflows._workers.Pool` pulling from it, the same pool that runs ``map``, pipelines,
flows and the launcher: workers are added only as requests wait, up to the endpoint's
concurrency. A request's hooks run as one call through :func:`~aioflows.calls.guard`, so the
endpoint's ``rate`` and ``timeout`` mean what they mean everywhere else in aioflows.

A request runs in its own cancel scope, so ``DELETE`` cancels exactly that request, and every
exception a hook raises ends it as FAILURE: the pool itself never sees one, so no request can
be left STARTED and no hook can stop the server.

With ``batch=Batch(size, timeout)``, each request still runs ``preprocess`` and
``postprocess`` alone; in between it hands its data to the :class:`Batcher`, which calls
``process`` once per batch: when ``size`` requests are waiting, when the first has waited
``timeout`` seconds, or — while every batch slot is busy — with all that gathered meanwhile,
up to ``size`` (so batches grow under load, as adaptive batching does). Without a ``timeout``,
a batch goes as soon as a slot is free, with whatever has gathered.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from .._workers import Pool, QueueSource
from ..calls import CallPolicy, guard
from ..stream import Batch
from .endpoint import Endpoint, Hook, Stats, hook
from .flows import FlowEndpoint
from .requests import Book, Record, State

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["QueueFull", "Runner"]

logger = logging.getLogger("aioflows.serving")

#: ``process(data, state, stats)``, or for a batch ``process(datas, states, stats_list)``.
Process = Callable[[Any, Any, Any], Awaitable[Any]]


#: A request waiting in a batch: its data, state, stats, and the future of its result.
_Entry = tuple[Any, dict[str, Any], Stats, "asyncio.Future[Any]"]


class QueueFull(Exception):
    """The endpoint holds ``max_queued`` requests waiting to start (answered 429)."""


class Runner:
    """One endpoint's queue, pool and hooks.

    Args:
        name: The endpoint's name (routes, metrics, records).
        endpoint: Its hooks.
        concurrency: Requests (with ``batch``, batches) running at once.
        rate: The endpoint's rate limit, per request.
        timeout: Seconds a request's hooks may take.
        batch: Dynamic batching of ``process``.
        max_queued: Requests waiting to start beyond which a submission is refused.
    """

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        *,
        concurrency: int,
        rate: Any,
        timeout: float | None,
        batch: Batch | None,
        max_queued: int,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.batch = batch
        self.max_queued = max_queued
        self.policy = CallPolicy(rate=rate, timeout=timeout)
        #: Requests accepted and not yet started (cancelled ones leave at once).
        self.queued = 0
        self.running: dict[str, anyio.CancelScope] = {}
        #: Set when :meth:`run` has returned: every request it took is final.
        self.stopped = anyio.Event()
        self._queue: QueueSource[Record] = QueueSource()
        self._book: Book | None = None
        self._metrics: Metrics | None = None
        self._call: Callable[[tuple[Any, dict[str, Any], Stats]], Awaitable[Any]] | None = None

    # -- start-up ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Run the endpoint's ``load`` (in a thread if it is sync); its errors propagate."""
        limiter = anyio.CapacityLimiter(1)
        load = hook(self.endpoint, "load", limiter)
        if load is not None:
            await load()

    def bind(self, book: Book, metrics: Metrics) -> None:
        """Where this endpoint's requests are booked and counted (before any is accepted)."""
        self._book, self._metrics = book, metrics

    async def run(self, task_group: TaskGroup) -> None:
        """Serve requests until :meth:`close`, then finish those queued and return."""
        threads = anyio.CapacityLimiter(self.concurrency)
        pre = hook(self.endpoint, "preprocess", threads)
        process = hook(self.endpoint, "process", threads)
        post = hook(self.endpoint, "postprocess", threads)
        workers = self.concurrency
        if self.batch is not None:
            batcher = Batcher(process, self.batch, self.concurrency)
            task_group.start_soon(batcher.run)
            process, workers = batcher.submit, self.batch.size * (self.concurrency + 1)

        async def chain(job: tuple[Any, dict[str, Any], Stats]) -> Any:
            data, state, stats = job
            if pre is not None:
                data = await pre(data, state, stats)
            if process is not None:
                data = await process(data, state, stats)
            if post is not None:
                data = await post(data, state, stats)
            return data

        self._call = guard(chain, self.policy)
        try:
            await Pool(self._handle, self._queue, workers, grow=True).run()
        finally:
            if self.batch is not None:
                batcher.close()
            self.stopped.set()

    # -- requests ----------------------------------------------------------------------------

    def reserve(self, count: int = 1, *, force: bool = False) -> None:
        """Count ``count`` requests as queued, or raise :class:`QueueFull` if that would pass
        ``max_queued`` (``force``: recovered requests, accepted before a restart)."""
        if not force and self.queued + count > self.max_queued:
            raise QueueFull(self.name)
        self.queued += count

    def unreserve(self, count: int) -> None:
        """Give back a reservation whose requests were not accepted after all."""
        self.queued -= count

    def put(self, record: Record) -> bool:
        """Queue a request reserved with :meth:`reserve`; False if the endpoint has closed
        meanwhile (the server is stopping)."""
        if self._queue.closed:
            self.queued -= 1
            return False
        self._queue.put(record)
        return True

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/endpoints`` says of this endpoint."""
        batch = self.batch
        return {
            "name": self.name,
            "kind": "flow" if isinstance(self.endpoint, FlowEndpoint) else "endpoint",
            "concurrency": self.concurrency,
            "timeout": self.policy.timeout,
            "batch": None if batch is None else {"size": batch.size, "timeout": batch.timeout},
            "max_queued": self.max_queued,
            "queued": self.queued,
            "running": len(self.running),
        }

    async def cancel(self, record: Record) -> None:
        """Cancel a queued or running request (the caller has checked it is not final).

        A queued one is final at once. A running one is final once its hook has stopped — a
        sync hook's thread cannot be interrupted, so that is when it returns — and its state is
        set then, by its worker: no one is told CANCELLED before the store says so.
        """
        if record.state is State.PENDING:
            self.queued -= 1  # its worker will skip it
            record.state = State.CANCELLED
            await self.finish(record, Stats())
            return
        scope = self.running.get(record.id)
        if scope is not None:
            scope.cancel()

    async def finish(self, record: Record, stats: Stats) -> None:
        """A request reached its final state: write it, wake its waiters, count it."""
        assert self._book is not None
        assert self._metrics is not None
        await self._book.finish(record)
        self._metrics.finished(self.name, record, stats)

    def close(self) -> None:
        """Accept nothing more: the pool finishes what is queued, then ends."""
        self._queue.close()

    async def _handle(self, record: Record) -> None:
        """Run one request to its final state. Never raises but a cancellation of the pool."""
        if record.state is not State.PENDING:  # cancelled while it waited
            return
        book, call = self._book, self._call
        assert book is not None
        assert call is not None
        self.queued -= 1
        record.state, record.started_at = State.STARTED, time.time()
        record.attempts += 1
        job: tuple[Any, dict[str, Any], Stats] = (record.body, {}, Stats())
        with anyio.CancelScope() as scope:
            self.running[record.id] = scope
            try:
                await book.write(record)
                result = await call(job)
                text = _as_json(result)
                if record.ephemeral:  # kept only for the answer: held results stay as they are
                    record.result_json = text
                record.result, record.state = result, State.SUCCESS
            except Exception as exc:
                record.state = State.FAILURE
                record.timed_out = isinstance(exc, TimeoutError)
                if record.timed_out and not str(exc):  # the guard's own timeout says nothing
                    timeout = self.policy.timeout
                    exc = TimeoutError(f"the endpoint's timeout of {timeout:g} s passed")
                record.error = f"{type(exc).__name__}: {exc}"
            except BaseException:
                # The server stops past its drain_timeout: in memory the request is over, but
                # the store keeps it STARTED, so that a restarted server runs it again.
                if not scope.cancel_called:
                    book.abandon(record)
                raise
            finally:
                del self.running[record.id]
        if scope.cancel_called or record.state is State.STARTED:
            record.state = State.CANCELLED
        await self.finish(record, job[2])


class Batcher:
    """Groups the data of concurrent requests into one ``process`` call per batch.

    ``submit`` parks its request on a future; :meth:`run` (one task per endpoint) forms a
    batch when it is full, or when its first request has waited ``timeout``, takes a batch
    slot (at most ``concurrency`` batches run at once) and starts the batch. A request
    cancelled while its batch forms leaves it; one cancelled while its batch runs just drops
    its result.
    """

    def __init__(self, process: Hook | None, batch: Batch, concurrency: int) -> None:
        self._process = process
        self._size = batch.size
        self._timeout = batch.timeout
        self._slots = anyio.Semaphore(concurrency)
        self._pending: list[_Entry] = []
        self._arrived = anyio.Event()
        self._full = anyio.Event()
        self._closed = False

    async def submit(self, data: Any, state: dict[str, Any], stats: Stats) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self._pending
        pending.append((data, state, stats, future))
        if len(pending) == 1:
            self._arrived.set()
        if len(pending) >= self._size:
            self._full.set()
        try:
            return await future
        finally:
            if not future.done():
                future.cancel()  # the batch that takes it skips it

    def close(self) -> None:
        self._closed = True
        self._arrived.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                await self._arrived.wait()
                if self._closed and not self._pending:
                    return
                if len(self._pending) < self._size and self._timeout is not None:
                    with anyio.move_on_after(self._timeout):
                        await self._full.wait()
                await self._slots.acquire()
                batch = [entry for entry in self._pending[: self._size] if not entry[3].done()]
                del self._pending[: self._size]
                self._pending = [entry for entry in self._pending if not entry[3].done()]
                self._arrived, self._full = anyio.Event(), anyio.Event()
                if self._pending:
                    self._arrived.set()
                    if len(self._pending) >= self._size:
                        self._full.set()
                if batch:
                    tg.start_soon(self._run, batch)
                else:
                    self._slots.release()

    async def _run(
        self, batch: list[tuple[Any, dict[str, Any], Stats, asyncio.Future[Any]]]
    ) -> None:
        try:
            datas = [entry[0] for entry in batch]
            if self._process is None:
                results: Any = datas
            else:
                results = await self._process(
                    datas, [entry[1] for entry in batch], [entry[2] for entry in batch]
                )
            if not isinstance(results, list) or len(results) != len(batch):
                got = f"{len(results)} results" if isinstance(results, list) else repr(results)
                raise ValueError(
                    f"process of a batch of {len(batch)} must return a list of "
                    f"{len(batch)} results, got {got}"
                )
        except Exception as exc:
            for entry in batch:
                if not entry[3].done():
                    # A copy each (without the traceback): one exception raised in many tasks
                    # would gather all their tracebacks.
                    entry[3].set_exception(_copy(exc))
        else:
            for entry, result in zip(batch, results, strict=True):
                if not entry[3].done():
                    entry[3].set_result(result)
        finally:
            self._slots.release()


def _copy(exc: Exception) -> Exception:
    try:
        return copy.copy(exc)
    except Exception:  # an exception that cannot be copied is shared
        return exc


#: A result as the answers write it (compact, UTF-8, no NaN), made once rather than per call.
_STRICT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _as_json(result: Any) -> str:
    """``result`` as JSON text: it is answered and stored as JSON, so one that is not is the
    request's failure. ``/predict`` answers with this text, so a result is encoded once."""
    try:
        return _STRICT.encode(result)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the endpoint's result is not JSON ({exc}): {result!r:.200}") from None
