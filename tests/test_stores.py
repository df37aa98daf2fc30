"""The ResultStore contract (API.md section 2), for every store, plus LocalFileStore's files."""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pydantic
import pytest

import aioflows as af
from aioflows.errors import CorruptObject, InvalidArgument, MissingObject

KEY = {"task": "train", "config_hash": "c0ffee"}


@pytest.fixture(params=["memory", "local", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[af.ResultStore]:
    if request.param == "memory":
        yield af.MemoryStore()
    elif request.param == "local":
        yield af.LocalFileStore(tmp_path / "store")
    else:
        # Every test its own prefix on the session's server: no test sees another's keys.
        server = request.getfixturevalue("redis_server")
        async with af.RedisStore(server.url, prefix=f"test-{uuid.uuid4().hex}") as redis_store:
            yield redis_store


async def redis_keys(store: af.RedisStore) -> list[bytes]:
    """Every key under the store's prefix (SCAN, as a test may; the store itself never scans)."""
    return sorted([key async for key in store.redis.scan_iter(match=f"{store.prefix}:*")])


@pytest.fixture
def local(tmp_path: Path) -> af.LocalFileStore:
    return af.LocalFileStore(tmp_path / "store")


def visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def all_paths(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def hidden_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*"))


# --- saving and loading -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "obj"),
    [
        ("json", {"acc": 0.93, "layers": [64, 32], "name": "ünïcode", "none": None}),
        ("text", "line one\nline two ✓\n"),
        ("bytes", b"\x00\x01binary\xff"),
        ("pickle", {"tuple": (1, 2), "set": {3}, "when": datetime(2026, 1, 1)}),
    ],
)
async def test_every_builtin_type_round_trips(store: af.ResultStore, type_: str, obj: Any) -> None:
    await store.save(obj, "result", **KEY, type_=type_)
    assert await store.load("result", **KEY) == obj


async def test_saving_again_replaces_the_object(store: af.ResultStore) -> None:
    await store.save({"v": 1}, "m", **KEY)
    await store.save({"v": 2}, "m", **KEY)
    assert await store.load("m", **KEY) == {"v": 2}


async def test_saving_a_name_as_another_type_replaces_it(store: af.ResultStore) -> None:
    await store.save({"v": 1}, "m", **KEY)
    await store.save("now text", "m", **KEY, type_="text")
    assert await store.load("m", **KEY) == "now text"
    assert await store.get_results(**KEY) == {"m": "now text"}


# JSON holds them; UTF-8 (a lone surrogate) or Python's int-to-str limit (4300 digits) do not.
UNUSUAL_JSON = {
    "cut": "an emoji cut in half: \ud83d",
    "low": ["\udc00", {"key \udfff": "x"}],
    "long": 10**5000,
    "negative": [-(10**4400) - 7, 1],
}


async def test_json_round_trips_lone_surrogates_and_long_ints(store: af.ResultStore) -> None:
    await store.save(UNUSUAL_JSON, "m", **KEY)
    assert await store.load("m", **KEY) == UNUSUAL_JSON
    assert await store.get_results(**KEY) == {"m": UNUSUAL_JSON}
    if isinstance(store, af.LocalFileStore):
        text = (await anyio.Path(store.path("m", **KEY)).read_bytes()).decode("utf-8")
        assert '"an emoji cut in half: \\ud83d"' in text  # escaped: JSON as any reader reads it


async def test_json_refuses_a_surrogate_pair_it_cannot_hold(local: af.LocalFileStore) -> None:
    # Two surrogate characters in a row come back from any JSON reader as one character.
    with pytest.raises(TypeError, match="surrogate pair"):
        await local.save("\ud83d\ude00", "m", **KEY)
    assert not await local.exists("m", **KEY)


async def test_keys_are_independent(store: af.ResultStore) -> None:
    await store.save(1, "m", task="a", config_hash="h1")
    await store.save(2, "m", task="a", config_hash="h2")
    await store.save(3, "m", task="b", config_hash="h1")
    assert await store.load("m", task="a", config_hash="h1") == 1
    assert await store.load("m", task="a", config_hash="h2") == 2
    assert await store.load("m", task="b", config_hash="h1") == 3


async def test_a_missing_object_is_a_key_error_naming_the_key(store: af.ResultStore) -> None:
    await store.save(1, "other", **KEY)
    for lazy in (False, True):
        with pytest.raises(KeyError) as info:
            await store.load("weights", **KEY, lazy=lazy)
        assert isinstance(info.value, MissingObject)
        message = str(info.value)
        assert "'weights'" in message
        assert "'train'" in message
        assert "'c0ffee'" in message


async def test_lazy_load_returns_a_promise_that_reads_later(store: af.ResultStore) -> None:
    await store.save({"v": 1}, "m", **KEY)
    promise = await store.load("m", **KEY, lazy=True)
    assert isinstance(promise, af.Promise)
    assert (promise.name, promise.task, promise.config_hash) == ("m", "train", "c0ffee")
    await store.save({"v": 2}, "m", **KEY)
    assert await promise.load() == {"v": 2}  # it reads when asked, not when made
    await store.delete("m", **KEY)
    with pytest.raises(KeyError):
        await promise.load()


async def test_exists_and_delete(store: af.ResultStore) -> None:
    assert not await store.exists("m", **KEY)
    await store.save([1], "m", **KEY)
    assert await store.exists("m", **KEY)
    await store.delete("m", **KEY)
    assert not await store.exists("m", **KEY)
    with pytest.raises(KeyError):
        await store.load("m", **KEY)
    await store.delete("m", **KEY)  # deleting what is absent is fine


async def test_get_results_returns_every_object_of_the_run(store: af.ResultStore) -> None:
    assert await store.get_results(**KEY) == {}
    await store.save({"acc": 1.0}, "metrics", **KEY)
    await store.save("log", "log", **KEY, type_="text")
    await store.save(b"w", "weights", **KEY, type_="bytes")
    await store.save(0, "elsewhere", task="train", config_hash="other")
    await store.save_info(af.TaskInfo("train", "c0ffee", "train-0", af.TaskState.FINISHED))
    expected = {"metrics": {"acc": 1.0}, "log": "log", "weights": b"w"}
    assert await store.get_results(**KEY) == expected


async def test_delete_run_removes_objects_and_record_of_that_run_only(
    store: af.ResultStore,
) -> None:
    await store.save(1, "a", **KEY)
    await store.save_info(af.TaskInfo("train", "c0ffee", "train-0", "finished"))
    await store.save(2, "a", task="train", config_hash="keep")
    await store.delete_run(**KEY)
    assert await store.get_results(**KEY) == {}
    assert await store.load_info(**KEY) is None
    assert await store.load("a", task="train", config_hash="keep") == 2
    await store.delete_run(**KEY)  # again: nothing to do, no error


# --- TaskInfo records ---------------------------------------------------------------------------


def make_info(task: str = "train", config_hash: str = "c0ffee", **extra: Any) -> af.TaskInfo:
    started = datetime(2026, 11, 21, 9, 30, tzinfo=timezone.utc)
    return af.TaskInfo(
        task,
        config_hash,
        f"{task}-1",
        af.TaskState.FAILED,
        config={"lr": 0.1},
        unique_config={"lr": 0.1, "prep": {"n": 3}},
        started=started,
        ended=started + timedelta(seconds=2.5),
        attempts=3,
        error="ValueError: bad lr",
        **extra,
    )


async def test_records_round_trip(store: af.ResultStore) -> None:
    info = make_info()
    await store.save_info(info)
    loaded = await store.load_info(**KEY)
    assert loaded == info
    assert loaded is not info
    assert loaded is not None
    assert loaded.duration == 2.5


async def test_a_missing_record_is_none(store: af.ResultStore) -> None:
    assert await store.load_info(**KEY) is None


async def test_saving_a_record_again_replaces_it(store: af.ResultStore) -> None:
    await store.save_info(make_info())
    await store.save_info(make_info().model_copy(update={"state": af.TaskState.FINISHED}))
    loaded = await store.load_info(**KEY)
    assert loaded is not None
    assert loaded.state is af.TaskState.FINISHED


async def test_list_infos_all_or_one_task_sorted(store: af.ResultStore) -> None:
    for task, config_hash in [("train", "b2"), ("prep", "a1"), ("train", "a1")]:
        await store.save_info(make_info(task, config_hash))
    everything = await store.list_infos()
    assert [(i.task, i.config_hash) for i in everything] == [
        ("prep", "a1"),
        ("train", "a1"),
        ("train", "b2"),
    ]
    assert [i.config_hash for i in await store.list_infos("train")] == ["a1", "b2"]
    assert await store.list_infos("unknown") == []


async def test_a_record_whose_config_json_cannot_write_plainly_round_trips(
    store: af.ResultStore,
) -> None:
    info = make_info()
    info.config = UNUSUAL_JSON
    info.unique_config = {"lr": "0.1\ud800", "n": 10**5000}
    info.error = "ValueError: bad reply '\udc9f'"
    await store.save_info(info)
    assert await store.load_info(**KEY) == info
    assert await store.list_infos() == [info]


def test_a_record_with_a_surrogate_pair_is_written_joined() -> None:
    info = make_info()
    info.config = {"emoji": "\ud83d\ude00"}
    assert af.TaskInfo.from_json(info.to_json().encode()).config == {"emoji": "\U0001f600"}


async def test_save_info_needs_a_task_info(store: af.ResultStore) -> None:
    with pytest.raises(TypeError):
        await store.save_info({"task": "train"})  # type: ignore[arg-type]


def test_task_info_is_json_serialisable_and_validated() -> None:
    info = make_info()
    data = json.loads(info.to_json())
    assert data["state"] == "failed"
    assert data["started"].startswith("2026-11-21T09:30:00")
    assert af.TaskInfo.from_json(info.to_json()) == info
    assert af.TaskInfo(**data) == info  # keywords work as well as positions
    with pytest.raises(pydantic.ValidationError):
        af.TaskInfo("t", "h", "t-0", "exploded")
    with pytest.raises(pydantic.ValidationError):
        af.TaskInfo("t", "h", "t-0", "running", attempts=-1)


def test_task_state_values_are_lower_case_names() -> None:
    names = ["PENDING", "SCHEDULED", "RUNNING", "FINISHED", "FAILED", "KILLED"]
    names += ["UPSTREAM_FAILED", "CACHED"]
    assert [s.name for s in af.TaskState] == names
    for state in af.TaskState:
        assert state.value == state.name.lower()
        assert str(state) == state.value
        assert af.TaskState(state.value) is state
    assert af.TaskState.FINISHED.done
    assert not af.TaskState.RUNNING.done


# --- bad input ----------------------------------------------------------------------------------

BAD_PARTS = ["", ".", "..", "../up", "a/b", "a\\b", "/abs", "\\abs", "C:x", "nul\0byte", ".hidden"]


@pytest.mark.parametrize("bad", BAD_PARTS)
@pytest.mark.parametrize("part", ["name", "task", "config_hash"])
async def test_unsafe_key_parts_are_rejected_before_any_write(
    store: af.ResultStore, tmp_path: Path, part: str, bad: str
) -> None:
    key = {"name": "m", "task": "train", "config_hash": "c0ffee", part: bad}
    name = key.pop("name")
    calls = [
        store.save({"x": 1}, name, **key),
        store.load(name, **key),
        store.exists(name, **key),
        store.delete(name, **key),
    ]
    if part != "name":
        calls += [store.delete_run(**key), store.get_results(**key), store.load_info(**key)]
        info = af.TaskInfo(key["task"], key["config_hash"], "u", "running")
        calls.append(store.save_info(info))
    for call in calls:
        with pytest.raises(ValueError, match="not usable"):
            await call
    if part == "task":
        with pytest.raises(ValueError, match="not usable"):
            await store.list_infos(bad)
    assert all_paths(tmp_path) == []  # nothing created, inside the store or out
    if isinstance(store, af.RedisStore):
        assert await redis_keys(store) == []


async def test_a_non_string_key_part_is_a_type_error(store: af.ResultStore) -> None:
    with pytest.raises(TypeError, match="task must be a str"):
        await store.save(1, "m", task=3, config_hash="h")  # type: ignore[arg-type]


async def test_the_record_name_is_reserved(store: af.ResultStore) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await store.save({}, "_taskinfo", **KEY)


async def test_an_unknown_type_lists_the_registered_ones(store: af.ResultStore) -> None:
    with pytest.raises(ValueError, match=r"'yaml'.*bytes, json, pickle, text"):
        await store.save({}, "m", **KEY, type_="yaml")
    assert not await store.exists("m", **KEY)


async def test_an_unserialisable_object_names_what_was_saved(local: af.LocalFileStore) -> None:
    with pytest.raises(TypeError, match=r"cannot save 'm' as 'json'.*set"):
        await local.save({1, 2}, "m", **KEY)
    with pytest.raises(TypeError, match="expected str"):
        await local.save(b"raw", "m", **KEY, type_="text")
    assert not await local.exists("m", **KEY)


# --- custom types -------------------------------------------------------------------------------


async def test_registered_types_save_and_load(store: af.ResultStore) -> None:
    received: list[Any] = []

    def load_csv(text: str) -> list[list[str]]:
        received.append(text)
        return [line.split(",") for line in text.splitlines()]

    def load_blob(data: bytes) -> bytes:
        received.append(data)
        return data[::-1]

    store.register_type(
        "csv", save=lambda rows: "\n".join(",".join(r) for r in rows), load=load_csv
    )
    store.register_type("rev", save=lambda b: b[::-1], load=load_blob, extension=".rv", binary=True)
    await store.save([["a", "b"], ["1", "2"]], "table", **KEY, type_="csv")
    await store.save(b"abc", "blob", **KEY, type_="rev")
    assert await store.load("table", **KEY) == [["a", "b"], ["1", "2"]]
    assert await store.load("blob", **KEY) == b"abc"
    if isinstance(store, af.LocalFileStore):
        run = Path(store.base_dir) / "train" / "c0ffee"
        assert (run / "table.csv").read_text() == "a,b\n1,2"
        assert (run / "blob.rv").read_bytes() == b"cba"
        assert [type(r) for r in received] == [str, bytes]


@pytest.mark.parametrize(
    ("extension", "match"),
    [("json", "cannot be told apart"), ("gz.json", "cannot be told apart"), ("tmp", "reserved")],
)
def test_confusable_extensions_are_rejected(
    store: af.ResultStore, extension: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        store.register_type("mine", save=str, load=str, extension=extension)


def test_register_type_checks_its_arguments(store: af.ResultStore) -> None:
    with pytest.raises(TypeError):
        store.register_type("mine", save="str", load=str)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not usable"):
        store.register_type("mine", save=str, load=str, extension="a/b")


def test_types_are_per_store() -> None:
    a, b = af.MemoryStore(), af.MemoryStore()
    a.register_type("mine", save=str, load=str)
    a._types["mine"]
    with pytest.raises(ValueError, match="unknown type_ 'mine'"):
        b._types["mine"]


# --- concurrency --------------------------------------------------------------------------------


async def test_concurrent_writers_of_one_name_never_corrupt_it(store: af.ResultStore) -> None:
    payloads = [{"writer": i, "data": [i] * 2000} for i in range(64)]
    seen: list[Any] = []

    async def read_while_writing() -> None:
        for _ in range(30):
            if await store.exists("shared", **KEY):
                seen.append(await store.load("shared", **KEY))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_while_writing)
        for payload in payloads:
            tg.start_soon(partial(store.save, payload, "shared", **KEY))
    final = await store.load("shared", **KEY)
    assert final in payloads
    assert all(obj in payloads for obj in seen)


async def test_many_concurrent_saves_of_different_names_all_land(store: af.ResultStore) -> None:
    async def save(i: int) -> None:
        await store.save({"i": i}, f"obj-{i}", task=f"t{i % 4}", config_hash=f"h{i % 7}")

    await af.map(save, range(300), concurrency=50)
    for i in range(300):
        assert await store.load(f"obj-{i}", task=f"t{i % 4}", config_hash=f"h{i % 7}") == {"i": i}


async def test_a_name_changing_type_is_never_reported_missing(local: af.LocalFileStore) -> None:
    # Each save of the other type publishes its file and then removes the old one; a reader
    # looking at the types one by one must not miss both.
    await local.save(0, "m", **KEY)
    misses: list[str] = []
    reads = 0
    writing = True

    async def writer() -> None:
        nonlocal writing
        for i in range(1, 41):
            await local.save(i, "m", **KEY, type_="json" if i % 2 else "pickle")
        writing = False

    async def reader() -> None:
        nonlocal reads
        while writing:
            reads += 1
            try:
                await local.load("m", **KEY)
            except MissingObject:
                misses.append("load")
            if not await local.exists("m", **KEY):
                misses.append("exists")
            if "m" not in await local.get_results(**KEY):
                misses.append("get_results")
            try:
                async with local.open("m", "rb", **KEY):
                    pass
            except MissingObject:
                misses.append("open")

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        for _ in range(4):
            tg.start_soon(reader)
    assert reads > 50
    assert misses == [], f"{len(misses)} misses in {reads} reads"


# --- MemoryStore specifics ----------------------------------------------------------------------


async def test_memory_store_keeps_the_object_itself_but_copies_records() -> None:
    store = af.MemoryStore()
    obj = {"big": object()}
    await store.save(obj, "m", **KEY, type_="pickle")
    assert await store.load("m", **KEY) is obj
    info = make_info()
    await store.save_info(info)
    info.attempts = 99
    loaded = await store.load_info(**KEY)
    assert loaded is not None
    assert loaded.attempts == 3


def test_memory_store_has_no_files() -> None:
    with pytest.raises(NotImplementedError, match="LocalFileStore"):
        af.MemoryStore().open("m", "r", **KEY)


# --- LocalFileStore: layout, atomic files, open() -----------------------------------------------


async def test_layout_is_one_directory_per_task_and_hash(local: af.LocalFileStore) -> None:
    await local.save({"acc": 1}, "metrics", **KEY)
    await local.save("hi", "notes", **KEY, type_="text")
    await local.save(b"\x00", "weights", **KEY, type_="bytes")
    await local.save([1], "state", **KEY, type_="pickle")
    await local.save_info(make_info())
    base = Path(local.base_dir)
    run = base / "train" / "c0ffee"
    assert visible_files(base) == sorted(
        run / f for f in ["_taskinfo.json", "metrics.json", "notes.txt", "state.pkl", "weights.bin"]
    )
    assert hidden_files(base) == []  # no temporary file survives a save
    assert json.loads((run / "metrics.json").read_text()) == {"acc": 1}
    assert json.loads((run / "_taskinfo.json").read_text())["unique_name"] == "train-1"
    assert pickle.loads((run / "state.pkl").read_bytes()) == [1]
    assert local.path("metrics", **KEY) == str(run / "metrics.json")
    assert local.path("notes", **KEY, type_="text") == str(run / "notes.txt")


async def test_base_dir_is_absolute_and_created_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = af.LocalFileStore("results")
    assert store.base_dir == str(tmp_path / "results")
    assert not (tmp_path / "results").exists()
    monkeypatch.chdir("/")
    await store.save(1, "m", **KEY)
    assert (tmp_path / "results" / "train" / "c0ffee" / "m.json").exists()
    assert repr(store) == f"LocalFileStore({str(tmp_path / 'results')!r})"


async def test_changing_a_names_type_leaves_one_file(local: af.LocalFileStore) -> None:
    for _ in range(20):  # back to back, within one tick of a coarse file clock
        await local.save({"v": 1}, "m", **KEY)
        await local.save("v2", "m", **KEY, type_="text")
    assert [p.name for p in visible_files(Path(local.base_dir))] == ["m.txt"]


async def test_temporary_files_are_ignored_and_stale_ones_removed(
    local: af.LocalFileStore,
) -> None:
    await local.save({"v": 1}, "m", **KEY)
    await local.save_info(make_info())
    run = Path(local.base_dir) / "train" / "c0ffee"
    fresh, stale = run / ".1111.tmp", run / ".2222.tmp"
    for temp in (fresh, stale):
        temp.write_text('{"torn": ')
    os.utime(stale, (0, 0))
    leftover = Path(local.base_dir) / "train" / ".old.0000.deleting"
    leftover.mkdir()
    (leftover / "m.json").write_text("{}")
    os.utime(leftover, (0, 0))

    assert await local.get_results(**KEY) == {"m": {"v": 1}}
    assert [i.config_hash for i in await local.list_infos()] == ["c0ffee"]
    assert fresh.exists()  # may belong to a live writer
    assert not stale.exists()  # a crashed writer's: removed by the scan
    os.utime(fresh, (0, 0))
    assert await local.cleanup() == 2  # the now-stale temp and the interrupted deletion
    assert hidden_files(Path(local.base_dir)) == []
    assert await local.load("m", **KEY) == {"v": 1}


def test_stale_after_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stale_after"):
        af.LocalFileStore(tmp_path, stale_after=0)


async def test_a_corrupt_file_is_reported_by_name(local: af.LocalFileStore) -> None:
    await local.save({"v": 1}, "m", **KEY)
    await local.save_info(make_info())
    run = Path(local.base_dir) / "train" / "c0ffee"
    (run / "m.json").write_text('{"v": 1, "trunc')  # written by something else, torn
    (run / "_taskinfo.json").write_text('{"task": "train"}')
    for call in (local.load("m", **KEY), local.get_results(**KEY)):
        with pytest.raises(CorruptObject, match=r"m\.json.*json") as info:
            await call
        assert isinstance(info.value.__cause__, json.JSONDecodeError)
        assert info.value.path == str(run / "m.json")
    for call in (local.load_info(**KEY), local.list_infos()):
        with pytest.raises(CorruptObject, match=r"_taskinfo\.json.*TaskInfo"):
            await call
    (run / "m.txt").write_bytes(b"\xff\xfe not utf-8")
    os.utime(run / "m.txt", (2**31, 2**31))  # newest, so load picks it
    with pytest.raises(CorruptObject, match=r"m\.txt"):
        await local.load("m", **KEY)


async def test_a_too_long_name_is_rejected(local: af.LocalFileStore) -> None:
    with pytest.raises(ValueError, match="too long"):
        await local.save(1, "n" * 260, **KEY)
    with pytest.raises(KeyError):
        await local.load("n" * 260, **KEY)
    assert not await local.exists("n" * 260, **KEY)


async def test_symlinked_base_dir_keeps_everything_inside(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    store = af.LocalFileStore(tmp_path / "link")
    await store.save(1, "m", **KEY)
    for bad in ("../escape", "..", "/tmp/escape", "a/../../b"):
        with pytest.raises(ValueError, match="not usable"):
            await store.save(1, bad, **KEY)
        with pytest.raises(ValueError, match="not usable"):
            await store.save(1, "m", task=bad, config_hash="h")
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]
    assert visible_files(real) == [real / "train" / "c0ffee" / "m.json"]


async def test_open_writes_incrementally_and_publishes_on_exit(local: af.LocalFileStore) -> None:
    async with local.open("log", "w", **KEY) as f:
        for i in range(3):
            await f.write(f"epoch {i}\n")
        assert not await local.exists("log", **KEY)  # not visible before the block ends
    assert await local.load("log", **KEY) == "epoch 0\nepoch 1\nepoch 2\n"
    async with local.open("log", "r", **KEY) as f:
        assert await f.readline() == "epoch 0\n"
    async with local.open("blob", "wb", **KEY) as f:
        await f.write(b"\x00\x01")
    async with local.open("blob", "rb", **KEY) as f:
        assert await f.read() == b"\x00\x01"
    async with local.open("rows", "w", **KEY, type_="json") as f:
        await f.write('{"rows": [1, 2]}')
    assert await local.load("rows", **KEY) == {"rows": [1, 2]}
    assert hidden_files(Path(local.base_dir)) == []


async def test_open_keeps_the_old_version_when_the_block_fails(local: af.LocalFileStore) -> None:
    await local.save("old", "log", **KEY, type_="text")

    async def write_then_fail() -> None:
        async with local.open("log", "w", **KEY) as f:
            await f.write("half of the new")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await write_then_fail()
    assert await local.load("log", **KEY) == "old"
    assert hidden_files(Path(local.base_dir)) == []


async def test_open_rejects_bad_modes_and_missing_files(local: af.LocalFileStore) -> None:
    with pytest.raises(ValueError, match="mode 'a'"):
        async with local.open("log", "a", **KEY):
            pass
    with pytest.raises(KeyError, match="'log'"):
        async with local.open("log", "r", **KEY):
            pass
    with pytest.raises(ValueError, match="not usable"):
        async with local.open("../log", "w", **KEY):
            pass


async def test_a_cancelled_save_leaves_no_temporary_and_no_torn_file(
    local: af.LocalFileStore,
) -> None:
    payload = {"data": "x" * 200_000}
    for delay in (0.0, 0.001, 0.003, 0.01):
        with anyio.move_on_after(delay):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(partial(local.save, payload, f"obj-{i % 5}", **KEY))
    assert hidden_files(Path(local.base_dir)) == []
    for path in visible_files(Path(local.base_dir)):
        assert json.loads(path.read_text()) == payload


async def test_invalid_argument_is_both_library_and_builtin_error(
    store: af.ResultStore,
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await store.save(1, "a/b", **KEY)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, af.AioflowsError)


async def test_over_long_task_or_hash_is_a_value_error(local: af.LocalFileStore) -> None:
    with pytest.raises(ValueError, match="task"):
        await local.save(1, "m", task="t" * 300, config_hash="h")
    with pytest.raises(ValueError, match="config_hash"):
        await local.load("m", task="t", config_hash="h" * 300)


async def test_a_record_that_is_not_json_is_a_type_error(local: af.LocalFileStore) -> None:
    info = af.TaskInfo("train", "c0ffee", "train-0", "finished", config={"f": object()})
    with pytest.raises(TypeError, match="train-0"):
        await local.save_info(info)
    assert await local.load_info(**KEY) is None


def test_task_info_times_must_be_timezone_aware() -> None:
    with pytest.raises(pydantic.ValidationError):
        af.TaskInfo("t", "h", "t-0", "running", started=datetime(2026, 1, 1))


async def test_a_save_in_a_cancelled_scope_does_nothing(local: af.LocalFileStore) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await local.save(1, "m", **KEY)
    assert scope.cancelled_caught
    assert not await local.exists("m", **KEY)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.fixture(params=["at", "paths"])
def any_platform(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways files.py reaches a file: relative to open directories (POSIX) or by paths."""
    from aioflows.stores import files

    at = request.param == "at" and getattr(files, "_AT", False)
    monkeypatch.setattr(files, "_AT", at, raising=False)


@pytest.mark.usefixtures("any_platform")
@pytest.mark.parametrize("level", ["task", "run", "file"])
async def test_a_link_below_base_dir_never_makes_the_store_act_outside(
    local: af.LocalFileStore, tmp_path: Path, level: str
) -> None:
    # Outside base_dir: a run of its own (objects, a record, an old temporary), and a file.
    outside = tmp_path / "outside"
    (outside / "c0ffee").mkdir(parents=True)
    (outside / "c0ffee" / "m.json").write_text('"outside"')
    (outside / "c0ffee" / "_taskinfo.json").write_text(make_info().to_json())
    (outside / "c0ffee" / ".old.tmp").write_text("")
    os.utime(outside / "c0ffee" / ".old.tmp", (0, 0))
    (outside / "secret.json").write_text('"secret"')
    before = snapshot(outside)
    run = Path(local.base_dir) / "train" / "c0ffee"
    if level == "task":
        run.parent.parent.mkdir(parents=True)
        run.parent.symlink_to(outside, target_is_directory=True)
    elif level == "run":
        run.parent.mkdir(parents=True)
        run.symlink_to(outside / "c0ffee", target_is_directory=True)
    else:
        run.mkdir(parents=True)
        (run / "m.json").symlink_to(outside / "secret.json")
    refused = pytest.raises(ValueError, match="symbolic link")
    with refused:
        await local.load("m", **KEY)
    with refused:
        await local.exists("m", **KEY)
    with refused:
        await local.get_results(**KEY)
    with refused:
        async with local.open("m", "r", **KEY):
            pass
    if level != "file":  # a link to a file is replaced or removed itself, never followed
        for call in (
            local.save(1, "m", **KEY),
            local.save(1, "new", **KEY),
            local.save_info(make_info()),
            local.load_info(**KEY),
            local.delete("m", **KEY),
        ):
            with refused:
                await call
        with refused:
            async with local.open("new", "w", **KEY) as f:
                await f.write("x")
        with refused:
            await local.delete_run(**KEY)
    assert await local.list_infos() == []  # a listing passes links over
    if level != "task":
        assert await local.list_infos("train") == []
    else:
        with refused:
            await local.list_infos("train")
    assert await local.cleanup() == 0
    assert snapshot(outside) == before
    if level == "file":
        await local.delete("other", **KEY)
        await local.save("mine", "m", **KEY)  # replaces the link itself
        assert await local.load("m", **KEY) == "mine"
        await local.delete_run(**KEY)
        assert not run.exists()
    assert snapshot(outside) == before


async def test_a_flow_result_and_config_json_cannot_write_plainly_resume(tmp_path: Path) -> None:
    calls = []

    async def echo(text: str) -> dict[str, Any]:
        calls.append(text)
        return {"text": text, "long": 10**5000}

    texts = ["cut \ud83d", "low \udc00 too"]
    flow = af.Flow()
    flow.add(echo, {"text": texts})
    store = af.LocalFileStore(tmp_path / "store")
    first = (await flow.run(store=store)).values("echo")
    again = (await flow.run(store=store)).values("echo")
    assert sorted(calls) == sorted(texts)  # the second run loaded both results
    # Instances keep the grid's order (the calls may start in any order).
    assert first == again == [{"text": t, "long": 10**5000} for t in texts]
    assert sorted(i.config["text"] for i in await store.list_infos("echo")) == sorted(texts)


async def test_a_flow_result_json_would_change_is_cached_as_pickle(tmp_path: Path) -> None:
    # A surrogate pair kept as two characters reads back from JSON as one: JSON is not
    # faithful for it, so the executor must choose pickle (it failed the save before).
    pair = "two halves \ud83d\ude00"
    calls = []

    async def echo() -> dict[str, Any]:
        calls.append(1)
        return {"text": pair, pair: [pair]}

    flow = af.Flow()
    flow.add(echo)
    store = af.LocalFileStore(tmp_path / "store")
    first = (await flow.run(store=store)).values("echo")
    again = (await flow.run(store=store)).values("echo")
    assert len(calls) == 1
    assert first == again == [{"text": pair, pair: [pair]}]


def test_jsontext_says_which_text_it_holds_faithfully() -> None:
    from aioflows.stores import jsontext

    for text in ("plain", "ünïcode ✓ 😀", "lone \ud83d", "\udc00 low first \ud800"):
        assert jsontext.holds_text(text)
        assert jsontext.loads(jsontext.dumps(text)) == text
    assert not jsontext.holds_text("a pair as two: \ud83d\ude00")


# -- advice: a stopped flow's KILLED records, one journal line per batch ----------------------


def _killed(task: str, config_hash: str, **fields: Any) -> dict[str, Any]:
    """The raw fields of one KILLED record (see RawInfos), ``fields`` overriding."""
    from aioflows.stores.records import micros

    now = micros(datetime.now(timezone.utc))
    config = fields.pop("config", {"i": config_hash})
    row: dict[str, Any] = {
        "task": task,
        "config_hash": config_hash,
        "unique_name": f"{task}-{config_hash}",
        "state": af.TaskState.KILLED,
        "config": config,
        "unique_config": None,  # the config itself
        "started": now,
        "ended": now,
        "attempts": 1,
        "error": None,
    }
    row.update(fields)
    return row


async def _advise(store: af.ResultStore, rows: list[dict[str, Any]]) -> None:
    """Hand ``rows`` to ``store._save_advice`` in columns, one batch per task."""
    from aioflows.stores.records import RawInfos

    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    for task, group in by_task.items():
        columns = {f: [row[f] for row in group] for f in group[0] if f != "task"}
        await store._save_advice(RawInfos(task, **columns))


async def test_advice_is_one_journal_read_back_as_records(
    store: af.ResultStore, tmp_path: Path
) -> None:
    rows = [_killed("train", f"h{i}") for i in range(50)] + [_killed("eval", "e1")]
    await _advise(store, rows)
    infos = await store.list_infos()
    assert [(i.task, i.config_hash, i.state) for i in infos] == sorted(
        (r["task"], r["config_hash"], af.TaskState.KILLED) for r in rows
    )
    info = await store.load_info(task="train", config_hash="h7")
    assert info is not None
    assert info.unique_name == "train-h7"
    assert info.config == info.unique_config == {"i": "h7"}
    assert info.attempts == 1
    from aioflows.stores.records import from_micros

    assert info.started == from_micros(rows[7]["started"])  # exact: microseconds both ways
    assert len(await store.list_infos("train")) == 50
    if isinstance(store, af.LocalFileStore):  # one file per task, no directory per run
        assert sorted(p.name for p in (tmp_path / "store" / "train").iterdir()) == [".advice.jsonl"]


async def test_whichever_was_written_last_wins(store: af.ResultStore) -> None:
    finished = af.TaskInfo("t", "h", "t-1", af.TaskState.FINISHED)
    await store.save_info(finished)
    await _advise(store, [_killed("t", "h")])  # a forced re-run, stopped
    info = await store.load_info(task="t", config_hash="h")
    assert info is not None
    assert info.state is af.TaskState.KILLED
    assert [i.state for i in await store.list_infos()] == [af.TaskState.KILLED]
    await anyio.sleep(0.01)  # a later mtime, on file systems with a coarse clock too
    await store.save_info(finished)  # run again, to the end
    info = await store.load_info(task="t", config_hash="h")
    assert info is not None
    assert info.state is af.TaskState.FINISHED
    assert [i.state for i in await store.list_infos("t")] == [af.TaskState.FINISHED]


async def test_a_deleted_run_has_no_advice_left(store: af.ResultStore) -> None:
    await _advise(store, [_killed("t", "a"), _killed("t", "b")])
    await store.delete_run(task="t", config_hash="a")
    assert await store.load_info(task="t", config_hash="a") is None
    assert [i.config_hash for i in await store.list_infos()] == ["b"]


async def test_a_torn_journal_line_is_skipped(local: af.LocalFileStore, tmp_path: Path) -> None:
    await _advise(local, [_killed("t", "a")])
    journal = tmp_path / "store" / "t" / ".advice.jsonl"
    with journal.open("ab") as file:
        file.write(b'{"written": 1, "rows": [["b", "t-b", "kil')  # a crash mid-append
    assert [i.config_hash for i in await local.list_infos()] == ["a"]
    await _advise(local, [_killed("t", "c")])  # appends after the torn part, still read
    assert [i.config_hash for i in await local.list_infos("t")] == ["a", "c"]
    assert await local.load_info(task="t", config_hash="b") is None


async def test_the_journal_is_compacted_to_one_row_per_run(
    local: af.LocalFileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioflows.stores import advice

    monkeypatch.setattr(advice, "COMPACT_AT", 2000)
    for attempt in range(1, 40):  # the same runs stopped again and again
        await _advise(local, [_killed("t", h, attempts=attempt) for h in ("a", "b")])
    journal = tmp_path / "store" / "t" / ".advice.jsonl"
    assert journal.stat().st_size < 2 * 2000
    infos = await local.list_infos()
    assert [(i.config_hash, i.attempts) for i in infos] == [("a", 39), ("b", 39)]


async def test_advice_keeps_what_json_cannot_write_plainly(store: af.ResultStore) -> None:
    config = {"text": "cut \ud83d", "long": 10**5000}
    await _advise(store, [_killed("t", "h", config=config)])
    info = await store.load_info(task="t", config_hash="h")
    assert info is not None
    assert info.config == config


async def test_advice_under_a_linked_task_dir_is_not_written_outside(
    local: af.LocalFileStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "t").symlink_to(outside)
    await _advise(local, [_killed("t", "h")])  # logged, not raised: the run reports it
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(("task", "config_hash"), [("t", "a/b"), ("t", ".h"), ("../t", "h")])
async def test_advice_takes_the_same_key_checks(
    store: af.ResultStore, task: str, config_hash: str
) -> None:
    with pytest.raises(ValueError, match="not usable"):
        await _advise(store, [_killed(task, config_hash)])
    assert await store.list_infos() == []
