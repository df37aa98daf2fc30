"""One rule for bad arguments everywhere: a wrong type is a TypeError, a bad value a ValueError,
both AioflowsError, raised before any work starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aioflows as af


async def _noop(x: Any) -> Any:
    return x


def _flow_run(concurrency: Any) -> Any:
    flow = af.Flow()
    flow.add(_noop, {"x": [1]})
    return flow.run(concurrency=concurrency)


# Each entry point that takes a count, called with a bad one.
COUNTS: dict[str, Callable[[Any], Any]] = {
    "map": lambda v: af.map(_noop, [1], concurrency=v),
    "imap": lambda v: af.imap(_noop, [1], concurrency=v),
    "Stage": lambda v: af.Stage(_noop, workers=v),
    "Filter": lambda v: af.Filter(_noop, workers=v),
    "Batch": lambda v: af.Batch(v),
    "Pipeline": lambda v: af.Pipeline(af.Stage(_noop), buffer=v),
    "task": lambda v: af.task(concurrency=v),
    "flow.run": _flow_run,
    "HttpClient": lambda v: af.HttpClient(concurrency=v),
    "Launcher": lambda v: af.Launcher(_noop, concurrency=v),
    "Retry": lambda v: af.Retry(v),
}


async def _call(make: Callable[[], Any]) -> None:
    made = make()
    if hasattr(made, "__await__"):
        await made


#: None means "no limit" where a count is optional.
OPTIONAL = {"task", "flow.run", "HttpClient"}


@pytest.mark.parametrize(
    ("entry", "value"),
    [
        (e, v)
        for e in sorted(COUNTS)
        for v in ("3", 2.5, True, None)
        if v is not None or e not in OPTIONAL
    ],
)
async def test_a_count_of_the_wrong_type_is_a_type_error(entry: str, value: Any) -> None:
    with pytest.raises(TypeError) as caught:
        await _call(lambda: COUNTS[entry](value))
    assert isinstance(caught.value, af.AioflowsError)


@pytest.mark.parametrize("entry", sorted(COUNTS))
async def test_a_count_out_of_range_is_a_value_error(entry: str) -> None:
    with pytest.raises(ValueError, match="must be") as caught:
        await _call(lambda: COUNTS[entry](0 if entry != "Retry" else -1))
    assert isinstance(caught.value, af.AioflowsError)
    if entry in ("task", "flow.run"):  # a bad count is not a bad flow declaration
        assert not isinstance(caught.value, af.FlowError)


# Each entry point that takes seconds or a number.
NUMBERS: dict[str, Callable[[Any], Any]] = {
    "map timeout": lambda v: af.map(_noop, [1], timeout=v),
    "Stage timeout": lambda v: af.Stage(_noop, timeout=v),
    "task timeout": lambda v: af.task(timeout=v),
    "Retry backoff": lambda v: af.Retry(backoff=v),
    "Retry max_wait": lambda v: af.Retry(max_wait=v),
    "pause": lambda v: af.RateLimiter("1/s").pause(v),
    "Rate": lambda v: af.Rate(v),
}


@pytest.mark.parametrize("entry", sorted(NUMBERS))
async def test_a_number_of_the_wrong_type_is_a_type_error(entry: str) -> None:
    for value in ("1", True):
        with pytest.raises(TypeError) as caught:
            await _call(lambda v=value: NUMBERS[entry](v))
        assert isinstance(caught.value, af.AioflowsError)


@pytest.mark.parametrize("entry", sorted(NUMBERS))
async def test_a_number_out_of_range_is_a_value_error(entry: str) -> None:
    for value in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="must be") as caught:
            await _call(lambda v=value: NUMBERS[entry](v))
        assert isinstance(caught.value, af.AioflowsError)


def test_stale_after_takes_the_same_rule(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        af.LocalFileStore(tmp_path, stale_after=True)  # was accepted as 1 s
    with pytest.raises(TypeError):
        af.LocalFileStore(tmp_path, stale_after="60")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stale_after"):
        af.LocalFileStore(tmp_path, stale_after=0)
