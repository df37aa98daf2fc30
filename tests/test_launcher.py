"""The batch launcher (API.md section 5), against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import enum
import io
import json
import re
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from killing import sigkill_when
from local_server import ServerState, serve

import aioflows as af
from aioflows.launcher import OutputFileError

SECRETS = ["sk-live-AAAA1111", "sk-live-BBBB2222"]


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with serve() as (url, state):
        state.keys = set(SECRETS)
        yield url, state


def read_records(path: Path, torn_ok: bool = False) -> list[dict[str, Any]]:
    lines = path.read_text().split("\n")
    if torn_ok:  # what a kill may leave after the last newline
        lines = lines[:-1]
    return [json.loads(line) for line in lines if line]


def data(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"question {i}"} for i in range(n)]


def calling(url: str, client: httpx.AsyncClient) -> Any:
    async def fn(sample: dict[str, Any], key: af.Key) -> Any:
        response = await client.post(
            f"{url}/complete",
            headers={"authorization": f"Bearer {key.secret}"},
            json=sample,
        )
        response.raise_for_status()  # a 429 becomes a throttle of this key
        return json.loads(response.json()["echo"])

    return fn


async def test_end_to_end_output_keys_throttles_and_secrets(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    state.throttle_every = 7
    output = tmp_path / "out.jsonl"
    async with httpx.AsyncClient() as client:
        launcher = af.Launcher(
            calling(url, client),
            keys=SECRETS,
            rate_per_key="200/s",
            samples=2,
            concurrency=8,
            output=output,
            retry=af.Retry(3, backoff=0.01),
        )
        summary = await launcher.run(data(30))
    records = read_records(output)
    assert sorted((r["id"], r["sample"]) for r in records) == [
        (i, s) for i in range(30) for s in range(2)
    ]
    assert all(r["error"] is None for r in records)
    for r in records:
        assert r["output"] == {
            "id": r["id"],
            "prompt": f"question {r['id']}",
            "sample": r["sample"],
        }
        assert r["key"] in ("key-0", "key-1")
        assert r["attempts"] == 1  # throttles are not attempts
        assert r["duration_s"] >= 0
        assert r["started_at"].endswith("+00:00")
    assert summary.total == summary.succeeded == 60
    assert (summary.failed, summary.skipped) == (0, 0)
    assert summary.retried >= 1  # the server throttled every 7th request
    assert sum(summary.per_key.values()) == 60 + summary.retried
    assert {s.authorization for s in state.seen} == {f"Bearer {k}" for k in SECRETS}
    text = output.read_text()
    assert not any(secret in text for secret in SECRETS)
    assert not any(secret in repr(launcher) for secret in SECRETS)


async def test_per_key_rates_are_respected(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    async with httpx.AsyncClient() as client:
        await af.launch(
            calling(url, client), data(120), keys=SECRETS, rate_per_key="40/s", concurrency=16
        )
    for secret in SECRETS:
        times = sorted(s.time for s in state.seen if s.authorization == f"Bearer {secret}")
        assert 40 <= len(times) <= 80  # both keys carry the load
        # in any 1 s window at most burst (40) + 1 s x 40/s, and the run takes what it must
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u - t < 1.0) <= 80 + 2
        assert times[-1] - times[0] >= (len(times) - 40) / 40 * 0.9


async def test_interfaces_transform_around_fn() -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> str:
        return sample["text"]

    records = await af.launch(
        fn,
        [{"id": "a", "raw": "x"}],
        input_interface=lambda s: {**s, "text": s["raw"] * 2},
        output_interface=str.upper,
    )
    assert records[0]["output"] == "XX"


async def test_no_keys_means_one_default_key_without_secret() -> None:
    seen: list[af.Key] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> None:
        seen.append(key)

    [record] = await af.launch(fn, [{"id": 1}])
    assert record["key"] == "default"
    assert seen[0].label == "default"
    assert seen[0].secret is None
    assert repr(seen[0]) == "Key('default')"


@pytest.mark.looptime
async def test_token_budget_is_reserved_and_reconciled() -> None:
    starts: list[float] = []

    def launcher(report: float | None) -> af.Launcher:
        async def fn(sample: dict[str, Any], key: af.Key) -> None:
            starts.append(anyio.current_time())
            if report is not None:
                key.report_usage(report)

        return af.Launcher(fn, keys=["k"], tokens_per_key="100/s", cost=lambda s: 60, concurrency=1)

    t0 = anyio.current_time()
    await launcher(None).run(data(2))
    assert [round(t - t0, 3) for t in starts] == [0.0, 0.2]  # 60 + 60 > 100: wait 0.2 s
    starts.clear()
    await anyio.sleep(10)  # refill
    t0 = anyio.current_time()
    await launcher(10).run(data(2))
    assert [round(t - t0, 3) for t in starts] == [0.0, 0.0]  # 50 refunded: no wait


async def test_fault_tolerant_records_errors_with_secrets_redacted(tmp_path: Path) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        if sample["id"] % 3 == 0:
            raise PermissionError(f"key {key.secret} refused")
        return 1

    output = tmp_path / "out.jsonl"
    summary = await af.Launcher(fn, keys=SECRETS[:1], output=output, retry=2).run(data(6))
    assert (summary.succeeded, summary.failed) == (4, 2)
    failed = [r for r in read_records(output) if r["error"]]
    assert [r["error"] for r in failed] == ["PermissionError: key <key-0> refused"] * 2
    assert all(r["attempts"] == 2 for r in failed)
    assert SECRETS[0] not in output.read_text()


async def test_not_fault_tolerant_stops_and_raises_the_first_failure(tmp_path: Path) -> None:
    calls: list[int] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(sample["id"])
        if sample["id"] == 2:
            raise KeyError("broken input")
        await anyio.sleep(0.001)
        return 1

    output = tmp_path / "out.jsonl"
    launcher = af.Launcher(fn, fault_tolerant=False, concurrency=1, retry=1, output=output)
    with pytest.raises(KeyError, match="broken input"):
        await launcher.run(data(50))
    assert calls == [0, 1, 2]  # nothing started after the failure
    records = read_records(output)
    assert [(r["id"], r["error"] is None) for r in records] == [(0, True), (1, True), (2, False)]


async def test_resume_skips_done_pairs_and_redoes_failed_ones(tmp_path: Path) -> None:
    broken = {"on": True}
    calls: list[tuple[int, int]] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append((sample["id"], sample["sample"]))
        if broken["on"] and sample["id"] == 4:
            raise RuntimeError("flaky")
        return sample["id"]

    output = tmp_path / "out.jsonl"
    await af.Launcher(fn, samples=2, output=output, retry=1).run(data(6))
    broken["on"] = False
    calls.clear()
    summary = await af.Launcher(fn, samples=2, output=output, retry=1).run(data(6))
    assert sorted(calls) == [(4, 0), (4, 1)]
    assert (summary.skipped, summary.succeeded) == (10, 2)
    good = Counter((r["id"], r["sample"]) for r in read_records(output) if r["error"] is None)
    assert good == {(i, s): 1 for i in range(6) for s in range(2)}
    records = await af.launch(fn, data(6), samples=2, output=output)
    assert [(r["id"], r["sample"]) for r in records] == [(i, s) for i in range(6) for s in (0, 1)]


async def test_a_torn_last_line_is_cut_and_redone(tmp_path: Path) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        return sample["id"]

    output = tmp_path / "out.jsonl"
    await af.Launcher(fn, output=output).run(data(3))
    lines = output.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    output.write_text("".join(lines[:-1]) + lines[-1][:15])  # a crash mid-write
    summary = await af.Launcher(fn, output=output).run(data(3))
    assert (summary.skipped, summary.succeeded) == (2, 1)
    records = read_records(output)  # every line parses again
    assert sorted((r["id"], r["sample"]) for r in records) == [(0, 0), (1, 0), (2, 0)]
    assert (last["id"], 0) in {(r["id"], r["sample"]) for r in records}


@pytest.mark.parametrize("content", ["not json at all\n", '{"some": "other record"}\n'])
async def test_a_foreign_output_file_is_an_error_and_left_untouched(
    tmp_path: Path, content: str
) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        raise AssertionError("must not run")

    output = tmp_path / "notes.jsonl"
    output.write_text(content)
    with pytest.raises(OutputFileError, match="line 1"):
        await af.Launcher(fn, output=output).run(data(2))
    assert output.read_text() == content


async def test_bad_input_fails_before_any_call(tmp_path: Path) -> None:
    calls: list[Any] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> None:
        calls.append(sample)

    with pytest.raises(ValueError, match="duplicate id 3"):
        await af.launch(fn, [*data(5), {"id": 3}])
    with pytest.raises(ValueError, match=r"item #1 has no 'id'"):
        await af.launch(fn, [{"id": 0}, {"name": "x"}])
    with pytest.raises(ValueError, match="samples"):
        af.Launcher(fn, samples=0)
    with pytest.raises(ValueError, match="does not exist"):
        af.Launcher(fn, output=tmp_path / "missing" / "out.jsonl")
    with pytest.raises(ValueError, match="go together"):
        af.Launcher(fn, tokens_per_key="100/s")
    with pytest.raises(ValueError, match="twice"):
        af.Launcher(fn, keys=["a", "a"])
    with pytest.raises(TypeError):
        af.Launcher(fn, keys="one-key-string")  # type: ignore[arg-type]
    assert calls == []


async def test_cancellation_leaves_the_file_consistent(tmp_path: Path) -> None:
    finished = 0
    stop = anyio.CancelScope()

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        nonlocal finished
        await anyio.sleep(0.002 * (sample["id"] % 5))
        finished += 1
        if finished == 50:  # stopped part way, from outside the run, as Ctrl-C would
            stop.cancel()
        return sample["id"]

    output = tmp_path / "out.jsonl"
    with stop:
        await af.Launcher(fn, output=output, concurrency=4).run(data(1000))
    first = read_records(output)  # every line is whole
    assert 0 < len(first) < 1000
    summary = await af.Launcher(fn, output=output, concurrency=32).run(data(1000))
    assert summary.skipped == len(first)
    good = Counter(r["id"] for r in read_records(output) if r["error"] is None)
    assert good == {i: 1 for i in range(1000)}


CRASH_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import aioflows as af

    async def fn(sample, key):
        await asyncio.sleep(0.001)
        return {"echo": sample["id"], "by": key.label}

    data = [{"id": f"item-{i}"} for i in range(3000)]
    launcher = af.Launcher(
        fn, keys=["secret-one", "secret-two"], samples=2, concurrency=32,
        output=sys.argv[1], retry=2,
    )
    print(asyncio.run(launcher.run(data)))
    """
)


