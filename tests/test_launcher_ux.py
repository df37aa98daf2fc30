"""The launcher as a person meets it (issue 14): progress in a log file and on a terminal, dead
keys quarantined, the summary table, and Ctrl-C. Against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from local_server import ServerState, serve
from rich.console import Console

import aioflows as af
from aioflows import _key_health, _launch_display

GOOD = ["sk-live-GOOD0001aa", "sk-live-GOOD0002bb"]
DEAD = "sk-live-DEAD0003cc"


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with serve() as (url, state):
        state.keys = set(GOOD)  # any other bearer is answered 401
        yield url, state


def calling(url: str, client: httpx.AsyncClient) -> Any:
    async def fn(sample: dict[str, Any], key: af.Key) -> Any:
        response = await client.post(
            f"{url}/complete", headers={"authorization": f"Bearer {key.secret}"}, json=sample
        )
        response.raise_for_status()
        return sample["id"]

    return fn


def data(n: int) -> list[dict[str, Any]]:
    return [{"id": i} for i in range(n)]


LINE = re.compile(
    r"^launch(?: (?P<end>finished|stopped))?: (?P<done>[\d,]+)(?:/(?P<to_run>[\d,]+))? now"
    r"(?:, (?P<before>[\d,]+) done before)? \| ok (?P<ok>[\d,]+) failed (?P<failed>[\d,]+) "
    r"retried (?P<retried>[\d,]+) \| (?P<keys>.*) \| (?P<rate>[\d,.]+)/s"
    r"(?:, ETA (?P<eta>\d+:\d\d:\d\d)|, took (?:\d+:\d\d:\d\d|\d+\.\d\d s))?$"
)


def number(text: str | None) -> int:
    return int((text or "0").replace(",", ""))


def progress_lines(err: str) -> list[re.Match[str]]:
    lines = [line for line in err.splitlines() if re.match(r"launch( finished| stopped)?:", line)]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines  # every line has the one format
    return [m for m in matches if m is not None]


async def test_off_a_terminal_progress_is_plain_lines_that_agree_with_themselves(
    server: tuple[str, ServerState],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, state = server
    state.delay = 0.01
    state.throttle_every = 9
    monkeypatch.setattr(_launch_display, "PLAIN_EVERY", 0.1)
    output = tmp_path / "out.jsonl"
    async with httpx.AsyncClient() as client:
        fn = calling(url, client)
        options: dict[str, Any] = {
            "keys": GOOD,
            "rate_per_key": "50/s",
            "concurrency": 4,
            "output": output,
            "progress": True,
            "retry": af.Retry(3, backoff=0.01),
        }
        first = await af.Launcher(fn, **options).run(data(30))
        err = capsys.readouterr().err
        assert "\x1b" not in err  # no terminal codes in a log file
        lines = progress_lines(err)
        assert len(lines) >= 3  # some while running (the run takes about 0.35 s), and a last
        assert [m["end"] for m in lines[:-1]] == [None] * (len(lines) - 1)
        assert lines[-1]["end"] == "finished"
        for m in lines:
            assert number(m["done"]) == number(m["ok"]) + number(m["failed"])
            assert number(m["to_run"]) == 30
            assert m["before"] is None
            assert "key-0:" in m["keys"]
            assert "key-1:" in m["keys"]
        assert any(m["eta"] for m in lines[:-1])
        last = lines[-1]
        assert (number(last["done"]), number(last["ok"])) == (30, first.succeeded)
        assert number(last["retried"]) == first.retried >= 1  # the server throttled some
        assert not any(secret in err for secret in GOOD)

        # A resume says what was done before, apart from this run's count.
        extra = [{"id": i} for i in range(30, 40)]
        second = await af.Launcher(fn, **options).run(data(30) + extra)
    lines = progress_lines(capsys.readouterr().err)
    assert second.skipped == 30
    for m in lines:
        assert (number(m["before"]), number(m["to_run"])) == (30, 10)
    assert number(lines[-1]["done"]) == 10


def test_on_a_terminal_the_counts_wrap_and_are_never_cut() -> None:
    snap = _launch_display.Snapshot(
        ok=120,
        failed=10,
        retried=5,
        to_run=6_064,
        before=3_936,
        elapsed=3.0,
        per_key={"key-0": 70, "key-1": 65},
        quarantined=("key-1",),
    )
    screen = io.StringIO()
    console = Console(file=screen, width=40, force_terminal=True, color_system=None)
    console.print(_launch_display.frame(snap))
    text = " ".join(screen.getvalue().split())
    assert "…" not in text
    for part in ("130/6,064 now", "3,936 done before", "ok 120", "failed 10", "retried 5"):
        assert part in text
    assert "key-1:65 (quarantined)" in text
    assert "43.3/s" in text  # 130 pairs in 3 s
    assert "0:02:17" in text  # (6,064 - 130) / 43.3 per second


async def test_a_dead_key_is_quarantined_and_its_pairs_go_to_the_other_keys(
    server: tuple[str, ServerState], caplog: pytest.LogCaptureFixture
) -> None:
    url, state = server
    keys = [GOOD[0], DEAD, GOOD[1]]  # key-1 is answered 401
    caplog.set_level(logging.WARNING, logger="aioflows.launcher")
    async with httpx.AsyncClient() as client:
        records = await af.launch(
            calling(url, client),
            data(60),
            keys=keys,
            concurrency=4,
            retry=af.Retry(3, backoff=0.01),
        )
        # The summary of the same job run again counts the quarantined key.
        summary = await af.Launcher(
            calling(url, client), keys=keys, concurrency=4, retry=af.Retry(3, backoff=0.01)
        ).run(data(60))
    assert all(r["error"] is None for r in records)  # every pair went to a good key
    assert {r["key"] for r in records} == {"key-0", "key-2"}
    rejected = [r for r in records if r["attempts"] > 1]
    assert rejected
    assert all(r["attempts"] == 2 for r in rejected)
    dead_calls = sum(1 for s in state.seen if s.authorization == f"Bearer {DEAD}")
    # Three in a row quarantine it; calls already in flight on it may still come back.
    assert 2 * _key_health.QUARANTINE_AFTER <= dead_calls <= 2 * (_key_health.QUARANTINE_AFTER + 4)
    assert summary.quarantined == ("key-1",)
    assert summary.succeeded == 60
    table = str(summary)
    assert re.search(r"^  key-1 +\d+ +[\d.]+% +[\d.,]+  quarantined$", table, re.MULTILINE)
    logged = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert logged
    assert all(m.startswith("key-1 quarantined after 3 rejections") for m in logged)
    assert DEAD not in caplog.text


async def test_when_every_key_is_dead_the_run_stops_with_a_clear_error(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    state.keys = {"sk-live-nobody-has-this"}
    output = tmp_path / "out.jsonl"
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        with pytest.raises(af.AllKeysQuarantined) as info:
            await af.Launcher(
                calling(url, client),
                keys=GOOD,
                concurrency=2,
                output=output,
                retry=af.Retry(5, backoff=0.01),
            ).run(data(1000))
    assert time.monotonic() - started < 10  # stopped, not 1000 pairs failed one by one
    assert info.value.keys == ("key-0", "key-1") or info.value.keys == ("key-1", "key-0")
    assert "every key was quarantined" in str(info.value)
    assert not any(secret in str(info.value) for secret in GOOD)
    assert len(state.seen) <= 2 * (_key_health.QUARANTINE_AFTER + 2)
    lines = output.read_text().splitlines()
    assert all(json.loads(line)["error"] for line in lines)  # whatever finished was written


async def test_a_retry_prefers_another_key_than_the_one_that_failed() -> None:
    calls: list[tuple[int, str]] = []

    async def fn(sample: dict[str, Any], key: af.Key) -> str:
        calls.append((sample["id"], key.label))
        if len([c for c in calls if c[0] == sample["id"]]) == 1:
            raise ConnectionResetError("dropped")  # every pair's first call fails
        return key.label

    records = await af.launch(
        fn, data(6), keys=[*GOOD, DEAD], concurrency=1, retry=af.Retry(2, backoff=0.001)
    )
    for r in records:
        first, again = [label for ident, label in calls if ident == r["id"]]
        assert first != again == r["output"]


def test_the_summary_is_a_readable_table() -> None:
    summary = af.LaunchSummary(
        total=10_000,
        succeeded=6_010,
        failed=54,
        skipped=3_936,
        retried=12,
        duration_s=144.37,
        per_key={"key-0": 3_000, "key-1": 2_000, "key-2": 1_076},
        quarantined=("key-2",),
    )
    table = str(summary)
    print(table)
    assert table.splitlines() == [
        "launch summary",
        "  pairs       10,000",
        "  succeeded    6,010",
        "  failed          54  written with their error; a resume runs them again",
        "  skipped      3,936  done before, in the output",
        "  retried         12  calls sent again: failures and throttles",
        "  took       0:02:24  42.0 pairs/s",
        "  key   calls   share       /s",
        "  key-0 3,000   49.4%     20.8",
        "  key-1 2,000   32.9%     13.9",
        "  key-2 1,076   17.7%      7.5  quarantined",
    ]
    assert repr(summary).startswith("LaunchSummary(total=10000, succeeded=6010,")


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import aioflows as af

    async def fn(sample, key):
        await asyncio.sleep(0.01)
        return sample["id"]

    async def main():
        data = [{"id": i} for i in range(100_000)]
        launcher = af.Launcher(
            fn, keys=["sk-live-ctrlc-0001"], concurrency=8, output=sys.argv[1], progress=True
        )
        await launcher.run(data)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)  # the shell's code for a run stopped by Ctrl-C
    """
)


