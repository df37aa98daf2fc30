"""What tests of structured concurrency share: the tasks running besides the test's own."""

from __future__ import annotations

import asyncio
from typing import Any


def other_tasks() -> set[asyncio.Task[Any]]:
    """Every task of the loop but the current one: compared before and after a call, it shows
    whether the call left anything running."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def settle() -> None:
    """Let cancelled tasks finish unwinding (a few loop iterations; no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)
