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
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import FlowError
from .executor import Body

if TYPE_CHECKING:
    from distributed import Client

    from .graph import Graph, TaskNode

__all__ = ["DaskExecutor"]

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
            self._address = client_or_address
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
        # What each task submits: an async callable object is submitted as its bound
        # __call__, so that distributed, which looks at the function, sees a coroutine.
        targets = {
            name: _remote_target(graph.specs[name].fn, graph.bindings[name].is_async)
            for name in tasks
        }
        client, owned = await self._connect()
        try:
            yield _Remote(client, targets).body
        finally:
            if owned:
                with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
                    await client.close()

    async def _connect(self) -> tuple[Client, bool]:
        """This loop's client, and whether the run owns it (and closes it)."""
        client = self._client
        if client is not None and client.asynchronous:
            return client, False
        distributed = _import_distributed()
        address = self._address if client is None else client.scheduler.address
        opened: Client = await distributed.Client(
            address, asynchronous=True, set_as_default=False
        )
        return opened, True

    def __repr__(self) -> str:
        target = self._address if self._client is None else self._client
        return f"DaskExecutor({target!r})"


def _remote_target(fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    if is_async and not inspect.iscoroutinefunction(fn):
        call: Callable[..., Any] = fn.__call__
        return call
    return fn


class _Remote:
    """One run's body on one client."""

    __slots__ = ("client", "targets")

    def __init__(self, client: Client, targets: dict[str, Callable[..., Any]]) -> None:
        self.client = client
        self.targets = targets

    async def body(
        self, node: TaskNode, fn: Callable[..., Any], kwargs: dict[str, Any], is_async: bool
    ) -> Any:
        """One attempt as one Dask task; a cancellation here cancels it on the cluster."""
        future = self.client.submit(
            functools.partial(self.targets[node.task], **kwargs),
            key=f"{node.unique_name}-{uuid.uuid4().hex}",
            pure=False,
        )
        try:
            return await future
        except BaseException:
            if not future.done():  # cancelled here: fail-fast, a timeout, from outside
                with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
                    await self.client.cancel([future], asynchronous=True)
            raise
