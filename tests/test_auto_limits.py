"""Limits learned from rate-limit headers (issue 16, part A).

Header parsing is a table of real-looking header sets in both providers' styles, malformed
ones included. The launcher's learning runs against a real provider-like HTTP server
(tests/provider_server.py): per-key token buckets, both header styles, 429 with Retry-After
when exceeded, bearer checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest
from provider_server import Limit, ProviderServer, go_duration, rfc3339

import aioflows as af
from aioflows.ratelimit_headers import parse_duration, parse_reset

FAST, SLOW = "sk-test-fast-4f9a0c11d2", "sk-test-slow-7b3e55a9c0"
#: The client retries a broken connection itself, and hands every 429 to the launcher.
RETRY = af.Retry(3, backoff=0.01, max_throttles=0)
LOG = "aioflows.launcher"


def _in(seconds: float) -> str:
    """An Anthropic-style reset ``seconds`` from now."""
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("12", 12.0),
        ("2.25", 2.25),
        ("7m12s", 432.0),
        ("250us", 250e-6),
        (" 3s ", 3.0),
        ("", None),
        ("soon", None),
        ("1x", None),
        ("-1s", None),
        ("1s2", None),
        ("s", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    got = parse_duration(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


def test_rfc3339_resets_with_zones_and_fractions() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    assert parse_reset("2026-01-01T12:00:30Z", now) == pytest.approx(30)
    assert parse_reset("2026-01-01T12:00:30.250Z", now) == pytest.approx(30.25)
    assert parse_reset("2026-01-01T12:00:00.123456789z", now) == pytest.approx(0.123456789)
    assert parse_reset("2026-01-01T14:01:00+02:00", now) == pytest.approx(60)
    assert parse_reset("2026-01-01T06:30:00-05:30", now) == pytest.approx(0)
    assert parse_reset("2025-12-31T23:00:00Z", now) == 0  # already past: whole again now
    assert parse_reset(str(now + 90), now) == pytest.approx(90)  # a Unix time
    for garbage in (
        "2026-02-30T00:00:00Z",  # no such day
        "2026-01-01T25:00:00Z",
        "2026-01-01T12:00:00",  # no zone: local to whom?
        "2026-01-01T12:00:00+24:00",
        "tomorrow",
        "2026-01-01",
    ):
        assert parse_reset(garbage, now) is None, garbage


OPENAI = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29350",
    "x-ratelimit-reset-tokens": "1.3s",
    "openai-processing-ms": "412",
}
ANTHROPIC = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": _in(3600),  # made at collection: an hour holds
    "anthropic-ratelimit-tokens-limit": "80000",
    "anthropic-ratelimit-tokens-remaining": "80000",
    "anthropic-ratelimit-tokens-reset": _in(0),
    "request-id": "req_018EeWyXxfu5pfWkrYcMdjWG",
}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            OPENAI,
            {
                "requests_limit": 500,
                "requests_remaining": 499,
                "requests_reset_s": 0.12,
                "tokens_limit": 30000,
                "tokens_remaining": 29350,
                "tokens_reset_s": 1.3,
            },
            id="openai",
        ),
        pytest.param(
            {
                "X-RateLimit-Limit-Requests": "10000",
                "X-RateLimit-Remaining-Requests": "9999",
                "X-RateLimit-Reset-Requests": "6m0s",
            },
            {"requests_limit": 10000, "requests_remaining": 9999, "requests_reset_s": 360},
            id="openai-capitalised-per-day",
        ),
        pytest.param(
            ANTHROPIC,
            {
                "requests_limit": 50,
                "requests_remaining": 49,
                "requests_reset_s": (3000, 3601),
                "tokens_limit": 80000,
                "tokens_remaining": 80000,
                "tokens_reset_s": (0, 0.1),
            },
            id="anthropic",
        ),
        pytest.param(
            [(b"anthropic-ratelimit-requests-limit", b"4000"), ("Content-Type", "json")],
            {"requests_limit": 4000},
            id="raw-pairs",
        ),
        pytest.param(
            {**ANTHROPIC, **OPENAI},
            {"requests_limit": 500, "tokens_limit": 30000},
            id="both-openai-wins",
        ),
        pytest.param(
            {
                "x-ratelimit-limit-requests": "lots",
                "x-ratelimit-remaining-requests": "-3",
                "x-ratelimit-reset-requests": "soon",
                "x-ratelimit-limit-tokens": "nan",
                "x-ratelimit-remaining-tokens": "1e400",
                "x-ratelimit-reset-tokens": "20ms",
            },
            {"tokens_reset_s": 0.02, "requests_limit": None, "tokens_limit": None},
            id="garbage-fields-dropped",
        ),
        pytest.param(
            {
                "anthropic-ratelimit-requests-limit": "0",
                "anthropic-ratelimit-requests-remaining": "",
                "anthropic-ratelimit-requests-reset": "2026-13-01T00:00:00Z",
                "anthropic-ratelimit-tokens-reset": "99999999999s",
            },
            None,
            id="all-garbage",
        ),
        pytest.param({"content-type": "application/json"}, None, id="no-limits"),
        pytest.param({}, None, id="empty"),
    ],
)
def test_header_sets(headers: Any, expected: dict[str, Any] | None) -> None:
    info = af.RateLimitInfo.from_headers(headers)
    if expected is None:
        assert info is None
        return
    assert info is not None
    for field, want in expected.items():
        got = getattr(info, field)
        if isinstance(want, tuple):
            assert want[0] <= got <= want[1], (field, got)
        elif want is None:
            assert got is None, field
        else:
            assert got == pytest.approx(want), field


@pytest.mark.parametrize(
    ("reset", "rounding"),
    [("120ms", 0.001), ("6m0s", 1.0), ("1.3s", 0.1), ("12", 1.0), ("0.25", 0.01)],
)
def test_a_reset_says_how_far_it_may_be_off(reset: str, rounding: float) -> None:
    info = af.RateLimitInfo.from_headers({"x-ratelimit-reset-requests": reset})
    assert info is not None
    assert info.reset_rounding_s == pytest.approx(rounding)
    exact = af.RateLimitInfo.from_headers(
        {"anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:00.250Z"}
    )
    whole = af.RateLimitInfo.from_headers({"anthropic-ratelimit-tokens-reset": _in(5)})
    assert exact is not None
    assert exact.reset_rounding_s == pytest.approx(0.001)
    assert whole is not None
    assert whole.reset_rounding_s == 1.0


def test_garbage_is_logged_at_debug_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aioflows.ratelimit"):
        info = af.RateLimitInfo.from_headers(
            {"x-ratelimit-limit-requests": "many", "x-ratelimit-remaining-requests": "4"}
        )
    assert info == af.RateLimitInfo(requests_remaining=4)
    assert "x-ratelimit-limit-requests" in caplog.text
    assert "'many'" in caplog.text


def test_the_test_server_writes_what_providers_write() -> None:
    assert [go_duration(s) for s in (0.0067, 0.5, 1.5, 360, 3723.5)] == [
        "7ms",
        "500ms",
        "1.5s",
        "6m0s",
        "1h2m3.5s",
    ]
    assert parse_reset(rfc3339(1_000_000.25), 1_000_000.0) == pytest.approx(0.25)


# -- HttpClient and report_headers ---------------------------------------------------------


def _auth(secret: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def test_http_client_responses_carry_rate_limit() -> None:
    with ProviderServer({FAST: Limit(3, window=60)}, style="anthropic") as server:
        async with af.HttpClient(server.url, retry=RETRY) as client:
            first = await client.post("/v1/messages", headers=_auth(FAST), json={})
            assert first.status_code == 200
            info = first.rate_limit  # type: ignore[attr-defined]
            assert isinstance(info, af.RateLimitInfo)
            assert (info.requests_limit, info.requests_remaining) == (3, 2)
            assert info.requests_reset_s is not None
            assert 15 <= info.requests_reset_s <= 21  # one of 3/min: whole again in 20 s
            assert af.RateLimitInfo.of(first) is info  # the typed accessor
            for _ in range(2):
                await client.post("/v1/messages", headers=_auth(FAST), json={})
            throttled = await client.post("/v1/messages", headers=_auth(FAST), json={})
            assert throttled.status_code == 429
            said = af.RateLimitInfo.of(throttled)
            assert said is not None
            assert (said.requests_limit, said.requests_remaining) == (3, 0)
            unknown = await client.post("/v1/messages", headers=_auth("sk-nope"), json={})
            assert unknown.status_code == 401
            assert af.RateLimitInfo.of(unknown) is None
    # Any client's response: read from its headers.
    plain = httpx.Response(200, headers={"x-ratelimit-limit-requests": "60"})
    assert af.RateLimitInfo.of(plain) == af.RateLimitInfo(requests_limit=60)


def _caller(client: httpx.AsyncClient, report: bool = False) -> Any:
    """A launcher's ``fn``: one call to the provider with the key; a 429 raised as a throttle."""

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        response = await client.post("/v1/chat", headers=_auth(key.secret), json={})
        if report:
            key.report_headers(response.headers)
        response.raise_for_status()
        return response.status_code

    return fn