def test_ctrl_c_ends_with_the_summary_and_exit_130(tmp_path: Path) -> None:
    script, output = tmp_path / "batch.py", tmp_path / "out.jsonl"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not output.exists() or output.stat().st_size < 2_000:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "launch interrupted\nlaunch summary\n" in err
    assert re.search(r"^  succeeded +[1-9][\d,]*$", err, re.MULTILINE)
    assert "sk-live-ctrlc" not in err
    done = len(output.read_text().splitlines())
    assert re.search(rf"^  succeeded +{done:,}$", err, re.MULTILINE)  # as in the file
    # The last progress line comes once everything that finished is written: it agrees too.
    last = progress_lines(err)[-1]
    assert (last["end"], number(last["ok"])) == ("stopped", done)


class Rejected(Exception):
    """An SDK's error for a rejected key: a ``status_code``, no httpx response."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


async def test_a_success_between_rejections_and_a_launch_without_keys_quarantine_nothing() -> None:
    calls = 0

    async def every_other_call_rejected(sample: dict[str, Any], key: af.Key) -> int:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise Rejected(403)
        return 1

    summary = await af.Launcher(
        every_other_call_rejected, keys=GOOD[:1], concurrency=1, retry=None
    ).run(data(20))
    assert summary.quarantined == ()  # never three in a row
    assert (summary.succeeded, summary.failed) == (10, 10)

    async def always_rejected(sample: dict[str, Any], key: af.Key) -> int:
        raise Rejected(401)

    # No keys: the "default" key is not to blame, the run goes on to the end.
    summary = await af.Launcher(always_rejected, retry=None).run(data(10))
    assert (summary.failed, summary.quarantined) == (10, ())
    # The same rejections from a key are its quarantine, and with one key, the run's end.
    with pytest.raises(af.AllKeysQuarantined):
        await af.Launcher(always_rejected, keys=GOOD[:1], retry=None).run(data(10))