def kill_mid_run(script: Path, output: Path) -> None:
    """Start the launcher and SIGKILL it once it has added some 40 kB of records."""
    start = output.stat().st_size if output.exists() else 0
    proc = subprocess.Popen([sys.executable, str(script), str(output)])
    sigkill_when(
        proc,
        lambda: output.exists() and output.stat().st_size >= start + 40_000,
        "the launcher",
    )


def test_kill_9_then_restart_writes_every_pair_exactly_once(tmp_path: Path) -> None:
    script, output = tmp_path / "launch.py", tmp_path / "out.jsonl"
    script.write_text(CRASH_SCRIPT)
    kill_mid_run(script, output)
    first = len(read_records(output, torn_ok=True))
    kill_mid_run(script, output)  # killed again, after a resume
    assert len(read_records(output, torn_ok=True)) > first
    done = subprocess.run(
        [sys.executable, str(script), str(output)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  skipped +[1-9][\d,]* ", done.stdout, re.MULTILINE)  # the table
    records = read_records(output)  # a torn line from a kill would not parse
    good = Counter((r["id"], r["sample"]) for r in records if r["error"] is None)
    assert good == {(f"item-{i}", s): 1 for i in range(3000) for s in range(2)}
    assert "secret-" not in output.read_text()


async def test_a_failing_cost_estimate_fails_only_its_pair() -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        return 1

    def cost(sample: dict[str, Any]) -> float:
        if sample["id"] == 1:
            raise ValueError("cannot estimate")
        return 1.0

    records = await af.launch(fn, data(3), tokens_per_key="100/s", cost=cost)
    assert [r["error"] for r in records] == [None, "ValueError: cannot estimate", None]


@pytest.mark.looptime
async def test_a_throttled_unlimited_key_still_waits() -> None:
    calls: list[float] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise af.RateLimited(retry_after=2)
        return 1

    t0 = anyio.current_time()
    [record] = await af.launch(fn, data(1))
    assert record["error"] is None
    assert record["attempts"] == 1
    assert [round(t - t0, 3) for t in calls] == [0.0, 2.0]


async def test_per_key_counts_this_run_only_and_errors_raised_are_scrubbed(
    tmp_path: Path,
) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        if sample["id"] == 99:
            raise RuntimeError(f"bad key {key.secret}")
        return 1

    launcher = af.Launcher(fn, keys=SECRETS, retry=1)
    assert sum((await launcher.run(data(4))).per_key.values()) == 4
    assert sum((await launcher.run(data(6))).per_key.values()) == 6
    strict = af.Launcher(fn, keys=SECRETS[:1], retry=1, fault_tolerant=False)
    with pytest.raises(RuntimeError) as info:
        await strict.run([{"id": 99}])
    assert SECRETS[0] not in str(info.value)
    assert "<key-0>" in str(info.value)


async def test_outputs_that_are_not_json_are_failures_and_secrets_in_outputs_are_scrubbed(
    tmp_path: Path,
) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> Any:
        if sample["id"] == 0:
            return object()
        return {"echo": f"header was {key.secret}"}

    output = tmp_path / "out.jsonl"
    summary = await af.Launcher(fn, keys=SECRETS[:1], output=output).run(data(2))
    assert (summary.succeeded, summary.failed) == (1, 1)
    records = read_records(output)
    assert records[0]["error"].startswith("TypeError: the output is not JSON") or records[1][
        "error"
    ].startswith("TypeError: the output is not JSON")
    assert SECRETS[0] not in output.read_text()
    assert {"echo": "header was <key-0>"} in [r["output"] for r in records]


async def test_without_resume_a_foreign_file_is_refused_too(tmp_path: Path) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        return 1

    output = tmp_path / "notes.txt"
    output.write_text("line 1\nline 2 no newline")
    with pytest.raises(OutputFileError):
        await af.Launcher(fn, output=output, resume=False).run(data(1))
    assert output.read_text() == "line 1\nline 2 no newline"


async def test_progress_shows_counts_and_keys_and_leaves_nothing_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncio

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        await anyio.sleep(0.001)
        return 1

    before = asyncio.all_tasks() - {asyncio.current_task()}
    summary = await af.Launcher(fn, keys=SECRETS, progress=True).run(data(20))
    assert summary.succeeded == 20
    err = capsys.readouterr().err
    assert "ok 20" in err
    assert "key-0" in err
    assert "key-1" in err
    assert not any(secret in err for secret in SECRETS)
    assert asyncio.all_tasks() - {asyncio.current_task()} == before


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, so rich draws on it as on one."""

    def isatty(self) -> bool:
        return True


async def test_issue11_progress_on_a_terminal_leaves_piped_stdout_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The launcher draws through the flow's live display: prints of fn stay on stdout when
    # stdout is piped (rich's Progress moved them onto the terminal the bar is drawn on).
    terminal, piped = FakeTerminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", piped)

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        print("printed by fn", sample["id"])
        if sample["id"] == 2:
            raise ValueError("two")
        return 1

    summary = await af.Launcher(fn, keys=SECRETS, progress=True, retry=None).run(data(3))
    assert (summary.succeeded, summary.failed) == (2, 1)
    assert piped.getvalue().count("printed by fn") == 3
    drawn = terminal.getvalue()
    assert "printed by fn" not in drawn
    assert "ok 2 failed 1 retried 0 | key-0:" in drawn  # the last frame
    assert "3/3" in drawn  # done of total
    assert "0:00:00" in drawn  # the ETA


# --- issue 10: secrets never reach a raised error ---------------------------------------------


class QuotesTheKey(Exception):
    """An exception with its own __str__ and repr, both quoting the key it holds."""

    def __init__(self, secret: str) -> None:
        super().__init__("no secret in args")
        self.secret = secret

    def __str__(self) -> str:
        return f"refused {self.secret}"

    def __repr__(self) -> str:
        return f"QuotesTheKey({self.secret!r})"


def _os_error(secret: str) -> BaseException:
    return FileNotFoundError(2, "No such file", f"/tmp/{secret}.json")


def _custom(secret: str) -> BaseException:
    return QuotesTheKey(secret)


def _cause(secret: str) -> BaseException:
    try:
        raise ConnectionError(f"sent {secret}")
    except ConnectionError as cause:
        try:
            raise RuntimeError("the call failed") from cause
        except RuntimeError as exc:
            return exc


def _context(secret: str) -> BaseException:
    try:
        raise KeyError(f"header {secret}")
    except KeyError:
        try:
            raise ValueError("while handling the reply")
        except ValueError as exc:
            return exc


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_os_error, FileNotFoundError),
        (_custom, QuotesTheKey),
        (_cause, RuntimeError),
        (_context, ValueError),
    ],
)
async def test_issue10_a_raised_error_holds_no_secret(make: Any, kind: type[BaseException]) -> None:
    import traceback

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        if sample["id"] == 1:
            assert key.secret is not None
            raise make(key.secret)
        return 1

    strict = af.Launcher(fn, keys=SECRETS[:1], retry=1, fault_tolerant=False, concurrency=1)
    with pytest.raises(kind) as info:  # `except <the original type>` still catches it
        await strict.run(data(3))
    exc = info.value
    printed = "".join(traceback.format_exception(exc))
    for text in (str(exc), repr(exc), printed):
        assert SECRETS[0] not in text
    from aioflows.launcher import LaunchFailed

    assert isinstance(exc, LaunchFailed)
    assert isinstance(exc, af.AioflowsError)
    assert (exc.error_type, exc.id, exc.sample, exc.key) == (kind.__name__, 1, 0, "key-0")
    assert exc.__cause__ is None
    assert exc.__suppress_context__
    assert kind.__name__ in str(exc)


async def test_issue10_the_clean_error_keeps_simple_attributes_scrubbed() -> None:
    from aioflows.launcher import LaunchFailed

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        raise QuotesTheKey(f"{key.secret}")

    with pytest.raises(QuotesTheKey) as info:
        await af.launch(fn, data(1), keys=SECRETS[:1], retry=1, fault_tolerant=False)
    assert isinstance(info.value, LaunchFailed)
    assert info.value.secret == "<key-0>"  # type: ignore[attr-defined]
    assert str(info.value) == "QuotesTheKey: refused <key-0> (id 0, sample 0, key-0)"


# --- issue 10: the writer never dies on a record ----------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_records(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path``: strict UTF-8 and strict JSON (no NaN or Infinity)."""
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=_no_constant) for line in text.splitlines()]


