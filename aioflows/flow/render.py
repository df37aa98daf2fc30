"""The expanded graph of a flow as Mermaid, Graphviz DOT or plain text.

Every renderer shows task *instances* (``train-3``), not specs, each labelled with its unique
name and a short summary of its own config, and one edge per predecessor. Output is
deterministic (graph order, no hashes or addresses) and costs time linear in nodes plus edges:
a config summary stops walking its config once the label is long enough, and the text form
lists at most a few predecessors per instance.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._text import printable, shorten

if TYPE_CHECKING:
    from .graph import Graph, TaskNode

__all__ = ["config_summary", "to_dot", "to_mermaid", "to_text"]

#: Longest config summary in a label, in characters (longer ones end with "...").
SUMMARY_WIDTH = 48
#: Predecessors the text form names per instance before counting the rest.
_TEXT_PREDECESSORS = 4


def _tokens(value: Any, longest: int) -> Iterator[str]:
    """The pieces of a compact one-line rendering of a config value, lazily; a scalar's piece is
    cut to ``longest`` characters, so one huge string costs no more than a short one."""
    if isinstance(value, Mapping):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            if i:
                yield ", "
            yield f"{key}: "[:longest]
            yield from _tokens(item, longest)
        yield "}"
    elif isinstance(value, (list, tuple)):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ", "
            yield from _tokens(item, longest)
        yield "]"
    elif isinstance(value, str):
        yield repr(value[:longest])
    else:
        yield str(value)[:longest]


def config_summary(config: Mapping[str, Any], width: int = SUMMARY_WIDTH) -> str:
    """``{lr: 0.1, opt: 'adam'}``, on one line, cut to ``width`` characters (ending "...").

    Only as much of the config is visited as fits, so a huge config costs no more than a small
    one.
    """
    parts: list[str] = []
    length = 0
    for token in _tokens(config, width + 1):
        parts.append(token)
        length += len(token)
        if length > width:
            break
    # Control characters (a newline in a string value) would break every format's one line.
    return shorten(printable("".join(parts)), width)


def _label(node: TaskNode) -> tuple[str, str]:
    """The two lines of a node's label: its unique name and its config summary (if any)."""
    summary = config_summary(node.config) if node.config else ""
    if node.reduce:
        summary = f"reduce {summary}" if summary else "reduce"
    return printable(node.unique_name), summary


def _ids(graph: Graph) -> dict[int, str]:
    """Node ids safe in Mermaid and DOT: ``n0``, ``n1``... in graph order."""
    return {id(node): f"n{i}" for i, node in enumerate(graph.nodes)}


# --- Mermaid -------------------------------------------------------------------------------

# Mermaid reads "#...;" as an entity code, so "#" goes first; quotes end the label, and "<",
# ">" and "&" would be taken for HTML.
_MERMAID_ESCAPES = str.maketrans(
    {
        "#": "#35;",
        '"': "#quot;",
        "<": "#lt;",
        ">": "#gt;",
        "&": "#amp;",
        "`": "#96;",
    }
)


def _mermaid_text(text: str) -> str:
    return text.translate(_MERMAID_ESCAPES)


def to_mermaid(graph: Graph) -> str:
    """A Mermaid ``flowchart TD``: one node per instance (reduce instances as hexagons), one
    edge ``pred --> node`` per predecessor."""
    ids = _ids(graph)
    lines = ["flowchart TD"]
    for node in graph.nodes:
        name, summary = _label(node)
        label = _mermaid_text(name) + (f"<br/>{_mermaid_text(summary)}" if summary else "")
        open_, close = ("{{", "}}") if node.reduce else ("[", "]")
        lines.append(f'    {ids[id(node)]}{open_}"{label}"{close}')
    for node in graph.nodes:
        target = ids[id(node)]
        lines.extend(f"    {ids[id(pred)]} --> {target}" for pred in node.predecessors)
    return "\n".join(lines) + "\n"


# --- DOT -----------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    """A DOT double-quoted string; in labels a backslash starts an escape, so it is doubled."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph) -> str:
    """A Graphviz ``digraph`` named after the flow: boxes for instances (reduce instances as
    hexagons), one edge per predecessor."""
    ids = _ids(graph)
    lines = [
        f"digraph {_dot_string(graph.flow.name)} {{",
        "    rankdir=TB;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
    ]
    for node in graph.nodes:
        name, summary = _label(node)
        label = _dot_string(name + (f"\n{summary}" if summary else "")).replace("\n", "\\n")
        shape = ", shape=hexagon" if node.reduce else ""
        lines.append(f"    {ids[id(node)]} [label={label}{shape}];")
    for node in graph.nodes:
        target = ids[id(node)]
        lines.extend(f"    {ids[id(pred)]} -> {target};" for pred in node.predecessors)
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- text ----------------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _predecessors(node: TaskNode) -> str:
    preds = node.predecessors
    if not preds:
        return ""
    names = [printable(p.unique_name) for p in preds[:_TEXT_PREDECESSORS]]
    if len(preds) > _TEXT_PREDECESSORS:
        names.append(f"... ({len(preds)} in all)")
    return "  <- " + ", ".join(names)


def to_text(graph: Graph) -> str:
    """The instances grouped by task in topological order, one line each with its config
    summary and the predecessors it takes from: ``train-1  {lr: 0.1}  <- prep-1``."""
    by_task: dict[str, list[TaskNode]] = {name: [] for name in graph.tasks}
    for node in graph.nodes:
        by_task.setdefault(node.task, []).append(node)
    lines = [
        f"flow {printable(graph.flow.name)}: {_plural(len(by_task), 'task')}, "
        f"{_plural(len(graph.nodes), 'instance')}"
    ]
    for task, nodes in by_task.items():
        spec = graph.specs.get(task)
        reduce = spec.reduce if spec is not None else any(n.reduce for n in nodes)
        requires = (
            f", requires {', '.join(spec.predecessors)}" if spec and spec.predecessors else ""
        )
        kind = ", reduce" if reduce else ""
        lines.append(f"{printable(task)}  ({_plural(len(nodes), 'instance')}{kind}{requires})")
        width = max((len(n.unique_name) for n in nodes), default=0)
        mark = "  [reduce]" if reduce else ""
        for node in nodes:
            name = printable(node.unique_name)
            summary = config_summary(node.config)
            lines.append(f"  {name:<{width}}  {summary}{mark}{_predecessors(node)}")
    return "\n".join(lines) + "\n"
