"""The launcher's hot path (issue 15, target 4): the pick of a key without a scan when the key
in turn can go, its buckets on shared ticks, and the record's timestamp; on a virtual clock."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aioflows as af
from aioflows.apikeys import make_keys
from aioflows.jsonl import utc_text
from aioflows.limits import _TICK

VIRTUAL_TIME = True

KEYS = ["sk-live-HOTPATH01", "sk-live-HOTPATH02", "sk-live-HOTPATH03"]


async def test_keys_that_can_all_go_are_taken_in_turn() -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> str:
        return key.label

    records = await af.launch(fn, [{"id": i} for i in range(7)], keys=KEYS, concurrency=1)
    assert [r["key"] for r in records] == [f"key-{i % 3}" for i in range(7)]


async def test_a_key_in_turn_that_must_wait_gives_way_to_the_one_that_frees_soonest() -> None:
    used: list[tuple[float, str]] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> None:
        used.append((anyio.current_time(), key.label))

    start = anyio.current_time()
    rates = {KEYS[0]: "1/s", KEYS[1]: "20/s"}
    await af.Launcher(fn, keys=rates, burst_per_key=1, concurrency=1).run(
        [{"id": i} for i in range(21)]
    )
    slow = [t - start for t, label in used if label == "key-0"]
    # key-0 goes once a second at most, however often its turn comes; key-1 takes the rest,
    # and nothing waits while a key could go: 21 calls in about a second, not 11 seconds.
    assert slow == [0.0, 1.0] or slow == [0.0]
    assert used[-1][0] - start <= 1.0 + 1e-6


async def test_a_resting_key_is_not_taken_in_its_turn() -> None:
    used: list[tuple[float, str]] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> None:
        used.append((anyio.current_time(), key.label))
        if len(used) == 1:
            raise af.RateLimited(retry_after=5)  # key-0 rests 5 s

    start = anyio.current_time()
    await af.launch(fn, [{"id": i} for i in range(10)], keys=KEYS[:2], concurrency=1)
    assert [label for t, label in used if t - start < 5] == ["key-0"] + ["key-1"] * 10


def test_taking_a_key_now_takes_all_its_buckets_or_none() -> None:
    async def main() -> None:
        [state] = make_keys(KEYS[:1], "10/s", "100/min")
        assert state.requests is not None
        assert state.tokens is not None
        assert state.take_now(90)  # a request and 90 tokens
        before = state.requests.available
        assert not state.take_now(50)  # 10 tokens left: the request is not taken either
        # (a real clock: what refilled meanwhile, well under a token)
        assert state.requests.available == pytest.approx(before, abs=0.01)
        assert state.tokens.available == pytest.approx(10, abs=0.01)

    anyio.run(main)


async def test_a_fast_key_is_served_on_whole_ticks_within_its_limit() -> None:
    times: list[float] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> None:
        times.append(anyio.current_time())

    start = anyio.current_time()
    await af.Launcher(
        fn, keys=KEYS[:1], rate_per_key="1000/s", burst_per_key=50, concurrency=16
    ).run([{"id": i} for i in range(550)])
    waited = times[50:]  # after the burst
    assert all(abs(t / _TICK - round(t / _TICK)) < 1e-6 for t in waited)
    assert times[-1] - start == pytest.approx(0.5, abs=_TICK)  # the rate: 500 more in 0.5 s
    for i, first in enumerate(times):  # never above burst + T x rate
        for j in range(i, len(times)):
            assert j - i + 1 <= 50 + (times[j] - first) * 1000 + 1e-6


@given(st.floats(min_value=-1e9, max_value=4e9, allow_nan=False))
def test_the_started_at_text_is_what_datetime_writes(seconds: float) -> None:
    assert utc_text(seconds) == datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def test_the_started_at_text_around_whole_seconds() -> None:
    whole = 1_764_662_400.0
    for t in (whole, whole - 1e-7, whole + 4e-7, whole + 0.9999996, math.nextafter(whole, 0)):
        assert utc_text(t) == datetime.fromtimestamp(t, timezone.utc).isoformat()