async def test_issue10_lone_surrogates_are_written_escaped_and_read_back(tmp_path: Path) -> None:
    cut = "a reply cut mid-emoji \ud83d"

    async def fn(sample: dict[str, Any], key: af.Key) -> Any:
        if sample["id"] == 1:
            raise ValueError(f"bad reply {cut}")
        return {"text": cut, "n": sample["id"]}

    output = tmp_path / "out.jsonl"
    summary = await af.Launcher(fn, output=output, retry=1).run(data(3))
    assert (summary.succeeded, summary.failed) == (2, 1)
    records = strict_records(output)
    assert sorted(r["id"] for r in records) == [0, 1, 2]
    assert [r["output"]["text"] for r in records if r["error"] is None] == [cut, cut]
    assert [r["error"] for r in records if r["error"]] == [f"ValueError: bad reply {cut}"]
    again = await af.Launcher(fn, output=output, retry=1).run(data(3))
    assert (again.skipped, again.failed) == (2, 1)
    assert [r["output"] for r in await af.launch(fn, data(3), output=output, retry=1)][::2] == [
        {"text": cut, "n": 0},
        {"text": cut, "n": 2},
    ]


async def test_issue10_non_ascii_outputs_stay_readable(tmp_path: Path) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> str:
        return "天気 ☀ é"

    output = tmp_path / "out.jsonl"
    await af.Launcher(fn, output=output).run(data(1))
    assert "天気 ☀ é" in output.read_text(encoding="utf-8")  # not \\uXXXX escapes
    assert strict_records(output)[0]["output"] == "天気 ☀ é"