async def _until(seconds: float) -> AsyncIterator[dict[str, Any]]:
    """Inputs for ``seconds``, then no more: a job measured by time, not by count."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        yield {"id": n}
        n += 1


async def test_report_headers_from_another_client(caplog: pytest.LogCaptureFixture) -> None:
    with ProviderServer({SLOW: Limit(60)}, style="openai", latency=0.002) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:  # not HttpClient
            with caplog.at_level(logging.INFO, logger=LOG):
                started = time.monotonic()
                summary = await af.Launcher(_caller(client, report=True), keys=[SLOW]).run(
                    {"id": n} for n in range(100)
                )
                took = time.monotonic() - started
    assert summary.succeeded == 100
    assert "key-0: learned 60 requests per 1s from the rate-limit headers" in caplog.text
    # Paced by what it learned: 100 calls at 60/s (57 with the headroom) take over 0.7 s
    # after the first second's burst, and the server was not hammered.
    assert took > 0.6
    assert server.count(SLOW, 429) <= 3
    assert SLOW not in caplog.text


async def test_two_keys_learn_their_different_limits(caplog: pytest.LogCaptureFixture) -> None:
    """The issue's job: 2,000 calls over 2 keys of different limits (150/s and 50/s, the
    issue's 300/min and 60/min scaled to seconds), nothing said of them but the headers."""
    limits = {FAST: Limit(150), SLOW: Limit(50)}
    with ProviderServer(limits, style="openai", latency=0.005) as server:
        async with af.HttpClient(server.url, retry=RETRY) as client:
            with caplog.at_level(logging.INFO, logger=LOG):
                started = time.monotonic()
                summary = await af.Launcher(
                    _caller(client), keys=[FAST, SLOW], rate_per_key="auto", concurrency=16
                ).run({"id": n} for n in range(2000))
                ended = time.monotonic()
    assert summary.succeeded == 2000
    assert "key-0: learned 150 requests per 1s" in caplog.text
    assert "key-1: learned 50 requests per 1s" in caplog.text
    settled = started + 2
    throttled = server.count(FAST, 429, settled) + server.count(SLOW, 429, settled)
    assert throttled <= 5, f"{throttled} 429s after the first seconds"
    # Each key served near its limit (never above it: the server enforces that), the fast one
    # about three times as often.
    fast, slow = (server.served_rate(k, settled, ended - 0.5) for k in (FAST, SLOW))
    assert 0.6 * 150 <= fast <= 1.3 * 150, fast
    assert 0.75 * 50 <= slow <= 1.3 * 50, slow
    assert summary.per_key["key-0"] > 2 * summary.per_key["key-1"]
    assert FAST not in caplog.text
    assert SLOW not in caplog.text


