"""The launcher's keys after a throttle, and their burst (issue 14), on a virtual clock."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import aioflows as af

VIRTUAL_TIME = True

KEYS = ["sk-live-THROTTLE01", "sk-live-THROTTLE02"]


def window_max(times: list[float], width: float = 1.0) -> int:
    """The most calls in any window [t, t + width) starting at a call."""
    return max(sum(1 for u in times[i:] if u - t < width - 1e-9) for i, t in enumerate(times))


async def test_a_throttled_key_resumes_empty_instead_of_bursting() -> None:
    calls: list[float] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise af.RateLimited(retry_after=1)  # the first call: "429, Retry-After: 1"
        return 1

    start = anyio.current_time()
    summary = await af.Launcher(fn, keys=KEYS[:1], rate_per_key="10/s", concurrency=16).run(
        {"id": n} for n in range(30)
    )
    assert summary.succeeded == 30
    after = [t - start for t in calls[1:]]
    # Nothing during the pause; then one call per 0.1 s from an empty bucket: 1.1, 1.2, ...
    # (a bucket refilled during the pause would send 10 at 1.0 and be throttled again).
    assert min(after) > 1.05
    assert sum(1 for t in after if t < 1.55) == 5
    assert window_max(after) <= 10  # the key's rate, never its burst on top


async def test_burst_per_key_caps_the_first_second() -> None:
    def run(burst: float | None) -> Any:
        calls: list[float] = []

        async def fn(sample: dict[str, Any], key: af.Key) -> int:
            calls.append(anyio.current_time())
            return 1

        async def go() -> list[float]:
            await af.Launcher(
                fn, keys=KEYS[:1], rate_per_key="10/s", burst_per_key=burst, concurrency=32
            ).run([{"id": n} for n in range(40)])
            return calls

        return go()

    default = await run(None)
    strict = await run(1)
    # A full bucket of one second's worth at once, then the refill: nearly twice the rate.
    assert window_max(default) == 19
    assert window_max(strict) == 10  # a strict per-second API never sees more than its rate


async def test_burst_per_key_is_checked() -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        return 1

    for bad, error in ((0.5, ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="burst_per_key"):
            af.Launcher(fn, rate_per_key="10/s", burst_per_key=bad)
