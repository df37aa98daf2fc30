"""``aioflows report``: one self-contained HTML page of a flow's last run.

The page is made from the last-run record (:mod:`aioflows.flow.runlog`) alone and needs nothing
but a browser to view: the CSS, the SVG drawings and a few lines of JavaScript are inline, with
no font, script or style fetched from anywhere, so it can be mailed, attached to a CI run or
opened years later. It shows the state counts per task, a timeline with one bar per instance
(from its start to its end, coloured by state; an instance that did not run in this run, such
as a cached one, is a thin bar at the moment it settled), the graph laid out in layers by depth
and coloured by state, every failure's error and traceback, and every instance's config.

Everything the record holds is escaped on the way into the page: a config or an error message
is text, never markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from html import escape
from typing import Any

from ..stores.records import TaskState
from .progress import STATES, format_seconds

__all__ = ["COLOURS", "render_html"]

#: The colour of each state, in the timeline, the graph and the counts.
COLOURS: dict[str, str] = {
    TaskState.PENDING.value: "#9aa0a6",
    TaskState.SCHEDULED.value: "#7fb8c8",
    TaskState.RUNNING.value: "#e0b100",
    TaskState.FINISHED.value: "#2e9e44",
    TaskState.CACHED.value: "#3b73d9",
    TaskState.FAILED.value: "#d62d2d",
    TaskState.KILLED.value: "#b23ab2",
    TaskState.UPSTREAM_FAILED.value: "#f08a5d",
}
_ORDER = [s.value for s in STATES]

_TIMELINE_WIDTH = 900  # px of the time axis
_LABEL_WIDTH = 150  # px of the instance names left of it
_NODE_W, _NODE_H = 120, 22  # a graph node, px
_LAYER_GAP, _ROW_GAP = 60, 8  # px between graph layers (columns) and between nodes
_MAX_GRAPH_NODES = 2000  # larger graphs draw one box per task and layer instead

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#202124}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#5f6368}.ok{color:#2e9e44}.bad{color:#d62d2d}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #e0e0e0;
text-align:right}td:first-child,th:first-child{text-align:left}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
.scroll{overflow:auto;max-height:640px;border:1px solid #e0e0e0}
svg text{font:11px system-ui,sans-serif;fill:#202124}
.bar:hover,.node:hover{stroke:#202124;stroke-width:1.5}
.hl{stroke:#202124;stroke-width:2}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:360px;font-size:12px}
details{margin:6px 0}summary{cursor:pointer}
code{font-size:12px}.instances td,.instances th{text-align:left;font-size:13px}
"""

# Hovering an instance in either drawing outlines it in both; that is all the script does.
_JS = """
(function () {
  var marks = document.querySelectorAll("[data-instance]");
  function mark(name, on) {
    for (var i = 0; i < marks.length; i++) {
      if (marks[i].getAttribute("data-instance") === name) {
        marks[i].classList.toggle("hl", on);
      }
    }
  }
  for (var i = 0; i < marks.length; i++) {
    marks[i].addEventListener("mouseenter", function (e) {
      mark(e.currentTarget.getAttribute("data-instance"), true);
    });
    marks[i].addEventListener("mouseleave", function (e) {
      mark(e.currentTarget.getAttribute("data-instance"), false);
    });
  }
  document.body.setAttribute("data-bars", String(document.querySelectorAll(".bar").length));
})();
"""


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _attr(text: Any) -> str:
    return escape(str(text), quote=True)


def _legend() -> str:
    items = "".join(
        f'<span><i style="background:{COLOURS[s]}"></i>{escape(s.replace("_", " "))}</span>'
        for s in _ORDER
    )
    return f'<p class="legend">{items}</p>'


def _counts(record: Mapping[str, Any]) -> str:
    instances = record["instances"]
    tasks = list(record.get("tasks") or dict.fromkeys(i["task"] for i in instances))
    per_task: dict[str, dict[str, int]] = {t: {} for t in tasks}
    for inst in instances:
        row = per_task.setdefault(inst["task"], {})
        row[inst["state"]] = row.get(inst["state"], 0) + 1
    states = [s for s in _ORDER if any(s in row for row in per_task.values())]
    head = "".join(
        f'<th style="color:{COLOURS[s]}">{escape(s.replace("_", " "))}</th>' for s in states
    )
    rows = []
    for task, row in per_task.items():
        cells = "".join(f"<td>{row.get(s, 0)}</td>" for s in states)
        rows.append(f"<tr><td>{escape(task)}</td><td>{sum(row.values())}</td>{cells}</tr>")
    totals = "".join(f"<td>{sum(row.get(s, 0) for row in per_task.values())}</td>" for s in states)
    rows.append(f"<tr><th>total</th><th>{len(instances)}</th>{totals}</tr>")
    return (
        f'<table id="counts"><tr><th>task</th><th>instances</th>{head}</tr>{"".join(rows)}</table>'
    )


