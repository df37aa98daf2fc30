"""DaskExecutor: a flow's task bodies on a Dask distributed cluster.

Only the body of each attempt leaves the process (the seam is
:func:`aioflows.flow.executor.run_body`): it becomes one Dask task, submitted with a key of its
own (``pure=False``: two attempts, or two runs, never share a result), whose function is the
task function with its inputs bound (``functools.partial``), so Dask's serialisation carries
the arguments and the result, and the workers need only import the task functions (not
aioflows). Sync functions run in a worker's thread pool like any Dask task; async functions
run on the worker's event loop, which distributed does for a coroutine function.

The scheduling, per-task concurrency and rates, retries and timeouts (the guard wraps each
remote attempt), the store and the events stay in the calling process. Awaiting the Dask
future is where the flow waits, so a cancellation (fail-fast, a timeout, from outside)
arrives there and cancels the future on the cluster. A worker that dies mid-task is
distributed's to handle: it reruns the task elsewhere, and after ``allowed-failures`` deaths
raises ``KilledWorker``, a failure the task's retry policy sees like any other.

A task that takes ``ctx`` is refused before anything runs: the TaskContext is the calling
process's store, logger and resource, which a worker process cannot reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

from ..errors import FlowError
from .executor import Body

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from distributed import Client

    from .graph import Graph, TaskNode

__all__ = ["DaskExecutor"]

#: Seconds the gathering of results waits before each request, so that one request fetches
#: what finishes meanwhile (1,000 tasks of 1 ms: some 450 requests without a wait, 200 with
#: 5 ms, each also work for the scheduler).
GATHER_WINDOW = 0.002

#: Seconds between two looks of a worker at whether the async attempt it runs is still wanted.
WATCH_INTERVAL = 0.1

#: An attempt waiting for its batch: its key, its function with the inputs bound, whether it
#: is async, and where its Dask future goes.
_Pending: TypeAlias = tuple[str, Callable[[], Any], bool, "asyncio.Future[Any]"]

#: Seconds the attempts starting one after another are collected for, to go to the scheduler
#: as one graph (see _Remote).
BATCH_WINDOW = 0.002

#: Seconds a cancellation waits for the scheduler to hear of it: a scheduler that is gone
#: must not turn the flow's cancellation into a hang.
CANCEL_TIMEOUT = 10.0


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise FlowError(
            "DaskExecutor needs dask distributed: pip install 'aioflows[dask]'"
        ) from None
    return distributed


class DaskExecutor:
    """Runs a flow's task bodies on a Dask cluster: ``flow.run(executor=af.DaskExecutor(c))``.

    Args:
        client_or_address: A ``distributed.Client``, or the scheduler's address
            (``"tcp://host:8786"``) for a client the executor opens per run and closes after.
            A client of this event loop (``Client(..., asynchronous=True)`` made in it) is used
            as is; any other (a plain ``Client``, which runs its own loop in a thread) lends
            only its scheduler's address: the run opens an asynchronous client of its own to
            it, so the flow awaits the futures on its own loop.

    Only the asyncio backend of anyio can drive a Dask client.
    """

    __slots__ = ("_address", "_client")

    def __init__(self, client_or_address: Client | str) -> None:
        distributed = _import_distributed()
        if isinstance(client_or_address, str):
            if not client_or_address:
                raise FlowError("DaskExecutor needs a Client or a scheduler address, got ''")
            self._client: Client | None = None
            self._address: str | None = client_or_address
        elif isinstance(client_or_address, distributed.Client):
            self._client = client_or_address
            self._address = None
        else:
            raise FlowError(
                "DaskExecutor takes a distributed.Client or a scheduler address, "
                f"got {type(client_or_address).__name__}"
            )

    @contextlib.asynccontextmanager
    async def session(self, graph: Graph, nodes: Sequence[TaskNode]) -> AsyncIterator[Body]:
        """The body of a run: connect (if given an address), check, and cancel what is left.

        Args:
            graph: The run's expanded graph (its tasks' bindings are checked for ``ctx``).
            nodes: The instances the run will run.

        Raises:
            FlowError: A task of the run takes ``ctx``, or the loop is not asyncio's; raised
                before connecting, so before anything runs.
        """
        tasks = {node.task for node in nodes}
        with_ctx = sorted(name for name in tasks if graph.bindings[name].ctx is not None)
        if with_ctx:
            raise FlowError(
                "DaskExecutor cannot run tasks that take a TaskContext (ctx): its store, "
                "logger and resource live in the calling process; return what to keep "
                f"instead. Tasks taking ctx: {', '.join(with_ctx)}"
            )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise FlowError("DaskExecutor needs anyio's asyncio backend") from None
        client, owned = await self._connect()
        # The run's exception is taken out of the task group and raised as itself, not
        # wrapped in the group's ExceptionGroup.
        error: BaseException | None = None
        remote = _Remote(client)
        try:
            async with anyio.create_task_group() as tg:  # the gathering of results
                remote.tg = tg
                try:
                    yield remote.body
                except BaseException as exc:
                    error = exc
                finally:
                    remote.close()
                    tg.cancel_scope.cancel()
            if error is not None:
                raise error
        finally:
            error = None  # no reference cycle through the traceback
            if owned:
                with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
                    await client.close()

    async def _connect(self) -> tuple[Any, bool]:
        """This loop's client, and whether the run owns it (and closes it).

        Typed Any: distributed's methods are not annotated (mypy --strict refuses the calls).
        """
        client: Any = self._client
        if client is not None and client.asynchronous:
            return client, False
        distributed = _import_distributed()
        address = self._address if client is None else client.scheduler.address
        opened: Client = await distributed.Client(address, asynchronous=True, set_as_default=False)
        return opened, True

    def __repr__(self) -> str:
        target = self._address if self._client is None else self._client
        return f"DaskExecutor({target!r})"


class _Remote:
    """One run's body on one client.

    Attempts that start within :data:`BATCH_WINDOW` of each other go to the scheduler as one
    graph, the way ``client.map`` sends its tasks: one ``client.submit`` per task costs the
    scheduler an update of its graph each, 1.35x the wall time of ``client.map`` for 1,000
    tasks of 1 ms (benchmarks/distributed_dask.py). A window, not one loop pass, because the
    flow's pool grows by one worker per loop pass, so a pass alone starts about one attempt.
    """

    __slots__ = (
        "attempts",
        "client",
        "flush",
        "gathering",
        "loop",
        "pending",
        "run_id",
        "tg",
        "to_gather",
    )

    def __init__(self, client: Any) -> None:
        self.client = client  # a distributed.Client of this loop
        self.tg: TaskGroup | None = None  # set while the run is on
        self.loop = asyncio.get_running_loop()
        # Keys: unique per attempt and per run (a uuid4 per attempt costs a system call).
        self.run_id = uuid.uuid4().hex[:16]
        self.attempts = itertools.count()
        self.pending: list[_Pending] = []
        self.flush: asyncio.TimerHandle | None = None
        self.to_gather: list[tuple[Any, asyncio.Future[Any]]] = []
        self.gathering = False

    async def body(
        self, node: TaskNode, fn: Callable[..., Any], kwargs: dict[str, Any], is_async: bool
    ) -> Any:
        """One attempt as one Dask task; a cancellation here cancels it on the cluster."""
        submitted: asyncio.Future[Any] = self.loop.create_future()
        key = f"{node.unique_name}-{self.run_id}-{next(self.attempts)}"
        self.pending.append((key, functools.partial(fn, **kwargs), is_async, submitted))
        if self.flush is None:
            self.flush = self.loop.call_later(BATCH_WINDOW, self._submit)
        # Cancelled before the batch went: the cancellation cancels `submitted` too, and
        # the batch leaves this attempt out.
        future = await submitted
        try:
            await future.exception()  # waits until it ended, whichever way
            if future.status != "finished":  # failed (or cancelled): raise what it raised
                return await future
            gathered: asyncio.Future[Any] = self.loop.create_future()
            self.to_gather.append((future, gathered))
            if not self.gathering and self.tg is not None:
                self.gathering = True
                self.tg.start_soon(self._gather)
            return await gathered
        except BaseException:
            if not future.done():  # cancelled here: fail-fast, a timeout, from outside
                with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
                    await self.client.cancel([future], asynchronous=True)
            raise

    async def _gather(self) -> None:
        """Fetch the results of the finished attempts, many per request.

        ``await future`` fetches one result per request (through the scheduler): 1,000 of
        them cost the calling process twice the CPU of one ``client.gather`` of all. One
        request at a time: what finishes meanwhile waits for the next, in one batch.
        """
        try:
            while self.to_gather:
                await anyio.sleep(GATHER_WINDOW)  # let more finish: fewer, larger requests
                batch = [item for item in self.to_gather if not item[1].done()]
                self.to_gather = []
                if not batch:
                    continue
                try:
                    values = await self.client.gather([f for f, _ in batch], asynchronous=True)
                except Exception as exc:  # e.g. a result lost with its worker: one attempt each
                    for _, gathered in batch:
                        if not gathered.done():
                            gathered.set_exception(exc)
                    continue
                for (_, gathered), value in zip(batch, values, strict=True):
                    if not gathered.done():
                        gathered.set_result(value)
        finally:
            self.gathering = False

    def close(self) -> None:
        """Nothing more goes to the cluster (every attempt has ended: the run is over)."""
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None

    def _submit(self) -> None:
        """Send the batch, one graph for its sync attempts and one for its async ones; each
        attempt's awaiter gets its Dask future."""
        self.flush = None
        batch = [entry for entry in self.pending if not entry[3].done()]
        self.pending = []
        for is_async in (False, True):
            part = [entry for entry in batch if entry[2] is is_async]
            if part:
                self._send(part, _call_async if is_async else _call_sync)

    def _send(self, part: list[_Pending], call: Callable[..., Any]) -> None:
        # client.map with given keys: neither tokenizing the graph (client.get) nor a
        # delayed object per attempt (client.compute).
        client = self.client
        futures: list[Any]
        try:
            keys = [p[0] for p in part]
            args = [[p[1] for p in part], keys] if call is _call_async else [[p[1] for p in part]]
            futures = client.map(call, *args, key=keys, pure=False)
        except Exception:
            # One attempt the graph cannot carry (say, an argument that does not pickle)
            # fails the whole graph: send them one by one, so that only it fails.
            futures = []
            for key, bound, _, _ in part:
                try:
                    extra = (key,) if call is _call_async else ()
                    futures.append(client.submit(call, bound, *extra, key=key, pure=False))
                except Exception as exc:
                    futures.append(exc)
        for (_, _, _, submitted), future in zip(part, futures, strict=True):
            if isinstance(future, BaseException):
                submitted.set_exception(future)
            else:
                submitted.set_result(future)