async def test_a_limit_changed_mid_run_is_followed(caplog: pytest.LogCaptureFixture) -> None:
    with ProviderServer({FAST: Limit(100)}, style="anthropic", latency=0.003) as server:
        async with af.HttpClient(server.url, retry=RETRY) as client:
            launcher = af.Launcher(_caller(client), keys=[FAST], concurrency=8)
            t0 = time.monotonic()

            async def change() -> None:
                await anyio.sleep(1.0)
                server.set_limit(FAST, Limit(30))
                await anyio.sleep(1.5)
                server.set_limit(FAST, Limit(120))

            with caplog.at_level(logging.INFO, logger=LOG):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(change)
                    await launcher.run(_until(3.9))
    assert "key-0: learned 100 requests per 1s" in caplog.text
    assert "key-0: its limit is now 30 requests per 1s" in caplog.text
    assert "key-0: its limit is now 120 requests per 1s" in caplog.text
    low = server.served_rate(FAST, t0 + 1.6, t0 + 2.5)
    high = server.served_rate(FAST, t0 + 3.0, t0 + 3.8)
    assert 0.6 * 30 <= low <= 1.3 * 30, low
    assert 0.6 * 120 <= high <= 1.3 * 120, high
    # A few 429s when the limit drops under the key's feet, then none.
    assert server.count(FAST, 429) <= 10
    assert server.count(FAST, 429, t0 + 1.6) <= 3


