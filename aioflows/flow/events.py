"""Each task instance's run state, and its state changes told to whoever listens.

A :class:`Slot` is the mutable record of one instance during a run (state, value, attempts,
times, error); the scheduler and the cache fill it, the executor turns the slots into the
run's results at the end. :class:`Events` is the one place a state changes: it sets the slot's
state and makes the :class:`~aioflows.flow.run.TaskEvent` for the listeners (the progress
display) and the user's ``on_event`` callback. With nobody listening a change costs an
assignment and a test, not an event object: a run of 10,000 no-op instances makes 30,000 of
them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._callables import is_async_callable
from ..stores.records import TaskState
from .run import TaskEvent

if TYPE_CHECKING:
    from .graph import TaskNode

__all__ = ["HELD", "SETTLED", "Events", "Slot", "now"]

#: ``Slot.remaining`` of an instance looked up in the store already and handed the task slot
#: another instance freed: one that was parked, queued again, runs when taken (scheduler).
HELD = -1

_log = logging.getLogger("aioflows.flow")

#: The states an instance ends a run in.
SETTLED = frozenset(
    {
        TaskState.FINISHED,
        TaskState.CACHED,
        TaskState.FAILED,
        TaskState.KILLED,
        TaskState.UPSTREAM_FAILED,
    }
)


def now() -> int:
    """Now, in integer microseconds since the epoch: what slots keep (a datetime per start and
    end of every instance would cost more than the bookkeeping around it)."""
    return time.time_ns() // 1000


class Slot:
    """The mutable run state of one instance."""

    __slots__ = (
        "attempts",
        "ended",
        "error",
        "made",
        "remaining",
        "started",
        "state",
        "value",
    )

    def __init__(self, remaining: int) -> None:
        self.state = TaskState.PENDING
        # Predecessors in the run not yet done; HELD once all are and the instance, parked
        # for its task's slot, is queued again with one (a flag of its own would be 16 more
        # bytes a slot, a million times).
        self.remaining = remaining
        self.value: Any = None
        self.attempts = 0
        self.started: int | None = None  # microseconds since the epoch (see now)
        self.ended: int | None = None
        self.error: BaseException | None = None
        # The run that computed a CACHED value (its record's run_id); a FINISHED one's is this
        # run's (see aioflows.flow.cache).
        self.made: str | None = None


class Events:
    """Sets instances' states and tells the listeners and the ``on_event`` callback.

    ``listeners`` are sync callables called first, in order (the progress display); an
    exception of theirs, or of ``on_event``, is logged: an observer's bug must not fail (or
    half-cancel) the flow it watches. An async ``on_event`` is awaited in order by one
    dispatcher task (:meth:`delivering`), since states change in sync code too.
    """

    __slots__ = ("is_async", "listeners", "on_event", "slots", "stream")

    def __init__(
        self, slots: dict[TaskNode, Slot], on_event: Callable[[TaskEvent], Any] | None
    ) -> None:
        self.slots = slots
        self.on_event = on_event
        self.listeners: list[Callable[[TaskEvent], None]] = []
        self.is_async = on_event is not None and is_async_callable(on_event)
        self.stream: MemoryObjectSendStream[TaskEvent] | None = None

    def set(self, node: TaskNode, state: TaskState, error: BaseException | None = None) -> None:
        """``node`` is now in ``state`` (``error``: a FAILED one's exception)."""
        self.slots[node].state = state
        if self.on_event is None and not self.listeners:
            return
        event = TaskEvent(node.unique_name, node.task, state, datetime.now(timezone.utc), error)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("event listener failed for %s", event)
        if self.on_event is not None:
            if self.stream is not None:
                self.stream.send_nowait(event)  # an async callback, awaited in order
            else:
                try:
                    self.on_event(event)
                except Exception:
                    _log.exception("on_event callback failed for %s", event)

    async def delivering(self, body: Callable[[], Awaitable[None]]) -> None:
        """Await ``body`` (the scheduling) while an async ``on_event`` is fed its events.

        The dispatcher lives in a task group outside ``body``'s, so that fail-fast, which
        cancels the workers, still delivers every event; it ends once ``body`` has returned
        and every event sent is delivered.
        """
        if not self.is_async:
            await body()
            return
        async with anyio.create_task_group() as outer:
            self.stream, receive = anyio.create_memory_object_stream[TaskEvent](math.inf)
            outer.start_soon(self._dispatch, receive)
            with self.stream:
                await body()

    async def _dispatch(self, events: MemoryObjectReceiveStream[TaskEvent]) -> None:
        assert self.on_event is not None
        async with events:
            async for event in events:
                try:
                    await self.on_event(event)
                except Exception:
                    _log.exception("on_event callback failed for %s", event)
