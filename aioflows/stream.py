"""Streaming pipelines: stages joined by bounded channels, run by the same pool as ``imap``.

Each ``Stage`` (and ``Filter``, ``Unbatch``, ``Union``) is a worker pool
(:class:`aioflows._workers.Pool`) pulling from the channel before it and emitting into a
channel of at most ``buffer`` items after it (:class:`aioflows._workers.Channel`), so a slow
stage slows the source instead of letting items pile up. ``ordered=True`` keeps each stage's
outputs in input order with that pool's ordered sink: a finished item waits only for the ones
before it (the completed prefix is emitted at once), and admission holds back when the stage
runs ``max(buffer, 2 * workers)`` items ahead of the next one to emit, so one slow item can
never make a stage hold the whole stream. A flat stage makes each output of an input as it is
emitted (:mod:`aioflows.flat`). ``Batch`` is a single task, which keeps order by construction.

A sync ``Filter`` never waits, so it is no pool of its own: it runs in the emitter of the step
before it, on each item as it goes out (once the channel has room for it, so exactly once per
item, in order), or, at the head of the pipeline, in the first step's pulls
(:class:`aioflows._workers.KeptSource`). Where the step before emits to a memory object stream,
which cannot tell whether it has room (the output of ``stream``, an ordered flat stage's),
the filter is a step like any other. ``run`` has the last stage append to its result itself.

All pools run in one task group inside a driver task owned by the stream object, as ``imap``
does (``run`` runs that task group in its own task): leaving ``async for``, an exception in
the consumer or a cancellation stops every worker and closes an async-generator source. With
``on_error="raise"`` the first failure cancels everything and is raised as itself; ``"skip"``
drops the item; ``"collect"`` emits :class:`Failed` in its place, which later stages pass
through untouched.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from inspect import isasyncgenfunction
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _validate
from ._callables import is_async_callable
from ._workers import (
    DONE,
    Admit,
    Channel,
    Collected,
    Driven,
    KeptSource,
    OrderedSink,
    Outlet,
    Pool,
    Source,
    StreamOutlet,
    StreamSource,
    UnorderedSink,
    drive,
    feeding,
    is_cancellation,
)
from .calls import CallPolicy, LimiterLike, check_timeout, guard
from .errors import InvalidArgument, InvalidArgumentType
from .flat import (
    _END,
    _SKIP,
    _as_flat,
    _InlineSteps,
    _OrderedFlatSink,
    _Outputs,
    _outputs,
    _overrun,
    _Skip,
)
from .retry import RetryLike

__all__ = ["Batch", "Failed", "Filter", "Pipeline", "PipelineStream", "Stage", "Unbatch", "Union"]

T = TypeVar("T")

_ON_ERROR = ("raise", "skip", "collect")


@dataclass(frozen=True, slots=True)
class Failed(Generic[T]):
    """An item a stage failed on, emitted in its place with ``on_error="collect"``.

    ``stage`` is the name of the stage that failed (its function's name unless given).

    Attributes:
        item: The item the stage failed on, as the stage received it.
        error: The exception the stage raised (after its retries).
        stage: The failing stage's name.
    """

    item: T
    error: BaseException
    stage: str


class _Emitter:
    """How a stage hands its outcomes on to its :class:`Outlet`: drops skips, spreads flat
    outputs, and runs the sync filters fused after the stage (``keep``) on each item as it
    goes out.

    ``keep`` (the item, or ``_SKIP``) runs only once the outlet is known to take the item at
    once, so it runs exactly once per item, in the order items go out (a stateful predicate,
    such as "not seen before", sees them as its own stage would have). The sink's ``send``
    argument is not used: the outlet is this object's.
    """

    __slots__ = ("_keep", "_out")

    def __init__(self, out: Outlet, keep: Callable[[Any], Any] | None = None) -> None:
        self._out = out
        self._keep = keep

    async def __call__(self, send: object, outcome: Any) -> None:
        kind = type(outcome)
        if kind is _Skip:
            return
        if kind is _Outputs:
            try:
                while (out := await outcome.next()) is not _END:
                    await self.one(send, out)
            finally:
                await outcome.aclose()
            return
        await self.one(send, outcome)

    async def one(self, send: object, item: Any) -> None:
        out, keep = self._out, self._keep
        if keep is None:
            if not out.put_nowait(item):
                await out.put(item)
            return
        if not out.room():
            await out.wait_room()
        item = keep(item)
        if item is _SKIP:
            out.room_unused()
            return
        out.put_nowait(item)  # sure to go in: room, and no wait since

    def nowait(self, send: object, outcome: Any) -> bool:
        """Hand ``outcome`` on if that needs no waiting; False (having done nothing) if not."""
        kind = type(outcome)
        if kind is _Skip:
            return True
        if kind is _Outputs:
            return False  # outputs still to make: the awaiting path
        out, keep = self._out, self._keep
        if keep is None:
            return out.put_nowait(outcome)
        if not out.room():
            return False
        outcome = keep(outcome)
        if outcome is not _SKIP:
            out.put_nowait(outcome)
        return True


def _check_workers(workers: int) -> int:
    return _validate.count("workers", workers)


def _check_callable(fn: object, what: str) -> None:
    if not callable(fn):
        raise InvalidArgumentType(f"{what} must be callable, got {fn!r}")


def _name_of(fn: Callable[..., Any], name: str | None) -> str:
    return name or getattr(fn, "__name__", None) or type(fn).__name__


def _as_async(fn: Callable[..., Any]) -> Callable[[Any], Awaitable[Any]]:
    """One awaitable call per item, whatever ``fn`` is; sync functions go to a worker thread."""
    if is_async_callable(fn):
        return fn

    async def in_thread(item: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, item)

    return in_thread


def _late_is_timeout(
    call: Callable[[Any], Awaitable[Any]], timeout: float
) -> Callable[[Any], Awaitable[Any]]:
    """A thread cannot be interrupted: a sync call that overran its timeout is waited for
    (nothing is left running) and then reported as the TimeoutError it is."""

    async def timed(item: Any) -> Any:
        started = anyio.current_time()
        result = await call(item)
        if anyio.current_time() - started > timeout:
            if type(result) is _Outputs:
                await result.aclose()
            raise _overrun(timeout)
        return result

    return timed


class Stage:
    """Apply ``fn`` to every item with ``workers`` concurrent calls.

    ``fn`` may be async or sync (sync runs in a worker thread). With ``flat=True`` it returns
    an iterable (or is an async generator) whose items are emitted one by one, each as soon as
    it is made (see :class:`_Outputs`). ``rate``, ``retry`` and ``timeout`` work as in
    :func:`aioflows.map`; for a flat stage they apply to the call and its first output, and
    ``timeout`` bounds each later output too.

    Args:
        fn: ``fn(item)``, async or sync; its result is the output (with ``flat``: an
            iterable or async iterable of outputs).
        workers: Calls in flight at once.
        flat: Emit each item of what ``fn`` returns instead of the result itself.
        rate: Calls start at most at this rate (a rate, or a shared :class:`RateLimiter`).
        retry: A :class:`Retry` or a number of attempts for a failing call.
        timeout: Seconds one call may take; an overrun is a ``TimeoutError``.
        name: The stage's name in :class:`Failed` records and errors (default: ``fn``'s).

    Raises:
        ValueError, TypeError: A bad argument.
    """

    __slots__ = ("_options", "flat", "fn", "name", "workers")

    def __init__(
        self,
        fn: Callable[[Any], Any],
        workers: int = 1,
        *,
        flat: bool = False,
        rate: LimiterLike | None = None,
        retry: RetryLike = None,
        timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        _check_callable(fn, "a stage's fn")
        self.fn = fn
        self.workers = _check_workers(workers)
        self.flat = bool(flat)
        self.name = _name_of(fn, name)
        policy = CallPolicy(rate=rate, retry=retry, timeout=timeout)  # validated now, once
        limit = policy.timeout
        call = _as_flat(fn, limit) if self.flat else _as_async(fn)
        if limit is not None and not is_async_callable(fn) and not isasyncgenfunction(fn):
            call = _late_is_timeout(call, limit)  # fn runs in a worker thread
        self._options = (call, policy)

    def _callable(self) -> Callable[[Any], Awaitable[Any]]:
        # Built per run: a rate given as a value gives each run its own limiter, as in map.
        call, policy = self._options
        return guard(call, policy)

    def __repr__(self) -> str:
        return f"Stage({self.name}, workers={self.workers}{', flat' if self.flat else ''})"


class Filter:
    """Keep the items for which ``pred`` is true.

    An async ``pred`` is awaited; a sync one is called inline on the event loop, since a
    predicate is usually a cheap check and a thread hop per item would cost far more than it,
    and in the step before it (as that step hands each item on, in order, once per item) rather
    than in a stage of its own. Put a blocking check in a ``Stage`` returning the item or
    dropping it with ``flat=True``.

    Args:
        pred: ``pred(item)``, async or sync: whether to keep the item.
        workers: Calls of an async ``pred`` in flight at once.
    """

    __slots__ = ("_pred", "name", "pred", "workers")

    def __init__(self, pred: Callable[[Any], Any], workers: int = 1) -> None:
        _check_callable(pred, "a filter's predicate")
        self.pred = pred
        self.workers = _check_workers(workers)
        self.name = _name_of(pred, None)

    def _callable(self) -> Callable[[Any], Awaitable[Any]]:
        pred = self.pred
        if is_async_callable(pred):

            async def keep_async(item: Any) -> Any:
                return item if await pred(item) else _SKIP

            return keep_async

        return _KeepSync(pred)

    def __repr__(self) -> str:
        return f"Filter({self.name}, workers={self.workers})"


class _KeepSync:
    """A sync predicate's filter step: awaitable for the generic path, and ``sync`` for
    pools, which call it without a coroutine per item."""

    __slots__ = ("pred",)

    def __init__(self, pred: Callable[[Any], Any]) -> None:
        self.pred = pred

    def sync(self, item: Any) -> Any:
        return item if self.pred(item) else _SKIP

    async def __call__(self, item: Any) -> Any:
        return self.sync(item)


class Batch:
    """Group items into lists of ``size``; with ``timeout``, a partial batch is emitted once
    its first item has waited that many seconds. The last batch may be short.

    Args:
        size: Items per batch, at least 1.
        timeout: Seconds the first item of a partial batch may wait; None: wait for ``size``
            items (or the end of the input).
    """

    __slots__ = ("name", "size", "timeout")

    def __init__(self, size: int, timeout: float | None = None) -> None:
        self.size = _validate.count("Batch size", size)
        self.timeout = check_timeout(timeout)
        self.name = "batch"

    def __repr__(self) -> str:
        return f"Batch({self.size}, timeout={self.timeout})"


class Unbatch:
    """Emit the items of each incoming list one by one."""

    __slots__ = ("name", "workers")

    def __init__(self) -> None:
        self.workers = 1
        self.name = "unbatch"

    def _callable(self) -> Callable[[Any], Awaitable[Any]]:
        async def spread(items: Any) -> Any:
            return await _outputs(_InlineSteps(items), None)

        return spread

    def __repr__(self) -> str:
        return "Unbatch()"


class Union:
    """Send each item to every branch stage at once and emit the tuple of their outputs.

    The workers of the union are those of its widest branch; each branch keeps its own rate,
    retry and timeout. Branches are plain (not flat) stages.

    Args:
        *stages: The branches, each a :class:`Stage`; the output tuple is in their order.
    """

    __slots__ = ("branches", "name", "workers")

    def __init__(self, *stages: Stage) -> None:
        if not stages:
            raise InvalidArgument("Union needs at least one stage")
        for stage in stages:
            if not isinstance(stage, Stage) or stage.flat:
                raise InvalidArgumentType(f"Union takes plain (not flat) Stages, got {stage!r}")
        self.branches = stages
        self.workers = max(stage.workers for stage in stages)
        self.name = "union(" + ", ".join(stage.name for stage in stages) + ")"

    def _callable(self) -> Callable[[Any], Awaitable[Any]]:
        calls = [stage._callable() for stage in self.branches]

        async def fan_out(item: Any) -> tuple[Any, ...]:
            outs: list[Any] = [None] * len(calls)
            errors: list[BaseException] = []

            async def branch(i: int, tg: anyio.abc.TaskGroup) -> None:
                try:
                    outs[i] = await calls[i](item)
                except BaseException as exc:
                    if is_cancellation(exc):
                        raise
                    errors.append(exc)
                    tg.cancel_scope.cancel()  # the other branches' work is moot

            async with anyio.create_task_group() as tg:
                for i in range(len(calls)):
                    tg.start_soon(branch, i, tg)
            if errors:
                raise errors[0]  # the branch's own exception (a BaseException too), not a group
            return tuple(outs)

        return fan_out

    def __repr__(self) -> str:
        return f"Union({', '.join(map(repr, self.branches))})"


_Step = Stage | Filter | Batch | Unbatch | Union


class Pipeline:
    """Stages run concurrently over a stream of items, with bounded memory end to end.

    Args:
        stages: ``Stage``, ``Filter``, ``Batch``, ``Unbatch`` and ``Union`` steps, in order.
        buffer: At most this many items wait between two stages.
        ordered: Emit outputs in input order (as soon as the prefix is complete), or as soon
            as each is ready.
        on_error: ``"raise"`` (cancel everything, raise the item's exception), ``"skip"``
            (drop failed items) or ``"collect"`` (emit :class:`Failed` in their place).
    """

    __slots__ = ("buffer", "on_error", "ordered", "stages")

    def __init__(
        self, *stages: _Step, buffer: int = 64, ordered: bool = True, on_error: str = "raise"
    ) -> None:
        if not stages:
            raise InvalidArgument("a Pipeline needs at least one stage")
        for step in stages:
            if not isinstance(step, (Stage, Filter, Batch, Unbatch, Union)):
                raise InvalidArgumentType(
                    f"pipeline steps are Stage, Filter, Batch, Unbatch or Union, got {step!r}"
                )
        _validate.count("buffer", buffer)
        if on_error not in _ON_ERROR:
            raise InvalidArgument(
                f"on_error must be one of {', '.join(_ON_ERROR)}, got {on_error!r}"
            )
        self.stages = stages
        self.buffer = buffer
        self.ordered = bool(ordered)
        self.on_error = on_error

    def stream(self, source: Iterable[Any] | AsyncIterable[Any]) -> PipelineStream:
        """The outputs, as an async iterator (and async context manager) over ``source``.

        Usage::

            async with pipeline.stream(lines) as outputs:
                async for output in outputs:
                    ...

        ``source`` is pulled as the first stage has room, never read whole. Leaving the
        ``async with`` block (or breaking out of the loop) stops every stage.

        Args:
            source: The items, an iterable or async iterable.
        """
        return PipelineStream(self, Source(source))

    async def run(self, source: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
        """Every output, as a list.

        Args:
            source: The items, an iterable or async iterable.

        Raises:
            Exception: With ``on_error="raise"``, the first item's error, as itself.
        """
        return await PipelineStream(self, Source(source), collect=True)._run()

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.stages))}, buffer={self.buffer})"


def _guarded(call: Callable[[Any], Awaitable[Any]], name: str, on_error: str) -> Any:
    """The per-item call of a stage: passes Failed items through, applies ``on_error``."""
    if on_error == "raise":
        return call  # a failure propagates and stops the pipeline
    collect = on_error == "collect"

    async def tolerant(item: Any) -> Any:
        if type(item) is Failed:
            return item  # failed upstream: carried through to the output as it is
        try:
            outcome = await call(item)
        except Exception as exc:
            return Failed(item, exc, name) if collect else _SKIP
        if type(outcome) is _Outputs:

            def instead(exc: Exception) -> Any:  # and so is a failure part way
                return Failed(item, exc, name) if collect else _END

            outcome.tolerate = instead
        return outcome

    return tolerant


class PipelineStream(Driven[Any]):
    """What :meth:`Pipeline.stream` returns: an async iterator and async context manager.

    With ``collect`` (what :meth:`Pipeline.run` makes), the last stage appends to the result
    list itself and :meth:`_run` runs the stages in the calling task: no output stream, no
    reader woken per batch of outputs, no driver task.
    """

    __slots__ = ("_collected", "_pipeline", "_source", "_streams")

    def __init__(self, pipeline: Pipeline, source: Source[Any], collect: bool = False) -> None:
        super().__init__()
        self._pipeline = pipeline
        self._source = source
        self._streams: list[MemoryObjectSendStream[Any] | MemoryObjectReceiveStream[Any]] = []
        self._collected: Collected | None = Collected() if collect else None

    async def _run(self) -> list[Any]:
        """Every output, as a list: what ``run`` does."""
        driver = self._launch()
        collected = self._collected
        if collected is None:  # the last stage is an ordered flat one: it emits to a stream
            self._driver = asyncio.get_running_loop().create_task(driver)
            try:
                return await self._drain()
            finally:
                await self.aclose()
        try:
            await driver
        finally:
            self._closed = True
            await self._release()
        if self._error:
            raise self._error[0]
        return collected.items

    async def _drain(self) -> list[Any]:
        """Every remaining output; what ``async for`` does, without a frame per item."""
        receive = self._receive
        assert receive is not None
        out: list[Any] = []
        append = out.append
        while True:
            try:
                append(receive.receive_nowait())
                continue
            except anyio.WouldBlock:
                pass
            except anyio.EndOfStream:
                break
            try:
                append(await receive.receive())
            except anyio.EndOfStream:
                break
        await self.aclose()
        if self._error:
            raise self._error[0]
        return out

    async def _release(self) -> None:
        self._drop()
        with anyio.CancelScope(shield=True):
            await self._source.aclose()

    def _drop(self) -> None:
        for stream in self._streams:
            stream.close()

    def _launch(self) -> Coroutine[Any, Any, None]:
        """The runs of the steps, joined by channels; sync filters fused where they can be.

        A sync filter at the head runs in the first step's pulls (:class:`KeptSource`); one
        after a step runs in that step's emitter, on each item as it goes out, when the
        step's outlet can tell that the item will go in at once (a channel, the result list).
        Otherwise (a memory stream: the output of ``stream``, or what an ordered flat stage
        emits to) it is a step of its own, like any other.
        """
        pipeline = self._pipeline
        stages, on_error = pipeline.stages, pipeline.on_error
        count = len(stages)
        runners: list[Callable[[], Awaitable[None]]] = []
        head: Source[Any] | KeptSource[Any] = self._source
        i = 0
        while i < count - 1 and _is_sync_filter(stages[i]):
            head = KeptSource(head, _keeping(stages[i], on_error), _SKIP)
            i += 1
        source: _Input = head
        while i < count:
            step = stages[i]
            after = i + 1
            while after < count and _is_sync_filter(stages[after]):
                after += 1
            flat_ordered = _is_flat_ordered(step, pipeline)
            if flat_ordered or (after == count and self._collected is None):
                after = i + 1  # it emits to a memory stream, which can not tell room
            last = after == count
            send: MemoryObjectSendStream[Any] | None = None
            out: Outlet
            following: _Input | None = None  # what the next step pulls from
            if last and self._collected is not None and not flat_ordered:
                out = self._collected
            elif last or flat_ordered:
                send, receive = anyio.create_memory_object_stream[Any](pipeline.buffer)
                self._streams += (send, receive)
                out = StreamOutlet(send, stamp=not last)
                if last:
                    self._receive = receive
                    self._collected = None  # run() reads this stream
                else:
                    following = StreamSource(receive)
            else:
                out = following = Channel(pipeline.buffer)
            emitter = _Emitter(out, _fused([_keeping(f, on_error) for f in stages[i + 1 : after]]))
            runners.append(_runner(step, source, out, send, pipeline, emitter))
            if following is not None:
                source = following
            i = after
        return drive(runners, self._error)


#: What a step pulls from: the pipeline's input (maybe through sync filters), a channel, or
#: the stream after an ordered flat stage.
_Input = Source[Any] | KeptSource[Any] | Channel | StreamSource[Any]


def _is_sync_filter(step: _Step) -> bool:
    return isinstance(step, Filter) and not is_async_callable(step.pred)


def _is_flat_ordered(step: _Step, pipeline: Pipeline) -> bool:
    """Whether the step's sink is an ordered flat sink, which emits to a memory stream."""
    return isinstance(step, Stage) and step.flat and pipeline.ordered and step.workers > 1


def _fused(keeps: list[Callable[[Any], Any]]) -> Callable[[Any], Any] | None:
    """Several fused filters as one ``keep``: each sees what the one before kept."""
    if not keeps:
        return None
    if len(keeps) == 1:
        return keeps[0]

    def chain(item: Any) -> Any:
        for keep in keeps:
            item = keep(item)
            if item is _SKIP:
                break
        return item

    return chain


def _keeping(step: _Step, on_error: str) -> Callable[[Any], Any]:
    """A sync filter as a fused step: the item, or ``_SKIP`` to drop it; a predicate that
    raises fails the item as ``on_error`` says, as the filter's own stage would."""
    assert isinstance(step, Filter)
    keep = _KeepSync(step.pred).sync
    if on_error == "raise":
        return keep  # the exception fails the step it runs in, and the pipeline with it
    collect, name = on_error == "collect", step.name

    def tolerant(item: Any) -> Any:
        if type(item) is Failed:
            return item  # failed upstream: carried through to the output as it is
        try:
            return keep(item)
        except Exception as exc:
            return Failed(item, exc, name) if collect else _SKIP

    return tolerant


def _runner(
    step: _Step,
    source: _Input,
    out: Outlet,
    send: MemoryObjectSendStream[Any] | None,
    pipeline: Pipeline,
    emit: _Emitter,
) -> Callable[[], Awaitable[None]]:
    """The run of one step. ``send`` is ``out``'s memory stream, if it is one (an ordered
    flat sink needs it)."""
    if isinstance(step, Batch):
        return lambda: _batch(step, source, out, emit)
    plain = step._callable()
    call = _guarded(plain, step.name, pipeline.on_error)
    call_sync = plain.sync if call is plain and isinstance(plain, _KeepSync) else None
    admit: Admit | None = None
    if pipeline.ordered and step.workers > 1:
        admit = Admit(max(pipeline.buffer, 2 * step.workers))
        if isinstance(step, Stage) and step.flat:
            assert send is not None
            sink: Any = _OrderedFlatSink(send, admit, emit, emit.one, pipeline.buffer)
        else:
            sink = OrderedSink(out, admit, emit, emit.nowait)
    else:  # one worker emits in order anyway
        sink = UnorderedSink(out, emit, emit.nowait)
    pool = Pool(call, source, step.workers, sink=sink, admit=admit, call_sync=call_sync)
    return feeding(pool, out)


class _Batching:
    """The batch being filled, shared by the task that fills it and the one that times it."""

    __slots__ = ("deadline", "generation", "items", "lock", "started")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.generation = 0  # bumped whenever a batch is emitted
        self.deadline = math.inf
        self.started = anyio.Event()
        self.lock = anyio.Lock()  # emits happen one at a time, in order


async def _batch(step: Batch, source: _Input, send: Outlet, emit: _Emitter) -> None:
    """Fill batches from ``source``. A partial batch is flushed by a timer task rather than by
    cancelling a receive on a deadline, which could lose the item being handed over."""
    state = _Batching()

    async def flush(generation: int | None = None) -> None:
        async with state.lock:
            if generation is not None and generation != state.generation:
                return  # that batch has gone out already
            if state.items:
                items, state.items = state.items, []
                state.generation += 1
                await emit.one(send, items)

    async def timer(timeout: float) -> None:
        while True:
            await state.started.wait()
            state.started = anyio.Event()
            generation, deadline = state.generation, state.deadline
            await anyio.sleep_until(deadline)
            await flush(generation)

    async def fill() -> None:
        while True:
            pulled = await source.pull()
            if pulled is DONE:
                break
            item = pulled[1]
            if type(item) is Failed:
                async with state.lock:
                    await emit.one(send, item)  # failures bypass batching
                continue
            if not state.items and step.timeout is not None:
                state.deadline = anyio.current_time() + step.timeout
                state.started.set()
            state.items.append(item)
            if len(state.items) >= step.size:
                await flush()
        await flush()

    failure: list[BaseException] = []
    try:
        try:
            async with anyio.create_task_group() as tg:
                if step.timeout is not None:
                    tg.start_soon(timer, step.timeout)
                try:
                    await fill()
                except BaseException as exc:
                    # A failing source is raised as itself, not in the task group's group.
                    if is_cancellation(exc):
                        raise
                    failure.append(exc)
                tg.cancel_scope.cancel()  # the timer has nothing left to time
        finally:
            await source.aclose()
    finally:
        send.close()
    if failure:
        raise failure[0]