class Colour(str, enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    "bad",
    [
        uuid.UUID(int=7),
        (1, uuid.UUID(int=7)),
        float("nan"),
        float("inf"),
        frozenset({1}),
        Colour.RED,  # written as "red", read back as a str
        10**5000,  # more digits than int() reads back
    ],
    ids=["uuid", "tuple-with-uuid", "nan", "inf", "frozenset", "str-enum", "huge-int"],
)
async def test_issue10_ids_that_cannot_be_written_faithfully_fail_before_any_call(
    tmp_path: Path, bad: Any
) -> None:
    calls: list[Any] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(sample)
        return 1

    with pytest.raises(ValueError, match=r"item #1: id .* cannot be written") as info:
        await af.launch(fn, [{"id": "fine"}, {"id": bad}], output=tmp_path / "out.jsonl")
    assert isinstance(info.value, af.AioflowsError)
    assert calls == []


async def test_issue10_tuple_and_other_json_ids_round_trip_through_resume(tmp_path: Path) -> None:
    ids: list[Any] = ["plain", 7, 2.5, None, (1, "a"), ((1, 2), ("x", None)), "lone \udc80"]

    async def fn(sample: dict[str, Any], key: af.Key) -> str:
        return "ok"

    output = tmp_path / "out.jsonl"
    items = [{"id": i} for i in ids]
    first = await af.Launcher(fn, output=output, samples=2).run(items)
    assert first.succeeded == 14
    assert len(strict_records(output)) == 14
    again = await af.Launcher(fn, output=output, samples=2).run(items)
    assert (again.skipped, again.succeeded) == (14, 0)
    records = await af.launch(fn, items, output=output, samples=2)
    assert [r["id"] for r in records[::2]] == ids  # the same values, tuples as tuples
    assert [type(r["id"]) for r in records[::2]] == [type(i) for i in ids]


