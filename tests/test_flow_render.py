"""Rendering the expanded graph (Mermaid, DOT, text) and the live progress display.

Every test is async, also where nothing is awaited: a sync test leaves an event loop unclosed
(looptime with pytest-asyncio, see conftest.py), and on CPython 3.11 < 3.11.8 such a loop
finalized in the middle of an ``ast.parse`` (pytest rewriting a module imported late) breaks
the parse with "AST constructor recursion depth mismatch".
"""

from __future__ import annotations

import gc
import io
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import anyio
import pytest
from rich.console import Console
from rich.text import Text

import aioflows as af
from aioflows._display import LiveDisplay, isatty
from aioflows.flow import render
from aioflows.flow.progress import FlowProgress, format_seconds, summary_table

# --- flows ---------------------------------------------------------------------------------


@af.task
async def load(n: int) -> list[int]:
    return list(range(n))


@af.task
async def left(load: list[int], k: int) -> int:
    return sum(load) * k


@af.task
async def right(load: list[int], m: int) -> int:
    return len(load) + m


@af.task
async def join(left: int, right: int) -> int:
    return left + right


@af.task(reduce=True)
async def best(join: list[af.Sweep[int]]) -> int:
    return max(s.value for s in join)


def small_flow(name: str = "small") -> af.Flow:
    """load (2) -> left (4), right (2) -> join (4, two predecessors) -> best (1, reduce)."""
    flow = af.Flow(name)
    ld = flow.add(load, {"n": [2, 3]})
    lt = flow.add(left, {"k": [1, 2]}, requires=[ld])
    rt = flow.add(right, {"m": 5}, requires=[ld])
    jn = flow.add(join, requires=[lt, rt])
    flow.add(best, requires=[jn])
    return flow


def edges_of(graph: af.Graph) -> set[tuple[str, str]]:
    return {(p.unique_name, n.unique_name) for n in graph.nodes for p in n.predecessors}


async def test_the_small_flow_has_a_join_and_a_reduce() -> None:
    graph = small_flow().graph()
    counts = {task: len(graph.by_task(task)) for task in graph.tasks}
    assert counts == {"load": 2, "left": 4, "right": 2, "join": 4, "best": 1}
    assert all(len(n.predecessors) == 2 for n in graph.by_task("join"))
    (reducer,) = graph.by_task("best")
    assert reducer.reduce
    assert len(reducer.predecessors) == 4


# --- Mermaid -------------------------------------------------------------------------------

_MERMAID_NODE = re.compile(r'^    (n\d+)(\[|\{\{)"([^"]*)"(\]|\}\})$')
_MERMAID_EDGE = re.compile(r"^    (n\d+) --> (n\d+)$")
_MERMAID_ENTITIES = {"#quot;": '"', "#lt;": "<", "#gt;": ">", "#amp;": "&", "#96;": "`"}


def unescape_mermaid(text: str) -> str:
    out = re.sub(r"#(quot|lt|gt|amp|96);", lambda m: _MERMAID_ENTITIES[m.group(0)], text)
    return out.replace("#35;", "#")


def parse_mermaid(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]:
    """Node id -> (label, shape), and the edges; fails on any line that is neither."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        if match := _MERMAID_NODE.match(line):
            node_id, opening, label, _ = match.groups()
            assert node_id not in nodes, f"{node_id} declared twice"
            nodes[node_id] = (label, opening)
        elif match := _MERMAID_EDGE.match(line):
            edges.append((match.group(1), match.group(2)))
        else:
            pytest.fail(f"not a Mermaid node or edge: {line!r}")
    return nodes, edges


async def test_mermaid_has_every_instance_and_edge() -> None:
    graph = small_flow().graph()
    nodes, edges = parse_mermaid(render.to_mermaid(graph))
    names = {
        node_id: unescape_mermaid(label).split("<br/>")[0] for node_id, (label, _) in nodes.items()
    }
    assert sorted(names.values()) == sorted(n.unique_name for n in graph.nodes)
    for source, target in edges:
        assert {source, target} <= nodes.keys(), "an edge references an undeclared node"
    assert {(names[s], names[t]) for s, t in edges} == edges_of(graph)
    assert len(edges) == sum(len(n.predecessors) for n in graph.nodes)


async def test_mermaid_labels_carry_config_and_mark_reduce() -> None:
    nodes, _ = parse_mermaid(small_flow().to_mermaid())
    labels = {unescape_mermaid(label): shape for label, shape in nodes.values()}
    assert labels["left-1<br/>{k: 1}"] == "["
    assert labels["best-1<br/>reduce"] == "{{"  # a hexagon


# --- DOT -----------------------------------------------------------------------------------

_DOT_STRING = r'"((?:[^"\\]|\\.)*)"'
_DOT_NODE = re.compile(rf"^    (n\d+) \[label={_DOT_STRING}(, shape=hexagon)?\];$")
_DOT_EDGE = re.compile(r"^    (n\d+) -> (n\d+);$")


def unescape_dot(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def braces_balance(text: str) -> bool:
    """Braces outside double-quoted strings nest properly and close."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char in "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and not in_string


