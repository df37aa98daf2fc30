"""The ``aioflows`` command line, run as a real subprocess in a temporary directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aioflows._version import __version__

DEMO = """
import aioflows as af

@af.task
async def load(n: int) -> list[int]:
    return list(range(n))

@af.task
async def prep(load, scale):
    return [x * scale for x in load]

@af.task
def train(prep, lr, ctx):
    return sum(prep) * lr

@af.task(reduce=True)
async def best(train):
    return max(train, key=lambda s: s.value).config

flow = af.Flow("demo")
l = flow.add(load, {"n": 5})
p = flow.add(prep, {"scale": [1, 2]}, requires=[l])
t = flow.add(train, {"lr": [0.1, 0.2, 0.3]}, requires=[p])
flow.add(best, requires=[t])
"""

FAILING = """
import aioflows as af

@af.task
async def a(x):
    if x == 2:
        raise ValueError("x is two")
    return x

@af.task
async def b(a):
    return a

flow = af.Flow("failing")
flow.add(b, requires=[flow.add(a, {"x": [1, 2, 3]})])
"""


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    return subprocess.run(
        [sys.executable, "-m", "aioflows", *args],
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        env=env,
    )


def write(path: Path, code: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def outcome(stdout: str, flow: str = "demo") -> dict[str, int]:
    """The state counts of the status line: ``flow demo: ok, 10 instances (10 finished)``."""
    match = re.search(rf"^flow {flow}: (ok|failed), (\d+) instances? \(([^)]*)\)", stdout, re.M)
    assert match is not None, stdout
    counts = {}
    for part in match.group(3).split(", "):
        count, state = part.split(" ")
        counts[state] = int(count)
    assert sum(counts.values()) == int(match.group(2))
    return counts


def records(store: Path) -> int:
    return len(list(store.glob("*/*/_taskinfo.json")))


def assert_usage_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2 with exactly one line on stderr, no traceback, naming the fragments."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aioflows: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    write(tmp_path / "flows.py", DEMO)
    return tmp_path


# --- run -------------------------------------------------------------------------------------


def test_run_prints_a_summary_and_stores_records_in_the_default_store(demo: Path) -> None:
    proc = cli(demo, "run", "flows.py")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc.stdout) == {"finished": 10}
    for task in ("load", "prep", "train", "best"):
        assert re.search(rf"│ {task}\s+│", proc.stdout), proc.stdout
    assert "flow demo: ok" in proc.stdout
    assert records(demo / ".aioflows") == 10
    assert proc.stderr == ""  # no progress display when stderr is not a terminal


def test_run_twice_loads_everything_from_the_store(demo: Path) -> None:
    assert cli(demo, "run", "flows.py").returncode == 0
    proc = cli(demo, "run", "flows.py")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc.stdout) == {"cached": 10}


def test_store_option(demo: Path) -> None:
    proc = cli(demo, "run", "flows.py", "--store", "results/here")
    assert proc.returncode == 0, proc.stderr
    assert records(demo / "results" / "here") == 10
    assert not (demo / ".aioflows").exists()
    assert outcome(cli(demo, "run", "flows.py", "--store", "results/here").stdout) == {"cached": 10}


def test_store_that_is_a_file_is_a_usage_error(demo: Path) -> None:
    (demo / "afile").write_text("x")
    assert_usage_error(cli(demo, "run", "flows.py", "--store", "afile"), "not a directory")


def test_force_reruns_a_task_and_with_plus_its_descendants(demo: Path) -> None:
    assert cli(demo, "run", "flows.py").returncode == 0
    plus = cli(demo, "run", "flows.py", "--force", "train+")
    assert plus.returncode == 0, plus.stderr
    assert outcome(plus.stdout) == {"finished": 7, "cached": 3}  # 6 train + best
    alone = cli(demo, "run", "flows.py", "--force", "best")
    assert outcome(alone.stdout) == {"finished": 1, "cached": 9}
    # prep ran again, so train and best, cached from the old prep values, are stale: they run
    # again too (make's rule), load does not.
    both = cli(demo, "run", "flows.py", "--force", "prep", "--force", "best")
    assert outcome(both.stdout) == {"finished": 9, "cached": 1}
    everything = cli(demo, "run", "flows.py", "--force", "all")
    assert outcome(everything.stdout) == {"finished": 10}


def test_force_naming_no_task_is_a_usage_error(demo: Path) -> None:
    proc = cli(demo, "run", "flows.py", "--force", "nosuchtask")
    assert_usage_error(proc, "nosuchtask", "load, prep, train, best")
    assert not (demo / ".aioflows").exists()  # nothing ran


def test_concurrency_bounds_running_instances(tmp_path: Path) -> None:
    write(
        tmp_path / "peak.py",
        """
        import json
        import anyio
        import aioflows as af

        running = 0
        peak = 0

        @af.task
        async def work(i):
            global running, peak
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.05)
            running -= 1
            return i

        @af.task(reduce=True)
        async def report(work):
            with open("peak.json", "w") as f:
                json.dump(peak, f)
            return peak

        flow = af.Flow("peak")
        flow.add(report, requires=[flow.add(work, {"i": list(range(8))})])
        """,
    )
    proc = cli(tmp_path, "run", "peak.py", "--concurrency", "2", "--store", "bounded")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc.stdout, "peak") == {"finished": 9}
    assert int((tmp_path / "peak.json").read_text()) <= 2
    unbounded = cli(tmp_path, "run", "peak.py", "--store", "unbounded")
    assert unbounded.returncode == 0, unbounded.stderr
    assert int((tmp_path / "peak.json").read_text()) > 2  # the option made the difference


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_concurrency_is_a_usage_error(demo: Path, value: str) -> None:
    assert_usage_error(cli(demo, "run", "flows.py", "--concurrency", value), "--concurrency")


def test_a_failing_flow_exits_1_and_names_the_failed_instance(tmp_path: Path) -> None:
    write(tmp_path / "failing.py", FAILING)
    proc = cli(tmp_path, "run", "failing.py")
    assert proc.returncode == 1, proc.stderr
    counts = outcome(proc.stdout, "failing")
    assert counts["failed"] == 1
    assert counts.get("upstream_failed") == 1
    assert "flow failing: failed" in proc.stdout
    assert "a-2: ValueError: x is two" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr


def test_progress_can_be_forced_on_and_off(demo: Path) -> None:
    on = cli(demo, "run", "flows.py", "--progress")
    assert on.returncode == 0, on.stderr
    assert "finished 10" in on.stderr  # the display's last frame, on stderr
    assert "flow demo: ok" in on.stdout
    assert "flow demo: ok" not in on.stderr
    off = cli(demo, "run", "flows.py", "--no-progress")
    assert off.returncode == 0
    assert off.stderr == ""


def test_progress_with_a_failing_flow(tmp_path: Path) -> None:
    write(tmp_path / "failing.py", FAILING)
    proc = cli(tmp_path, "run", "failing.py", "--progress")
    assert proc.returncode == 1
    assert "failed 1" in proc.stderr
    assert "a-2: ValueError: x is two" in proc.stderr


# --- loading the flow --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_usage_error(cli(tmp_path, "run", "nofile.py"), "no such file: nofile.py")
    assert_usage_error(cli(tmp_path, "graph", "sub/nofile.py:flow"), "no such file")


def test_missing_module(tmp_path: Path) -> None:
    assert_usage_error(cli(tmp_path, "run", "no_such_module"), "no module named")
    assert_usage_error(cli(tmp_path, "run", "no_such_pkg.flows:make"), "no module named")


def test_missing_object_lists_the_flows_there(demo: Path) -> None:
    proc = cli(demo, "run", "flows.py:nope")
    assert_usage_error(proc, "flows.py has no object 'nope'", "Flow objects there: flow")


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("odd.py", "is not an aioflows Flow (it is a int)"),
        ("odd.py:needs_args", "neither a Flow nor a function"),
        ("odd.py:returns_none", "did not return an aioflows Flow"),
        ("odd.py:is_async", "is async"),
        ("odd.py:1bad", "is not a Python name"),
    ],
)
def test_not_a_flow(tmp_path: Path, target: str, fragment: str) -> None:
    write(
        tmp_path / "odd.py",
        """
        flow = 42

        def needs_args(x):
            return x

        def returns_none():
            return None

        async def is_async():
            return None
        """,
    )
    assert_usage_error(cli(tmp_path, "run", target), fragment)


def test_a_flow_declared_wrongly_is_a_usage_error(tmp_path: Path) -> None:
    write(
        tmp_path / "cycle.py",
        """
        import aioflows as af

        async def a(b):
            return b

        async def b(a):
            return a

        flow = af.Flow("cycle")
        flow.add(a, requires=["b"])
        flow.add(b, requires=["a"])
        """,
    )
    assert_usage_error(cli(tmp_path, "run", "cycle.py"), "cycle")
    assert_usage_error(cli(tmp_path, "graph", "cycle.py"), "cycle")


def test_an_error_while_importing_shows_its_traceback(tmp_path: Path) -> None:
    write(
        tmp_path / "broken.py",
        """
        import aioflows as af

        def helper():
            raise RuntimeError("boom while importing")

        helper()
        """,
    )
    proc = cli(tmp_path, "run", "broken.py")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert 'broken.py", line 7, in <module>' in proc.stderr  # the user's lines
    assert 'broken.py", line 5, in helper' in proc.stderr
    assert "RuntimeError: boom while importing" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "aioflows: error: importing broken.py failed (traceback above)"
    )
    assert "importlib" not in proc.stderr
    assert "cli.py" not in proc.stderr


def test_a_syntax_error_shows_where(tmp_path: Path) -> None:
    write(tmp_path / "syntax.py", "def f(:\n    pass\n")
    proc = cli(tmp_path, "graph", "syntax.py")
    assert proc.returncode == 2
    assert "SyntaxError" in proc.stderr
    assert "syntax.py" in proc.stderr


def test_an_import_error_inside_a_module_is_the_users_error(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "flows.py", "import no_such_dependency_xyz\n")
    proc = cli(tmp_path, "run", "pkg.flows")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert "no_such_dependency_xyz" in proc.stderr


def test_module_and_object_form(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(
        tmp_path / "pkg" / "flows.py",
        DEMO
        + textwrap.dedent(
            """
            def make():
                other = af.Flow("made")
                other.add(load, {"n": [1, 2, 3]})
                return other
            """
        ),
    )
    proc = cli(tmp_path, "run", "pkg.flows")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc.stdout) == {"finished": 10}
    made = cli(tmp_path, "run", "pkg.flows:make")
    assert made.returncode == 0, made.stderr
    assert outcome(made.stdout, "made") == {"finished": 3}
    graph = cli(tmp_path, "graph", "pkg.flows:make")
    assert graph.returncode == 0
    assert graph.stdout.startswith("flow made: 1 task, 3 instances")


def test_the_console_script_finds_modules_in_the_current_directory(tmp_path: Path) -> None:
    """Unlike ``python -m``, a console script does not put the current directory on sys.path."""
    script = shutil.which("aioflows", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the aioflows console script is not installed next to this Python")
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "flows.py", DEMO)
    proc = subprocess.run(
        [script, "graph", "pkg.flows"],
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("flow demo: 4 tasks, 10 instances")


def test_a_file_can_import_its_siblings(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "helpers.py", "SCALE = [1, 2]\n")
    write(
        tmp_path / "sub" / "flows.py",
        """
        import aioflows as af
        from helpers import SCALE

        @af.task
        async def scaled(scale):
            return scale

        flow = af.Flow("siblings")
        flow.add(scaled, {"scale": SCALE})
        """,
    )
    proc = cli(tmp_path, "run", "sub/flows.py")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc.stdout, "siblings") == {"finished": 2}


def test_pickled_results_load_in_the_next_run(tmp_path: Path) -> None:
    """A non-JSON result is pickled with the file's module name, the same in every run."""
    write(
        tmp_path / "objects.py",
        """
        from dataclasses import dataclass
        import aioflows as af

        @dataclass
        class Point:
            x: int

        @af.task
        async def make(x):
            return Point(x)

        @af.task
        async def use(make):
            assert isinstance(make, Point)
            return make.x

        flow = af.Flow("objects")
        flow.add(use, requires=[flow.add(make, {"x": [1, 2]})])
        """,
    )
    assert cli(tmp_path, "run", "objects.py").returncode == 0
    proc = cli(tmp_path, "run", "objects.py", "--force", "use")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc.stdout, "objects") == {"finished": 2, "cached": 2}


