"""Config grids and node identity: :func:`expand_config`, :func:`config_hash` and helpers.

Expansion follows fluidml's rules (API.md section 3) so that configs written for fluidml keep
their meaning, but not its method: fluidml builds the full product of every list and then drops
the points where the members of a zip group disagree, which costs ``k ** n`` for ``n`` zipped
lists of ``k`` values. Here a config is compiled once into a template plus a list of axes; a zip
group is one dimension walked index by index, and a point is built from its mixed-radix index.
Even the expansions of dicts inside a list of alternatives are built only when chosen, so a zip
group cut to its shortest member never builds what it drops: the cost is linear in the output.

Identity must be the same in every process, machine and Python version, since results are
cached under it. So it is sha256 over canonical JSON, never ``hash()``, ``repr`` or pickle,
which change with ``PYTHONHASHSEED``, the Python version or the platform. A node hashes its
predecessors' *hashes*, not their configs, so the cost per node does not grow with the depth of
the graph.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from ..errors import FlowError

__all__ = ["canonical_json", "config_hash", "expand_config", "strip_ignored"]

_METHODS = ("product", "zip")

# Kinds of template entries: a constant, the value chosen on an axis, a nested template.
_CONST, _AXIS, _DICT = 0, 1, 2


def expand_config(
    config: Mapping[str, Any] | None, expand: str = "product", group_prefix: str = "@"
) -> list[dict[str, Any]]:
    """Every config a grid ``config`` stands for, in a deterministic order.

    A list value holds alternatives (an element that is a list is one literal list value, so
    ``[[1, 2]]`` is the single value ``[1, 2]``; an element that is a dict contributes each of
    its own expansions); a dict value is expanded recursively and its lists are axes of the whole
    config. Lists ending with ``"<group_prefix><name>"`` vary together index by index, cut to the
    shortest; everything else is crossed by product, the first axis varying slowest.
    ``expand="zip"`` zips every list that has more than one alternative.

    Output dicts are built afresh: dicts, lists, tuples and sets are copied, so mutating one
    output changes neither the input nor another output. Other objects are shared, since copying
    arbitrary objects is neither cheap nor always possible.
    """
    if expand not in _METHODS:
        raise FlowError(f"unknown expand method {expand!r}; use one of {', '.join(_METHODS)}")
    if not isinstance(group_prefix, str) or not group_prefix:
        raise FlowError(f"group_prefix must be a non-empty str, got {group_prefix!r}")
    if config is None:
        return [{}]
    if not isinstance(config, Mapping):
        raise FlowError(f"a config must be a mapping of str keys, got {_describe(config)}")
    try:
        grid = _Grid(config, "", expand, group_prefix)
        return [grid.build(index) for index in range(grid.size)]
    except RecursionError:
        raise FlowError("the config contains itself or is nested too deeply") from None


class _Grid:
    """A compiled config: ``size`` points, any one of which :meth:`build` makes on demand."""

    __slots__ = ("_axes", "_dims", "_template", "size")

    def __init__(self, config: Mapping[Any, Any], path: str, expand: str, prefix: str) -> None:
        self._axes: list[_Axis] = []
        self._template = _compile(config, path, self._axes, expand, prefix)
        # One dimension per ungrouped axis and one per zip group, placed at its first member.
        dims: list[list[int]] = []
        groups: dict[str, list[int]] = {}
        for index, axis in enumerate(self._axes):
            group = axis.group
            if expand == "zip":
                # A single alternative is a constant; zipping it would cut the rest to one.
                group = None if axis.size == 1 else ""
            if group is None:
                dims.append([index])
            elif group in groups:
                groups[group].append(index)
            else:
                groups[group] = [index]
                dims.append(groups[group])
        self._dims = [(members, min(self._axes[i].size for i in members)) for members in dims]
        self.size = math.prod(n for _, n in self._dims)

    def build(self, index: int) -> dict[str, Any]:
        choice = [0] * len(self._axes)
        for members, n in reversed(self._dims):  # the last dimension varies fastest
            index, position = divmod(index, n)
            for member in members:
                choice[member] = position
        return _render(self._template, self._axes, choice)


class _Axis:
    """One list of alternatives, of which a dict element stands for all its own expansions."""

    __slots__ = ("_items", "_starts", "group", "size")

    def __init__(self, items: list[Any], group: str | None) -> None:
        self._items = items
        self.group = group
        self._starts: list[int] | None = None
        self.size = len(items)
        if any(isinstance(item, _Grid) for item in items):
            self._starts = []
            self.size = 0
            for item in items:
                self._starts.append(self.size)
                self.size += item.size if isinstance(item, _Grid) else 1

    def pick(self, index: int) -> Any:
        if self._starts is None:
            return _fresh(self._items[index])
        at = bisect.bisect_right(self._starts, index) - 1
        item = self._items[at]
        if isinstance(item, _Grid):
            return item.build(index - self._starts[at])
        return _fresh(item)


def _compile(
    config: Mapping[Any, Any], path: str, axes: list[_Axis], expand: str, prefix: str
) -> list[tuple[str, int, Any]]:
    """The template of ``config``; appends the axes its lists (nested dicts' too) stand for."""
    template: list[tuple[str, int, Any]] = []
    for key, value in config.items():
        if not isinstance(key, str):
            where = f" in {path!r}" if path else ""
            raise FlowError(f"config key {key!r}{where} must be a str, not {type(key).__name__}")
        here = f"{path}.{key}" if path else key
        if isinstance(value, list):
            template.append((key, _AXIS, len(axes)))
            axes.append(_axis(value, here, expand, prefix))
        elif isinstance(value, Mapping):
            template.append((key, _DICT, _compile(value, here, axes, expand, prefix)))
        else:
            template.append((key, _CONST, value))
    return template


def _axis(values: list[Any], path: str, expand: str, prefix: str) -> _Axis:
    group = None
    marker = values[-1] if values else None
    if isinstance(marker, str) and marker.startswith(prefix):
        group = marker[len(prefix) :]
        values = values[:-1]
        if not group:
            raise FlowError(
                f"config key {path!r} ends with the group marker {marker!r}, which names no "
                f"group; write e.g. {prefix + 'x'!r}"
            )
    if not values:
        only = "" if group is None else f" besides the group marker {marker!r}"
        raise FlowError(
            f"config key {path!r} lists no alternatives{only}; for a value that is an empty "
            "list, write [[]]"
        )
    items = [
        _Grid(value, f"{path}[{i}]", expand, prefix) if isinstance(value, Mapping) else value
        for i, value in enumerate(values)
    ]
    return _Axis(items, group)


def _render(
    template: list[tuple[str, int, Any]], axes: list[_Axis], choice: list[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind, payload in template:
        if kind == _CONST:
            out[key] = _fresh(payload)
        elif kind == _AXIS:
            out[key] = axes[payload].pick(choice[payload])
        else:
            out[key] = _render(payload, axes, choice)
    return out


def _fresh(value: Any) -> Any:
    """A copy of the builtin containers in ``value``, so no output shares them with another."""
    kind = type(value)
    if kind is dict:
        return {key: _fresh(item) for key, item in value.items()}
    if kind is list:
        return [_fresh(item) for item in value]
    if kind is tuple:
        return tuple([_fresh(item) for item in value])
    if kind is set:
        return set(value)
    return value


def strip_ignored(config: Mapping[str, Any], prefix: str | None) -> dict[str, Any]:
    """``config`` without the keys starting with ``prefix``, in nested dicts too (also dicts
    inside lists and tuples, as fluidml does): such keys (``_verbose``, ``_workers``...) are
    declared not to change the result, so they must not change its identity.
    ``prefix=None`` keeps every key. Dicts, lists and tuples are rebuilt, other values shared.
    """
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise FlowError(f"the ignore prefix must be a non-empty str or None, got {prefix!r}")
    if not isinstance(config, Mapping):
        raise FlowError(f"a config must be a mapping of str keys, got {_describe(config)}")
    stripped: dict[str, Any] = _strip(config, prefix)
    return stripped


def _strip(value: Any, prefix: str | None) -> Any:
    if isinstance(value, Mapping):
        return {
            key: _strip(item, prefix)
            for key, item in value.items()
            if prefix is None or not (isinstance(key, str) and key.startswith(prefix))
        }
    if type(value) is list:
        return [_strip(item, prefix) for item in value]
    if type(value) is tuple:
        return tuple([_strip(item, prefix) for item in value])
    return value


def canonical_json(value: Any, *, task: str) -> str:
    """``value`` as JSON text that is identical in every process, machine and Python version.

    Keys are sorted, separators compact, text ASCII-only; tuples become lists and pydantic models
    their ``model_dump(mode="json")``. Anything else has no canonical text (a set has no order,
    an object's ``repr`` may hold an address, NaN is not JSON), so it is a :class:`FlowError`
    naming ``task`` and the key path of the culprit.
    """
    return _dumps(_checked(value, task))


def config_hash(
    task: str, config: Mapping[str, Any], predecessors: Iterable[tuple[str, str]] = ()
) -> str:
    """A 16-hex-digit digest identifying a task instance: its task name, its ``config`` (already
    stripped of ignored keys) and the ``(task name, config_hash)`` of each predecessor, in any
    order. 64 bits keep collisions improbable (about 1 in 10**9 among 100,000 nodes).
    """
    if not isinstance(task, str):
        raise FlowError(f"a task name must be a str, got {_describe(task)}")
    if not isinstance(config, Mapping):
        raise FlowError(f"the config of task {task!r} must be a mapping, got {_describe(config)}")
    requires: list[list[str]] = []
    for pair in predecessors:
        if not (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise FlowError(
                f"a predecessor of task {task!r} must be a (task name, config_hash) pair of "
                f"str, got {pair!r}"
            )
        requires.append([pair[0], pair[1]])
    requires.sort()
    node = {"task": task, "config": _checked(config, task), "requires": requires}
    return hashlib.sha256(_dumps(node).encode("ascii")).hexdigest()[:16]


def _dumps(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


class _NotJson(Exception):
    """Raised deep in :func:`_jsonable`; each level adds its key on the way out, so a path is
    only spelt out when something is wrong (hashing 100,000 nodes builds none)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.path: list[str | int] = []


def _checked(value: Any, task: str) -> Any:
    try:
        return _jsonable(value)
    except _NotJson as exc:
        path = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in reversed(exc.path)
        ).lstrip(".")
        where = f"config key {path!r}" if path else "the config"
        raise FlowError(f"{where} of task {task!r} {exc.what}") from None
    except RecursionError:
        raise FlowError(
            f"the config of task {task!r} contains itself or is nested too deeply"
        ) from None


def _jsonable(value: Any) -> Any:
    """``value`` itself when ``json.dumps`` already writes it canonically, else a converted copy
    (pydantic models dumped, mappings made dicts); raises :class:`_NotJson` for anything else.
    Copy-on-write, so the common all-JSON config is validated without building anything."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict or isinstance(value, Mapping):
        out: dict[str, Any] | None = None if kind is dict else {}
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise _NotJson(f"has the key {key!r}, which is not a str as JSON requires")
            try:
                new = _jsonable(item)
            except _NotJson as exc:
                exc.path.append(key)
                raise
            if out is not None:
                out[key] = new
            elif new is not item:
                out = dict(list(value.items())[:index])
                out[key] = new
        return value if out is None else out
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        copy: list[Any] | None = None
        for index, item in enumerate(value):
            try:
                new = _jsonable(item)
            except _NotJson as exc:
                exc.path.append(index)
                raise
            if copy is not None:
                copy.append(new)
            elif new is not item:
                copy = [*value[:index], new]
        return value if copy is None else copy
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise _NotJson(f"holds the float {value!r}, which is not JSON-representable")
    if isinstance(value, (str, int)):  # subclasses (enums...): json writes their plain value
        return value
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump(mode="json")
        except Exception as exc:
            raise _NotJson(
                f"holds a {type(value).__name__} model that cannot be dumped as JSON ({exc})"
            ) from None
        return _jsonable(dumped)
    raise _NotJson(f"holds {_describe(value)}, which is not JSON-representable")


def _describe(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