def parse_dot(text: str) -> tuple[str, dict[str, tuple[str, bool]], list[tuple[str, str]]]:
    """The graph name, node id -> (label, is reduce), and the edges."""
    assert braces_balance(text)
    lines = text.splitlines()
    header = re.fullmatch(rf"digraph {_DOT_STRING} {{", lines[0])
    assert header is not None, lines[0]
    assert lines[-1] == "}"
    nodes: dict[str, tuple[str, bool]] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[1:-1]:
        if match := _DOT_NODE.match(line):
            assert match.group(1) not in nodes
            nodes[match.group(1)] = (unescape_dot(match.group(2)), match.group(3) is not None)
        elif match := _DOT_EDGE.match(line):
            edges.append((match.group(1), match.group(2)))
        elif not re.fullmatch(r"    (rankdir|node) .*;|    rankdir=TB;", line):
            pytest.fail(f"not a DOT statement this renderer makes: {line!r}")
    return unescape_dot(header.group(1)), nodes, edges


async def test_dot_has_every_instance_and_edge() -> None:
    graph = small_flow("small flow").graph()
    name, nodes, edges = parse_dot(render.to_dot(graph))
    assert name == "small flow"
    names = {node_id: label.split("\n")[0] for node_id, (label, _) in nodes.items()}
    assert sorted(names.values()) == sorted(n.unique_name for n in graph.nodes)
    for source, target in edges:
        assert {source, target} <= nodes.keys(), "an edge references an undeclared node"
    assert {(names[s], names[t]) for s, t in edges} == edges_of(graph)
    reduced = {names[i] for i, (_, is_reduce) in nodes.items() if is_reduce}
    assert reduced == {"best-1"}
    assert nodes[next(i for i, n in names.items() if n == "right-1")][0] == "right-1\n{m: 5}"


@af.task
async def quoted(s: str) -> str:
    return s


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "back\\slash", 'both \\" mixed', "end\\", "#35; <b> & `x`", "two\nlines"],
)
async def test_labels_with_quotes_and_backslashes_are_escaped(value: str) -> None:
    flow = af.Flow('flow "q" \\ name')
    flow.add(quoted, {"s": value}, name='task"with<quote>')
    graph = flow.graph()
    (node,) = graph.nodes
    summary = render.config_summary(node.config)
    assert "\n" not in summary

    name, nodes, edges = parse_dot(flow.to_dot())
    assert name == 'flow "q" \\ name'
    assert list(nodes.values()) == [(f"{node.unique_name}\n{summary}", False)]
    assert edges == []

    mermaid_nodes, _ = parse_mermaid(flow.to_mermaid())
    ((label, _),) = mermaid_nodes.values()
    assert '"' not in label
    assert "<b>" not in label
    assert unescape_mermaid(label) == f"{node.unique_name}<br/>{summary}"


# --- text ----------------------------------------------------------------------------------


def instance_lines(text: str) -> dict[str, int]:
    """unique_name -> line number of the line listing that instance."""
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines()):
        if line.startswith("  "):
            name = line.split()[0]
            assert name not in found, f"{name} listed twice"
            found[name] = number
    return found


async def test_text_lists_instances_in_topological_order() -> None:
    graph = small_flow().graph()
    text = render.to_text(graph)
    lines = instance_lines(text)
    assert set(lines) == {n.unique_name for n in graph.nodes}
    for pred, node in edges_of(graph):
        assert lines[pred] < lines[node], f"{pred} is listed after {node}"
    # grouped by task, tasks in topological order
    headers = [line.split()[0] for line in text.splitlines()[1:] if not line.startswith(" ")]
    assert headers == graph.tasks


