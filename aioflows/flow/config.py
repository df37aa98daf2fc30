"""Config grids: :func:`expand_config` turns one declared config into the configs it stands for.

The rules are fluidml's (API.md section 3), so configs written for fluidml keep their meaning.
Every list in the config, at any depth and inside any dict alternative, takes an index; the
lists present in a config are those reached from the top through dicts and the alternatives
chosen. A config exists for each choice of indices of its present lists in which all present
lists of one zip group took the same index. fluidml finds them by building the product of every
list and dropping the points where a group disagrees, which costs ``k ** n`` for ``n`` lists of
``k`` values. Here the lists are walked depth first, and a group's index is chosen once, by its
first list present; the lists after it take that index. Each list knows, for every group found
in or below it, the indices of that group it can still meet (:data:`_Allowed`), so a choice that
some list still to come cannot meet (a list of the group too short, at any depth of the
alternatives it might choose) is cut at once rather than explored. The cost is then linear in
the size of the output. A dead end is still possible where two groups constrain one list's
alternatives together (the sets are kept per group), and backtracking leaves it at once.

The order is that of the product fluidml filters: lists in depth-first order of the config as
written (a list before the lists inside its alternatives), the first list varying slowest; a
list absent from a config counts as index 0, so a config sits where its first point would.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from ..errors import FlowError

__all__ = ["expand_config"]

_METHODS = ("product", "zip")

# Kinds of template entries: a constant, the value chosen on a list, a nested template.
_CONST, _AXIS, _DICT = 0, 1, 2

# The indices of a group a list (or dict) can meet: ``n`` for ``range(n)``, else the set itself.
# A group absent from a list's map is not constrained by it.
_Allowed: TypeAlias = int | frozenset[int]
_Template: TypeAlias = list[tuple[str, int, Any]]


def expand_config(
    config: Mapping[str, Any] | None, expand: str = "product", group_prefix: str = "@"
) -> list[dict[str, Any]]:
    """Every config a grid ``config`` stands for, in a deterministic order.

    A list value holds alternatives (an element that is a list is one literal list value, so
    ``[[1, 2]]`` is the single value ``[1, 2]``; an element that is a dict is expanded when
    chosen); a dict value is expanded recursively. A list ending with
    ``"<group_prefix><name>"`` belongs to zip group ``name``: in every config, the lists of one
    group that are present took the same index, whatever their depth, so lengths that differ
    are cut to the shortest and a list inside an alternative constrains only the configs that
    chose it. Everything else is crossed by product, the first list varying slowest (see the
    module docstring for the exact order). ``expand="zip"`` puts every list of more than one
    alternative, at every depth, in one group.

    Output dicts are built afresh: dicts, lists, tuples and sets are copied, so mutating one
    output changes neither the input nor another output. Other objects are shared, since copying
    arbitrary objects is neither cheap nor always possible.

    Usage::

        expand_config({"lr": [0.1, 0.01], "layers": [1, 2]})      # 4 configs
        expand_config({"lr": [0.1, 0.01, "@g"], "wd": [0, 1, "@g"]})  # 2: zipped

    Args:
        config: The grid: a mapping of str keys (None: the one empty config).
        expand: ``"product"`` (lists crossed, except zip groups) or ``"zip"`` (every list
            zipped with every other).
        group_prefix: The prefix of the last element that puts a list in a zip group.

    Returns:
        The configs, each a new dict; ``[{}]`` for None or an empty mapping.

    Raises:
        FlowError: ``config`` is not a mapping, contains itself, or ``expand`` or
            ``group_prefix`` is invalid.
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
        axes: list[_Axis] = []
        root = _Node(config, "", axes, expand, group_prefix)
        return [_render(root.template, choice) for choice in _choices(root, len(axes))]
    except RecursionError:
        raise FlowError("the config contains itself or is nested too deeply") from None


class _Node:
    """A dict of the config: its template, and the lists present whenever it is."""

    __slots__ = ("allowed", "axes", "template")

    def __init__(
        self, config: Mapping[Any, Any], path: str, axes: list[_Axis], expand: str, prefix: str
    ) -> None:
        self.axes: list[_Axis] = []
        self.template = _compile(config, path, axes, self.axes, expand, prefix)
        # A dict meets a group's index only if each of its lists does.
        allowed: dict[str, _Allowed] = {}
        for axis in self.axes:
            for group, indices in axis.allowed.items():
                allowed[group] = _meet(allowed[group], indices) if group in allowed else indices
        self.allowed = allowed


class _Axis:
    """One list of alternatives; ``index`` is its place in depth-first order."""

    __slots__ = ("allowed", "group", "index", "items")

    def __init__(self, index: int, group: str | None) -> None:
        self.index = index
        self.group = group
        self.items: list[Any] = []  # constants and _Node alternatives
        self.allowed: dict[str, _Allowed] = {}

    def finish(self) -> None:
        """Compute :attr:`allowed` once the alternatives are compiled.

        The list's own group can take index ``i`` only if alternative ``i`` meets ``i``. Any
        other group is met if some alternative meets it (an alternative without that group's
        lists meets every index, and then the list does not constrain the group).
        """
        others: dict[str, _Allowed] = {}
        nodes = [item for item in self.items if isinstance(item, _Node)]
        if len(nodes) == len(self.items):  # else a constant alternative meets every index
            shared = set.intersection(*(set(node.allowed) for node in nodes)) - {self.group}
            for group in sorted(shared):
                others[group] = functools.reduce(_join, [node.allowed[group] for node in nodes])
        if self.group is not None:
            own = self.group
            met = [
                i
                for i, item in enumerate(self.items)
                if not isinstance(item, _Node) or _within(i, item.allowed.get(own))
            ]
            others[own] = len(self.items) if len(met) == len(self.items) else frozenset(met)
        self.allowed = others