def _call_sync(bound: Callable[[], Any]) -> Any:
    """What a worker runs for a sync attempt (in its thread pool)."""
    return bound()


async def _call_async(bound: Callable[[], Awaitable[Any]], key: str) -> Any:
    """What a worker runs for an async attempt: a coroutine function, which distributed runs
    on the worker's event loop.

    distributed does not stop a running task whose future was cancelled: it lets it finish
    and drops the result, so a cancelled flow of async tasks would keep the workers' slots
    busy until each ended. The attempt runs as a task of its own here, and every
    :data:`WATCH_INTERVAL` seconds the worker's record of ``key`` is looked at: released
    (cancelled, forgotten), the coroutine is cancelled. (A sync function cannot be stopped
    in its thread: it runs to its end.)
    """
    try:
        tasks = _import_distributed().get_worker().state.tasks
    except Exception:  # no worker state to watch (another distributed): just run it
        return await bound()

    async def attempt() -> Any:
        return await bound()

    running = asyncio.ensure_future(attempt())
    try:
        while True:
            done, _ = await asyncio.wait((running,), timeout=WATCH_INTERVAL)
            if done:
                return running.result()
            record = tasks.get(key)
            if record is None or record.state == "cancelled":
                running.cancel()
                await asyncio.wait((running,))
                return None  # nobody awaits it any more
    finally:
        running.cancel()  # when this wrapper itself is cancelled (the worker closes)
