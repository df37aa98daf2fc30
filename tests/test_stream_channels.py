"""The pipeline's own machinery (issue 15, target 3): the bounded channels between stages, sync
filters fused into the step before them (or into the first step's pulls), and ``run`` filling
its result from the last stage. What each must keep of the pipeline's rules: bounds, order,
each predicate called once per item, ``on_error``, and every worker stopped."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tasks import other_tasks, settle

import aioflows as af
from aioflows._workers import BLOCKED, DONE, Channel

# --- the channel ----------------------------------------------------------------------------------


async def test_a_channel_holds_at_most_its_size_and_numbers_items_as_they_go_in() -> None:
    channel = Channel(3)
    assert [channel.put_nowait(x) for x in "abcd"] == [True, True, True, False]
    assert not channel.room()
    assert channel.pull_nowait() == (0, "a")
    assert channel.room()
    assert channel.put_nowait("d")
    assert [channel.pull_nowait() for _ in range(4)] == [(1, "b"), (2, "c"), (3, "d"), BLOCKED]
    channel.close()
    assert channel.pull_nowait() is DONE


async def test_waiting_readers_get_items_in_order_whatever_order_they_resume_in() -> None:
    channel = Channel(2)
    got: list[Any] = []

    async def reader() -> None:
        while (pulled := await channel.pull()) is not DONE:
            got.append(pulled)
            await asyncio.sleep(0.001 * (pulled[0] % 3))  # resume out of order

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(reader)
        await settle()  # all four wait: puts hand items straight to them
        for x in range(20):
            if not channel.put_nowait(x):
                await channel.put(x)
        channel.close()
    assert sorted(got) == [(i, i) for i in range(20)]


async def test_a_writer_waits_for_room_and_goes_on_once_an_item_is_taken() -> None:
    channel = Channel(1)
    assert channel.put_nowait("a")
    done = anyio.Event()

    async def writer() -> None:
        await channel.put("b")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        assert not done.is_set()  # full: the writer waits
        assert channel.pull_nowait() == (0, "a")
        await done.wait()
    assert channel.pull_nowait() == (1, "b")


async def test_a_reader_cancelled_as_it_is_handed_an_item_passes_it_on() -> None:
    channel = Channel(4)
    got: list[Any] = []

    async def second() -> None:
        got.append(await channel.pull())

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(second)
            first = asyncio.ensure_future(channel.pull())
            await settle()
            assert channel.put_nowait("x")  # handed to the first waiter...
            first.cancel()  # ...cancelled before it could take it
            scope.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await settle()
    assert got == [(0, "x")]  # the item went to the other reader, not lost


async def test_writers_fail_once_the_reading_end_is_gone() -> None:
    channel = Channel(1)
    assert channel.put_nowait(1)
    failed = anyio.Event()

    async def writer() -> None:
        with pytest.raises(anyio.BrokenResourceError):
            await channel.put(2)
        failed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        await channel.aclose()
        await failed.wait()
    with pytest.raises(anyio.BrokenResourceError):
        channel.put_nowait(3)


# --- bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("buffer", [1, 5])
async def test_a_channel_between_two_stages_holds_at_most_buffer_items(buffer: int) -> None:
    made = 0
    gate = anyio.Event()

    async def make(x: int) -> int:
        nonlocal made
        made += 1
        return x

    async def blocked(x: int) -> int:
        await gate.wait()
        return x

    pipe = af.Pipeline(af.Stage(make), af.Stage(blocked), buffer=buffer)
    async with anyio.create_task_group() as tg:
        result: list[Any] = []

        async def run() -> None:
            result.extend(await pipe.run(range(100)))

        tg.start_soon(run)
        await anyio.sleep(0.05)
        # One item in the blocked stage, ``buffer`` in the channel, one made and waiting.
        assert buffer + 1 <= made <= buffer + 2
        gate.set()
    assert result == list(range(100))


# --- fused filters --------------------------------------------------------------------------------


async def jittered(x: int) -> int:
    await asyncio.sleep(0.001 * ((x * 7) % 3))  # finish out of input order
    return x


@pytest.mark.parametrize("how", ["run", "stream"])
@pytest.mark.parametrize("buffer", [1, 64])
async def test_a_sync_filter_sees_each_item_once_in_input_order(how: str, buffer: int) -> None:
    seen: list[int] = []

    def first_time(x: int) -> bool:  # stateful: which copy it keeps depends on the order
        seen.append(x)
        return x % 3 != 0

    async def slow(x: int) -> int:
        await asyncio.sleep(0.001)  # a slow consumer: the buffer fills, emits wait for room
        return x

    pipe = af.Pipeline(
        af.Stage(jittered, workers=4), af.Filter(first_time), af.Stage(slow), buffer=buffer
    )
    items = list(range(60))
    if how == "run":
        out = await pipe.run(items)
    else:
        async with pipe.stream(items) as stream:
            out = [x async for x in stream]
    assert seen == items  # once each, in input order, though stage 1 finished out of order
    assert out == [x for x in items if x % 3 != 0]


@pytest.mark.parametrize("place", ["head", "middle", "last"])
async def test_consecutive_sync_filters_each_see_what_the_one_before_kept(place: str) -> None:
    calls: list[tuple[str, int]] = []

    def odd(x: int) -> bool:
        calls.append(("odd", x))
        return x % 2 == 1

    def not_five(x: int) -> bool:
        calls.append(("not_five", x))
        return x != 5

    filters = [af.Filter(odd), af.Filter(not_five)]
    stage = af.Stage(jittered, workers=3)
    steps: list[Any] = {
        "head": [*filters, stage],
        "middle": [stage, *filters, af.Stage(jittered, workers=2)],
        "last": [stage, *filters],
    }[place]
    out = await af.Pipeline(*steps).run(range(10))
    assert out == [1, 3, 7, 9]
    assert [x for name, x in calls if name == "odd"] == list(range(10))
    assert [x for name, x in calls if name == "not_five"] == [1, 3, 5, 7, 9]


async def test_a_fused_filter_that_raises_raises_as_itself() -> None:
    def fussy(x: int) -> bool:
        if x == 7:
            raise ValueError("seven")
        return True

    pipe = af.Pipeline(af.Stage(jittered, workers=4), af.Filter(fussy), af.Stage(jittered))
    before = other_tasks()
    with pytest.raises(ValueError, match="seven"):
        await pipe.run(range(50))
    await settle()
    assert other_tasks() == before


@pytest.mark.parametrize("head", [True, False])
async def test_fused_filters_follow_on_error(head: bool) -> None:
    def fussy(x: int) -> bool:
        if x in (2, 5):
            raise ValueError(x)
        return x != 3

    async def fail_on_four(x: int) -> int:
        if x == 4:
            raise KeyError(x)
        return x

    def steps() -> list[Any]:
        filt = af.Filter(fussy)
        if head:
            return [filt, af.Stage(fail_on_four, workers=2)]
        return [af.Stage(fail_on_four, workers=2), filt, af.Stage(jittered, workers=2)]

    skipped = await af.Pipeline(*steps(), on_error="skip").run(range(7))
    assert skipped == [0, 1, 6]
    collected = await af.Pipeline(*steps(), on_error="collect").run(range(7))
    assert [x for x in collected if not isinstance(x, af.Failed)] == [0, 1, 6]
    failed = {x.item: (type(x.error), x.stage) for x in collected if isinstance(x, af.Failed)}
    # A failure upstream of the filter passes it untouched (its predicate never sees it).
    assert failed == {
        2: (ValueError, "fussy"),
        4: (KeyError, "fail_on_four"),
        5: (ValueError, "fussy"),
    }
    assert [x.item for x in collected if isinstance(x, af.Failed)] == [2, 4, 5]


async def test_a_filter_dropping_a_long_run_of_a_sync_input_lets_the_loop_run() -> None:
    ticks = 0
    stop = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    pipe = af.Pipeline(af.Filter(lambda x: x % 100_000 == 99_999), af.Stage(jittered))
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await settle()
        start = ticks
        assert await pipe.run(range(200_000)) == [99_999, 199_999]
        stop.set()
    assert ticks - start > 200_000 // 64 // 2  # a checkpoint every 64 drops, give or take


async def test_a_run_dropping_everything_can_still_be_cancelled() -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for n in itertools.count():
            pulled = n
            yield n

    pipe = af.Pipeline(af.Filter(lambda x: False), af.Stage(jittered, workers=2))
    with anyio.move_on_after(0.05) as scope:
        await pipe.run(endless())
    assert scope.cancelled_caught
    assert pulled < 50_000_000  # stopped on time, not when the (endless) input ran out


# --- run() fills its result from the last stage ---------------------------------------------------


async def test_cancelling_run_stops_every_worker_and_closes_the_source() -> None:
    closed = anyio.Event()
    calls = 0

    async def source() -> Any:
        try:
            for n in itertools.count():
                yield n
        finally:
            closed.set()

    async def work(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.001)
        return x

    pipe = af.Pipeline(af.Stage(work, workers=4), af.Filter(bool), af.Stage(work, workers=2))
    before = other_tasks()
    with anyio.move_on_after(0.05):
        await pipe.run(source())
    assert closed.is_set()
    await settle()
    assert other_tasks() == before
    frozen = calls
    await anyio.sleep(0.02)
    assert calls == frozen  # nothing keeps working


async def test_run_with_an_ordered_flat_last_stage_reads_it_as_a_stream() -> None:
    async def twice(x: int) -> Any:
        for i in range(2):
            await asyncio.sleep(0.001 * ((x + i) % 2))
            yield (x, i)

    pipe = af.Pipeline(af.Filter(lambda x: x != 3), af.Stage(twice, workers=3, flat=True))
    assert await pipe.run(range(5)) == [(x, i) for x in (0, 1, 2, 4) for i in range(2)]
