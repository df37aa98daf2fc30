"""The live display of ``Flow.run(progress=True)`` and the summary table of a finished run.

:class:`FlowProgress` keeps counts per state, overall and per task, updated in O(1) by every
state-change event, and says what a frame shows; drawing is left to the one live display
(:class:`aioflows._display.LiveDisplay`, shared with the launcher), which redraws every
``refresh_interval`` seconds from an anyio task the context manager owns: no thread, and nothing
outlives the ``async with``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._display import LiveDisplay
from ..stores.records import TaskState

if TYPE_CHECKING:
    from .graph import TaskNode
    from .run import FlowRun, TaskEvent

__all__ = ["FlowProgress", "format_seconds", "summary_table"]

#: States in display order, and the style each is drawn in.
STATES: tuple[TaskState, ...] = (
    TaskState.PENDING,
    TaskState.SCHEDULED,
    TaskState.RUNNING,
    TaskState.FINISHED,
    TaskState.CACHED,
    TaskState.FAILED,
    TaskState.KILLED,
    TaskState.UPSTREAM_FAILED,
)
STYLES: dict[TaskState, str] = {
    TaskState.PENDING: "dim",
    TaskState.SCHEDULED: "cyan",
    TaskState.RUNNING: "yellow",
    TaskState.FINISHED: "green",
    TaskState.CACHED: "blue",
    TaskState.FAILED: "bold red",
    TaskState.KILLED: "magenta",
    TaskState.UPSTREAM_FAILED: "red",
}
_INDEX = {state: i for i, state in enumerate(STATES)}
_RUNNING = _INDEX[TaskState.RUNNING]
_SETTLED = tuple(
    _INDEX[s]
    for s in (
        TaskState.FINISHED,
        TaskState.CACHED,
        TaskState.FAILED,
        TaskState.KILLED,
        TaskState.UPSTREAM_FAILED,
    )
)
_MAX_RUNNING = 8  # running instances named in the display
_MAX_TASKS = 20  # task rows in the display


def format_seconds(seconds: float | None) -> str:
    """``"0.42 s"``, ``"12.3 s"``, ``"1:02:03"``; ``"-"`` for None."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def summary_table(run: FlowRun) -> Table:
    """Per task: instances, how many finished, were cached, failed, were skipped because an
    upstream instance failed, were killed; then the task's *wall time* in this run (from the
    first start of one of its instances to the last end) and the *instance time (sum)*, the
    time its instances ran added up, which exceeds the wall time when they ran side by side.
    Cached instances did not run in this run and count in neither. A last row sums the counts;
    its wall time is the whole run's span, its instance time the sum of all."""
    columns = (
        TaskState.FINISHED,
        TaskState.CACHED,
        TaskState.FAILED,
        TaskState.UPSTREAM_FAILED,
        TaskState.KILLED,
    )
    rows: list[tuple[str, int, list[int], int, float | None, float | None]] = []
    first: datetime | None = None
    last: datetime | None = None
    for task, results in run.results.items():
        counts = [0] * len(columns)
        not_run = 0
        total: float | None = None
        start: datetime | None = None
        end: datetime | None = None
        for result in results:
            if result.state in columns:
                counts[columns.index(result.state)] += 1
            else:
                not_run += 1
            if result.state is TaskState.CACHED or result.started is None:
                continue
            if start is None or result.started < start:
                start = result.started
            if result.ended is not None:
                if end is None or result.ended > end:
                    end = result.ended
                duration = (result.ended - result.started).total_seconds()
                total = duration if total is None else total + duration
        wall = (end - start).total_seconds() if start is not None and end is not None else None
        if start is not None and (first is None or start < first):
            first = start
        if end is not None and (last is None or end > last):
            last = end
        rows.append((task, len(results), counts, not_run, wall, total))
    show_not_run = any(row[3] for row in rows)
    ok = run.ok
    table = Table(
        title=Text(
            f"flow {run.graph.flow.name}: {'ok' if ok else 'failed'}",
            style="bold green" if ok else "bold red",
        ),
        show_footer=len(rows) > 1,
    )
    sums = [sum(row[2][i] for row in rows) for i in range(len(columns))]
    durations = [row[5] for row in rows if row[5] is not None]
    span = (last - first).total_seconds() if first is not None and last is not None else None
    table.add_column("task", footer="total")
    table.add_column("instances", justify="right", footer=str(sum(row[1] for row in rows)))
    for i, state in enumerate(columns):
        table.add_column(
            state.value.replace("_", " "), justify="right", style=STYLES[state], footer=str(sums[i])
        )
    if show_not_run:
        table.add_column("not run", justify="right", footer=str(sum(row[3] for row in rows)))
    table.add_column("wall time", justify="right", footer=format_seconds(span))
    table.add_column(
        "instance time (sum)",
        justify="right",
        footer=format_seconds(sum(durations) if durations else None),
    )
    for task, instances, counts, not_run, wall, total in rows:
        cells: list[RenderableType] = [Text(task), str(instances), *map(str, counts)]
        if show_not_run:
            cells.append(str(not_run))
        cells.append(format_seconds(wall))
        cells.append(format_seconds(total))
        table.add_row(*cells)
    return table