async def test_explicit_rates_win_over_headers(caplog: pytest.LogCaptureFixture) -> None:
    limits = {FAST: Limit(200), SLOW: Limit(200)}
    with ProviderServer(limits, style="both") as server:
        async with af.HttpClient(server.url, retry=RETRY) as client:
            launcher = af.Launcher(
                _caller(client), keys={FAST: "5/s", SLOW: "auto"}, rate_per_key="5/s"
            )
            with caplog.at_level(logging.INFO, logger=LOG):
                t0 = time.monotonic()
                await launcher.run(_until(0.6))
                t1 = time.monotonic()
    assert "key-0: learned" not in caplog.text
    assert "key-1: learned 200 requests per 1s" in caplog.text
    # The explicit key kept its 5/s (a burst of 5, then 5 a second), though the headers
    # said 200; the auto key in the same run went by the headers.
    assert server.count(FAST, 200) <= 5 + 5 * (t1 - t0) + 2
    assert server.count(SLOW, 200) > 3 * server.count(FAST, 200)


async def test_before_any_report_one_call_at_a_time_then_unlimited_without_headers() -> None:
    spans: list[tuple[float, float]] = []

    def garbage(request: httpx.Request) -> httpx.Response:
        # Headers of the right names that say nothing: ignored, never an error.
        return httpx.Response(
            200, headers={"x-ratelimit-limit-requests": "n/a", "x-ratelimit-reset-requests": "?"}
        )

    transport = httpx.MockTransport(garbage)
    async with af.HttpClient("http://provider.test", transport=transport) as client:

        async def fn(sample: dict[str, Any], key: af.Key) -> int:
            start = time.monotonic()
            response = await client.get("/")
            assert response.rate_limit is None  # type: ignore[attr-defined]
            await anyio.sleep(0.3 if sample["id"] == 0 else 0.05)
            spans.append((start, time.monotonic()))
            return response.status_code

        summary = await af.Launcher(fn, keys=[FAST], concurrency=8).run(
            {"id": n} for n in range(20)
        )
    assert summary.succeeded == 20
    first = min(spans)
    # Nothing started while the first call ran (the key did not know its limits yet) ...
    assert all(start >= first[1] for start, _ in spans if (start, _) != first)
    # ... and after it, without any headers, calls ran together as without a rate.
    later = sorted(spans)[1:]
    overlapping = max(sum(s <= t < e for s, e in later) for t, _ in later)
    assert overlapping >= 4

    # Without keys, the "default" key is not held back: it is no API key to learn of.
    runs: list[tuple[float, float]] = []

    async def quick(sample: dict[str, Any], key: af.Key) -> None:
        start = time.monotonic()
        await anyio.sleep(0.2)
        runs.append((start, time.monotonic()))

    await af.launch(quick, [{"id": n} for n in range(4)])
    assert max(start for start, _ in runs) < min(end for _, end in runs)  # all four at once


def test_auto_is_not_for_shared_buckets() -> None:
    shared = af.RedisRateLimiter("redis://127.0.0.1:9", "1/s")

    async def fn(sample: dict[str, Any], key: af.Key) -> None:
        return None

    with pytest.raises(ValueError, match="'auto'"):
        af.Launcher(fn, keys=[FAST], rate_per_key="auto", shared=shared)
    # A key without a rate keeps its old meaning there: unlimited, nothing learned.
    assert af.Launcher(fn, keys=[FAST], shared=shared) is not None


async def test_token_limits_are_learned_with_tokens_per_key_auto(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 1,000 requests but 600 tokens a second: at 30 tokens a call, the tokens bind (20/s).
    limits = {FAST: Limit(1000, tokens=600)}
    with ProviderServer(limits, style="anthropic") as server:
        async with af.HttpClient(server.url, retry=RETRY) as client:

            async def fn(sample: dict[str, Any], key: af.Key) -> None:
                response = await client.post("/v1/messages", headers=_auth(FAST), json=sample)
                response.raise_for_status()
                key.report_usage(response.json()["usage"]["tokens"])

            with caplog.at_level(logging.INFO, logger=LOG):
                t0 = time.monotonic()
                summary = await af.Launcher(
                    fn, keys=[FAST], tokens_per_key="auto", cost=lambda sample: 30
                ).run({"id": n, "tokens": 30} for n in range(35))
                t1 = time.monotonic()
    assert summary.succeeded == 35
    assert "key-0: learned 1000 requests per 1s" in caplog.text
    assert "key-0: learned 600 tokens per 1s" in caplog.text
    assert server.count(FAST, 429) <= 3
    # 35 calls of 30 tokens: the first 20 from the full bucket, the rest at 19 a second.
    assert t1 - t0 > 0.6