async def test_text_line_shows_config_predecessors_and_reduce() -> None:
    text = small_flow().to_text()
    assert text.splitlines()[0] == "flow small: 5 tasks, 13 instances"
    by_name = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert re.fullmatch(r"  left-3\s+\{k: 2\}  <- load-1", by_name["left-3"])
    assert re.fullmatch(r"  join-1\s+\{\}  <- left-1, right-1", by_name["join-1"])
    assert "[reduce]" in by_name["best-1"]
    assert "[reduce]" not in by_name["join-1"]
    assert "join  (4 instances, requires left, right)" in text
    assert "best  (1 instance, reduce, requires join)" in text


async def test_rendering_is_deterministic() -> None:
    for fn in (render.to_text, render.to_mermaid, render.to_dot):
        first = fn(small_flow().graph())
        assert fn(small_flow().graph()) == first
        graph = small_flow().graph()
        assert fn(graph) == fn(graph)


async def test_flow_methods_render_the_expanded_graph() -> None:
    flow = small_flow()
    assert flow.to_text() == render.to_text(flow.graph())
    assert flow.to_mermaid() == render.to_mermaid(flow.graph())
    assert flow.to_dot() == render.to_dot(flow.graph())


async def test_an_empty_flow_renders() -> None:
    graph = af.Flow("empty").graph()
    assert render.to_text(graph) == "flow empty: 0 tasks, 0 instances\n"
    assert render.to_mermaid(graph) == "flowchart TD\n"
    name, nodes, edges = parse_dot(render.to_dot(graph))
    assert (name, nodes, edges) == ("empty", {}, [])


# --- labels stay short ---------------------------------------------------------------------


async def test_config_summary_is_compact_and_truncated() -> None:
    assert render.config_summary({"lr": 0.1, "opt": "adam"}) == "{lr: 0.1, opt: 'adam'}"
    assert render.config_summary({"a": {"b": [1, 2]}, "c": None}) == "{a: {b: [1, 2]}, c: None}"
    assert render.config_summary({}) == "{}"
    big = {f"key{i}": list(range(1000)) for i in range(1000)}
    summary = render.config_summary(big)
    assert len(summary) == render.SUMMARY_WIDTH
    assert summary.startswith("{key0: [0, 1, 2")
    assert summary.endswith("...")
    assert render.config_summary({"s": "x" * 100}, width=10) == "{s: 'xx..."
    assert len(render.config_summary({"s": "x" * 10_000_000})) == render.SUMMARY_WIDTH
    assert render.config_summary({"s": "x" * 1000}, width=500).endswith("xx...")
    assert render.config_summary({"k" * 100: 1}, width=10) == "{kkkkkk..."


@af.task
async def wide(**config: Any) -> int:
    return len(config)


async def test_big_configs_make_short_labels() -> None:
    flow = af.Flow("wide")
    flow.add(wide, {f"parameter_{i}": i for i in range(500)})
    for text in (flow.to_text(), flow.to_mermaid(), flow.to_dot()):
        assert max(len(line) for line in text.splitlines()) < 120
        assert "parameter_499" not in text


@af.task
async def root() -> int:
    return 0


@af.task
async def leaf(root: int, x: int) -> int:
    return x


@af.task(reduce=True)
async def gather(leaf: list[af.Sweep[int]]) -> int:
    return len(leaf)


async def test_ten_thousand_instances_render() -> None:
    flow = af.Flow("fan")
    r = flow.add(root)
    fan = flow.add(leaf, {"x": list(range(10_000))}, requires=[r])
    flow.add(gather, requires=[fan])
    graph = flow.graph()
    assert len(graph) == 10_002

    text = render.to_text(graph)
    assert len(instance_lines(text)) == 10_002
    gather_line = next(line for line in text.splitlines() if line.startswith("  gather-1"))
    assert "(10000 in all)" in gather_line
    assert len(gather_line) < 120

    nodes, edges = parse_mermaid(render.to_mermaid(graph))
    assert len(nodes) == 10_002
    assert len(edges) == 20_000

    _, dot_nodes, dot_edges = parse_dot(render.to_dot(graph))
    assert len(dot_nodes) == 10_002
    assert len(dot_edges) == 20_000

    # The graph is one big reference cycle (predecessors <-> successors). Collect it now: a
    # full collection at a random later moment can run finalizers inside ast.parse, which
    # CPython 3.11 < 3.11.8 reports as "AST constructor recursion depth mismatch".
    del graph, flow, r, fan, nodes, edges, dot_nodes, dot_edges
    gc.collect()


