"""The one live display aioflows draws on a terminal, and the one ``isatty``.

``Flow.run(progress=True)`` (:class:`~aioflows.flow.progress.FlowProgress`) and
``Launcher(progress=True)`` both draw through :class:`LiveDisplay`; each gives only a function
returning what to draw now, and keeps its own counts. Rich's own auto-refresh would start a
thread, so it is off: a small anyio task redraws every ``refresh_interval`` seconds, in a task
group the context manager owns, so nothing outlives the ``async with``. The last frame is drawn
when the display stops; on a file (not a terminal) that last frame is all rich writes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import anyio
import anyio.abc
from rich.console import Console, RenderableType
from rich.live import Live

__all__ = ["LiveDisplay", "isatty"]

logger = logging.getLogger("aioflows.display")


def isatty(stream: object) -> bool:
    """Whether ``stream`` is an open terminal; False for anything without a working ``isatty``
    (a closed file raises ValueError, a replaced ``sys.stderr`` may have no such method)."""
    method = getattr(stream, "isatty", None)
    try:
        return bool(method()) if callable(method) else False
    except (ValueError, OSError):
        return False


class LiveDisplay:
    """A rich live view redrawn by an anyio task while the ``async with`` body runs.

    ``render`` is called for every frame (the first when the display starts, one every
    ``refresh_interval`` seconds, the last when it stops) and must be cheap and not block.
    Prints go above the display only where they would land on the terminal it draws on:
    output piped elsewhere is left alone (stdout never moves to stderr). A frame that fails to
    draw is logged and ends the redrawing; it never breaks the work the display shows.

    Args:
        render: Returns the frame to draw now.
        console: Where to draw (default: a new rich console on stderr).
        refresh_interval: Seconds between redraws.
    """

    def __init__(
        self,
        render: Callable[[], RenderableType],
        *,
        console: Console | None = None,
        refresh_interval: float = 0.2,
    ) -> None:
        self.render = render
        self.console = console if console is not None else Console(stderr=True)
        self.refresh_interval = refresh_interval
        self._live: Live | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def drawing(self) -> bool:
        """Whether the display has started and not stopped yet."""
        return self._live is not None

    def stop(self) -> None:
        """Draw the last frame and stop the live view (once; later calls do nothing).

        For a caller that prints something below the final frame before the ``async with``
        ends (the flow's summary table); the redrawing task ends at its next wake-up.
        """
        live, self._live = self._live, None
        if live is None:
            return
        try:
            live.update(self.render())
        except Exception:
            logger.exception("the live display could not draw its last frame")
        finally:
            live.stop()
            if not self.console.is_terminal and not self.console.is_jupyter:
                self.console.line()  # rich ends the last line only on terminals

    async def _redraw(self) -> None:
        try:
            while True:
                await anyio.sleep(self.refresh_interval)
                live = self._live
                if live is None:
                    return
                live.update(self.render(), refresh=True)
        except Exception:
            # A display that cannot draw (closed stderr, say) must not break the run.
            logger.exception("the live display stopped redrawing")

    async def __aenter__(self) -> LiveDisplay:
        terminal = self.console.is_terminal
        live = Live(
            self.render(),
            console=self.console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=terminal and isatty(sys.stdout),
            redirect_stderr=terminal and isatty(sys.stderr),
        )
        live.start(refresh=True)
        self._live = live
        task_group = anyio.create_task_group()
        try:
            await task_group.__aenter__()
        except BaseException:
            self.stop()
            raise
        self._task_group = task_group
        task_group.start_soon(self._redraw)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # The body's exception is not looked at: it propagates as it is once the display stops.
        task_group, self._task_group = self._task_group, None
        try:
            if task_group is not None:
                task_group.cancel_scope.cancel()
                # Exit with no exception: the body's own exception propagates unchanged
                # (not wrapped in an ExceptionGroup) once the redrawing task is gone.
                await task_group.__aexit__(None, None, None)
        finally:
            self.stop()
