"""The launcher's usage accounting (issue 16): tokens per key and overall, prices and cost."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import pytest

import aioflows as af
from aioflows import _launch_display

SECRETS = ["sk-live-USAGE-0000aaaa", "sk-live-USAGE-1111bbbb"]


def items(n: int) -> list[dict[str, Any]]:
    return [{"id": i} for i in range(n)]


async def reporting(sample: dict[str, Any], key: af.Key) -> str:
    key.report_usage(sample["id"] + 1)
    return key.label


async def test_tokens_are_totalled_per_key_and_overall_and_recorded(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    summary = await af.Launcher(reporting, keys=SECRETS, output=output).run(items(40))
    assert summary.tokens == sum(range(1, 41))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    for label in ("key-0", "key-1"):
        mine = [r for r in records if r["key"] == label]
        assert summary.tokens_per_key[label] == sum(r["usage"]["tokens"] for r in mine)
    assert all(r["usage"] == {"tokens": r["id"] + 1, "cost": None} for r in records)
    assert isinstance(records[0]["usage"]["tokens"], int)  # a whole count reads as one
    assert summary.cost is None
    assert summary.cost_per_key == {}
    table = str(summary)
    assert "tokens" in table
    assert f"{sum(range(1, 41)):,}" in table
    assert "cost" not in table
    assert all(secret not in output.read_text() + table for secret in SECRETS)


async def test_one_price_for_every_key() -> None:
    summary = await af.Launcher(reporting, keys=SECRETS, price_per_1k_tokens=2.0).run(items(40))
    assert summary.cost == pytest.approx(summary.tokens / 1000 * 2.0)
    assert sum(summary.cost_per_key.values()) == pytest.approx(summary.cost)
    records = await af.launch(reporting, items(10), keys=SECRETS, price_per_1k_tokens=2.0)
    assert [r["usage"]["cost"] for r in records] == pytest.approx(
        [(i + 1) / 1000 * 2.0 for i in range(10)]
    )
    table = str(summary)
    assert "cost" in table
    assert f"{summary.cost:,.4f}" in table


async def test_prices_by_label_leave_unpriced_keys_without_cost() -> None:
    records = await af.launch(
        reporting, items(20), keys=SECRETS, price_per_1k_tokens={"key-1": 10.0}
    )
    for record in records:
        if record["key"] == "key-1":
            assert record["usage"]["cost"] == pytest.approx(record["usage"]["tokens"] / 100)
        else:
            assert record["usage"]["cost"] is None
    summary = await af.Launcher(reporting, keys=SECRETS, price_per_1k_tokens={"key-1": 10.0}).run(
        items(20)
    )
    assert set(summary.cost_per_key) == {"key-1"}
    assert summary.cost == pytest.approx(summary.tokens_per_key["key-1"] / 100)
    assert summary.tokens == sum(range(1, 21))


async def test_a_call_that_reports_nothing_has_no_usage(tmp_path: Path) -> None:
    async def quiet(sample: dict[str, Any], key: af.Key) -> int:
        return 1

    output = tmp_path / "out.jsonl"
    summary = await af.Launcher(quiet, output=output, price_per_1k_tokens=1.0).run(items(5))
    assert all("usage" not in json.loads(line) for line in output.read_text().splitlines())
    assert summary.tokens == 0
    assert "tokens" not in str(summary)


async def test_every_attempt_is_charged_and_the_last_report_of_each_counts() -> None:
    attempts: dict[int, int] = {}

    async def retried(sample: dict[str, Any], key: af.Key) -> int:
        attempts[sample["id"]] = attempts.get(sample["id"], 0) + 1
        key.report_usage(1000)
        key.report_usage(10)  # a second report replaces the first
        if attempts[sample["id"]] == 1:
            raise RuntimeError("cut off mid-answer")
        return 1

    records = await af.launch(
        retried, items(4), keys=SECRETS, retry=af.Retry(2, backoff=0.0), price_per_1k_tokens=1.0
    )
    assert all(r["attempts"] == 2 for r in records)
    assert [r["usage"]["tokens"] for r in records] == [20] * 4
    assert [r["usage"]["cost"] for r in records] == pytest.approx([0.02] * 4)


async def test_usage_still_reconciles_the_token_budget() -> None:
    async def cheap(sample: dict[str, Any], key: af.Key) -> int:
        key.report_usage(1)  # estimated 600, used 1: the rest is refunded
        return 1

    summary = await af.Launcher(
        cheap, tokens_per_key="1000/min", cost=lambda sample: 600, concurrency=2
    ).run(items(6))  # 6 x 600 would wait minutes without the refunds
    assert summary.succeeded == 6
    assert summary.tokens == 6


async def test_the_progress_line_shows_tokens_and_cost(capsys: pytest.CaptureFixture[str]) -> None:
    await af.Launcher(reporting, keys=SECRETS, progress=True, price_per_1k_tokens=1.0).run(
        items(10)
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "launch finished" in last
    assert "tokens 55" in last
    assert "cost 0.0550" in last


def test_the_progress_line_without_usage_is_as_before() -> None:
    snap = _launch_display.Snapshot(
        ok=3, failed=0, retried=0, to_run=3, before=0, elapsed=1.0, per_key={"key-0": 3}
    )
    assert "tokens" not in _launch_display.plain_line(snap)
    assert "cached" not in _launch_display.plain_line(snap)


def test_a_summary_made_as_before_still_works() -> None:
    summary = af.LaunchSummary(
        total=1, succeeded=1, failed=0, skipped=0, retried=0, duration_s=1.0, per_key={"a": 1}
    )
    assert (summary.cached, summary.tokens, summary.cost) == (0, 0.0, None)
    assert "tokens" not in str(summary)


@pytest.mark.parametrize(
    ("prices", "error", "match"),
    [
        (-1.0, af.InvalidArgument, "price_per_1k_tokens"),
        (math.nan, af.InvalidArgument, "price_per_1k_tokens"),
        (math.inf, af.InvalidArgument, "price_per_1k_tokens"),
        ("0.5", af.InvalidArgumentType, "price_per_1k_tokens"),
        (True, af.InvalidArgumentType, "price_per_1k_tokens"),
        ({"key-0": -2}, af.InvalidArgument, "key-0"),
        ({"key-0": "2"}, af.InvalidArgumentType, "key-0"),
        ({"key-7": 1.0}, af.InvalidArgument, "not labels"),
        ({SECRETS[0]: 1.0}, af.InvalidArgument, "keyed by a key string"),
    ],
)
def test_prices_are_checked_before_any_work(
    prices: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as caught:
        af.Launcher(reporting, keys=SECRETS, price_per_1k_tokens=cast(Any, prices))
    assert all(secret not in str(caught.value) for secret in SECRETS)
