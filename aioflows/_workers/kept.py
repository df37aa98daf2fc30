"""A source seen through a sync step that keeps or drops each item: a pipeline's leading sync
filters, run inside the pulls of its first step instead of as a pool of their own.

A sync predicate never waits, so a pool of its own only adds hops: a stream to cross, a task to
wake once per batch of items, and a second numbering. Pulled through :class:`KeptSource`, the
predicate runs in the pull of the next step's worker, and an item it drops never reaches a
stream. Items are numbered as they are kept, in the order they are taken, so the indices stay
contiguous for the ordered sink and the checkpoint count of the pool that pulls them.

A run of dropped items is what the filter's own pool used to pass a checkpoint in (every
:data:`~aioflows._workers.pool.STREAK` items): here, after that many drops in a row, the pull
takes its awaiting path and passes one there, so a filter dropping a long stretch of a sync
input can neither starve the event loop nor ignore a cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import anyio.lowlevel

from .pool import STREAK
from .sources import BLOCKED, DONE, Pulled, PulledNowait, Source

T = TypeVar("T")


class KeptSource(Generic[T]):
    """``source``'s items passed through ``keep``, which returns the item to hand on or
    ``drop`` (the item goes no further); an exception of ``keep`` is the pull's.

    Args:
        source: The pipeline's input, possibly itself through a :class:`KeptSource`. Not a
            stream: readers waiting on one resume in any order, and numbering items as
            they resume would lose the order they were sent in.
        keep: ``keep(item)``: what to hand on, or ``drop``.
        drop: The value of ``keep`` that means "drop it".
    """

    __slots__ = ("_count", "_drop", "_dropped", "_keep", "_source", "blocks")

    is_sync: Final = False
    iterator: Final = None
    backlog: Final = 1  # unknown, as for an iterable

    def __init__(
        self,
        source: Source[Any] | KeptSource[Any],
        keep: Callable[[Any], Any],
        drop: object,
    ) -> None:
        self._source = source
        self._keep = keep
        self._drop = drop
        self._count = 0
        self._dropped = 0  # items dropped since one was kept or a checkpoint passed
        #: Whether BLOCKED means a wait: that of the source underneath.
        self.blocks: bool = source.blocks

    def pull_nowait(self) -> PulledNowait[T]:
        pull_nowait, keep, drop = self._source.pull_nowait, self._keep, self._drop
        while self._dropped < STREAK:
            pulled = pull_nowait()
            if pulled is BLOCKED or pulled is DONE:
                return pulled
            kept = keep(pulled[1])
            if kept is drop:
                self._dropped += 1
                continue
            self._dropped = 0
            index = self._count
            self._count = index + 1
            return index, kept
        return BLOCKED  # dropped a run: the awaiting path passes a checkpoint

    async def pull(self) -> Pulled[T]:
        source, keep, drop = self._source, self._keep, self._drop
        while True:
            if self._dropped >= STREAK:
                self._dropped = 0
                await anyio.lowlevel.checkpoint()
            pulled = source.pull_nowait()
            if pulled is BLOCKED:
                pulled = await source.pull()
            if pulled is DONE:
                return DONE
            kept = keep(pulled[1])
            if kept is drop:
                self._dropped += 1
                continue
            self._dropped = 0
            index = self._count
            self._count = index + 1
            return index, kept

    async def aclose(self) -> None:
        await self._source.aclose()
