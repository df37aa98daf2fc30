"""Flat stages: the outputs of one input, made one step at a time as they are emitted.

A flat stage's ``fn`` turns one item into any number of outputs: an async generator, an async
function returning an (async) iterable, or a sync function returning an iterable (run in a
worker thread). Collecting them before emitting any would hold an input's whole output in
memory (an endless generator, never ending) and delay its first output until its last; so the
stage's call makes only the first output (:func:`_outputs`), and whoever emits the outcome makes
each next one when the one before it has been handed on (:class:`_Outputs`). A full buffer
downstream thus pauses the inner generator, as it pauses any stage.

In input order with several workers, :class:`_OrderedFlatSink` lets the input whose turn it is
emit as it goes while the others make a bounded number of outputs ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Collection, Iterable, Iterator
from inspect import isasyncgenfunction
from types import GeneratorType
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._callables import is_async_callable
from ._workers import Admit, Emit
from .errors import InvalidArgumentType

__all__: list[str] = []


class _Skip:
    """A stage's outcome meaning "emit nothing for this item": filtered out, skipped, or a flat
    stage's input without outputs."""

    __slots__ = ()


_SKIP = _Skip()


_END: Any = object()  # a flat stage's input has no more outputs


class _AsyncSteps:
    """The outputs of an async iterable (an async generator's, say), one ``anext`` a step."""

    __slots__ = ("_it",)

    def __init__(self, iterable: AsyncIterable[Any]) -> None:
        self._it = aiter(iterable)

    async def step(self) -> Any:
        return await anext(self._it, _END)

    async def aclose(self) -> None:
        closer = getattr(self._it, "aclose", None)
        if closer is not None:
            with anyio.CancelScope(shield=True):  # its ``finally`` runs now, even if cancelled
                await closer()


class _InlineSteps:
    """The outputs of an iterable stepped on the event loop: a collection a sync ``fn``
    returned (already made), or whatever an async ``fn`` returned (its choice)."""

    __slots__ = ("_it",)

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._it = iter(iterable)

    async def step(self) -> Any:
        return next(self._it, _END)

    async def aclose(self) -> None:
        if isinstance(self._it, GeneratorType):
            self._it.close()


class _ThreadSteps:
    """The outputs of an iterator a sync ``fn`` returned (a generator, a file), one ``next``
    per hop to a worker thread.

    Stepping one item a hop, not a chunk: a chunk would hold back the outputs made while the
    generator blocks on the next one (a slow read, a page of an API), and making items ahead
    of the consumer is what backpressure must not do. A hop costs tens of microseconds, small
    next to the work of an item worth a thread; return a list to skip them.
    """

    __slots__ = ("_it",)

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._it = iterator

    async def step(self) -> Any:
        return await anyio.to_thread.run_sync(next, self._it, _END)

    async def aclose(self) -> None:
        # A generator is closed now, its ``finally`` in a thread too; other iterators (a file
        # say) are left to whoever made them, as sources are.
        if isinstance(self._it, GeneratorType):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._it.close)


_Steps = _AsyncSteps | _InlineSteps | _ThreadSteps


class _Outputs:
    """A flat stage's outcome for one input: its outputs, made one step at a time as they go.

    The first output is made with the call (``fn`` and that step are what a retry repeats and
    what the call's timeout bounds); each later one only once the one before it has been
    handed on, so a full buffer downstream pauses the inner generator, and ``timeout`` bounds
    each of those steps (not the wait for room). A failure part way leaves the outputs already
    emitted where they are: it is raised, or, with ``tolerate`` set (by the pipeline's
    ``on_error``), ends the outputs with what ``tolerate(exc)`` gives in its place (a ``Failed``,
    or ``_END`` for nothing). Whoever takes the outputs closes them.
    """

    __slots__ = ("_first", "_steps", "_timeout", "tolerate")

    def __init__(self, first: Any, steps: _Steps, timeout: float | None) -> None:
        self._first = first
        self._steps: _Steps | None = steps
        self._timeout = timeout
        #: What to emit instead of a failure part way, if it is not to be raised.
        self.tolerate: Callable[[Exception], Any] | None = None

    async def next(self) -> Any:
        """The next output, what ``tolerate`` put in a failure's place, or ``_END``."""
        first = self._first
        if first is not _END:
            self._first = _END
            return first
        steps = self._steps
        if steps is None:
            return _END
        try:
            if self._timeout is None:
                out = await steps.step()
            else:
                out = await _timed(steps.step, self._timeout)
        except Exception as exc:
            await self.aclose()
            if self.tolerate is None:
                raise
            return self.tolerate(exc)
        if out is _END:
            await self.aclose()
        return out

    async def aclose(self) -> None:
        steps, self._steps = self._steps, None
        if steps is not None:
            await steps.aclose()


async def _outputs(steps: _Steps, timeout: float | None) -> Any:
    """The first output of ``steps``, in the :class:`_Outputs` that makes the rest; ``_SKIP``
    if there is none."""
    try:
        first = await steps.step()
    except BaseException:
        await steps.aclose()
        raise
    if first is _END:
        await steps.aclose()
        return _SKIP
    return _Outputs(first, steps, timeout)