async def test_issue10_an_output_that_cannot_be_written_is_an_error_record(tmp_path: Path) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    outputs: dict[int, Any] = {
        0: {(1, 2): "a tuple key"},
        1: cyclic,
        2: 10**5000,
        3: {"score": float("nan")},
        4: object(),
        5: "fine",
    }

    async def fn(sample: dict[str, Any], key: af.Key) -> Any:
        return outputs[sample["id"]]

    output = tmp_path / "out.jsonl"
    summary = await af.Launcher(fn, output=output).run(data(6))
    assert (summary.succeeded, summary.failed) == (1, 5)
    records = strict_records(output)
    assert Counter(r["id"] for r in records) == {i: 1 for i in range(6)}
    for r in records:
        if r["id"] == 5:
            assert (r["output"], r["error"]) == ("fine", None)
        else:
            assert r["output"] is None
            assert r["error"].startswith("TypeError: the output is not JSON")
    again = await af.Launcher(fn, output=output).run(data(6))  # resume reads it back
    assert (again.skipped, again.failed) == (1, 5)


async def test_issue10_an_output_that_cannot_be_written_stops_a_strict_run(tmp_path: Path) -> None:
    async def fn(sample: dict[str, Any], key: af.Key) -> Any:
        return {(1, 2): "a tuple key"} if sample["id"] == 1 else "fine"

    output = tmp_path / "out.jsonl"
    with pytest.raises(TypeError, match="the output is not JSON") as info:
        await af.launch(fn, data(3), output=output, concurrency=1, fault_tolerant=False)
    assert (info.value.id, info.value.sample) == (1, 0)  # type: ignore[attr-defined]
    assert [(r["id"], r["error"] is None) for r in strict_records(output)] == [
        (0, True),
        (1, False),
    ]


