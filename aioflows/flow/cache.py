"""What a flow run keeps in its result store: cached results, saved results, state records.

Each instance's result is saved under (task name, config_hash) as :data:`RESULT_NAME`, with a
``TaskInfo`` record. The record comes last, so a FINISHED record on disk implies its result is
there: such an instance is CACHED next time and its value loaded instead of computed.

FINISHED records are promises and are written durably. KILLED ones are advice (a lost one
means the instance runs again, as it would anyway): :class:`Cache` only collects the killed
instances in memory while the run is being cancelled, with no await and no shield per
instance, and writes their records afterwards in one batch (``ResultStore._save_advice``),
which a store may write without fsync. Stopping thousands of instances then costs little more
than the cancellation itself.

Records also say which run wrote them (``run_id``) and which run of each predecessor they
consumed (``inputs``). A FINISHED record is used only while every predecessor's value is still
the one it consumed (make's rule): after ``--force train``, or after a killed ``train``
instance ran again, the cached ``best`` above it is *stale* and runs again. A record without
``inputs`` (written by an older aioflows) is taken as current.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from ..errors import CorruptObject, MissingObject
from ..stores.jsontext import holds_text
from ..stores.records import RawInfos, TaskInfo, TaskState, from_micros, micros
from .identity import strip_ignored

if TYPE_CHECKING:
    from ..stores.base import ResultStore
    from .events import Slot
    from .graph import TaskNode

__all__ = ["RESULT_NAME", "Cache"]

_log = logging.getLogger("aioflows.flow")

#: The name a task instance's return value is saved under in the store.
RESULT_NAME = "result"

_ABSENT = object()

#: Levels of predecessors a TaskInfo record's unique_config keeps in full.
_RECORD_DEPTH = 8


def _recorded_config(node: TaskNode, prefix: str | None, depth: int = _RECORD_DEPTH) -> Any:
    """The unique_config written to a TaskInfo record, its nesting bounded.

    ``node.unique_config`` nests every ancestor's config, which in a chain of thousands grows
    with the depth of the graph (and past what JSON encoders recurse into). A record keeps
    ``depth`` levels of predecessors in full and names deeper ones by their config_hash, which
    identifies them as well.
    """
    own: dict[str, Any] = strip_ignored(node.config, prefix)
    for pred in node.predecessors:
        entry = _recorded_config(pred, prefix, depth - 1) if depth > 1 else pred.config_hash
        if node.reduce:
            own.setdefault(pred.task, []).append(entry)
        else:
            own[pred.task] = entry
    return own


def _json_faithful(value: Any, depth: int = 0) -> bool:
    """Whether a JSON round trip returns ``value`` as it is (types included)."""
    if type(value) is str:
        return holds_text(value)  # a surrogate pair kept as two characters reads back as one
    if value is None or type(value) in (int, bool):
        return True
    if type(value) is float:
        return math.isfinite(value)
    if depth > 50:
        return False
    if type(value) is list:
        return all(_json_faithful(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(
            type(k) is str and holds_text(k) and _json_faithful(v, depth + 1)
            for k, v in value.items()
        )
    return False


class Cache:
    """One run's reads and writes of its store.

    Args:
        store: Where results and records live.
        slots: The run's instances' slots (killed instances are recorded from theirs).
        forced: Tasks whose instances run again whatever the store holds.
        prefix: The flow's ``config_ignore_prefix`` (records leave those keys out).
        run_id: This run's id, written in its records and compared with their ``inputs``.
    """

    __slots__ = ("forced", "killed", "prefix", "run_id", "slots", "store")

    def __init__(
        self,
        store: ResultStore,
        slots: dict[TaskNode, Slot],
        forced: frozenset[str],
        prefix: str | None,
        run_id: str | None = None,
    ) -> None:
        self.store = store
        self.slots = slots
        self.forced = forced
        self.prefix = prefix
        self.run_id = run_id
        # Instances killed by a cancellation, their records written in one batch at the end.
        self.killed: list[TaskNode] = []

    async def load(self, node: TaskNode, slot: Slot) -> bool:
        """Whether ``node`` finished in an earlier run; if so its value, attempts and times
        are put in ``slot``.

        A damaged record or result is logged and counts as not there (computing it again is
        the remedy); any other error of the store is raised.
        """
        store, task, config_hash = self.store, node.task, node.config_hash
        try:
            info = await store.load_info(task=task, config_hash=config_hash)
            if info is None or info.state is not TaskState.FINISHED:
                return False
            if info.inputs is not None and node.predecessors and self._stale(node, info.inputs):
                _log.info("%s: stale (a predecessor ran again); running it", node.unique_name)
                return False
            try:
                value = await store.load(RESULT_NAME, task=task, config_hash=config_hash)
            except MissingObject:
                return False  # the record outlived its result (deleted by hand): run again
        except CorruptObject as exc:
            _log.warning("%s: cannot use the stored result (%s); running it", node.unique_name, exc)
            return False
        slot.value = value
        slot.made = info.run_id
        slot.attempts = info.attempts
        slot.started, slot.ended = micros(info.started), micros(info.ended)
        return True

    def _made(self, node: TaskNode) -> str | None:
        """The run that computed ``node``'s value as this run sees it (it is done)."""
        slot = self.slots[node]
        return self.run_id if slot.state is TaskState.FINISHED else slot.made

    def _stale(self, node: TaskNode, inputs: dict[str, dict[str, str | None]]) -> bool:
        """Whether some predecessor's value is not the one ``node``'s record consumed."""
        for pred in node.predecessors:
            consumed = inputs.get(pred.task)
            if consumed is None or consumed.get(pred.config_hash, _ABSENT) != self._made(pred):
                return True
        return False

    def _inputs(self, node: TaskNode) -> dict[str, dict[str, str | None]]:
        inputs: dict[str, dict[str, str | None]] = {}
        for pred in node.predecessors:
            inputs.setdefault(pred.task, {})[pred.config_hash] = self._made(pred)
        return inputs

    async def save_result(self, node: TaskNode, slot: Slot) -> None:
        """Save a FINISHED instance's value, then its record."""
        key = {"task": node.task, "config_hash": node.config_hash}
        # JSON (readable with any tool) when it gives the value back unchanged; otherwise a
        # pickle (the store's own files, so trusted data) so a cached run sees what a fresh
        # one would: a tuple stays a tuple, int keys stay ints.
        type_ = "json" if _json_faithful(slot.value) else "pickle"
        await self.store.save(slot.value, RESULT_NAME, **key, type_=type_)
        # The record comes last: FINISHED on disk implies the result is there.
        await self.store.save_info(self._info(node, slot, TaskState.FINISHED))

    async def save_failed(self, node: TaskNode, slot: Slot) -> None:
        """Record a FAILED instance; the run already reports it, so a store error here is
        logged rather than raised over the error being recorded."""
        try:
            await self.store.save_info(self._info(node, slot, TaskState.FAILED))
        except Exception:
            _log.exception("%s: could not record state failed", node.unique_name)

    def _info(self, node: TaskNode, slot: Slot, state: TaskState) -> TaskInfo:
        error = slot.error
        return TaskInfo(
            node.task,
            node.config_hash,
            node.unique_name,
            state,
            config=strip_ignored(node.config, self.prefix),
            unique_config=_recorded_config(node, self.prefix),
            started=from_micros(slot.started),
            ended=from_micros(slot.ended),
            attempts=slot.attempts,
            error=None if error is None else f"{type(error).__name__}: {error}",
            run_id=self.run_id,
            inputs=self._inputs(node),
        )

    async def record_killed(self) -> None:
        """Write the KILLED records of this run in one batch, after the cancellation.

        One store call per task (for a LocalFileStore one worker-thread hop, no fsync), not
        one shielded write per instance inside the cancellation: that made stopping 10,000
        instances take half a minute. The run already reports these states, so a store error
        is logged.
        """
        killed, self.killed = self.killed, []
        by_task: dict[str, list[TaskNode]] = {}
        for n in killed:
            by_task.setdefault(n.task, []).append(n)
        for task, nodes in by_task.items():
            try:
                await self.store._save_advice(self._killed_columns(task, nodes))
            except Exception:
                _log.exception("could not record %d KILLED instance(s) of %s", len(nodes), task)

    def _killed_columns(self, task: str, nodes: list[TaskNode]) -> RawInfos:
        """The KILLED records of ``nodes`` (all of ``task``), one list per field."""
        slots = [self.slots[n] for n in nodes]
        if any(n.predecessors for n in nodes):
            prefix = self.prefix
            configs = [strip_ignored(n.config, prefix) for n in nodes]
            uniques: list[dict[str, Any] | None] = [
                _recorded_config(n, prefix) if n.predecessors else None for n in nodes
            ]
        else:  # roots: unique_config is the config, stripped; the graph made it already
            configs, uniques = [n.unique_config for n in nodes], [None] * len(nodes)
        return RawInfos(
            task,
            [n.config_hash for n in nodes],
            [n.unique_name for n in nodes],
            [TaskState.KILLED] * len(nodes),
            list(configs),
            uniques,
            [s.started for s in slots],
            [s.ended for s in slots],
            [s.attempts for s in slots],
            [None] * len(nodes),
        )