# --- the progress display ------------------------------------------------------------------


def nodes_of(flow: af.Flow) -> list[af.TaskNode]:
    return flow.graph().nodes


def event(node: af.TaskNode, state: af.TaskState) -> af.TaskEvent:
    return af.TaskEvent(node.unique_name, node.task, state, datetime.now(timezone.utc))


def quiet_console(terminal: bool = False) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=120, color_system=None), buffer


async def test_progress_counts_follow_events_without_drawing() -> None:
    flow = small_flow()
    nodes = nodes_of(flow)
    console, _ = quiet_console()
    display = FlowProgress(flow.name, nodes, console=console, refresh_interval=60)
    draws = 0
    real_render = display.render

    def counting_render() -> Any:
        nonlocal draws
        draws += 1
        return real_render()

    display.render = counting_render  # type: ignore[method-assign]
    async with display:
        before = draws
        assert display.counts()[af.TaskState.PENDING] == 13
        for node in nodes[:3]:
            display.update(event(node, af.TaskState.SCHEDULED))
            display.update(event(node, af.TaskState.RUNNING))
        display.update(event(nodes[0], af.TaskState.FINISHED))
        display.update(event(nodes[1], af.TaskState.FAILED))
        display.update(event(nodes[1], af.TaskState.FAILED))  # a repeat changes nothing
        assert draws == before, "update() must not draw"
        counts = display.counts()
        assert counts[af.TaskState.PENDING] == 10
        assert counts[af.TaskState.RUNNING] == 1
        assert counts[af.TaskState.FINISHED] == 1
        assert counts[af.TaskState.FAILED] == 1
        assert sum(counts.values()) == 13
        assert display.counts("load")[af.TaskState.FINISHED] == 1
        assert display.counts("left")[af.TaskState.RUNNING] == 1
        assert display.running == [nodes[2].unique_name]


async def test_progress_display_shows_states_tasks_and_running() -> None:
    flow = small_flow()
    nodes = nodes_of(flow)
    console, buffer = quiet_console()
    display = FlowProgress(flow.name, nodes, console=console)
    for node in nodes[:10]:
        display.update(event(node, af.TaskState.RUNNING))
    console.print(display.render())
    out = buffer.getvalue()
    assert "small" in out
    assert "0/13" in out
    assert "running 10" in out
    assert "pending 3" in out
    assert "left" in out
    assert "0/4" in out
    assert "running: load-1" in out
    assert "+2 more" in out
    assert "join-2" not in out.split("running:")[1]


async def test_an_unknown_instance_is_counted_not_fatal() -> None:
    console, _ = quiet_console()
    display = FlowProgress("f", [], console=console)
    display.update(af.TaskEvent("x-1", "x", af.TaskState.RUNNING, datetime.now(timezone.utc)))
    assert display.counts("x")[af.TaskState.RUNNING] == 1
    assert display.counts("nope") == dict.fromkeys(af.TaskState.__members__.values(), 0)


async def test_progress_redraws_from_its_own_task_and_starts_no_thread() -> None:
    flow = small_flow()
    console, buffer = quiet_console(terminal=True)
    threads = threading.active_count()
    async with FlowProgress(flow.name, nodes_of(flow), console=console, refresh_interval=0.01):
        assert threading.active_count() == threads
        await anyio.sleep(0.3)
        assert threading.active_count() == threads
        # one frame when it starts, then more from the redrawing task; each names the flow
        assert buffer.getvalue().count("small") >= 2


async def test_progress_with_a_real_run_prints_the_summary_once() -> None:
    flow = small_flow()
    console, buffer = quiet_console()
    async with FlowProgress(flow.name, nodes_of(flow), console=console) as display:
        run = await flow.run(on_event=display.update)
        display.finish(run)
        display.finish(run)  # only once
    out = buffer.getvalue()
    assert out.count("flow small: ok") == 1  # the summary table's title
    assert "finished 13" in out  # the final frame (files get it once, at the end)
    assert display.counts()[af.TaskState.FINISHED] == 13


async def test_finish_without_summary_prints_no_table() -> None:
    flow = small_flow()
    console, buffer = quiet_console()
    async with FlowProgress(flow.name, nodes_of(flow), console=console, summary=False) as d:
        d.finish(await flow.run(on_event=d.update))
    assert "finished 13" in buffer.getvalue()
    assert "flow small: ok" not in buffer.getvalue()


