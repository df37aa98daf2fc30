"""The cyclic garbage collector paused around a flow's bulk loops (expansion, slots, a
reduce's inputs, the run's states): they make a million objects and no garbage cycles, and
every full collection the allocations trigger walks every object made so far."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["BULK", "gc_paused"]

#: Loops over fewer items than this run with the collector as it is: pausing buys nothing.
#: It is about the collector's first threshold (700 allocations): a loop that makes fewer
#: objects sets off at most one young collection, while every 700 more set off another and
#: every tenth of those walks the middle generation, the whole graph just built (a reduce over
#: exactly 10,000 instances, under the 10,000 this was: 14 young and one middle collection,
#: 5 ms of a 40 ms run).
BULK = 1_000


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside (whatever was due runs at the next allocation after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