# --- issue 10: one output file, one launcher --------------------------------------------------


async def test_issue10_a_second_launcher_on_the_same_output_fails_at_once(tmp_path: Path) -> None:
    started, release = anyio.Event(), anyio.Event()

    async def slow(sample: dict[str, Any], key: af.Key) -> int:
        started.set()
        await release.wait()
        return 1

    async def must_not_run(sample: dict[str, Any], key: af.Key) -> int:
        raise AssertionError("must not run")

    output = tmp_path / "out.jsonl"
    async with anyio.create_task_group() as tg:
        tg.start_soon(af.Launcher(slow, output=output).run, data(3))
        await started.wait()
        with anyio.fail_after(10), pytest.raises(OutputFileError, match="in use") as info:
            await af.Launcher(must_not_run, output=output).run(data(3))
        assert str(output) in str(info.value)
        release.set()
    records = read_records(output)
    assert Counter((r["id"], r["sample"], r["error"]) for r in records) == {
        (i, 0, None): 1 for i in range(3)
    }
    summary = await af.Launcher(must_not_run, output=output).run(data(3))  # the lock went
    assert summary.skipped == 3


async def test_issue10_the_lock_goes_with_a_run_that_fails_or_is_cancelled(tmp_path: Path) -> None:
    stop = anyio.CancelScope()

    async def fails(sample: dict[str, Any], key: af.Key) -> int:
        raise RuntimeError("down")

    async def cancelled(sample: dict[str, Any], key: af.Key) -> int:
        stop.cancel()
        await anyio.sleep(1)
        return 1

    async def works(sample: dict[str, Any], key: af.Key) -> int:
        return 1

    output = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        await af.Launcher(fails, output=output, retry=1, fault_tolerant=False).run(data(2))
    with stop:
        await af.Launcher(cancelled, output=output).run(data(2))
    assert stop.cancelled_caught
    output.write_text("not ours\n")
    with pytest.raises(OutputFileError, match="not JSON"):
        await af.Launcher(works, output=output).run(data(2))
    output.unlink()
    assert (await af.Launcher(works, output=output).run(data(2))).succeeded == 2


HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, sys
    with open(sys.argv[1], "ab") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.read()  # until the test closes our stdin
    """
)


async def test_issue10_a_lock_held_by_another_process_refuses_the_run(tmp_path: Path) -> None:
    calls: list[Any] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(sample)
        return 1

    output = tmp_path / "out.jsonl"
    await af.Launcher(fn, output=output).run(data(1))
    content = output.read_bytes() + b'{"id": 1, "sam'  # a torn line, left as it is
    output.write_bytes(content)
    calls.clear()
    async with await anyio.open_process([sys.executable, "-c", HOLD_LOCK, str(output)]) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        said = b""
        while not said.endswith(b"\n"):
            said += await holder.stdout.receive()
        assert said == b"locked\n"
        with pytest.raises(OutputFileError, match="in use by another launcher") as info:
            await af.Launcher(fn, output=output).run(data(3))
        assert str(output) in str(info.value)
        assert calls == []
        assert output.read_bytes() == content  # not cut, not appended to
        await holder.stdin.aclose()  # the holder ends, and its lock with it
        assert await holder.wait() == 0
    summary = await af.Launcher(fn, output=output).run(data(3))  # that process is gone
    assert (summary.skipped, summary.succeeded) == (1, 2)


# --- issue 10: pauses are bounded -------------------------------------------------------------


async def test_issue10_a_throttle_asking_too_long_is_not_waited_for(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    state.scripts["/complete"] = [(429, {"retry-after": "1000000000"})]  # valid delta-seconds
    output = tmp_path / "out.jsonl"
    async with httpx.AsyncClient() as client:
        launcher = af.Launcher(
            calling(url, client),
            keys=SECRETS[:1],
            concurrency=1,
            output=output,
            retry=af.Retry(3, max_wait=0.2),
        )
        with anyio.fail_after(30):  # not 31 years
            summary = await launcher.run(data(3))
    assert (summary.succeeded, summary.failed) == (2, 1)
    records = read_records(output)
    [failed] = [r for r in records if r["error"] is not None]
    assert failed["id"] == 0
    assert failed["error"].startswith("RateLimited: the remote end asked to wait 1e+09 s")
    assert [r["key"] for r in records] == ["key-0"] * 3  # later pairs still ran on that key,
    first, second = (s.time for s in state.seen[:2])
    assert second - first >= 0.1  # after it rested (for max_wait, 0.2 s)


async def test_issue10_a_throttle_asking_too_long_stops_a_strict_run(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    state.scripts["/complete"] = [(429, {"retry-after": "1000000000"})]
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(30), pytest.raises(af.RateLimited) as info:  # the default max_wait
            await af.launch(calling(url, client), data(1), keys=SECRETS, fault_tolerant=False)
    assert info.value.retry_after == 1e9
    assert "longer than max_wait (300 s)" in str(info.value)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("retry", "throttle", "rest"),
    [
        (None, af.RateLimited(retry_after=1e9), 300.0),  # DEFAULT_MAX_WAIT; the pair gives up
        (af.Retry(3, max_wait=5), af.RateLimited(retry_after=1e9), 5.0),  # the pair gives up
        # no Retry-After: the backoff (50 s) is waited, but never longer than max_wait
        (af.Retry(3, backoff=50, jitter=False, max_wait=2), af.RateLimited(), 2.0),
    ],
    ids=["no-policy", "max_wait", "backoff"],
)
async def test_issue10_a_key_never_rests_longer_than_max_wait(
    retry: af.Retry | None, throttle: af.RateLimited, rest: float
) -> None:
    from aioflows.retry import DEFAULT_MAX_WAIT

    assert DEFAULT_MAX_WAIT == 300.0
    calls: list[float] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise throttle
        return 1

    t0 = anyio.current_time()
    records = await af.launch(fn, data(2), keys=SECRETS[:1], retry=retry, concurrency=1)
    assert [round(t - t0, 3) for t in calls] == [0.0, rest, rest][: len(calls)]
    gave_up = throttle.retry_after is not None
    assert [r["error"] is None for r in records] == [not gave_up, True]
    assert len(calls) == (2 if gave_up else 3)


# --- issue 11: the launcher streams its input -------------------------------------------------


def endless(pulled: list[int]) -> Iterator[dict[str, Any]]:
    n = 0
    while True:
        if n > 10_000:  # read ahead, as a list() of it would: fail rather than eat the memory
            raise AssertionError("the input was read ahead of the calls")
        pulled.append(n)
        yield {"id": n}
        n += 1


async def endless_async(pulled: list[int]) -> AsyncIterator[dict[str, Any]]:
    for item in endless(pulled):
        yield item


@pytest.mark.parametrize("make", [endless, endless_async], ids=["sync", "async"])
async def test_issue11_an_endless_input_is_pulled_lazily(make: Any, tmp_path: Path) -> None:
    pulled: list[int] = []
    calls = 0

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        nonlocal calls
        calls += 1
        assert len(pulled) <= calls + 4  # never more than the calls in flight ahead
        await anyio.lowlevel.checkpoint()
        if sample["id"] == 50:
            raise RuntimeError("enough")
        return 1

    output = tmp_path / "out.jsonl"
    launcher = af.Launcher(fn, concurrency=4, fault_tolerant=False, retry=1, output=output)
    with anyio.fail_after(10), pytest.raises(RuntimeError, match="enough"):
        await launcher.run(make(pulled))
    assert 51 <= len(pulled) <= 51 + 4
    assert len(read_records(output)) >= 50  # what finished is in the file


async def test_issue11_an_endless_input_stops_on_cancellation() -> None:
    pulled: list[int] = []
    calls = 0
    with anyio.CancelScope() as scope:

        async def fn(sample: dict[str, Any], key: af.Key) -> int:
            nonlocal calls
            calls += 1
            if calls == 500:  # by count, not by time: a fast machine makes 10,000 in 0.2 s
                scope.cancel()
            await anyio.lowlevel.checkpoint()
            return 1

        await af.Launcher(fn, concurrency=8).run(endless(pulled))
    assert scope.cancelled_caught  # it ran, and ended when cancelled
    assert 500 <= len(pulled) <= 500 + 64  # pulled as the workers took items, not read ahead


async def test_issue11_a_bad_streamed_item_stops_the_run_once_reached_and_resume_goes_on(
    tmp_path: Path,
) -> None:
    calls: list[Any] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(sample["id"])
        return sample["id"] * 10

    def stream(bad: Any) -> Iterator[Any]:
        yield from data(5)
        yield bad
        yield from ({"id": n} for n in range(6, 8))

    output = tmp_path / "out.jsonl"
    with pytest.raises(af.AioflowsError, match=r"item #5 is not a dict"):
        await af.launch(fn, stream("not a dict"), output=output, concurrency=1)
    assert calls == [0, 1, 2, 3, 4]
    assert sorted(r["id"] for r in read_records(output)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"duplicate id 2 in the input \(item #5\)"):
        await af.launch(fn, stream({"id": 2}), output=output, concurrency=1)

    calls.clear()
    summary = await af.Launcher(fn, output=output, samples=2).run(stream({"id": 5}))
    assert (summary.total, summary.skipped, summary.succeeded) == (16, 5, 11)
    assert sorted(calls) == sorted([*range(5), *range(5, 8), *range(5, 8)])
    records = await af.launch(fn, stream({"id": 5}), output=output, samples=2)
    assert [(r["id"], r["sample"]) for r in records] == [(n, s) for n in range(8) for s in (0, 1)]


async def test_issue11_a_list_is_still_checked_whole_before_any_call(tmp_path: Path) -> None:
    calls: list[Any] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> int:
        calls.append(sample)
        return 1

    output = tmp_path / "out.jsonl"
    for data_type in (list, tuple):
        with pytest.raises(ValueError, match=r"item #6 has no 'id'"):
            await af.launch(fn, data_type([*data(6), {"name": "x"}]), output=output)
    assert calls == []
    assert not output.exists() or output.read_text() == ""


def test_issue11_launch_takes_the_launchers_options() -> None:
    import inspect

    options = list(inspect.signature(af.Launcher).parameters.values())[1:]
    launch = inspect.signature(af.launch).parameters
    assert list(launch) == ["fn", "data", *(p.name for p in options)]
    assert [launch[p.name] for p in options] == options  # the same kinds, types and defaults
    assert repr(launch["retry"].default) == "Retry(3)"
