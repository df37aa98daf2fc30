"""The launcher's request cache across runs (issue 16): ``Launcher(..., cache=store)``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from killing import sigkill_when
from redis_server import RedisServer

import aioflows as af
from aioflows import _launch_cache
from aioflows.stores.types import StoreType

SECRETS = ["sk-live-CACHE-0000aaaa", "sk-live-CACHE-1111bbbb"]


def items(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"question {i}"} for i in range(start, stop)]


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def files_text(root: Path) -> str:
    return "".join(p.read_text() for p in root.rglob("*") if p.is_file())


class Counting:
    """A cheap ``fn`` that counts its calls and answers from its input (and its key)."""

    def __init__(self) -> None:
        self.calls: Counter[Any] = Counter()

    async def __call__(self, sample: dict[str, Any], key: af.Key) -> Any:
        self.calls[sample["id"]] += 1
        return {"answer": sample["prompt"].upper(), "sample": sample["sample"]}


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[af.ResultStore]:
    if request.param == "local":
        yield af.LocalFileStore(tmp_path / "cache")
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    async with af.RedisStore(server.url, prefix=f"cache-{uuid.uuid4().hex}") as redis_store:
        yield redis_store


async def test_a_later_run_serves_every_overlapping_pair_from_the_cache(
    store: af.ResultStore, tmp_path: Path
) -> None:
    fn = Counting()
    options: dict[str, Any] = {"keys": SECRETS, "concurrency": 32, "cache": store}
    first = await af.Launcher(fn, output=tmp_path / "a.jsonl", **options).run(items(0, 1000))
    assert first.cached == 0
    assert sum(fn.calls.values()) == 1000
    fn.calls.clear()
    second = await af.Launcher(fn, output=tmp_path / "b.jsonl", **options).run(items(500, 1500))
    assert sum(fn.calls.values()) == 500  # exactly: the overlap made no call
    assert set(fn.calls) == set(range(1000, 1500))
    records = read(tmp_path / "b.jsonl")
    assert len(records) == 1000
    cached = [r for r in records if r["cached"]]
    assert len(cached) == 500
    assert {r["id"] for r in cached} == set(range(500, 1000))
    assert all(r["key"] is None and r["attempts"] == 0 and r["error"] is None for r in cached)
    by_id = {r["id"]: r for r in read(tmp_path / "a.jsonl")}
    assert all(r["output"] == by_id[r["id"]]["output"] for r in cached)
    assert all(
        not r["cached"] and r["key"] in ("key-0", "key-1") for r in records if r["id"] >= 1000
    )
    assert (second.succeeded, second.cached, second.failed) == (1000, 500, 0)
    assert sum(second.per_key.values()) == 500  # no key was picked for a hit
    assert "cached" in str(second)


async def test_samples_are_cached_each_and_launch_returns_the_cached_records(
    tmp_path: Path,
) -> None:
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")
    await af.launch(fn, items(0, 10), samples=2, cache=store)
    fn.calls.clear()
    records = await af.launch(fn, items(0, 20), samples=3, cache=store)
    assert sum(fn.calls.values()) == 10 * 3 + 10  # sample 2 of the first ten is new
    cached = {(r["id"], r["sample"]) for r in records if r["cached"]}
    assert cached == {(i, s) for i in range(10) for s in range(2)}
    assert all(r["output"]["sample"] == r["sample"] for r in records)


async def test_the_id_is_not_part_of_the_digest(tmp_path: Path) -> None:
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")
    await af.launch(fn, [{"id": "a", "prompt": "same"}], cache=store)
    records = await af.launch(fn, [{"id": 7, "prompt": "same"}], cache=store)
    assert records[0]["cached"] is True
    assert records[0]["id"] == 7
    assert sum(fn.calls.values()) == 1


async def test_another_cache_key_misses_and_the_default_is_the_function(tmp_path: Path) -> None:
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")
    await af.launch(fn, items(0, 20), cache=store, cache_key="model-v1")
    fn.calls.clear()
    records = await af.launch(fn, items(0, 20), cache=store, cache_key="model-v2")
    assert not any(r["cached"] for r in records)
    assert sum(fn.calls.values()) == 20
    records = await af.launch(fn, items(0, 20), cache=store, cache_key="model-v1")
    assert all(r["cached"] for r in records)
    assert sum(fn.calls.values()) == 20  # none more

    async def answer(sample: dict[str, Any], key: af.Key) -> int:
        return 1

    async def different(sample: dict[str, Any], key: af.Key) -> int:
        return 2

    await af.launch(answer, items(0, 5), cache=store)
    records = await af.launch(different, items(0, 5), cache=store)  # another qualified name
    assert [r["output"] for r in records] == [2] * 5
    records = await af.launch(answer, items(0, 5), cache=store)
    assert [(r["output"], r["cached"]) for r in records] == [(1, True)] * 5


async def test_failed_calls_are_not_cached(tmp_path: Path) -> None:
    calls: Counter[int] = Counter()

    async def flaky(sample: dict[str, Any], key: af.Key) -> int:
        calls[sample["id"]] += 1
        if sample["id"] % 3 == 0 and calls[sample["id"]] == 1:
            raise RuntimeError("the API fell over")
        return sample["id"]

    store = af.LocalFileStore(tmp_path / "cache")
    first = await af.launch(flaky, items(0, 30), cache=store, retry=None)
    assert sum(r["error"] is not None for r in first) == 10
    second = await af.launch(flaky, items(0, 30), cache=store, retry=None)
    again = {r["id"] for r in second if not r["cached"]}
    assert again == set(range(0, 30, 3))  # only the failed ones are called again
    assert all(r["error"] is None for r in second)
    assert calls == {i: 2 if i % 3 == 0 else 1 for i in range(30)}


async def test_the_cache_holds_no_secret_and_what_fn_returned(
    store: af.ResultStore, tmp_path: Path
) -> None:
    async def leaky(sample: dict[str, Any], key: af.Key) -> dict[str, Any]:
        return {"text": f"reply to {sample['prompt']}", "auth": f"Bearer {key.secret}"}

    def shorten(output: dict[str, Any]) -> str:
        return output["text"][:8]

    options: dict[str, Any] = {"keys": SECRETS, "cache": store, "output_interface": shorten}
    first = await af.launch(leaky, items(0, 40), **options)
    second = await af.launch(leaky, items(0, 40), **options)
    assert all(r["cached"] for r in second)
    assert [r["output"] for r in second] == [r["output"] for r in first] == ["reply to"] * 40
    config = _launch_cache.hash_of(_launch_cache.check(store, None, leaky)[1])
    segments = await store.get_results(task=_launch_cache.TASK, config_hash=config)
    lines = [line for s in segments.values() for line in (_launch_cache.entries(s) or {}).values()]
    entries = [_launch_cache.output_of(line) for line in lines]
    assert len(entries) == 40
    assert {e["auth"] for e in entries} <= {"Bearer <key-0>", "Bearer <key-1>"}  # fn's, redacted
    everything = b"".join(segments.values()).decode() + json.dumps(first)
    if isinstance(store, af.LocalFileStore):
        everything += files_text(Path(store.base_dir))
    else:
        assert isinstance(store, af.RedisStore)
        for name in await store.redis.keys(f"{store.prefix}*"):
            everything += name.decode() + json.dumps(
                {
                    k.decode(): v.decode("utf-8", "replace")
                    for k, v in (await store.redis.hgetall(name)).items()
                }
            )
    assert all(secret not in everything for secret in SECRETS)


async def test_input_interface_comes_before_the_digest(tmp_path: Path) -> None:
    fn = Counting()

    def strip(sample: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in sample.items() if k != "noise"}

    store = af.LocalFileStore(tmp_path / "cache")
    data = [{"id": i, "prompt": "p", "noise": i} for i in range(3)]
    options: dict[str, Any] = {"cache": store, "input_interface": strip, "concurrency": 1}
    records = await af.launch(fn, data, **options)
    # fn receives the same input three times: one digest, one call, then two hits.
    assert sum(fn.calls.values()) == 1
    assert [r["cached"] for r in records] == [False, True, True]
    again = await af.launch(fn, [{"id": 9, "prompt": "p", "noise": "x"}], **options)
    assert again[0]["cached"] is True
    records = await af.launch(fn, data, cache=store, concurrency=1)  # no interface: noise counts
    assert [r["cached"] for r in records] == [False, False, False]


async def test_resume_skips_the_output_before_the_cache(tmp_path: Path) -> None:
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")
    output = tmp_path / "out.jsonl"
    await af.Launcher(fn, output=output, cache=store).run(items(0, 50))
    summary = await af.Launcher(fn, output=output, cache=store).run(items(0, 60))
    assert (summary.skipped, summary.cached, summary.succeeded) == (50, 0, 10)
    assert Counter(r["id"] for r in read(output)) == dict.fromkeys(range(60), 1)


class Broken(af.MemoryStore):
    """A store whose reads or writes fail, as a Redis server that went away would."""

    def __init__(self, *, reads: bool = False, writes: bool = False) -> None:
        super().__init__()
        self.reads, self.writes = reads, writes

    async def _get_results(self, task: str, config_hash: str) -> dict[str, Any]:
        if self.reads:
            raise ConnectionError(f"down (had {SECRETS[0]})")
        return await super()._get_results(task, config_hash)

    async def _save(
        self, obj: Any, name: str, task: str, config_hash: str, type_: StoreType
    ) -> None:
        if self.writes:
            raise ConnectionError("down")
        await super()._save(obj, name, task, config_hash, type_)


async def test_a_store_that_fails_never_fails_a_call(caplog: pytest.LogCaptureFixture) -> None:
    fn = Counting()
    caplog.set_level(logging.WARNING, logger="aioflows.launcher")
    broken = Broken(reads=True, writes=True)
    summary = await af.Launcher(fn, keys=SECRETS, cache=broken).run(items(0, 100))
    assert (summary.succeeded, summary.failed, summary.cached) == (100, 0, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("could not be read" in w for w in warnings) == 1  # once, not once a pair
    assert sum("could not be written" in w for w in warnings) == 1
    assert all(SECRETS[0] not in w for w in warnings)

    readable = Broken(writes=False)
    await af.Launcher(fn, cache=readable).run(items(0, 10))
    readable.reads = True  # the next run cannot read it: every pair is a miss, called
    fn.calls.clear()
    summary = await af.Launcher(fn, cache=readable).run(items(0, 10))
    assert summary.cached == 0
    assert sum(fn.calls.values()) == 10


async def test_an_answer_that_is_not_json_is_called_again_and_spoils_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def odd(sample: dict[str, Any], key: af.Key) -> Any:
        return {1, 2} if sample["id"] == 3 else sample["id"]

    def listed(output: Any) -> Any:
        return sorted(output) if isinstance(output, set) else output

    store = af.LocalFileStore(tmp_path / "cache")
    await af.launch(odd, items(0, 10), cache=store, output_interface=listed)
    records = await af.launch(odd, items(0, 10), cache=store, output_interface=listed)
    assert [r["cached"] for r in records] == [i != 3 for i in range(10)]
    assert records[3]["output"] == [1, 2]
    assert any("not JSON" in r.getMessage() for r in caplog.records)


async def test_many_segments_are_merged_into_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_launch_cache, "COMPACT_AT", 3)
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")
    for start in range(0, 50, 10):
        await af.launch(fn, items(start, start + 10), cache=store)
    config = _launch_cache.hash_of(_launch_cache.check(store, None, fn)[1])
    segments = await store.get_results(task=_launch_cache.TASK, config_hash=config)
    assert len(segments) <= 3
    fn.calls.clear()
    records = await af.launch(fn, items(0, 50), cache=store)
    assert all(r["cached"] for r in records)
    assert not fn.calls


async def test_a_bad_input_and_a_stop_keep_their_errors_and_the_answers(tmp_path: Path) -> None:
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")

    def twice() -> Iterator[dict[str, Any]]:
        yield from items(0, 5)
        yield {"id": 0, "prompt": "again"}

    with pytest.raises(af.InvalidArgument, match="duplicate id 0"):  # itself, not in a group
        await af.Launcher(fn, cache=store, concurrency=1).run(twice())
    stop = anyio.CancelScope()

    async def stopping(sample: dict[str, Any], key: af.Key) -> Any:
        if sample["id"] == 20:
            stop.cancel()  # as Ctrl-C would, from outside the run
        return await fn(sample, key)

    with stop:
        await af.Launcher(stopping, cache=store, cache_key="stopped", concurrency=1).run(
            items(0, 40)
        )
    records = await af.launch(fn, items(0, 20), cache=store, cache_key="stopped")
    assert all(r["cached"] for r in records)  # what the stopped run answered was saved


async def test_a_cached_answer_its_output_interface_refuses_fails_its_pair(
    tmp_path: Path,
) -> None:
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")
    await af.launch(fn, items(0, 3), cache=store)

    def refuse(output: Any) -> Any:
        raise ValueError("not this one")

    records = await af.launch(fn, items(0, 3), cache=store, output_interface=refuse)
    assert [r["error"] for r in records] == ["ValueError: not this one"] * 3
    assert all(r["cached"] for r in records)
    with pytest.raises(af.LaunchFailed, match="not this one") as caught:
        await af.Launcher(fn, cache=store, output_interface=refuse, fault_tolerant=False).run(
            items(0, 3)
        )
    assert caught.value.key == "cache"


def test_the_cache_options_are_checked_before_any_work(tmp_path: Path) -> None:
    fn = Counting()
    with pytest.raises(af.InvalidArgumentType, match="cache must be a ResultStore"):
        af.Launcher(fn, cache=cast(Any, str(tmp_path)))
    with pytest.raises(af.InvalidArgument, match="needs cache="):
        af.Launcher(fn, cache_key="model-v1")
    with pytest.raises(af.InvalidArgumentType, match="cache_key must be a str"):
        af.Launcher(fn, cache=af.MemoryStore(), cache_key=cast(Any, 3))
    with pytest.raises(af.InvalidArgument, match="non-empty"):
        af.Launcher(fn, cache=af.MemoryStore(), cache_key="")
    assert not (tmp_path / "cache").exists()


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import aioflows as af

    async def ask(sample, key):
        await asyncio.sleep(0.02)
        return {"answer": sample["prompt"].upper()}

    start, stop = int(sys.argv[3]), int(sys.argv[4])
    data = [{"id": i, "prompt": f"question {i}"} for i in range(start, stop)]
    launcher = af.Launcher(
        ask, keys=["sk-kill-0", "sk-kill-1"], concurrency=8, output=sys.argv[1],
        cache=af.LocalFileStore(sys.argv[2]), cache_key="kill-test",
    )
    print(asyncio.run(launcher.run(data)))
    """
)


