"""The scheduler's queue of instances ready to run, and the wake-ups of its idle workers.

A deque the workers pop from directly, with the count of instances taken (which tells a worker
whether it took its last two in a row: see :class:`~aioflows.flow.scheduler.Scheduler`), and a
FIFO of idle workers woken one per instance put. It is :class:`aioflows._workers.QueueSource`
without the pull protocol of a generic pool: its ``pull_nowait`` (a call and a tuple per
instance), ``backlog`` and ``put`` were three calls of the run's nine per instance.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .graph import TaskNode

__all__ = ["ReadyQueue"]


class ReadyQueue:
    """Instances ready to run (``items``, popped by the workers), ended by :meth:`close`.

    A waiter cancelled while it waits leaves the queue; one cancelled just as it was woken
    hands the wake-up on, so none is lost (as ``aioflows._workers``' waiters do).
    """

    __slots__ = ("_waiters", "closed", "items", "taken")

    def __init__(self) -> None:
        self.items: collections.deque[TaskNode] = collections.deque()
        #: Instances popped so far: the workers count them as they pop.
        self.taken = 0
        self.closed = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def put(self, node: TaskNode) -> None:
        """Queue ``node``; a worker waiting for one is woken."""
        if self.closed:
            raise RuntimeError("put() on a closed ReadyQueue")
        self.items.append(node)
        if self._waiters:
            self._wake()

    def close(self) -> None:
        """Nothing more will be put: the waiting workers are woken, to end once it is empty."""
        self.closed = True
        while self._wake():
            pass

    def _wake(self) -> bool:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    async def wait(self) -> None:
        """Until an instance is put or the queue is closed (then look again: another worker
        may have taken it)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # woken just as it was cancelled: the wake-up is another's
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
