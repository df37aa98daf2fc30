"""What a flow run reports: per-instance results, state-change events and the run as a whole."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..stores.records import TaskState

if TYPE_CHECKING:
    from .graph import Graph, TaskNode

__all__ = ["FlowRun", "Sweep", "TaskEvent", "TaskResult"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sweep(Generic[T]):
    """One predecessor instance's result as a reduce task receives it.

    ``unique_name`` and ``config_hash`` say which instance it is, e.g. to
    ``ctx.store.load(name, task=..., config_hash=sweep.config_hash)`` what it saved.

    Attributes:
        value: What the predecessor instance returned.
        config: The predecessor instance's ``unique_config``.
        unique_name: The predecessor instance's unique name (``"train-3"``).
        config_hash: The predecessor instance's config hash, its key in the store.
    """

    value: T
    config: dict[str, Any]  # the instance's unique_config
    unique_name: str = ""
    config_hash: str = ""


class NodeSweep(Sweep[T]):
    """The :class:`Sweep` a run hands a reduce task: ``config`` read from the instance when
    first asked for. A reduce over a million instances would otherwise build a million unique
    configs nobody may read, at the run's peak of memory. It compares, hashes, prints and
    pickles as the plain Sweep of the same fields (it unpickles as one)."""

    __slots__ = ("_node",)
    _node: TaskNode

    def __init__(self, value: T, node: TaskNode) -> None:
        _set_value(self, value)
        _set_node(self, node)

    @property
    def config(self) -> dict[str, Any]:
        return self._node.unique_config

    @property
    def unique_name(self) -> str:
        return self._node.unique_name

    @property
    def config_hash(self) -> str:
        return self._node.config_hash

    def _plain(self) -> Sweep[T]:
        return Sweep(self.value, self.config, self.unique_name, self.config_hash)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NodeSweep):
            other = other._plain()
        return self._plain() == other

    def __hash__(self) -> int:
        return hash(self._plain())

    def __repr__(self) -> str:
        return repr(self._plain())

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sweep, (self.value, self.config, self.unique_name, self.config_hash))


# The slots' own setters: a frozen dataclass's __setattr__ refuses, object.__setattr__ is slower.
_set_value = Sweep.__dict__["value"].__set__
_set_node = NodeSweep.__dict__["_node"].__set__


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A task instance changed state, as ``flow.run(on_event=...)`` is told.

    Attributes:
        unique_name: The instance's unique name.
        task: The instance's task name.
        state: The state it entered.
        time: When, as a timezone-aware UTC datetime.
        error: The exception of a FAILED instance; None otherwise.
    """

    unique_name: str
    task: str
    state: TaskState
    time: datetime
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one task instance, in ``FlowRun.results``.

    Attributes:
        unique_name: The instance's unique name.
        value: What the function returned; None unless FINISHED or CACHED.
        config: The config the function received.
        unique_config: The config that identifies the instance (see :class:`TaskNode`).
        config_hash: The digest of ``unique_config``, its key in the store.
        state: The final :class:`TaskState`.
        attempts: Attempts made (for a cached instance: those of the run that produced it).
        started: When it started (timezone-aware UTC); None if it did not run; for a cached
            instance, when the run that produced it did.
        ended: When it ended, likewise.
        error: The exception of a failed instance; None otherwise.
    """

    unique_name: str
    value: Any
    config: dict[str, Any]
    unique_config: dict[str, Any]
    config_hash: str
    state: TaskState
    attempts: int
    started: datetime | None
    ended: datetime | None
    error: BaseException | None

    @property
    def duration(self) -> float | None:
        """Seconds the instance ran (None if it did not run)."""
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


class FlowRun:
    """A finished (or failed) run: results by task, states by instance.

    ``results[task]`` lists a :class:`TaskResult` for every instance of the task in the run, in
    graph order, whatever its state (``value`` is None unless FINISHED or CACHED); ``states``
    maps every instance's unique name to its final state; ``errors`` the failed ones' errors.
    ``run_id`` identifies the run: it is written in the store's records of the instances it
    ran (``TaskInfo.run_id``), so a later run can tell that their values were computed again.

    Made by :meth:`Flow.run`, not by hand.

    Args:
        graph: The expanded graph that ran.
        results: Task name to its instances' results, or a callable that builds them when
            first read.
        states: Unique name to final state, for every instance.
        errors: Unique name to exception, for the instances that failed.
        run_id: The run's id, written in the records of the instances it ran.
    """

    __slots__ = ("_make_results", "_results", "errors", "graph", "run_id", "states")

    def __init__(
        self,
        graph: Graph,
        results: dict[str, list[TaskResult]] | Callable[[], dict[str, list[TaskResult]]],
        states: dict[str, TaskState],
        errors: dict[str, BaseException],
        run_id: str = "",
    ) -> None:
        self.graph = graph
        self.run_id = run_id
        # The executor passes a callable: building a TaskResult per instance is work a caller
        # that only reads states or errors (a stopped run, say) need not wait for.
        self._results = None if callable(results) else results
        self._make_results = results if callable(results) else None
        self.states = states
        self.errors = errors

    @property
    def results(self) -> dict[str, list[TaskResult]]:
        """Every instance's :class:`TaskResult`, by task, in graph order (built on first use)."""
        if self._results is None:
            assert self._make_results is not None
            self._results, self._make_results = self._make_results(), None
        return self._results

    @property
    def ok(self) -> bool:
        """Whether every instance that was to run finished or was cached."""
        return all(s is TaskState.FINISHED or s is TaskState.CACHED for s in self.states.values())

    def values(self, task: str) -> list[Any]:
        """The values of one task's instances that finished or were cached, in graph order.

        Args:
            task: A task name (one that is not in the run gives ``[]``).
        """
        done = (TaskState.FINISHED, TaskState.CACHED)
        return [r.value for r in self.results.get(task, ()) if r.state in done]

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for state in self.states.values():
            counts[state.value] = counts.get(state.value, 0) + 1
        return f"FlowRun(ok={self.ok}, states={counts})"
