"""The one worker pool: sources, admission, workers, sinks, and the iterator that owns a driver.

Everything that calls a function over many items (``map``, ``imap``, every pipeline step, the
flow executor, the launcher) runs on :class:`Pool`: a few worker tasks that pull ``(index,
item)`` pairs from a *source* as they become free, call, and hand each result to a *sink*. A
task per item (and often a semaphore wait per item) is what makes ``gather``-style helpers slow
and memory-hungry; a pool pulling lazily is also what keeps an infinite generator from being
materialised.

- Sources (:mod:`.sources`): :class:`Source` over an iterable or async iterable,
  :class:`StreamSource` over a memory object stream of numbered items (a pipeline stage's
  input after an ordered flat stage), :class:`QueueSource` fed by ``put`` and ended by
  ``close`` (the flow executor's ready queue); :class:`Channel` (:mod:`.channel`), the bounded
  FIFO between two pipeline stages; :class:`KeptSource` (:mod:`.kept`), a pipeline's input
  seen through its leading sync filters. They share one pull protocol: ``pull_nowait()`` gives
  a pair, :data:`DONE` or :data:`BLOCKED` (take the awaiting path), ``await pull()`` a pair or
  :data:`DONE`.
- Outlets (:mod:`.channel`): what a pipeline stage emits into, an :class:`Outlet`: a
  :class:`Channel`, a :class:`StreamOutlet` (a memory object stream) or :class:`Collected`
  (``Pipeline.run``'s list).
- Admission and sinks (:mod:`.sinks`): :class:`Admit`, a counter of items a pool may hold at
  once, released by an ordered sink as results go out in order; :class:`Collect` (``map``'s
  list), :class:`UnorderedSink`, :class:`OrderedSink`; a pipeline passes its own :data:`Emit`
  functions to the latter two.
- The workers (:mod:`.pool`): :class:`Pool`, with :data:`STREAK` and :func:`is_cancellation`.
- :class:`Driven` (:mod:`.driven`), the async iterator that owns the driver task running the
  pools, and :func:`drive`, that driver.

Each step of a worker first tries its no-wait path (a free admission slot, an item already
there, room downstream) and awaits only when it must: a hop through a stage then costs a few
microseconds instead of a checkpoint per step.

The submodules import one another in one direction only (sources, then channel and sinks, then
pool, then kept and driven); this package re-exports what the rest of aioflows uses.
"""

from __future__ import annotations

from .channel import Channel, Collected, Outlet, StreamOutlet
from .driven import Driven, drive, feeding
from .kept import KeptSource
from .pool import STREAK, Pool, is_cancellation
from .sinks import (
    Admit,
    Collect,
    Emit,
    EmitNowait,
    OrderedSink,
    Sink,
    UnorderedSink,
    emit,
    emit_nowait,
)
from .sources import (
    BLOCKED,
    DONE,
    AnySource,
    Pulled,
    PulledNowait,
    QueueSource,
    Source,
    StreamSource,
)

__all__ = [
    "BLOCKED",
    "DONE",
    "STREAK",
    "Admit",
    "Channel",
    "Collect",
    "Collected",
    "Driven",
    "AnySource",
    "Emit",
    "EmitNowait",
    "KeptSource",
    "OrderedSink",
    "Outlet",
    "Pool",
    "Pulled",
    "PulledNowait",
    "QueueSource",
    "Sink",
    "Source",
    "StreamOutlet",
    "StreamSource",
    "UnorderedSink",
    "drive",
    "emit",
    "emit_nowait",
    "feeding",
    "is_cancellation",
]