def _span(inst: Mapping[str, Any], t0: float, t1: float) -> tuple[float, float]:
    """When an instance's bar starts and ends: its run, else when it settled, else the end."""
    start = inst.get("started")
    end = inst.get("ended")
    settled = inst.get("settled")
    if start is None:
        start = settled if settled is not None else t1
    if end is None:
        end = settled if settled is not None and settled >= start else start
    return max(t0, min(start, t1)), max(t0, min(end, t1))


def _timeline(record: Mapping[str, Any]) -> str:
    instances = record["instances"]
    if not instances:
        return "<p>No instances.</p>"
    times = [record["started"], record["ended"]]
    for inst in instances:
        times.extend(t for t in (inst.get("started"), inst.get("ended")) if t is not None)
        if inst.get("settled") is not None:
            times.append(inst["settled"])
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-6)
    row = 14 if len(instances) <= 300 else max(2, 4000 // len(instances))
    labels = row >= 10
    left = _LABEL_WIDTH if labels else 0
    height = row * len(instances) + 24
    width = left + _TIMELINE_WIDTH + 10
    parts = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
    ]
    for k in range(5):  # the time axis: five ticks
        x = left + _TIMELINE_WIDTH * k / 4
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        parts.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 14}" stroke="#e0e0e0"/>'
            f'<text x="{x:.1f}" y="{height - 2}" text-anchor="{anchor}">'
            f"{escape(format_seconds(span * k / 4))}</text>"
        )
    for n, inst in enumerate(instances):
        start, end = _span(inst, t0, t1)
        x = left + (start - t0) / span * _TIMELINE_WIDTH
        w = max(2.0, (end - start) / span * _TIMELINE_WIDTH)
        y = n * row
        name = inst["unique_name"]
        state = inst["state"]
        ran = inst.get("started") is not None and inst.get("ended") is not None
        took = format_seconds(inst["ended"] - inst["started"]) if ran else "did not run"
        if labels:
            parts.append(f'<text x="0" y="{y + row - 3}">{escape(name)}</text>')
        parts.append(
            f'<rect class="bar" data-instance="{_attr(name)}" data-state="{_attr(state)}" '
            f'x="{x:.1f}" y="{y + 1}" width="{w:.1f}" height="{max(1, row - 2)}" '
            f'fill="{COLOURS.get(state, "#000")}"><title>{escape(name)}: {escape(state)}, '
            f"{escape(took)}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _graph(record: Mapping[str, Any]) -> str:
    instances = record["instances"]
    if not instances:
        return "<p>No instances.</p>"
    if len(instances) > _MAX_GRAPH_NODES:
        return _task_graph(record)
    layers: dict[int, list[Mapping[str, Any]]] = {}
    for inst in instances:
        layers.setdefault(int(inst.get("depth", 0)), []).append(inst)
    where: dict[str, tuple[float, float]] = {}
    for depth, members in layers.items():
        for n, inst in enumerate(members):
            where[inst["unique_name"]] = (
                10 + depth * (_NODE_W + _LAYER_GAP),
                10 + n * (_NODE_H + _ROW_GAP),
            )
    width = 20 + (max(layers) + 1) * (_NODE_W + _LAYER_GAP)
    height = 20 + max(len(m) for m in layers.values()) * (_NODE_H + _ROW_GAP)
    edges, nodes = [], []
    for inst in instances:
        x, y = where[inst["unique_name"]]
        for pred in inst.get("predecessors", ()):
            if pred in where:
                px, py = where[pred]
                edges.append(
                    f'<line x1="{px + _NODE_W:.0f}" y1="{py + _NODE_H / 2:.0f}" '
                    f'x2="{x:.0f}" y2="{y + _NODE_H / 2:.0f}" stroke="#b0b4b8"/>'
                )
        name, state = inst["unique_name"], inst["state"]
        nodes.append(
            f'<g class="node" data-instance="{_attr(name)}" data-state="{_attr(state)}">'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{_NODE_W}" height="{_NODE_H}" rx="4" '
            f'fill="{COLOURS.get(state, "#000")}" fill-opacity="0.25" '
            f'stroke="{COLOURS.get(state, "#000")}"/>'
            f'<text x="{x + 6:.0f}" y="{y + 15:.0f}">{escape(name[:18])}</text>'
            f"<title>{escape(name)}: {escape(state)}</title></g>"
        )
    return (
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(edges)}{"".join(nodes)}</svg>'
    )