def _compile(
    config: Mapping[Any, Any],
    path: str,
    axes: list[_Axis],
    present: list[_Axis],
    expand: str,
    prefix: str,
) -> _Template:
    """The template of ``config``; appends its lists (nested dicts' too) to ``present`` and,
    with those inside its alternatives, to ``axes`` in depth-first order."""
    template: _Template = []
    for key, value in config.items():
        if not isinstance(key, str):
            where = f" in {path!r}" if path else ""
            raise FlowError(f"config key {key!r}{where} must be a str, not {type(key).__name__}")
        here = f"{path}.{key}" if path else key
        if isinstance(value, list):
            axis = _axis(value, here, axes, expand, prefix)
            present.append(axis)
            template.append((key, _AXIS, axis))
        elif isinstance(value, Mapping):
            template.append((key, _DICT, _compile(value, here, axes, present, expand, prefix)))
        else:
            template.append((key, _CONST, value))
    return template


def _axis(values: list[Any], path: str, axes: list[_Axis], expand: str, prefix: str) -> _Axis:
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
    if expand == "zip":
        # fluidml: markers are dropped and every list of more than one alternative is zipped;
        # a single alternative is a constant, else it would cut the whole zip to one config.
        group = "" if len(values) > 1 else None
    axis = _Axis(len(axes), group)
    axes.append(axis)  # before the lists inside its alternatives: depth-first order
    axis.items = [
        _Node(value, f"{path}[{i}]", axes, expand, prefix) if isinstance(value, Mapping) else value
        for i, value in enumerate(values)
    ]
    axis.finish()
    return axis


def _choices(root: _Node, count: int) -> Iterator[list[int]]:
    """The index of every present list, for each config in order (one list, updated in place).

    A depth-first walk over the present lists, a list's chosen alternative's lists coming
    right after it: ``pending`` is a linked list ``(axis, rest)``. ``bound`` holds each group's
    index, set by the first list of the group present. Invariant: every pending list can meet
    the index of every bound group (:attr:`_Axis.allowed`); a choice that would break it is
    skipped, so a walk that goes on usually ends in a config.
    """
    choice = [0] * count
    pending: tuple[_Axis, Any] | None = None
    for axis in reversed(root.axes):
        pending = (axis, pending)
    if pending is None:
        yield choice
        return
    bound: dict[str, int] = {}
    # Frames: [axis, rest, candidate indices, whether this frame bound the axis's group].
    stack: list[list[Any]] = [_frame(pending, bound)]
    while stack:
        frame = stack[-1]
        axis, rest, candidates, binds = frame
        group = axis.group
        if binds:
            del bound[group]
            frame[3] = False
        index = next(candidates, None)
        if index is None:
            stack.pop()
            continue
        item = axis.items[index]
        if group is not None and group not in bound:
            bound[group] = index
            frame[3] = True
            if not _meets(rest, group, index):
                continue
        after = rest
        if isinstance(item, _Node):
            if not all(_fits(sub, bound) for sub in item.axes):
                continue
            for sub in reversed(item.axes):
                after = (sub, after)
        choice[axis.index] = index
        if after is None:
            yield choice
        else:
            stack.append(_frame(after, bound))


def _frame(pending: tuple[_Axis, Any], bound: dict[str, int]) -> list[Any]:
    axis, rest = pending
    group = axis.group
    if group is not None and group in bound:
        index = bound[group]
        candidates: Iterator[int] = iter([index] if _within(index, axis.allowed[group]) else [])
    else:
        candidates = iter(range(len(axis.items)))
    return [axis, rest, candidates, False]


def _meets(pending: tuple[_Axis, Any] | None, group: str, index: int) -> bool:
    """Whether every list in ``pending`` can meet ``index`` for ``group``."""
    while pending is not None:
        axis, pending = pending
        indices = axis.allowed.get(group)
        if indices is not None and not _within(index, indices):
            return False
    return True


def _fits(axis: _Axis, bound: dict[str, int]) -> bool:
    """Whether ``axis`` can meet the index of every bound group."""
    for group, indices in axis.allowed.items():
        if group in bound and not _within(bound[group], indices):
            return False
    return True


def _within(index: int, indices: _Allowed | None) -> bool:
    if indices is None:
        return True
    if isinstance(indices, int):
        return index < indices
    return index in indices


def _meet(one: _Allowed, two: _Allowed) -> _Allowed:
    if isinstance(one, int) and isinstance(two, int):
        return min(one, two)
    if isinstance(one, int):
        one, two = two, one
    assert isinstance(one, frozenset)
    return frozenset(i for i in one if _within(i, two))


def _join(one: _Allowed, two: _Allowed) -> _Allowed:
    if isinstance(one, int) and isinstance(two, int):
        return max(one, two)
    joined = frozenset(_members(one)) | frozenset(_members(two))
    limit = len(joined)
    return limit if max(joined, default=-1) == limit - 1 else joined


def _members(indices: _Allowed) -> Iterator[int]:
    return iter(range(indices)) if isinstance(indices, int) else iter(indices)


def _render(template: _Template, choice: list[int]) -> dict[str, Any]:
    """One output dict (nested dicts by further calls), from each present list's index."""
    out: dict[str, Any] = {}
    for key, kind, payload in template:
        if kind == _CONST:
            out[key] = _fresh(payload)
        elif kind == _AXIS:
            item = payload.items[choice[payload.index]]
            out[key] = _render(item.template, choice) if isinstance(item, _Node) else _fresh(item)
        else:
            out[key] = _render(payload, choice)
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