async def _timed(step: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    """One later step of a flat stage's outputs, bounded by ``timeout``."""
    started = anyio.current_time()
    with anyio.fail_after(timeout):
        out = await step()
    if anyio.current_time() - started > timeout:
        raise _overrun(timeout)  # a step in a thread cannot be interrupted, only waited for
    return out


def _overrun(timeout: float) -> TimeoutError:
    return TimeoutError(f"the call took longer than its timeout of {timeout:g} s")


def _as_flat(fn: Callable[..., Any], timeout: float | None) -> Callable[[Any], Awaitable[Any]]:
    """A flat stage's call: ``fn(item)`` and its first output, in an :class:`_Outputs` that
    makes the others as they are emitted (``_SKIP`` if there are none)."""
    if isasyncgenfunction(fn):

        async def first_of_generator(item: Any) -> Any:
            return await _outputs(_AsyncSteps(fn(item)), timeout)

        return first_of_generator
    if is_async_callable(fn):

        async def first_of_result(item: Any) -> Any:
            return await _outputs(_steps_of(await fn(item), False), timeout)

        return first_of_result

    def run(item: Any) -> Any:
        out = fn(item)
        # ``iter`` may do work too (open a file, start a query): in the thread as well.
        return out if isinstance(out, (Collection, AsyncIterable)) else _iterator(out)

    async def first_in_thread(item: Any) -> Any:
        return await _outputs(_steps_of(await anyio.to_thread.run_sync(run, item), True), timeout)

    return first_in_thread


def _iterator(out: Any) -> Iterator[Any]:
    try:
        return iter(out)
    except TypeError:
        raise InvalidArgumentType(
            f"a flat stage's fn must return an iterable or an async iterable, got {out!r}"
        ) from None


def _steps_of(out: Any, threaded: bool) -> _Steps:
    """How to step through what a flat ``fn`` returned: a sync ``fn``'s iterator in a worker
    thread, as ``fn`` itself ran; a collection (already made) and an async ``fn``'s result
    on the event loop."""
    if isinstance(out, AsyncIterable):
        return _AsyncSteps(out)
    if threaded and not isinstance(out, Collection):
        return _ThreadSteps(out)
    return _InlineSteps(out if isinstance(out, Collection) else _iterator(out))


class _Part:
    """One input of an ordered flat stage, while its outputs wait for their turn."""

    __slots__ = ("done", "ready", "turn")

    def __init__(self) -> None:
        self.ready: deque[Any] = deque()  # made, not yet emitted
        self.done = False  # every output made
        self.turn: anyio.Event | None = None  # what its worker waits on, ``ready`` full


class _OrderedFlatSink:
    """An ordered flat stage's sink: an input's outputs go out as they are made, once every
    output of the inputs before it is out.

    The worker of the input whose turn it is emits its outputs itself. The other workers go on
    making theirs, keeping up to ``room`` each, then wait for their turn; an input whose
    outputs were all made before its turn leaves them here, and its worker moves on. Whoever
    ends the turn of an input emits what waits after it, up to an input still being worked on,
    whose worker then takes the turn over. Each input ended releases one admission slot, so the
    stage runs at most the admission's size of inputs ahead of the one emitting, and holds at
    most ``room`` outputs for each.
    """

    __slots__ = (
        "_admit",
        "_emit",
        "_emit_one",
        "_flushing",
        "_next",
        "_pending",
        "_room",
        "_send",
    )

    def __init__(
        self,
        send: MemoryObjectSendStream[Any],
        admit: Admit,
        emit: Emit,
        emit_one: Emit,
        room: int,
    ) -> None:
        self._send = send
        self._admit = admit
        self._emit = emit  # a plain outcome (nothing, a Failed), as the stage emits it
        self._emit_one = emit_one  # one output
        self._room = room
        self._pending: dict[int, Any] = {}  # index -> a _Part, or a plain outcome
        self._next = 0  # the input whose turn it is
        self._flushing = False  # someone is emitting what waits at ``_next``

    def _turn_of(self, index: int) -> bool:
        return index == self._next and not self._flushing

    def deliver_nowait(self, index: int, result: Any) -> bool:
        if type(result) is _Outputs or self._turn_of(index):
            return False  # outputs to make, or something to emit: the awaiting path
        self._pending[index] = result  # a Failed, or nothing: emitted in its turn
        return True

    async def __call__(self, index: int, result: Any) -> None:
        if type(result) is not _Outputs:
            self._pending[index] = result
            if self._turn_of(index):
                await self._flush()
            return
        part = _Part()
        self._pending[index] = part
        try:
            while (out := await result.next()) is not _END:
                part.ready.append(out)
                if self._turn_of(index):
                    await self._emit_ready(part)
                elif len(part.ready) >= self._room:
                    part.turn = anyio.Event()
                    await part.turn.wait()  # the flush handing the turn over emptied ``ready``
        finally:
            await result.aclose()
        part.done = True
        if self._turn_of(index):
            await self._flush()  # ends this input's turn

    async def _emit_ready(self, part: _Part) -> None:
        ready, one, send = part.ready, self._emit_one, self._send
        while ready:
            await one(send, ready.popleft())

    async def _flush(self) -> None:
        """Emit what waits, input after input, from ``_next`` on."""
        pending, send = self._pending, self._send
        self._flushing = True
        try:
            while (index := self._next) in pending:
                entry = pending[index]
                if type(entry) is _Part:
                    await self._emit_ready(entry)
                    if not entry.done:
                        if entry.turn is not None:
                            entry.turn.set()
                        return  # its worker goes on emitting, and ends its turn
                else:
                    await self._emit(send, entry)
                del pending[index]
                self._next = index + 1
                self._admit.release()
        finally:
            self._flushing = False