def _task_graph(record: Mapping[str, Any]) -> str:
    """A big graph: one box per (depth, task), its instances' states as a stacked bar."""
    boxes: dict[tuple[int, str], dict[str, int]] = {}
    for inst in record["instances"]:
        row = boxes.setdefault((int(inst.get("depth", 0)), inst["task"]), {})
        row[inst["state"]] = row.get(inst["state"], 0) + 1
    layers: dict[int, list[str]] = {}
    for depth, task in boxes:
        layers.setdefault(depth, []).append(task)
    w, h = 180, 34
    width = 20 + (max(layers) + 1) * (w + _LAYER_GAP)
    height = 20 + max(len(t) for t in layers.values()) * (h + _ROW_GAP)
    parts = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
    ]
    for depth, tasks in layers.items():
        for n, task in enumerate(tasks):
            x, y = 10 + depth * (w + _LAYER_GAP), 10 + n * (h + _ROW_GAP)
            counts = boxes[depth, task]
            total = sum(counts.values())
            parts.append(f'<text x="{x}" y="{y + 12}">{escape(task)} ({total})</text>')
            offset = 0.0
            for state in _ORDER:
                if counts.get(state):
                    part = counts[state] / total * w
                    parts.append(
                        f'<rect x="{x + offset:.1f}" y="{y + 16}" width="{part:.1f}" '
                        f'height="12" fill="{COLOURS[state]}"><title>{escape(task)}: '
                        f"{counts[state]} {escape(state)}</title></rect>"
                    )
                    offset += part
    parts.append("</svg>")
    return "".join(parts)


def _failures(record: Mapping[str, Any]) -> str:
    failed = [i for i in record["instances"] if i.get("error")]
    if not failed:
        return "<p>No instance failed.</p>"
    items = []
    for inst in failed:
        trace = inst.get("traceback") or inst["error"]
        items.append(
            f'<details class="failure" open><summary><b>{escape(inst["unique_name"])}</b>: '
            f"{escape(inst['error'])}</summary><pre>{escape(trace)}</pre></details>"
        )
    return "".join(items)


def _instances(record: Mapping[str, Any]) -> str:
    rows = []
    for inst in record["instances"]:
        ran = inst.get("started") is not None and inst.get("ended") is not None
        took = format_seconds(inst["ended"] - inst["started"]) if ran else "-"
        config = json.dumps(inst.get("config"), ensure_ascii=False, sort_keys=False)
        rows.append(
            f"<tr><td>{escape(inst['unique_name'])}</td>"
            f'<td style="color:{COLOURS.get(inst["state"], "#000")}">'
            f"{escape(inst['state'])}</td><td>{inst.get('attempts', 0)}</td>"
            f"<td>{escape(took)}</td><td><code>{escape(inst['config_hash'][:10])}</code></td>"
            f"<td><code>{escape(config)}</code></td></tr>"
        )
    return (
        '<div class="scroll"><table class="instances"><tr><th>instance</th><th>state</th>'
        "<th>attempts</th><th>time</th><th>config_hash</th><th>config</th></tr>"
        f"{''.join(rows)}</table></div>"
    )


def render_html(record: Mapping[str, Any]) -> str:
    """The page of one last-run record (see :func:`aioflows.flow.runlog.build`)."""
    flow, run_id = str(record["flow"]), str(record["run_id"])
    ok = bool(record.get("ok"))
    took = format_seconds(record["ended"] - record["started"])
    title = f"flow {flow}: {'ok' if ok else 'failed'}"
    target = f", {escape(str(record['target']))}" if record.get("target") else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1 class="{"ok" if ok else "bad"}">{escape(title)}</h1>'
        f'<p class="meta">run {escape(run_id)}{target}: started '
        f"{escape(_when(record['started']))}, took {escape(took)}, "
        f"{len(record['instances'])} instances</p>"
        f"{_legend()}"
        f"<h2>Instances per task</h2>{_counts(record)}"
        f'<h2>Timeline</h2><div class="scroll">{_timeline(record)}</div>'
        f'<h2>Graph</h2><div class="scroll">{_graph(record)}</div>'
        f"<h2>Failures</h2>{_failures(record)}"
        f"<h2>Configs</h2>{_instances(record)}"
        f"<script>{_JS}</script></body></html>\n"
    )