def test_kill_9_mid_run_then_resume_writes_each_pair_once(tmp_path: Path) -> None:
    script, cache = tmp_path / "launch.py", tmp_path / "cache"
    script.write_text(KILL_SCRIPT)

    def run(output: Path, start: int, stop: int) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, str(script), str(output), str(cache), str(start), str(stop)]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert run(a, 0, 200).returncode == 0  # A: items 0-199
    args = [sys.executable, str(script), str(b), str(cache), "100", "400"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    # The 100 hits come at once; kill B once some of its own calls are written too.
    sigkill_when(proc, lambda: b.exists() and b.read_bytes().count(b"\n") >= 130, "B")
    done = run(b, 100, 400)  # the resume
    assert done.returncode == 0, done.stderr
    records = read(b)
    assert Counter(r["id"] for r in records) == dict.fromkeys(range(100, 400), 1)
    assert all(r["cached"] for r in records if r["id"] < 200)  # A's answers, never called
    assert all(r["error"] is None for r in records)
    assert "sk-kill" not in b.read_text()
    assert "sk-kill" not in files_text(cache)


def test_a_fully_cached_run_makes_no_call_and_says_so(tmp_path: Path) -> None:
    fn = Counting()
    store = af.LocalFileStore(tmp_path / "cache")

    async def twice() -> tuple[af.LaunchSummary, af.LaunchSummary]:
        one = await af.Launcher(fn, cache=store).run(items(0, 200))
        two = await af.Launcher(fn, cache=store).run(items(0, 200))
        return one, two

    started = time.monotonic()
    one, two = anyio.run(twice)
    assert time.monotonic() - started < 30
    assert (two.cached, two.succeeded, sum(two.per_key.values())) == (200, 200, 0)
    assert sum(fn.calls.values()) == 200
    table = str(two)
    assert "served from the cache" in table
    assert "cached" not in str(one)