# --- graph -----------------------------------------------------------------------------------


def test_graph_text_is_the_default(demo: Path) -> None:
    proc = cli(demo, "graph", "flows.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "flow demo: 4 tasks, 10 instances"
    assert any(re.fullmatch(r"  train-3\s+\{lr: 0.2\}  <- prep-1", line) for line in lines)
    assert not (demo / ".aioflows").exists()  # nothing ran


def test_graph_formats(demo: Path) -> None:
    mermaid = cli(demo, "graph", "flows.py:flow", "--format", "mermaid")
    assert mermaid.returncode == 0
    assert mermaid.stdout.startswith("flowchart TD\n")
    assert mermaid.stdout.count(" --> ") == 14
    dot = cli(demo, "graph", "flows.py", "--format", "dot")
    assert dot.returncode == 0
    assert dot.stdout.startswith('digraph "demo" {\n')
    assert dot.stdout.endswith("}\n")
    assert dot.stdout.count(" -> ") == 14
    assert_usage_error(cli(demo, "graph", "flows.py", "--format", "svg"), "invalid choice")


# --- show ------------------------------------------------------------------------------------


def test_show_lists_records(demo: Path) -> None:
    assert cli(demo, "run", "flows.py").returncode == 0
    proc = cli(demo, "show")
    assert proc.returncode == 0, proc.stderr
    assert "10 task records in .aioflows" in proc.stdout
    names = re.findall(r"^\w+ +(\w+-\d+) ", proc.stdout, re.M)
    assert sorted(names) == sorted(
        ["load-1", "prep-1", "prep-2", *(f"train-{i}" for i in range(1, 7)), "best-1"]
    )
    assert proc.stdout.count("finished") == 10
    one = cli(demo, "show", "train")
    assert one.returncode == 0
    assert re.findall(r"^train +(\w+-\d+) ", one.stdout, re.M) == [
        f"train-{i}" for i in range(1, 7)
    ]
    assert one.stdout.startswith("6 task records in .aioflows")
    assert re.findall(r"^(\w+) ", one.stdout, re.M) == ["6", "task"] + ["train"] * 6


def test_show_failed_records_with_their_error(tmp_path: Path) -> None:
    write(tmp_path / "failing.py", FAILING)
    assert cli(tmp_path, "run", "failing.py", "--store", "s").returncode == 1
    proc = cli(tmp_path, "show", "--store", "s", "a")
    assert proc.returncode == 0
    assert re.search(r"a-2 .*failed.*ValueError: x is two", proc.stdout)


def test_show_with_an_empty_or_missing_store(tmp_path: Path) -> None:
    missing = cli(tmp_path, "show")
    assert missing.returncode == 0
    assert missing.stdout.strip() == "no task records in .aioflows"
    (tmp_path / "empty").mkdir()
    empty = cli(tmp_path, "show", "--store", "empty", "train")
    assert empty.returncode == 0
    assert empty.stdout.strip() == "no task records of task 'train' in empty"


def test_show_a_corrupt_record_is_one_line(demo: Path) -> None:
    assert cli(demo, "run", "flows.py").returncode == 0
    info = next((demo / ".aioflows" / "train").glob("*/_taskinfo.json"))
    info.write_text("{not json", encoding="utf-8")
    assert_usage_error(cli(demo, "show"), "_taskinfo.json")


def test_show_a_task_name_that_cannot_be_one(tmp_path: Path) -> None:
    assert_usage_error(cli(tmp_path, "show", "../etc"))


# --- the program itself ------------------------------------------------------------------------


def test_version_and_help(tmp_path: Path) -> None:
    version = cli(tmp_path, "--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"aioflows {__version__}"
    bare = cli(tmp_path)
    assert bare.returncode == 0
    assert bare.stdout.startswith("usage: aioflows")
    for command in ("run", "graph", "show", "report"):
        assert command in bare.stdout
    helped = cli(tmp_path, "run", "--help")
    assert helped.returncode == 0
    for option in (
        "--store",
        "--concurrency",
        "--force",
        "--target",
        "--keep-going",
        "--verbose",
        "--progress",
        "--no-progress",
    ):
        assert option in helped.stdout


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    assert_usage_error(cli(tmp_path, "run"), "required")
    assert_usage_error(cli(tmp_path, "frobnicate"), "invalid choice")
    assert_usage_error(cli(tmp_path, "show", "--bogus"), "unrecognized arguments")


def test_first_line_and_printable_are_two_jobs() -> None:
    # An error message keeps its first line, cut to a width; a graph's name keeps all of its
    # characters, those that would break the line made spaces. One helper module holds both.
    from aioflows._text import first_line, printable, shorten

    assert first_line("  bad value\n  in line 2\n", 40) == "bad value..."
    assert first_line("x" * 50, 10) == "xxxxxxx..."
    assert first_line("fits", 10) == "fits"
    assert first_line("", 10) == ""
    assert printable("a\nb\tc\x1b") == "a b c "
    assert printable("plain") == "plain"
    assert shorten("abcdef", 5) == "ab..."
    assert shorten("abcde", 5) == "abcde"


# --- run options, summary, show columns (API.md §9) ---------------------------------------------

LOGGING = """
import anyio
import aioflows as af

@af.task
async def a(x, ctx):
    ctx.logger.info("working on %s", x)
    if x == 2:
        raise ValueError("x is two")
    return x

@af.task
async def slow(y):
    await anyio.sleep(0.5)
    return y

flow = af.Flow("logging")
flow.add(a, {"x": [1, 2, 3]})
flow.add(slow, {"y": [1, 2, 3, 4]})
"""


def summary_row(stdout: str, task: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells[0] == task:
            return cells
    raise AssertionError(stdout)


def seconds(cell: str) -> float:
    assert cell.endswith(" s"), cell
    return float(cell[:-2])


def test_verbose_and_keep_going_and_the_summarys_wall_and_summed_time(tmp_path: Path) -> None:
    write(tmp_path / "logs.py", LOGGING)
    quiet = cli(tmp_path, "run", "logs.py")
    assert quiet.returncode == 1
    # default: one line per failure, no traceback, no task log below WARNING
    assert "a-2: ValueError: x is two" in quiet.stderr.splitlines()
    assert "Traceback" not in quiet.stderr
    assert "working on" not in quiet.stderr
    stopped = outcome(quiet.stdout, "logging")
    assert stopped.get("killed", 0) + stopped.get("not_run", 0) >= 1  # fail-fast stopped slow

    loud = cli(tmp_path, "run", "logs.py", "-v", "--keep-going", "--store", "other")
    assert loud.returncode == 1
    assert outcome(loud.stdout, "logging") == {"finished": 6, "failed": 1}
    assert "Traceback (most recent call last)" in loud.stderr
    assert 'raise ValueError("x is two")' in loud.stderr  # the user's line
    assert "scheduler.py" not in loud.stderr  # not aioflows' own frames
    assert re.search(r"^\d\d:\d\d:\d\d a-1: working on 1$", loud.stderr, re.M), loud.stderr

    header = next(line for line in loud.stdout.splitlines() if "instances" in line)
    assert "wall time" in header
    assert "instance time (sum)" in header
    # four sleeps of 0.5 s side by side: about half a second of wall time, two s summed
    wall, summed = (seconds(c) for c in summary_row(loud.stdout, "slow")[-2:])
    assert summed >= 2.0
    assert 0.5 <= wall < summed


def test_target_runs_only_what_a_task_needs(demo: Path) -> None:
    proc = cli(demo, "run", "flows.py", "--target", "prep", "--target", "load")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc.stdout) == {"finished": 3}
    assert not (demo / ".aioflows" / "train").exists()
    assert_usage_error(cli(demo, "run", "flows.py", "--target", "nosuch"), "nosuch")


def test_an_unfilled_parameter_names_the_predecessor_result(tmp_path: Path) -> None:
    write(
        tmp_path / "slip.py",
        """
        import aioflows as af

        async def load():
            return [1, 2]

        async def train(data, lr):
            return lr

        flow = af.Flow("slip")
        flow.add(train, {"lr": [0.1]}, requires=[flow.add(load)])
        """,
    )
    assert_usage_error(
        cli(tmp_path, "run", "slip.py"),
        "nothing provides parameter 'data'",
        "the result of 'load' is passed as 'load'",
        "config keys: 'lr'",
    )


def show_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(unique_name, run) -> the row's cells, split on runs of 2+ spaces."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 5 and re.fullmatch(r"\w+-\d+", cells[1]):
            rows[cells[1], cells[3]] = cells
    return rows


def test_show_marks_the_last_runs_records_stale_ones_and_gives_config_and_value(
    demo: Path,
) -> None:
    assert cli(demo, "run", "flows.py").returncode == 0
    # A new grid for prep: prep-2 of the last run is another instance than the first's.
    code = (demo / "flows.py").read_text(encoding="utf-8")
    (demo / "flows.py").write_text(code.replace('"scale": [1, 2]', '"scale": [1, 3]'))
    assert cli(demo, "run", "flows.py", "--target", "prep", "--force", "prep").returncode == 0
    proc = cli(demo, "show", "prep")
    assert proc.returncode == 0, proc.stderr
    rows = show_rows(proc.stdout)
    assert set(rows) == {("prep-1", "last"), ("prep-2", "last"), ("prep-2", "older")}
    assert rows["prep-2", "last"][8:10] == ["{scale: 3}", "[0, 3, 6, 9, 12]"]
    assert rows["prep-2", "older"][8:10] == ["{scale: 2}", "[0, 2, 4, 6, 8]"]
    assert "run: last = an instance of the last run (flow demo" in proc.stdout
    # prep-1 is the same instance in both grids and ran again (forced): the train instances
    # and best above it are stale; those from the older prep-2 (scale 2) are current.
    everything = show_rows(cli(demo, "show").stdout)
    stale = sorted(k[0] for k, cells in everything.items() if cells[4] == "finished stale")
    assert stale == ["best-1", "train-1", "train-3", "train-5"]
    only_last = show_rows(cli(demo, "show", "--last").stdout)
    assert set(only_last) == {("load-1", "last"), ("prep-1", "last"), ("prep-2", "last")}
