"""map and imap: order, laziness, errors, limits, cleanup (API.md section 1)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest
from tasks import other_tasks, run_catching, settle

import aioflows as af

VIRTUAL_TIME = True


def now() -> float:
    return asyncio.get_running_loop().time()


class Hang:
    """Calls that never finish on their own; counts how many started and were cancelled."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def forever(self) -> None:
        self.started += 1
        try:
            await asyncio.sleep(1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def double(x: int) -> int:
    await asyncio.sleep(random.random() / 100)
    return 2 * x


# -- results and order ---------------------------------------------------------------------------


async def test_map_returns_results_in_input_order() -> None:
    assert await af.map(double, range(200), concurrency=7) == [2 * i for i in range(200)]


async def test_map_accepts_an_async_iterable() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(50):
            await asyncio.sleep(0.001)
            yield i

    assert await af.map(double, numbers(), concurrency=4) == [2 * i for i in range(50)]


async def test_map_of_nothing_is_an_empty_list() -> None:
    assert await af.map(double, []) == []


async def test_map_never_has_more_than_concurrency_calls_in_flight() -> None:
    running = peak = 0

    async def call(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (x % 3 + 1))
        running -= 1
        return x

    await af.map(call, range(100), concurrency=8)
    assert peak == 8


async def test_imap_ordered_yields_in_input_order_under_random_latency() -> None:
    out = [r async for r in af.imap(double, range(300), ordered=True, concurrency=10)]
    assert out == [2 * i for i in range(300)]


async def test_imap_unordered_yields_as_ready() -> None:
    async def slow_first(x: int) -> int:
        await asyncio.sleep(1 if x == 0 else 0.01)
        return x

    out = [r async for r in af.imap(slow_first, range(5), concurrency=5)]
    assert out[-1] == 0
    assert sorted(out) == list(range(5))


async def test_imap_ordered_emits_the_prefix_as_soon_as_it_is_complete() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(100 if x == 3 else 0.01)
        return x

    seen: list[tuple[int, float]] = []
    async with af.imap(call, range(6), ordered=True, concurrency=6) as results:
        async for r in results:
            seen.append((r, now()))
    assert [r for r, _ in seen] == list(range(6))
    assert seen[2][1] == pytest.approx(0.01)  # 0..2 did not wait for the slow item 3
    assert seen[3][1] == pytest.approx(100)


# -- laziness ----------------------------------------------------------------------------------


async def test_map_pulls_items_lazily_no_further_ahead_than_the_calls_in_flight() -> None:
    pulled = done = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            assert pulled <= done + 4 + 1  # never more than the pool ahead of completions
            yield i

    async def call(x: int) -> int:
        nonlocal done
        await asyncio.sleep(0.01)
        done += 1
        return x

    assert len(await af.map(call, items(), concurrency=4)) == 1000


class Counted:
    """An infinite input that counts how many items were pulled from it."""

    def __init__(self) -> None:
        self.count = 0

    def naturals(self) -> Iterator[int]:
        for i in itertools.count():
            self.count += 1
            yield i


async def test_imap_on_an_infinite_generator_with_early_exit() -> None:
    pulled = Counted()
    naturals = pulled.naturals

    async def call(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    before = other_tasks()
    got = []
    async for r in af.imap(call, naturals(), ordered=True, concurrency=4):
        got.append(r)
        if len(got) == 20:
            break
    await settle()
    assert got == list(range(20))
    assert pulled.count <= 20 + 2 * 4 + 4 + 1  # window + stream buffer, never the whole input
    assert other_tasks() == before  # the workers stopped when the iterator was dropped


async def test_ordered_imap_bounds_admission_behind_a_slow_item() -> None:
    pulled = Counted()
    naturals = pulled.naturals

    async def call(x: int) -> int:
        await asyncio.sleep(1000 if x == 0 else 0.001)
        return x

    async with af.imap(call, naturals(), ordered=True, concurrency=4) as results:
        with anyio.move_on_after(10):
            async for _ in results:
                pass
    assert pulled.count <= 2 * 4 + 1  # the head holds admission; nothing piles up


class Census:
    """Result objects that count themselves: how many a stream keeps alive at a time."""

    def __init__(self) -> None:
        self.created = self.freed = 0

    def make(self, value: int) -> Result:
        result = Result(value)
        self.created += 1
        weakref.finalize(result, self._free)
        return result

    def _free(self) -> None:
        self.freed += 1

    @property
    def live(self) -> int:
        return self.created - self.freed


class Result:
    __slots__ = ("__weakref__", "value")

    def __init__(self, value: int) -> None:
        self.value = value


async def test_ordered_imap_holds_a_bounded_number_of_results_issue_10() -> None:
    """An index the ordered sink had already emitted was put back in its pending map (and kept
    there for good) when a flush emitted the worker's own result, then had to wait."""
    census = Census()

    async def call(x: int) -> Result:
        if x % 5 == 0:  # every fifth item finishes late: the ones after it wait for it
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        return census.make(x)

    concurrency, seen = 4, 0
    async for result in af.imap(call, range(3_000), ordered=True, concurrency=concurrency):
        assert result.value == seen
        seen += 1
        # the stream's buffer, the re-ordering window, and the result the loop holds
        assert census.live <= concurrency + 2 * concurrency + 1
    assert seen == 3_000


# -- errors ------------------------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_first_error_is_raised_as_itself_and_the_rest_are_cancelled() -> None:
    hang = Hang()

    async def call(x: int) -> int:
        if x == 5:
            await asyncio.sleep(0.5)
            raise Boom(x)
        await hang.forever()
        return x

    before = other_tasks()
    with pytest.raises(Boom) as info:
        await af.map(call, range(10), concurrency=10)
    assert info.value.args == (5,)
    assert now() == pytest.approx(0.5)
    assert hang.cancelled == 9
    assert other_tasks() == before


async def test_an_error_from_the_input_is_raised_as_itself() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise Boom("input")

    with pytest.raises(Boom, match="input"):
        await af.map(double, items())

    async def aitems() -> AsyncIterator[int]:
        yield 1
        raise Boom("async input")

    with pytest.raises(Boom, match="async input"):
        await af.map(double, aitems())


async def test_return_exceptions_puts_them_in_place() -> None:
    async def call(x: int) -> int:
        if x % 3 == 0:
            raise Boom(x)
        return x

    out = await af.map(call, range(7), return_exceptions=True)
    assert [type(r) for r in out] == [Boom, int, int, Boom, int, int, Boom]
    assert out[1:3] == [1, 2]
    streamed = [r async for r in af.imap(call, range(7), ordered=True, return_exceptions=True)]
    assert [type(r) for r in streamed] == [type(r) for r in out]


async def test_timeout_bounds_each_call_with_a_timeout_error() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(x)
        return x

    with pytest.raises(TimeoutError):
        await af.map(call, [0, 5], timeout=1)
    assert now() == pytest.approx(1)
    out = await af.map(call, [0, 5, 0.5], timeout=1, return_exceptions=True)
    assert out[0] == 0
    assert isinstance(out[1], TimeoutError)
    assert out[2] == 0.5


async def test_imap_raises_the_first_error_and_stops() -> None:
    async def call(x: int) -> int:
        if x == 3:
            raise Boom(x)
        await asyncio.sleep(0.01)
        return x

    before = other_tasks()
    with pytest.raises(Boom):
        async for _ in af.imap(call, range(100), concurrency=2):
            pass
    await settle()
    assert other_tasks() == before


class Halt(BaseException):
    """Not an Exception: a custom stop signal, or a test framework's failure."""


#: BaseExceptions that are not Exceptions; ``pytest.fail`` raises one too.
STOPS = [Halt, pytest.fail.Exception]
FORMS = ["map", "map async input", "map return_exceptions", "imap for", "imap with", "ordered"]


async def through(form: str, fn: Callable[[int], Awaitable[int]], n: int) -> list[int]:
    """Every result of ``fn`` over ``range(n)``, by one of the ways map and imap are used."""

    async def numbers() -> AsyncIterator[int]:
        for i in range(n):
            yield i

    if form == "map":
        return await af.map(fn, range(n), concurrency=4)
    if form == "map async input":
        return await af.map(fn, numbers(), concurrency=4)
    if form == "map return_exceptions":
        return await af.map(fn, range(n), concurrency=4, return_exceptions=True)
    if form == "imap with":
        async with af.imap(fn, range(n), concurrency=4) as results:
            return [r async for r in results]
    ordered = form == "ordered"
    return [r async for r in af.imap(fn, range(n), concurrency=4, ordered=ordered)]


@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("form", FORMS)
async def test_a_base_exception_from_fn_is_raised_as_itself_issue_10(
    form: str, stop: type[BaseException]
) -> None:
    hang = Hang()

    async def call(x: int) -> int:
        if x == 6:
            await asyncio.sleep(1)
            raise stop("stop")
        if x > 6:
            await hang.forever()
        return x

    before = other_tasks()
    with pytest.raises(stop) as info:  # a BaseExceptionGroup is not one
        await through(form, call, 100)
    assert type(info.value) is stop
    await settle()
    assert hang.cancelled == hang.started  # the calls in flight were stopped
    assert other_tasks() == before


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("form", FORMS)
def test_keyboard_interrupt_from_fn_reaches_the_caller_issue_10(
    form: str, stop: type[BaseException]
) -> None:
    """asyncio re-raises these out of the event loop when they leave a task, so one that
    escaped a worker would end the loop instead of reaching the code awaiting the results."""

    async def call(x: int) -> int:
        await asyncio.sleep(0)
        if x == 3:
            raise stop()
        return x

    async def main() -> str:
        await through(form, call, 10)
        return "not raised"

    assert run_catching(main, stop) == "raised to the caller"


async def test_an_async_generator_source_is_closed_when_map_fails() -> None:
    closed = False

    async def source() -> AsyncIterator[int]:
        nonlocal closed
        try:
            for i in itertools.count():
                yield i
        finally:
            closed = True

    async def call(x: int) -> int:
        if x == 10:
            raise Boom()
        await asyncio.sleep(0.01)
        return x

    with pytest.raises(Boom):
        await af.map(call, source(), concurrency=3)
    assert closed


# -- limits ------------------------------------------------------------------------------------


async def test_rate_limits_calls_overall() -> None:
    starts: list[float] = []

    async def call(x: int) -> int:
        starts.append(now())
        return x

    await af.map(call, range(30), concurrency=30, rate="10/s")  # burst 10
    assert now() == pytest.approx(2.0)
    for i, t in enumerate(sorted(starts)):
        assert i + 1 <= 10 + t * 10 + 1e-6


async def test_a_shared_rate_limiter_spans_calls() -> None:
    limiter = af.RateLimiter("10/s")

    async def call(x: int) -> int:
        return x

    await asyncio.gather(
        af.map(call, range(20), rate=limiter), af.map(call, range(20), rate=limiter)
    )
    assert now() == pytest.approx(3.0)  # 40 tokens: 10 at once, then 30 at 10/s


async def test_per_key_rate_isolates_keys() -> None:
    finished: dict[str, float] = {}

    async def call(item: tuple[str, int]) -> None:
        finished[item[0]] = now()

    items = [("slow", i) for i in range(3)] + [("fast", i) for i in range(3)]
    await af.map(
        call,
        items,
        concurrency=6,
        key=lambda item: item[0],
        per_key_rate=af.KeyedRateLimiter("1/s", overrides={"fast": "100/s"}),
    )
    assert finished == {"slow": pytest.approx(2.0), "fast": pytest.approx(0.0, abs=0.03)}


async def test_retry_int_means_attempts() -> None:
    calls = 0

    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("transient")
        return x

    assert await af.map(flaky, [7], retry=3) == [7]
    assert calls == 3


# -- cleanup -----------------------------------------------------------------------------------


async def test_cancelling_map_cancels_every_call_and_leaves_no_task() -> None:
    hang = Hang()

    async def call(x: int) -> int:
        await hang.forever()
        return x

    before = other_tasks()
    with anyio.move_on_after(1):
        await af.map(call, range(100), concurrency=5)
    assert now() == pytest.approx(1)
    assert hang.started == hang.cancelled == 5
    assert other_tasks() == before


async def test_map_leaves_no_task_after_returning() -> None:
    before = other_tasks()
    await af.map(double, range(50), concurrency=10)
    assert other_tasks() == before


async def test_imap_async_with_cleans_up_at_the_end_of_the_block() -> None:
    hang = Hang()

    async def call(x: int) -> int:
        if x > 0:
            await hang.forever()
        return x

    before = other_tasks()
    async with af.imap(call, range(10), concurrency=4) as results:
        assert await results.__anext__() == 0
    assert other_tasks() == before  # deterministic: no settling needed
    assert hang.cancelled == 4  # items 1-3, and 4 started when 0 finished


async def test_cancelling_an_imap_consumer_stops_the_workers() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(1000)
        return x

    before = other_tasks()
    with anyio.move_on_after(1):
        async for _ in af.imap(call, range(10)):
            pass
    await settle()
    assert other_tasks() == before


async def test_an_exhausted_imap_stays_exhausted() -> None:
    it = af.imap(double, [1, 2])
    assert sorted([x async for x in it]) == [2, 4]
    assert [x async for x in it] == []


# -- bad input ---------------------------------------------------------------------------------


async def never_called(x: int) -> int:
    raise AssertionError("no call may start on bad input")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": True}, TypeError, "concurrency"),
        ({"concurrency": 2.5}, TypeError, "concurrency"),
        ({"rate": "fast"}, ValueError, "invalid rate"),
        ({"rate": -1}, ValueError, "rate"),
        ({"key": len}, ValueError, "per_key_rate"),
        ({"per_key_rate": "1/s"}, ValueError, "key"),
        ({"key": 3, "per_key_rate": "1/s"}, TypeError, "key"),
        ({"retry": 0}, ValueError, "attempts"),
        ({"retry": "3"}, TypeError, "retry"),
        ({"timeout": 0}, ValueError, "timeout"),
    ],
)
async def test_bad_options_fail_before_any_call(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await af.map(never_called, [1, 2], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        af.imap(never_called, [1, 2], **kwargs)  # type: ignore[arg-type]


async def test_a_non_callable_fn_or_non_iterable_items_fail_before_any_call() -> None:
    with pytest.raises(TypeError, match="fn must be"):
        await af.map(42, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="items must be"):
        await af.map(never_called, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="items must be"):
        af.imap(never_called, 42)  # type: ignore[arg-type]


async def test_an_imap_never_started_can_be_dropped_or_closed_cleanly() -> None:
    # filterwarnings=error turns an unclosed-stream ResourceWarning into a failure
    it = af.imap(double, [1, 2])
    del it
    gc.collect()
    closed = af.imap(double, [1, 2])
    await closed.aclose()
    assert [x async for x in closed] == []


async def test_admission_slots_are_never_lost_or_doubled() -> None:
    """A waiter cancelled just as it was granted a slot passes it on; one cancelled while
    waiting leaves the queue."""
    from aioflows._workers import Admit

    admit = Admit(1)
    assert admit.try_acquire()
    assert not admit.try_acquire()
    first = asyncio.ensure_future(admit.acquire())
    gone = asyncio.ensure_future(admit.acquire())
    second = asyncio.ensure_future(admit.acquire())
    await asyncio.sleep(0)  # all three wait
    gone.cancel()  # cancelled while waiting: leaves the queue
    await asyncio.sleep(0)
    admit.release()  # granted to `first`...
    first.cancel()  # ...which is cancelled before it runs: the slot must reach `second`
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first.cancelled()
    assert gone.cancelled()
    assert second.done()
    assert not second.cancelled()
    assert not admit.try_acquire()  # exactly one slot, held by `second`
    admit.release()
    assert admit.try_acquire()


# -- the one pool (aioflows._workers) ------------------------------------------------------------


async def test_a_growing_pool_stays_small_when_items_never_wait() -> None:
    """The flow executor's lazy growth: one worker to start, one more at most per loop pass
    while items are backlogged and none is idle; items that never wait need few workers."""
    from aioflows._workers import Pool, QueueSource

    queue: QueueSource[int] = QueueSource()
    for i in range(1000):
        queue.put(i)
    queue.close()
    taken: list[int] = []

    async def instant(x: int) -> None:
        taken.append(x)

    pool = Pool(instant, queue, 100, grow=True)
    await pool.run()
    assert sorted(taken) == list(range(1000))
    assert 1 <= pool.workers <= 1000 // 64 + 2  # one more per checkpoint at most


async def test_a_growing_pool_grows_to_concurrency_when_items_wait() -> None:
    from aioflows._workers import Pool, QueueSource

    queue: QueueSource[int] = QueueSource()
    running = peak = 0

    async def waits(x: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(1)
        running -= 1
        if x < 30:  # an instance queues its successors as it finishes, as a flow's do
            queue.put(2 * x + 1)
            queue.put(2 * x + 2)
        elif x == 60:
            queue.close()

    queue.put(0)
    started = now()
    pool = Pool(waits, queue, 8, grow=True)
    await pool.run()
    assert pool.workers == 8
    assert peak == 8
    assert now() - started < 20  # 61 one-second items on 8 workers, not one after another


class _Ticker:
    """Counts the loop passes another task gets: what a run that never waits must leave it."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)


async def _instant(x: int) -> int:
    return x


async def test_a_pool_of_items_that_never_wait_lets_the_loop_run() -> None:
    """A checkpoint every STREAK items taken without waiting: nothing else starves."""
    from aioflows._workers import STREAK, Collect, Pool, Source

    for source in (lambda: Source(range(STREAK * 10)), lambda: Source(aiter_of(STREAK * 10))):
        ticker = _Ticker()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await asyncio.sleep(0)
            sink = Collect()
            await Pool(_instant, source(), 1, sink=sink).run()
            seen = ticker.ticks
            tg.cancel_scope.cancel()
        assert sink.results == list(range(STREAK * 10))
        assert seen >= 9


async def aiter_of(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def test_a_cancellation_from_outside_propagates_from_the_pool() -> None:
    from aioflows._workers import Pool, Source

    hang = Hang()
    before = other_tasks()
    with anyio.move_on_after(1) as scope:
        await Pool(lambda _: hang.forever(), Source(range(10)), 4).run()
        raise AssertionError("run() returned under a cancelled scope")
    assert scope.cancelled_caught
    task = asyncio.ensure_future(Pool(lambda _: hang.forever(), Source(range(10)), 4).run())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert hang.started == hang.cancelled == 8
    assert other_tasks() == before


async def test_cancel_stops_the_pool_and_run_returns() -> None:
    from aioflows._workers import Pool, QueueSource

    hang = Hang()
    queue: QueueSource[int] = QueueSource()
    for i in range(10):
        queue.put(i)
    pool = Pool(lambda _: hang.forever(), queue, 4)

    async def stop() -> None:
        await asyncio.sleep(1)
        pool.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop)
        await pool.run()
    assert pool.error is None
    assert hang.started == hang.cancelled == 4
    assert queue.closed
    assert queue.backlog == 0


async def test_a_cancelled_worker_leaves_no_traceback_cycle_behind() -> None:
    """Workers end quietly when cancelled: no CancelledError kept on each finished task."""
    from aioflows._workers import Pool, Source

    hang = Hang()
    tasks: list[asyncio.Task[object]] = []

    async def record(item: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await hang.forever()

    pool = Pool(record, Source(range(10)), 4)

    async def stop() -> None:
        await asyncio.sleep(1)
        pool.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop)
        await pool.run()
    assert len(tasks) == 4
    assert all(t.done() and not t.cancelled() and t.exception() is None for t in tasks)


async def test_a_queue_source_wakes_one_waiter_per_item_and_all_on_close() -> None:
    from aioflows._workers import DONE, QueueSource

    queue: QueueSource[str] = QueueSource()
    got: list[object] = []

    async def take() -> None:
        got.append(await queue.pull())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(take)
        await asyncio.sleep(0)
        queue.put("a")
        await asyncio.sleep(0)
        assert got == [(0, "a")]
        queue.close()
    assert got == [(0, "a"), DONE, DONE]
    with pytest.raises(RuntimeError):
        queue.put("late")


async def test_map_of_calls_that_never_wait_lets_other_tasks_run() -> None:
    """map's fast path passes a checkpoint every STREAK items too: a long map of calls that
    return without waiting (cached, say) no longer holds the event loop from start to end."""
    ticker = _Ticker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        await asyncio.sleep(0)
        start = ticker.ticks
        results = await af.map(_instant, range(64 * 20), concurrency=1)
        seen = ticker.ticks - start
        tg.cancel_scope.cancel()
    assert results == list(range(64 * 20))
    assert seen >= 10
