"""The one pool's growth over a queue (``Pool(grow=True)`` on a ``QueueSource``): what the
flow scheduler and the serving runner rely on. No-op items are served by the few workers that
are never idle, items that wait grow the pool up to its concurrency, ``feed`` from inside a
call adds no worker while ``put`` from outside may, and a failure still ends the pool."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from aioflows._workers import Pool, QueueSource


async def test_no_op_items_take_few_workers() -> None:
    queue: QueueSource[int] = QueueSource()
    done: list[int] = []

    async def call(item: int) -> None:
        done.append(item)

    for i in range(10_000):
        queue.put(i)
    queue.close()
    pool = Pool(call, queue, 500, grow=True)
    await pool.run()
    assert sorted(done) == list(range(10_000))
    # Before the drain loop's rule a pool like this grew to 189 workers.
    assert pool.workers <= 3
    assert pool.workers >= 1


async def test_items_that_wait_grow_the_pool_to_its_concurrency_and_no_further() -> None:
    queue: QueueSource[int] = QueueSource()
    running = peak = 0

    async def call(item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1

    for i in range(200):
        queue.put(i)
    queue.close()
    pool = Pool(call, queue, 16, grow=True)
    await pool.run()
    assert pool.workers == 16
    assert peak == 16


async def test_feed_from_inside_a_call_adds_no_worker() -> None:
    queue: QueueSource[int] = QueueSource()
    seen: list[int] = []

    async def call(item: int) -> None:
        seen.append(item)
        if item < 2_000:
            queue.feed(item + 1)  # a successor, as a flow instance queues its own
        else:
            queue.close()

    queue.put(0)
    pool = Pool(call, queue, 64, grow=True)
    await pool.run()
    assert seen == list(range(2_001))
    assert pool.workers == 1  # before the drain loop: a worker per put


async def test_a_failure_ends_the_pool_and_is_raised() -> None:
    queue: QueueSource[int] = QueueSource()
    calls = 0

    async def call(item: int) -> None:
        nonlocal calls
        calls += 1
        if item == 5:
            raise ValueError("item 5")
        await anyio.lowlevel.checkpoint()

    for i in range(1_000):
        queue.put(i)
    queue.close()
    with pytest.raises(ValueError, match="item 5"):
        await Pool(call, queue, 8, grow=True).run()
    assert calls < 1_000