class FlowProgress:
    """A live display of a running flow, drawn by rich to stderr.

    Use as ``async with FlowProgress(name, nodes) as display:``, pass every
    :class:`~aioflows.TaskEvent` to :meth:`update` (cheap, draws nothing) and the outcome to
    :meth:`finish`, which draws the last state and prints the summary table once.

    Args:
        flow_name: Shown in the header.
        nodes: The instances of the run (graph order); their tasks give the rows.
        console: Where to draw (default: a new rich console on stderr).
        refresh_interval: Seconds between redraws.
        summary: Whether :meth:`finish` prints :func:`summary_table` below the display.
    """

    def __init__(
        self,
        flow_name: str,
        nodes: Sequence[TaskNode],
        *,
        console: Console | None = None,
        refresh_interval: float = 0.2,
        summary: bool = True,
    ) -> None:
        self.flow_name = flow_name
        self.console = console if console is not None else Console(stderr=True)
        self.refresh_interval = refresh_interval
        self.summary = summary
        self._tasks: list[str] = []
        self._task_index: dict[str, int] = {}
        self._counts: list[list[int]] = []  # per task, per state index
        self._totals = [0] * len(STATES)
        # unique_name -> (task index, state index); running ones -> when they started
        self._states: dict[str, tuple[int, int]] = {}
        self._running: dict[str, float] = {}
        pending = _INDEX[TaskState.PENDING]
        for node in nodes:
            ti = self._task(node.task)
            self._states[node.unique_name] = (ti, pending)
            self._counts[ti][pending] += 1
        self._totals[pending] = len(self._states)
        self._started = time.monotonic()
        self._ended: float | None = None
        # _display is the one entered (and exited); _live the same while it still draws.
        self._display: LiveDisplay | None = None
        self._live: LiveDisplay | None = None
        self._finished = False

    def _task(self, task: str) -> int:
        ti = self._task_index.get(task)
        if ti is None:
            ti = self._task_index[task] = len(self._tasks)
            self._tasks.append(task)
            self._counts.append([0] * len(STATES))
        return ti

    # --- state ---------------------------------------------------------------------------

    def update(self, event: TaskEvent) -> None:
        """Record one state change (O(1); the display redraws on its own schedule)."""
        self._apply(event.unique_name, event.task, event.state)

    def _apply(self, unique_name: str, task: str, state: TaskState) -> None:
        new = _INDEX.get(state)
        if new is None:
            return
        entry = self._states.get(unique_name)
        if entry is None:  # not announced in nodes: count it from now on
            ti = self._task(task)
        else:
            ti, old = entry
            if old == new:
                return
            self._counts[ti][old] -= 1
            self._totals[old] -= 1
            if old == _RUNNING:
                self._running.pop(unique_name, None)
        self._counts[ti][new] += 1
        self._totals[new] += 1
        self._states[unique_name] = (ti, new)
        if new == _RUNNING:
            self._running[unique_name] = time.monotonic()

    def counts(self, task: str | None = None) -> dict[TaskState, int]:
        """How many instances (of one task, or in all) are in each state now."""
        if task is None:
            row = self._totals
        else:
            ti = self._task_index.get(task)
            row = self._counts[ti] if ti is not None else [0] * len(STATES)
        return dict(zip(STATES, row, strict=True))

    @property
    def running(self) -> list[str]:
        """The instances running now, the longest-running first."""
        return list(self._running)

    # --- drawing -------------------------------------------------------------------------

    def render(self) -> RenderableType:
        """The display as it stands (what the live view redraws)."""
        now = self._ended if self._ended is not None else time.monotonic()
        total = len(self._states)
        done = sum(self._totals[i] for i in _SETTLED)
        header = Table.grid(padding=(0, 2))
        header.add_row(
            Text(self.flow_name, style="bold"),
            ProgressBar(total=max(total, 1), completed=done if total else 1, width=40),
            Text(f"{done}/{total}"),
            Text(format_seconds(now - self._started), style="dim"),
        )
        parts: list[RenderableType] = [header, _state_line(self._totals)]

        rows = list(range(len(self._tasks)))
        hidden = 0
        if len(rows) > _MAX_TASKS:
            busy = [ti for ti in rows if not _complete(self._counts[ti])]
            shown = set((busy or rows)[:_MAX_TASKS])
            hidden = len(rows) - len(shown)
            rows = [ti for ti in rows if ti in shown]
        tasks = Table.grid(padding=(0, 2))
        for ti in rows:
            counts = self._counts[ti]
            task_total = sum(counts)
            task_done = sum(counts[i] for i in _SETTLED)
            tasks.add_row(
                Text("  " + self._tasks[ti]),
                ProgressBar(
                    total=max(task_total, 1),
                    completed=task_done if task_total else 1,
                    width=20,
                ),
                Text(f"{task_done}/{task_total}", justify="right"),
                _state_line(counts),
            )
        parts.append(tasks)
        if hidden:
            parts.append(Text(f"  ... and {hidden} more tasks", style="dim"))

        if self._running:
            shown_running = []
            for i, (name, since) in enumerate(self._running.items()):
                if i == _MAX_RUNNING:
                    break
                shown_running.append(f"{name} ({format_seconds(now - since)})")
            more = len(self._running) - len(shown_running)
            line = "running: " + ", ".join(shown_running) + (f", +{more} more" if more else "")
            parts.append(Text(line, style=STYLES[TaskState.RUNNING], overflow="ellipsis"))
        return Group(*parts)

    def _stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            if self._ended is None:
                self._ended = time.monotonic()
            live.stop()

    def finish(self, run: FlowRun) -> None:
        """Take the final states from ``run``, draw them, stop the live view and print the
        summary table (once; later calls do nothing)."""
        if self._finished:
            return
        self._finished = True
        for task, results in run.results.items():
            for result in results:
                self._apply(result.unique_name, task, result.state)
        self._stop()
        if self.summary:
            self.console.print(summary_table(run))

    # --- context manager -----------------------------------------------------------------

    async def __aenter__(self) -> FlowProgress:
        self._started = time.monotonic()
        # A lambda, not self.render: the frame is whatever render() is when it is drawn.
        display = LiveDisplay(
            lambda: self.render(), console=self.console, refresh_interval=self.refresh_interval
        )
        await display.__aenter__()
        self._display = self._live = display
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        display, self._display = self._display, None
        self._finished = True
        try:
            self._stop()  # the last frame, with the clock stopped
        finally:
            if display is not None:
                await display.__aexit__(*exc_info)


def _complete(counts: list[int]) -> bool:
    return sum(counts[i] for i in _SETTLED) == sum(counts)


def _state_line(counts: list[int]) -> Text:
    """``running 3 · finished 10 · pending 84`` with the states that have instances."""
    text = Text()
    for state, count in zip(STATES, counts, strict=True):
        if count:
            if text:
                text.append(" · ", style="dim")
            text.append(f"{state.value.replace('_', ' ')} {count}", style=STYLES[state])
    return text
