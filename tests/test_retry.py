"""Retry and RateLimited: failures vs throttles (API.md section 1)."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

import aioflows as af
from aioflows.errors import AioflowsError
from aioflows.retry import parse_retry_after, throttle_delay

VIRTUAL_TIME = True


def now() -> float:
    return asyncio.get_running_loop().time()


class Transient(Exception):
    pass


def test_defaults_match_the_contract() -> None:
    r = af.Retry()
    assert (r.attempts, r.backoff, r.multiplier, r.max_backoff, r.jitter, r.on) == (
        3,
        0.5,
        2.0,
        30.0,
        True,
        Exception,
    )
    with pytest.raises(TypeError):
        af.Retry(3, 1.0)  # type: ignore[misc]  # options are keyword-only


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"backoff": -1},
        {"multiplier": 0.5},
        {"max_backoff": float("inf")},
        {"max_throttles": -1},
        {"max_wait": 0},
        {"max_wait": float("inf")},
    ],
)
def test_bad_retry_values_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        af.Retry(**kwargs)  # type: ignore[arg-type]


def test_on_must_be_exception_types() -> None:
    with pytest.raises(TypeError, match="on"):
        af.Retry(on=ValueError("x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on"):
        af.Retry(on=())


def test_backoff_grows_by_multiplier_up_to_the_cap_and_jitter_stays_within_half() -> None:
    r = af.Retry(backoff=1, multiplier=3, max_backoff=10, jitter=False)
    assert [r.delay(n) for n in (1, 2, 3, 4)] == [1, 3, 9, 10]
    j = af.Retry(backoff=1, multiplier=2)
    samples = [j.delay(3) for _ in range(200)]
    assert all(2 <= s <= 4 for s in samples)
    assert len(set(samples)) > 100


async def test_failures_are_retried_with_backoff_then_raised_as_themselves() -> None:
    calls: list[float] = []

    async def always(x: int) -> int:
        calls.append(now())
        raise Transient(x)

    with pytest.raises(Transient):
        await af.map(always, [1], retry=af.Retry(3, backoff=1, jitter=False))
    assert calls == [0, pytest.approx(1), pytest.approx(3)]


async def test_only_the_listed_exceptions_are_retried() -> None:
    calls = 0

    async def wrong(x: int) -> int:
        nonlocal calls
        calls += 1
        raise KeyError(x)

    with pytest.raises(KeyError):
        await af.map(wrong, [1], retry=af.Retry(5, on=Transient))
    assert calls == 1


async def test_a_throttle_is_not_an_attempt_and_pauses_the_limiter() -> None:
    limiter = af.RateLimiter(100)
    calls: list[float] = []

    async def throttled_twice(x: int) -> int:
        calls.append(now())
        if len(calls) <= 2:
            raise af.RateLimited(retry_after=5)
        return x

    other_got_at: list[float] = []

    async def someone_else_sharing_the_limiter() -> None:
        await asyncio.sleep(0.1)
        await limiter.acquire()
        other_got_at.append(now())

    results, _ = await asyncio.gather(
        af.map(throttled_twice, [1], rate=limiter, retry=af.Retry(1)),
        someone_else_sharing_the_limiter(),
    )
    assert results == [1]
    # Retry(1), yet three calls; each pause ends with an empty bucket (0.01 s per token), and
    # the waiters are served in order: the retry, queued first, then the other caller.
    assert calls == [0, pytest.approx(5.01), pytest.approx(10.03)]
    assert other_got_at == [pytest.approx(10.02)]  # the shared limiter itself was paused, twice


async def test_a_throttle_pauses_only_its_key_when_there_is_one() -> None:
    finished: dict[str, float] = {}
    throttled = False

    async def call(host: str) -> None:
        nonlocal throttled
        if host == "a" and not throttled:
            throttled = True
            raise af.RateLimited(retry_after=3)
        finished[host] = now()

    await af.map(call, ["a", "b"], concurrency=2, rate=1000, key=str, per_key_rate=1000, retry=2)
    assert finished == {"a": pytest.approx(3.001), "b": 0}  # the key resumes empty


async def test_throttles_are_bounded_so_a_call_throttled_forever_ends() -> None:
    calls = 0

    async def forever(x: int) -> int:
        nonlocal calls
        calls += 1
        raise af.RateLimited(retry_after=1)

    with pytest.raises(af.RateLimited):
        await af.map(forever, [1], retry=af.Retry(3, max_throttles=4))
    assert calls == 5


async def test_a_throttle_without_retry_after_waits_the_backoff() -> None:
    calls: list[float] = []

    async def once(x: int) -> int:
        calls.append(now())
        if len(calls) == 1:
            raise af.RateLimited()
        return x

    await af.map(once, [1], retry=af.Retry(1, backoff=2, jitter=False))
    assert calls == [0, pytest.approx(2)]


def status_error(status: int, retry_after: str | None) -> httpx.HTTPStatusError:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    request = httpx.Request("GET", "http://127.0.0.1/")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError("throttled", request=request, response=response)


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (429, "7", (True, 7.0)),
        (429, None, (True, None)),
        (503, "2.5", (True, 2.5)),
        (503, None, (False, None)),
        (500, "3", (False, None)),
        (404, None, (False, None)),
    ],
)
def test_httpx_status_errors_429_and_503_with_retry_after_are_throttles(
    status: int, header: str | None, expected: tuple[bool, float | None]
) -> None:
    assert throttle_delay(status_error(status, header)) == expected


async def test_an_httpx_429_is_retried_as_a_throttle() -> None:
    calls: list[float] = []

    async def call(x: int) -> int:
        calls.append(now())
        if len(calls) == 1:
            raise status_error(429, "4")
        return x

    assert await af.map(call, [3], retry=af.Retry(1)) == [3]
    assert calls == [0, pytest.approx(4)]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 0 ") == 0
    assert parse_retry_after("-5") == 0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert parse_retry_after(date) == pytest.approx(30, abs=2)
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after(past) == 0


def test_rate_limited_is_an_aioflows_error_with_its_delay() -> None:
    exc = af.RateLimited(2)
    assert isinstance(exc, AioflowsError)
    assert exc.retry_after == 2
    assert "2 s" in str(exc)
    with pytest.raises(ValueError, match="retry_after"):
        af.RateLimited(-1)
    with pytest.raises(ValueError, match="retry_after"):
        af.RateLimited("5")  # type: ignore[arg-type]


# --- issue 10: pauses are bounded by Retry.max_wait; timeout bounds the whole call ------------


async def far_away(x: object) -> None:
    raise af.RateLimited(retry_after=1e9)  # valid, and 31 years


async def test_a_throttle_asking_more_than_max_wait_is_raised_at_once_issue10() -> None:
    limiter = af.RateLimiter(100)
    with pytest.raises(af.RateLimited):
        await af.map(far_away, [1], rate=limiter, retry=af.Retry(3, max_wait=60))
    assert now() == 0  # not waited for
    # The limiter rests for the cap, not 31 years (and resumes empty: 0.01 s for a token).
    assert limiter.delay() == pytest.approx(60.01)

    limiter = af.RateLimiter(100)
    with pytest.raises(af.RateLimited):
        await af.map(far_away, [1], rate=limiter)  # retry=None: the default cap, 300 s
    assert now() == 0
    assert limiter.delay() == pytest.approx(300.01)


async def test_a_keys_pause_never_exceeds_max_wait_issue10() -> None:
    keyed = af.KeyedRateLimiter(100)
    with pytest.raises(af.RateLimited):
        await af.map(far_away, ["a"], key=str, per_key_rate=keyed, retry=af.Retry(3))
    assert now() == 0
    assert not keyed.try_acquire("a")  # the key rests...
    await asyncio.sleep(300.01)
    assert keyed.try_acquire("a")  # ...for Retry().max_wait at most (and a token's refill)


async def test_an_httpx_429_asking_more_than_max_wait_is_raised_as_itself_issue10() -> None:
    calls = 0

    async def call(x: int) -> int:
        nonlocal calls
        calls += 1
        raise status_error(429, "1000000000")

    with pytest.raises(httpx.HTTPStatusError) as info:
        await af.map(call, [1], retry=af.Retry(3))
    assert info.value.response.status_code == 429
    assert (calls, now()) == (1, 0)


async def test_a_throttle_within_max_wait_is_still_waited_for_issue10() -> None:
    calls: list[float] = []

    async def once(x: int) -> int:
        calls.append(now())
        if len(calls) == 1:
            raise af.RateLimited(retry_after=60)
        return x

    assert await af.map(once, [1], retry=af.Retry(1, max_wait=60)) == [1]
    assert calls == [0, pytest.approx(60)]


async def test_timeout_bounds_the_throttle_waits_of_a_call_issue10() -> None:
    calls: list[float] = []

    async def throttled(x: int) -> int:
        calls.append(now())
        raise af.RateLimited(retry_after=4)

    with pytest.raises(TimeoutError) as info:
        await af.map(throttled, [1], retry=af.Retry(1, max_throttles=10), timeout=10)
    # The waits to 4 and 8 fit in 10 s; the one to 12 does not, so the call fails at once at 8.
    assert calls == [0, pytest.approx(4), pytest.approx(8)]
    assert now() == pytest.approx(8)
    assert isinstance(info.value.__cause__, af.RateLimited)


async def test_timeout_bounds_the_backoffs_and_attempts_of_a_call_issue10() -> None:
    calls: list[float] = []

    async def fails_then_hangs(x: int) -> int:
        calls.append(now())
        await asyncio.sleep(1)
        if len(calls) == 1:
            raise Transient(x)
        await asyncio.sleep(100)
        return x

    policy = af.Retry(5, backoff=1, jitter=False)
    with pytest.raises(TimeoutError):
        await af.map(fails_then_hangs, [1], retry=policy, timeout=3)
    # First attempt 0-1, backoff 1-2, the second attempt gets what is left: cut at 3, not retried.
    assert calls == [0, pytest.approx(2)]
    assert now() == pytest.approx(3)

    calls.clear()

    async def always(x: int) -> int:
        calls.append(now())
        raise Transient(x)

    steady = af.Retry(10, backoff=3, multiplier=1, jitter=False)
    with pytest.raises(TimeoutError) as info:
        await af.map(always, [1], retry=steady, timeout=7)
    start = calls[0]
    assert [t - start for t in calls] == [0, pytest.approx(3), pytest.approx(6)]
    assert now() - start == pytest.approx(6)  # the backoff to 9 would pass 7: no waiting for it
    assert isinstance(info.value.__cause__, Transient)


async def test_waiting_for_a_limiters_tokens_does_not_count_against_timeout_issue10() -> None:
    async def quick(x: int) -> int:
        return x

    limiter = af.RateLimiter(1, burst=1)
    assert await af.map(quick, [1, 2, 3], rate=limiter, timeout=0.5, concurrency=3) == [1, 2, 3]
    assert now() == pytest.approx(2)


# --- issue 11: one set of throttle/retry semantics, through map and through launch -------------


@pytest.mark.parametrize(
    ("retry", "throttle", "expected_calls"),
    [
        # no Retry-After: the policy's backoff (1, 2, 4 s), max_throttles=3 tolerated, then raised
        (af.Retry(2, backoff=1, jitter=False, max_throttles=3), af.RateLimited(), [0, 1, 3, 7]),
        # with Retry-After: that wait, not the backoff
        (af.Retry(1, backoff=9, jitter=False, max_throttles=2), af.RateLimited(2), [0, 2, 4]),
        # retry=None: never called twice, the throttle raised at once
        (None, af.RateLimited(), [0]),
        (None, af.RateLimited(5), [0]),
        # asking for more than max_wait: raised at once, not waited for
        (af.Retry(3, max_wait=10), af.RateLimited(11), [0]),
        # the policy's own backoff above max_wait: cut to max_wait, and retried
        (
            af.Retry(2, backoff=50, jitter=False, max_wait=2, max_throttles=2),
            af.RateLimited(),
            [0, 2, 4],
        ),
    ],
    ids=["backoff", "retry-after", "none", "none-retry-after", "over-max-wait", "backoff-capped"],
)
async def test_map_and_launch_treat_a_throttle_alike_issue11(
    retry: af.Retry | None, throttle: af.RateLimited, expected_calls: list[float]
) -> None:
    map_calls: list[float] = []

    async def through_map(x: int) -> int:
        map_calls.append(now())
        raise throttle

    start = now()
    with pytest.raises(af.RateLimited) as by_map:
        await af.map(through_map, [1], retry=retry)
    map_calls = [t - start for t in map_calls]

    launch_calls: list[float] = []

    async def through_launch(sample: dict[str, object], key: af.Key) -> int:
        launch_calls.append(now())
        raise throttle

    start = now()
    with pytest.raises(af.RateLimited) as by_launch:
        await af.launch(through_launch, [{"id": 1}], retry=retry, fault_tolerant=False)
    launch_calls = [t - start for t in launch_calls]

    assert map_calls == launch_calls == [pytest.approx(t) for t in expected_calls]
    assert by_map.value is throttle  # map raises the throttle itself...
    assert by_launch.value.retry_after == throttle.retry_after  # ...launch a scrubbed copy of it


async def test_a_throttle_without_retry_after_rests_the_limiter_even_without_retry_issue11() -> (
    None
):
    # retry=None does not retry, but the limiter still rests: the next call is not made at once
    # into the end that said "too many requests" (THROTTLE_BACKOFF, 1 s; it was 0 s).
    from aioflows.retry import THROTTLE_BACKOFF

    limiter = af.RateLimiter(100)
    calls: list[float] = []

    async def first_throttled(x: int) -> int:
        calls.append(now())
        if x == 0:
            raise af.RateLimited()
        return x

    results = await af.map(
        first_throttled, [0, 1], rate=limiter, concurrency=1, return_exceptions=True
    )
    assert isinstance(results[0], af.RateLimited)
    assert results[1] == 1
    assert THROTTLE_BACKOFF == 1.0
    assert calls == [0, pytest.approx(THROTTLE_BACKOFF + 0.01)]  # resumed empty: 0.01 s

    keyed_calls: list[float] = []

    async def fn(sample: dict[str, object], key: af.Key) -> int:
        keyed_calls.append(now())
        if sample["id"] == 0:
            raise af.RateLimited()
        return 1

    start = now()
    records = await af.launch(fn, [{"id": 0}, {"id": 1}], retry=None, concurrency=1)
    assert [r["error"] is None for r in records] == [False, True]
    assert [t - start for t in keyed_calls] == [0, pytest.approx(THROTTLE_BACKOFF)]
