"""What tests of structured concurrency share: the tasks running besides the test's own, and a
fresh event loop that reports what escaped it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def other_tasks() -> set[asyncio.Task[Any]]:
    """Every task of the loop but the current one: compared before and after a call, it shows
    whether the call left anything running."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def settle() -> None:
    """Let cancelled tasks finish unwinding (a few loop iterations; no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def run_catching(main: Callable[[], Coroutine[Any, Any, str]], stop: type[BaseException]) -> str:
    """Run ``main`` in a fresh event loop and say what happened to ``stop``.

    asyncio re-raises KeyboardInterrupt and SystemExit out of the event loop when they leave a
    task, instead of letting them reach the awaiting caller: what escaped the loop is the
    finding, so it is reported, not raised.
    """

    async def caught() -> str:
        try:
            return await main()
        except stop:
            return "raised to the caller"

    try:
        return asyncio.run(caught())
    except BaseException as exc:
        return f"escaped the event loop: {exc!r}"
