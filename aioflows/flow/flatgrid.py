"""The fast path of expansion for the commonest grid: a flat dict of scalars and lists of them.

``{"i": [0, 1, ..., 9999]}`` or ``{"lr": [0.1, 0.01], "layers": [1, 2], "seed": 0}``: no
nested dict, no zip group, product expansion. :func:`flat_grid` gives exactly what
:func:`~aioflows.flow.config.expand_config` would (the product of the lists, the first varying
slowest) with ``itertools.product`` instead of a walk and a template render per config, and
tells the graph it can leave the instances' hashes for later: a config of scalars cannot change
after expansion (a task receives a copy of the dict, and its values are immutable), so the
digest computed when first read is the one expansion would have computed.

Measured (cProfile of ``flow.graph()`` on the 10,000-config fan-out of ``benchmarks/flows.py``):
the walk and render were 0.5 µs a config, the validation and canonical encoding of each config
for its hash 0.9 µs, the sha256 0.7 µs, the check for ignored keys 0.3 µs.

Anything else returns None and takes the general path, which also raises the errors (a
repeated alternative, a NaN, a key that is not a str) with their full messages.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

__all__ = ["flat_grid"]


def _scalar(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is str or kind is bool or value is None:
        return True
    return kind is float and math.isfinite(value)


def flat_grid(
    config: Any, expand: str, group_prefix: Any, ignore_prefix: str | None
) -> list[dict[str, Any]] | None:
    """The configs ``expand_config(config, expand, group_prefix)`` gives, when ``config`` is
    a flat grid of scalars whose configs are all distinct instances; else None.

    Distinct: no list repeats an alternative (by type and value: ``1`` and ``1.0`` differ in
    JSON, as do ``1`` and ``True``) and no ignored key (``ignore_prefix``) has more than one,
    which would make two instances of one identity. ``0.0`` and ``-0.0`` count as the same
    here (the general path then decides), which only errs towards the slow path.
    """
    if config is None:
        return [{}]
    if type(config) is not dict or expand != "product":
        return None
    if not isinstance(group_prefix, str) or not group_prefix:
        return None  # the general path raises
    keys: list[str] = []
    columns: list[list[Any] | tuple[Any]] = []
    for key, value in config.items():
        if type(key) is not str:
            return None
        if type(value) is list:
            if not value:
                return None
            last = value[-1]
            if type(last) is str and last.startswith(group_prefix):
                return None  # a zip group
            if not all(_scalar(item) for item in value):
                return None
            if len(value) > 1:
                if ignore_prefix is not None and key.startswith(ignore_prefix):
                    return None  # instances differing only in an ignored key
                if len(set(zip(map(type, value), value, strict=True))) != len(value):
                    return None  # a repeated alternative
            columns.append(value)
        elif _scalar(value):
            columns.append((value,))
        else:
            return None
        keys.append(key)
    if len(keys) == 1:
        key = keys[0]
        return [{key: item} for item in columns[0]]
    return [dict(zip(keys, point, strict=True)) for point in itertools.product(*columns)]
