"""Config grids: :func:`expand_config` turns one declared config into the configs it stands for.

The rules are fluidml's (API.md section 3), so configs written for fluidml keep their meaning,
but not its method: fluidml builds the full product of every list and then drops the points where
the members of a zip group disagree, which costs ``k ** n`` for ``n`` zipped lists of ``k``
values. Here a config is compiled once into a template plus a list of axes; a zip group is one
dimension walked index by index, and a point is built from its mixed-radix index. Even the
expansions of dicts inside a list of alternatives are built only when chosen, so a zip group cut
to its shortest member never builds what it drops: the cost is linear in the size of the output.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

from ..errors import FlowError

__all__ = ["expand_config"]

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
        raise FlowError(f"a config must be a mapping of str keys, got {type(config).__name__}")
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
    """The axis of a list value. Only the last element can be a group marker: in
    ``["@home", 1]`` the string ``"@home"`` is an alternative like any other."""
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