@af.task
async def fails(x: int) -> int:
    if x == 2:
        raise ValueError("x is two")
    await anyio.sleep(0.01)
    return x


@af.task
async def after(fails: int) -> int:
    return fails


async def test_an_exception_in_the_body_propagates_unchanged() -> None:
    flow = af.Flow("failing")
    flow.add(after, requires=[flow.add(fails, {"x": [1, 2, 3]})])
    console, buffer = quiet_console()

    async def run_with_display() -> None:
        async with FlowProgress(flow.name, nodes_of(flow), console=console) as display:
            try:
                await flow.run(on_event=display.update, fail_fast=False)
            except af.FlowFailed as exc:
                display.finish(exc.run)
                raise

    with pytest.raises(af.FlowFailed) as caught:  # not an ExceptionGroup
        await run_with_display()
    assert set(caught.value.errors) == {"fails-2"}
    assert "flow failing: failed" in buffer.getvalue()


async def test_cancelling_from_outside_stops_the_display() -> None:
    console, buffer = quiet_console(terminal=True)
    with anyio.move_on_after(0.2) as scope:
        async with FlowProgress("hung", [], console=console, refresh_interval=0.01) as display:
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert display._live is None  # stopped
    assert "hung" in buffer.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_isatty_is_false_for_anything_without_a_working_isatty() -> None:
    closed = io.StringIO()
    closed.close()
    assert not isatty(object())
    assert not isatty(closed)  # isatty() raises ValueError
    assert not isatty(io.StringIO())
    assert isatty(FakeTerminal())


@pytest.mark.parametrize("stdout_is_a_terminal", [False, True])
async def test_the_live_display_moves_prints_only_off_the_terminal_it_draws_on(
    monkeypatch: pytest.MonkeyPatch, stdout_is_a_terminal: bool
) -> None:
    stdout = FakeTerminal() if stdout_is_a_terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    console, buffer = quiet_console(terminal=True)
    async with LiveDisplay(lambda: Text("frame"), console=console, refresh_interval=60):
        print("from the body")
        assert (sys.stdout is stdout) is not stdout_is_a_terminal
    assert sys.stdout is stdout
    assert ("from the body" in buffer.getvalue()) is stdout_is_a_terminal
    assert ("from the body" in stdout.getvalue()) is not stdout_is_a_terminal


async def test_a_display_that_cannot_draw_does_not_break_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    frames = 0

    def render() -> Text:
        nonlocal frames
        frames += 1
        if frames > 1:
            raise RuntimeError("cannot draw")
        return Text("first frame")

    console, buffer = quiet_console(terminal=True)
    async with LiveDisplay(render, console=console, refresh_interval=0.01) as display:
        await anyio.sleep(0.1)
        assert display.drawing
        done = "the body went on"
    assert done == "the body went on"
    assert not display.drawing
    assert frames == 3  # the first, the one that failed (no more redraws), the last
    assert "first frame" in buffer.getvalue()
    assert "stopped redrawing" in caplog.text
    assert "could not draw its last frame" in caplog.text


async def test_summary_table_counts_per_task() -> None:
    flow = af.Flow("failing")
    flow.add(after, requires=[flow.add(fails, {"x": [1, 2, 3]})])

    async def main() -> af.FlowRun:
        with pytest.raises(af.FlowFailed) as caught:
            await flow.run(fail_fast=False)
        run: af.FlowRun = caught.value.run
        return run

    run = await main()
    console, buffer = quiet_console()
    console.print(summary_table(run))
    rows = {
        cells[0]: cells[1:]
        for line in buffer.getvalue().splitlines()
        if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) > 5
    }
    # instances, finished, cached, failed, upstream failed, killed, time
    assert rows["fails"][:6] == ["3", "2", "0", "1", "0", "0"]
    assert rows["after"][:6] == ["3", "2", "0", "0", "1", "0"]
    assert rows["total"][:6] == ["6", "4", "0", "1", "1", "0"]
    assert "flow failing: failed" in buffer.getvalue()


async def test_format_seconds() -> None:
    assert format_seconds(None) == "-"
    assert format_seconds(0.4234) == "0.42 s"
    assert format_seconds(12.34) == "12.3 s"
    assert format_seconds(3723) == "1:02:03"
