"""Streaming pipelines (API.md section 4): order, bounded memory, errors, lifecycle."""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tasks import other_tasks, run_catching, settle

import aioflows as af


class Counting:
    """An infinite source that counts what was pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        while True:
            yield self.pulled
            self.pulled += 1


async def double(x: int) -> int:
    return 2 * x


# --- order --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_ordered_output_keeps_input_order_under_random_latency(seed: int) -> None:
    rng = random.Random(seed)
    delays = [rng.random() * 0.004 for _ in range(300)]

    async def jitter(x: int) -> int:
        await anyio.sleep(delays[x])
        return x

    async def jitter2(x: int) -> int:
        await anyio.sleep(delays[-1 - x])
        return x * 10

    pipe = af.Pipeline(
        af.Stage(jitter, workers=16),
        af.Filter(lambda x: x % 3 != 0),
        af.Stage(jitter2, 8),
        buffer=8,
    )
    assert await pipe.run(range(300)) == [x * 10 for x in range(300) if x % 3 != 0]


async def test_unordered_output_has_every_item() -> None:
    async def jitter(x: int) -> int:
        await anyio.sleep(random.random() * 0.003)
        return x

    out = await af.Pipeline(af.Stage(jitter, workers=16), ordered=False).run(range(200))
    assert sorted(out) == list(range(200))


async def test_ordered_output_is_emitted_as_soon_as_the_prefix_is_complete() -> None:
    first_seen = anyio.Event()

    async def gate(x: int) -> int:
        if x > 0:
            await first_seen.wait()  # only the consumer's receipt of item 0 lets these finish
        return x

    out = []
    with anyio.fail_after(10):  # holding output to the end would deadlock here
        async with af.Pipeline(af.Stage(gate, workers=4)).stream(range(10)) as stream:
            async for x in stream:
                out.append(x)
                first_seen.set()
    assert out == list(range(10))


async def test_flat_stages_emit_each_output_in_order() -> None:
    def pairs(x: int) -> list[int]:  # sync, returns an iterable
        return [x, x]

    async def spread(x: int) -> AsyncIterator[str]:  # an async generator
        for i in range(x % 3):
            await anyio.sleep(0.001 * (3 - i))
            yield f"{x}.{i}"

    pipe = af.Pipeline(af.Stage(pairs, 2, flat=True), af.Stage(spread, 4, flat=True))
    out = await pipe.run(range(6))
    expected = [f"{x}.{i}" for x in range(6) for _ in range(2) for i in range(x % 3)]
    assert out == expected


# --- flat stages stream (issue 10) ----------------------------------------------------------------


def now() -> float:
    return anyio.current_time()


async def timed_outputs(pipe: af.Pipeline, source: Any) -> list[tuple[Any, float]]:
    """Every output with the (virtual) time it reached the reader."""
    async with pipe.stream(source) as stream:
        return [(out, round(now())) async for out in stream]


@pytest.mark.looptime
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("workers", [1, 3])
async def test_a_flat_stage_emits_each_output_as_it_is_made(ordered: bool, workers: int) -> None:
    async def one_a_second(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await anyio.sleep(1)
            yield i

    pipe = af.Pipeline(af.Stage(one_a_second, workers, flat=True), ordered=ordered)
    assert await timed_outputs(pipe, [4]) == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.looptime
async def test_ordered_flat_outputs_go_out_as_made_once_earlier_inputs_are_done() -> None:
    async def pages(spec: tuple[str, int]) -> AsyncIterator[str]:
        name, count = spec
        for i in range(count):
            await anyio.sleep(1)
            yield f"{name}{i}"

    pipe = af.Pipeline(af.Stage(pages, workers=3, flat=True), buffer=8)
    assert await timed_outputs(pipe, [("a", 3), ("b", 5), ("c", 2)]) == [
        ("a0", 1), ("a1", 2), ("a2", 3),  # a streams
        ("b0", 3), ("b1", 3), ("b2", 3),  # b's first three waited for a, then go at once
        ("b3", 4), ("b4", 5),  # and b streams on
        ("c0", 5), ("c1", 5),  # c was done at 2 and waited for b
    ]  # fmt: skip


@pytest.mark.looptime
async def test_unordered_flat_outputs_of_several_inputs_interleave() -> None:
    async def ticks(spec: tuple[str, float]) -> AsyncIterator[str]:
        name, offset = spec
        await anyio.sleep(offset)
        for i in range(3):
            yield f"{name}{i}"
            await anyio.sleep(2)

    pipe = af.Pipeline(af.Stage(ticks, workers=2, flat=True), ordered=False)
    out = await timed_outputs(pipe, [("a", 1), ("b", 2)])
    assert out == [("a0", 1), ("b0", 2), ("a1", 3), ("b1", 4), ("a2", 5), ("b2", 6)]


class Endless:
    """Infinite inner generators that count what they made and note when they are closed."""

    def __init__(self) -> None:
        self.made: dict[int, int] = {}
        self.closed: set[int] = set()

    async def outputs(self, x: int) -> AsyncIterator[tuple[int, int]]:
        self.made[x] = 0
        try:
            while True:
                await anyio.lowlevel.checkpoint()
                self.made[x] += 1
                yield x, self.made[x]
        finally:
            self.closed.add(x)

    def sync_outputs(self, x: int) -> Iterator[tuple[int, int]]:  # runs in worker threads
        self.made[x] = 0
        try:
            while True:
                self.made[x] += 1
                yield x, self.made[x]
        finally:
            self.closed.add(x)


@pytest.mark.parametrize("ordered", [True, False])
async def test_an_endless_inner_generator_streams_in_bounded_memory(ordered: bool) -> None:
    endless = Endless()
    pipe = af.Pipeline(af.Stage(endless.outputs, workers=3, flat=True), buffer=4, ordered=ordered)
    consumed = 0
    with anyio.fail_after(10):  # collecting an endless output first never ends
        async with pipe.stream([0, 1, 2]) as stream:
            async for _ in stream:
                consumed += 1
                # what the reader took, the buffer after the stage, the one being handed on
                assert sum(endless.made.values()) <= consumed + 4 + 3 * (4 + 1)
                if consumed == 300:
                    break
    if ordered:  # input 0's turn never ends: the others keep only `buffer` outputs each
        assert endless.made[0] >= 300
        assert endless.made[1] <= 4
        assert endless.made[2] <= 4
    assert endless.closed == {0, 1, 2}  # leaving closed every inner generator


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_slow_reader_pauses_the_inner_generator(kind: str) -> None:
    endless = Endless()
    outputs = endless.outputs if kind == "async" else endless.sync_outputs
    pipe = af.Pipeline(af.Stage(outputs, flat=True), buffer=3)
    consumed = 0
    async with pipe.stream([0]) as stream:
        async for _ in stream:
            consumed += 1
            for _ in range(5):
                await anyio.lowlevel.checkpoint()  # the reader is the slowest part
            assert endless.made[0] <= consumed + 3 + 1
            if consumed == 50:
                break
    assert endless.closed == {0}


async def test_a_sync_generator_is_stepped_in_a_worker_thread_as_outputs_are_read() -> None:
    first_read = threading.Event()
    closed = threading.Event()
    threads: set[int] = set()

    def lines(n: int) -> Iterator[int]:
        try:
            threads.add(threading.get_ident())
            yield n
            # Only a stage that emitted the first output before asking for this one lets
            # the reader see it now.
            assert first_read.wait(10), "the first output was held back"
            threads.add(threading.get_ident())
            yield n + 1
            yield n + 2
        finally:
            closed.set()

    async with af.Pipeline(af.Stage(lines, flat=True)).stream([10]) as stream:
        assert await stream.__anext__() == 10
        first_read.set()
        assert await stream.__anext__() == 11
    assert closed.is_set()  # left before the end: closed (in a thread too)
    assert threading.get_ident() not in threads
    # A collection a sync fn returns is made already: it is spread without thread hops.
    pipe = af.Pipeline(af.Stage(lambda x: range(x), 2, flat=True))
    assert await pipe.run([1, 3]) == [0, 0, 1, 2]


@pytest.mark.parametrize("seed", range(6))
async def test_ordered_flat_stages_keep_input_order_under_random_latency(seed: int) -> None:
    rng = random.Random(seed)
    counts = [rng.choice([0, 1, 2, 5, 9]) for _ in range(60)]
    naps = {(x, i): rng.randrange(4) for x in range(60) for i in range(9)}

    async def spread(x: int) -> AsyncIterator[tuple[int, int]]:
        for i in range(counts[x]):
            for _ in range(naps[x, i]):
                await anyio.lowlevel.checkpoint()
            yield x, i

    def pairs(out: tuple[int, int]) -> list[tuple[int, int]]:  # sync, returns a list
        return [out, out]

    pipe = af.Pipeline(
        af.Stage(spread, workers=4, flat=True),
        af.Stage(pairs, workers=3, flat=True),
        buffer=rng.choice([1, 2, 5]),
    )
    expected = [(x, i) for x in range(60) for i in range(counts[x]) for _ in range(2)]
    assert await pipe.run(range(60)) == expected


def broken_after(n: int) -> Any:
    async def outputs(x: int) -> AsyncIterator[int]:
        for i in range(n):
            yield 10 * x + i
        if x == 1:
            raise ValueError(f"broken at {x}")

    return outputs


@pytest.mark.parametrize("workers", [1, 3])
async def test_a_failure_part_way_leaves_the_outputs_already_emitted(workers: int) -> None:
    stage = af.Stage(broken_after(2), workers, flat=True, name="pages")
    read: list[Any] = []

    async def read_all() -> None:
        async for out in af.Pipeline(stage).stream(range(3)):
            read.append(out)

    with pytest.raises(ValueError, match="broken at 1"):
        await read_all()
    assert read == [0, 1, 10, 11]  # out before the failure, and ordered: nothing of 2
    assert await af.Pipeline(stage, on_error="skip").run(range(3)) == [0, 1, 10, 11, 20, 21]
    collected = await af.Pipeline(stage, on_error="collect").run(range(3))
    assert collected[:4] == [0, 1, 10, 11]
    assert collected[5:] == [20, 21]
    failed = collected[4]  # in the place its next output would have had
    assert isinstance(failed, af.Failed)
    assert (failed.item, failed.stage) == (1, "pages")
    assert isinstance(failed.error, ValueError)


async def test_a_flat_stage_retries_only_until_its_first_output() -> None:
    calls: list[int] = []

    async def flaky(x: int) -> AsyncIterator[int]:
        calls.append(x)
        if calls.count(x) == 1:
            raise ConnectionError("before any output: retried")
        yield x
        if x == 2:
            raise ConnectionError("after an output: never retried, it would emit it again")
        yield x

    retry = af.Retry(attempts=3, backoff=0.001, jitter=False)
    pipe = af.Pipeline(af.Stage(flaky, flat=True, retry=retry), on_error="collect")
    out = await pipe.run([1, 2])
    assert out[:3] == [1, 1, 2]
    assert isinstance(out[3], af.Failed)
    assert isinstance(out[3].error, ConnectionError)
    assert calls == [1, 1, 2, 2]


@pytest.mark.looptime
async def test_a_flat_stage_timeout_bounds_each_output_not_the_whole_stream() -> None:
    async def steady(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await anyio.sleep(1)
            yield i

    async def stalls(n: int) -> AsyncIterator[int]:
        yield 0
        await anyio.sleep(5)
        yield 1

    pipe = af.Pipeline(af.Stage(steady, flat=True, timeout=1.5), buffer=1)
    read = []
    async with pipe.stream([6]) as stream:
        async for out in stream:
            read.append(out)
            await anyio.sleep(10)  # a slow reader: waiting for room is not the step's time
    assert read == list(range(6))
    read = []

    async def read_stalling() -> None:
        async for out in af.Pipeline(af.Stage(stalls, flat=True, timeout=1.5)).stream([1]):
            read.append(out)

    with pytest.raises(TimeoutError):
        await read_stalling()
    assert read == [0]


async def test_a_sync_flat_stage_timeout_bounds_each_step_in_its_thread() -> None:
    def stalls(n: int) -> Iterator[int]:
        yield 0
        time.sleep(0.2)  # a thread cannot be interrupted: waited for, then a TimeoutError
        yield 1

    read = []

    async def read_stalling() -> None:
        async for out in af.Pipeline(af.Stage(stalls, flat=True, timeout=0.05)).stream([1]):
            read.append(out)

    with pytest.raises(TimeoutError):
        await read_stalling()
    assert read == [0]


async def test_leaving_or_cancelling_closes_the_inner_generators() -> None:
    endless = Endless()
    before = other_tasks()
    pipe = af.Pipeline(af.Stage(endless.outputs, workers=3, flat=True), buffer=2)
    async for _ in pipe.stream(range(3)):  # the plain form, dropped after break
        break
    await settle()
    assert endless.closed == {0, 1, 2}
    endless.closed.clear()
    with anyio.move_on_after(0.05):
        async with pipe.stream(range(3)) as stream:
            async for _ in stream:
                await anyio.sleep(1)
    assert endless.closed == {0, 1, 2}
    assert other_tasks() == before


# --- bounded memory and backpressure ------------------------------------------------------------


async def test_an_infinite_source_is_pulled_only_a_bounded_way_ahead() -> None:
    source = Counting()
    pipe = af.Pipeline(af.Stage(double, workers=4), af.Stage(double, workers=4), buffer=4)
    async with pipe.stream(source) as stream:
        async for x in stream:
            if x >= 4 * 50:
                break
            await anyio.lowlevel.checkpoint()  # a consumer slower than the stages
    # per stage: buffer + its re-ordering window (max(buffer, 2 * workers)) + workers
    assert source.pulled <= 51 + 2 * (4 + 8 + 4) + 4


class Result:
    """A result object whose death is counted, to see how many a stream keeps alive."""

    __slots__ = ("__weakref__", "value")
    live = 0

    def __init__(self, value: int) -> None:
        self.value = value
        Result.live += 1
        weakref.finalize(self, Result._free)

    @staticmethod
    def _free() -> None:
        Result.live -= 1


async def test_an_ordered_stage_holds_a_bounded_number_of_results_issue_10() -> None:
    """The ordered sink kept, for good, results it had already emitted (147 of them after
    30,000 items in the issue's measurement)."""
    Result.live = 0

    async def late_every_fifth(x: int) -> Result:
        if x % 5 == 0:  # the items after it finish first and wait for it
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
        return Result(x)

    workers, buffer, seen = 8, 4, 0
    pipe = af.Pipeline(af.Stage(late_every_fifth, workers=workers), buffer=buffer)
    async for result in pipe.stream(range(3_000)):
        assert result.value == seen
        seen += 1
        # the output buffer, the stage's window, and the result the loop holds
        assert Result.live <= buffer + max(buffer, 2 * workers) + 1
    assert seen == 3_000


async def test_a_slow_item_holds_back_admission_not_the_whole_stream() -> None:
    source = Counting()
    release = anyio.Event()

    async def slow_first(x: int) -> int:
        if x == 0:
            await release.wait()
        return x

    pipe = af.Pipeline(af.Stage(slow_first, workers=4), buffer=4)
    async with pipe.stream(source) as stream:
        await anyio.sleep(0.1)  # the pipeline runs while item 0 is held
        assert 1 <= source.pulled <= 4 + 8 + 4  # buffer + window + workers, not the stream
        release.set()
        assert await stream.__anext__() == 0
        assert await stream.__anext__() == 1


async def test_batch_groups_items_and_the_last_batch_may_be_short() -> None:
    out = await af.Pipeline(af.Batch(4)).run(range(10))
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    again = await af.Pipeline(af.Batch(4), af.Unbatch()).run(range(10))
    assert again == list(range(10))


async def test_batch_timeout_flushes_a_partial_batch() -> None:
    more = anyio.Event()

    async def source() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        await more.wait()  # the source stalls with a partial batch pending
        yield 3

    with anyio.fail_after(10):
        async with af.Pipeline(af.Batch(10, timeout=0.05)).stream(source()) as stream:
            assert await stream.__anext__() == [0, 1, 2]
            more.set()
            assert await stream.__anext__() == [3]


async def test_union_emits_a_tuple_of_every_branch() -> None:
    def square(x: int) -> int:
        return x * x

    pipe = af.Pipeline(af.Union(af.Stage(double, 2), af.Stage(square), af.Stage(str, 3)))
    assert await pipe.run(range(4)) == [(0, 0, "0"), (2, 1, "1"), (4, 4, "2"), (6, 9, "3")]


async def test_sync_stages_run_in_worker_threads() -> None:
    threads: set[int] = set()

    def record(x: int) -> int:
        threads.add(threading.get_ident())
        return x

    assert await af.Pipeline(af.Stage(record, workers=3)).run(range(20)) == list(range(20))
    assert threading.get_ident() not in threads


async def test_stage_retry_and_async_iterable_sources() -> None:
    failures = {3: 2}

    async def flaky(x: int) -> int:
        if failures.get(x):
            failures[x] -= 1
            raise ConnectionError("transient")
        return x

    async def source() -> AsyncIterator[int]:
        for i in range(6):
            yield i

    stage = af.Stage(flaky, 2, retry=af.Retry(attempts=3, backoff=0.001, jitter=False))
    assert await af.Pipeline(stage).run(source()) == list(range(6))


# --- errors -------------------------------------------------------------------------------------


def failing_at(stage: int, item: int) -> list[af.Stage]:
    def make(k: int) -> af.Stage:
        async def step(x: int) -> int:
            await anyio.lowlevel.checkpoint()
            if k == stage and x == item:
                raise ValueError(f"stage {k} item {x}")
            return x

        return af.Stage(step, workers=3, name=f"s{k}")

    return [make(k) for k in range(3)]


@pytest.mark.parametrize("stage", [0, 1, 2])
async def test_raise_cancels_everything_even_with_full_queues(stage: int) -> None:
    before = other_tasks()
    pipe = af.Pipeline(*failing_at(stage, 40), buffer=2)

    async def consume() -> None:
        async with pipe.stream(Counting()) as stream:
            async for _ in stream:
                await anyio.sleep(0.001)  # a slow consumer: every queue is full

    with anyio.fail_after(10), pytest.raises(ValueError, match=f"stage {stage} item 40"):
        await consume()
    assert other_tasks() == before


async def test_skip_drops_failed_items() -> None:
    pipe = af.Pipeline(*failing_at(1, 5), on_error="skip")
    assert await pipe.run(range(10)) == [x for x in range(10) if x != 5]


async def test_collect_emits_failed_in_place_and_later_stages_pass_it_through() -> None:
    seen: list[Any] = []

    async def after(x: Any) -> Any:
        seen.append(x)
        return x

    pipe = af.Pipeline(*failing_at(0, 2), af.Stage(after), af.Batch(2), on_error="collect")
    out = await pipe.run(range(5))
    failed = [x for x in out if isinstance(x, af.Failed)]
    assert len(failed) == 1
    assert failed[0].item == 2
    assert failed[0].stage == "s0"
    assert isinstance(failed[0].error, ValueError)
    assert not any(isinstance(x, af.Failed) for x in seen)  # never handed to a stage
    batches = [x for x in out if isinstance(x, list)]
    assert [i for batch in batches for i in batch] == [0, 1, 3, 4]


class Halt(BaseException):
    """Not an Exception: a custom stop signal, or a test framework's failure."""


@pytest.mark.parametrize("first", [af.Stage(double), af.Batch(2), af.Batch(2, timeout=1)])
@pytest.mark.parametrize("error", [OSError, Halt])
async def test_a_failing_source_is_raised_as_itself(first: Any, error: type[BaseException]) -> None:
    def source() -> Iterator[int]:
        yield 1
        raise error("disk gone")

    with pytest.raises(error, match="disk gone") as info:
        await af.Pipeline(first).run(source())
    assert type(info.value) is error  # not in an ExceptionGroup


async def outputs_of(pipe: af.Pipeline, source: Any, form: str) -> list[Any]:
    """Every output of ``pipe``, read in one of the three ways a stream is read."""
    if form == "run":
        return await pipe.run(source)
    if form == "with":
        async with pipe.stream(source) as stream:
            return [x async for x in stream]
    return [x async for x in pipe.stream(source)]


def halting_at(n: int, stop: type[BaseException]) -> Any:
    async def step(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        if x == n:
            raise stop("stop")
        return x

    return step


def raise_at(n: int, stop: type[BaseException]) -> Any:
    def step(x: int) -> int:
        if x == n:
            raise stop("stop")
        return x

    return step


def halting_steps(stop: type[BaseException]) -> dict[str, Any]:
    """One pipeline step of each kind, each raising ``stop`` for item 5."""
    halt = halting_at(5, stop)

    async def keep(x: int) -> bool:
        return await halt(x) >= 0

    async def spread(x: int) -> AsyncIterator[int]:
        yield await halt(x)

    async def part_way(x: int) -> AsyncIterator[int]:
        yield x
        yield await halt(x)

    return {
        "stage": af.Stage(halt, workers=3),
        "sync stage": af.Stage(raise_at(5, stop), workers=2),  # in a worker thread
        "flat stage": af.Stage(spread, workers=3, flat=True),
        "flat stage part way": af.Stage(part_way, workers=3, flat=True),
        "filter": af.Filter(keep, workers=2),
        "union": af.Union(af.Stage(double), af.Stage(halt, workers=2)),
    }


@pytest.mark.parametrize(
    "step", ["stage", "sync stage", "flat stage", "flat stage part way", "filter", "union"]
)
@pytest.mark.parametrize("on_error", ["raise", "skip", "collect"])
@pytest.mark.parametrize("form", ["run", "for", "with"])
async def test_a_base_exception_from_a_stage_is_raised_as_itself_issue_10(
    step: str, on_error: str, form: str
) -> None:
    """It is not an item's failure, whatever on_error says, and the stream must never end
    as if the input had (run() used to return the items before it)."""
    before = other_tasks()
    pipe = af.Pipeline(halting_steps(Halt)[step], af.Stage(double, 2), on_error=on_error)
    with anyio.fail_after(10), pytest.raises(Halt) as info:  # a BaseExceptionGroup is not one
        await outputs_of(pipe, range(20), form)
    assert type(info.value) is Halt
    await settle()
    assert other_tasks() == before


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("form", ["run", "for", "with"])
def test_keyboard_interrupt_from_a_stage_reaches_the_reader_issue_10(
    form: str, stop: type[BaseException]
) -> None:
    """asyncio re-raises these out of the event loop when they leave a task."""

    async def main() -> str:
        pipe = af.Pipeline(af.Stage(halting_at(3, stop), workers=3), ordered=False)
        await outputs_of(pipe, range(10), form)
        return "not raised"

    assert run_catching(main, stop) == "raised to the caller"


# --- lifecycle ----------------------------------------------------------------------------------


async def test_leaving_the_stream_early_stops_every_worker_and_closes_the_source() -> None:
    closed = anyio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = other_tasks()
    async with af.Pipeline(af.Stage(double, 4), af.Batch(3)).stream(source()) as stream:
        async for _ in stream:
            break
    assert closed.is_set()
    assert other_tasks() == before


async def test_a_plain_async_for_with_break_leaves_nothing_running() -> None:
    before = other_tasks()
    async for x in af.Pipeline(af.Stage(double, 4)).stream(Counting()):
        if x > 20:
            break
    await settle()
    assert other_tasks() == before


async def test_an_error_in_the_consumer_stops_the_pipeline() -> None:
    before = other_tasks()

    async def consume() -> None:
        async with af.Pipeline(af.Stage(double, 4)).stream(Counting()) as stream:
            async for _ in stream:
                raise KeyError("consumer bug")

    with pytest.raises(KeyError):
        await consume()
    assert other_tasks() == before


async def test_cancelling_the_consumer_stops_the_pipeline() -> None:
    before = other_tasks()
    release = anyio.Event()

    async def hang(x: int) -> int:
        await release.wait()
        return x

    with anyio.move_on_after(0.05) as scope:
        await af.Pipeline(af.Stage(hang, 4)).run(Counting())
    assert scope.cancelled_caught
    assert other_tasks() == before


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: af.Stage(double, workers=0), ValueError),
        (lambda: af.Filter(bool, workers=-1), ValueError),
        (lambda: af.Stage("not callable"), TypeError),  # type: ignore[arg-type]
        (lambda: af.Batch(0), ValueError),
        (lambda: af.Batch(2, timeout=-1), ValueError),
        (lambda: af.Pipeline(af.Stage(double), buffer=0), ValueError),
        (lambda: af.Pipeline(af.Stage(double), on_error="ignore"), ValueError),
        (lambda: af.Pipeline(), ValueError),
        (lambda: af.Pipeline(double), TypeError),  # type: ignore[arg-type]
        (lambda: af.Union(af.Stage(double, flat=True)), TypeError),
        (lambda: af.Pipeline(af.Stage(double)).stream(42), TypeError),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_fail_before_anything_runs(build: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


async def test_a_failing_union_branch_raises_its_own_exception() -> None:
    async def bad(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(KeyError):
        await af.Pipeline(af.Union(af.Stage(double), af.Stage(bad))).run(range(3))
    out = await af.Pipeline(af.Union(af.Stage(bad)), on_error="collect").run([1])
    assert isinstance(out[0].error, KeyError)


async def test_a_sync_stage_that_overruns_its_timeout_is_a_timeout_error() -> None:
    import time

    def slow(x: int) -> int:
        time.sleep(0.1)
        return x

    with pytest.raises(TimeoutError):
        await af.Pipeline(af.Stage(slow, timeout=0.01)).run([1])


async def test_leaving_before_the_pipeline_ran_closes_everything() -> None:
    closed = anyio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
        finally:
            closed.set()

    started = source()
    assert await started.__anext__() == 1  # the caller had already started it
    async with af.Pipeline(af.Stage(double), af.Batch(2)).stream(started):
        pass  # no await: the driver never ran
    assert closed.is_set()
    async with af.imap(double, [1, 2]):
        pass
