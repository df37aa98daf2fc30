"""Node identity: :func:`config_hash` and the canonical JSON it is computed over.

Results are cached under a node's identity, so it must be the same in every process, machine and
Python version. It is therefore sha256 over canonical JSON, never ``hash()``, ``repr`` or pickle,
which change with ``PYTHONHASHSEED``, the Python version or the platform. A node hashes its
predecessors' *hashes*, not their configs, so the cost per node does not grow with the depth of
the graph; and since flows hash 100,000 nodes, a config is validated in one walk that builds
nothing unless it must convert something, then written by a single ``json.dumps``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from ..errors import FlowError

__all__ = [
    "canonical_json",
    "config_hash",
    "encoded_config",
    "node_digest",
    "node_hasher",
    "node_suffix",
    "strip_ignored",
]

# One encoder for every dumps: json.dumps with options makes a new JSONEncoder per call (and
# JSONEncoder.encode a new C encoder per call), which was a third of the cost of hashing a
# node. Values reach it checked by _checked (JSON types only, no cycles), so it needs no
# check for cycles of its own: a cycle is a RecursionError there, made a FlowError.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)
_ENCODE: Callable[[Any], str] = _ENCODER.encode
_MAKE_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
if _MAKE_C_ENCODER is not None:  # CPython: JSONEncoder.iterencode's encoder, made once
    _C_ENCODE = _MAKE_C_ENCODER(
        None,  # no markers: no check for cycles (see above)
        _ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,  # no indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    def _encode_c(value: Any) -> str:
        return "".join(_C_ENCODE(value, 0))

    _ENCODE = _encode_c


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
    order. 64 bits keep collisions improbable (under 1 in 10**9 among 100,000 nodes).
    """
    if not isinstance(task, str):
        raise FlowError(f"a task name must be a str, got {_describe(task)}")
    if not isinstance(config, Mapping):
        raise FlowError(f"the config of task {task!r} must be a mapping, got {_describe(config)}")
    text = _encoded_config(config, task) + _node_suffix(task, predecessors)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def node_hasher(task: str, predecessors: Iterable[tuple[str, str]]) -> Callable[[str], str]:
    """:func:`config_hash` split for a graph: the returned function takes a config already
    encoded by :func:`encoded_config` and gives the digest ``config_hash(task, config,
    predecessors)`` would. The task's text and its predecessors' are encoded once, not once
    per instance, and a config once for every predecessor combination it is crossed with."""
    suffix = _node_suffix(task, predecessors)
    sha256 = hashlib.sha256

    def digest(encoded: str) -> str:
        return sha256((encoded + suffix).encode("ascii")).hexdigest()[:16]

    return digest


def node_suffix(task: str, predecessors: Iterable[tuple[str, str]]) -> str:
    """The closing of the canonical text :func:`config_hash` digests (its task and
    predecessors), for :func:`node_digest`: a string, where :func:`node_hasher` gives a
    function (a graph's node keeps it for a hash computed when first read, and must pickle)."""
    return _node_suffix(task, predecessors)


def node_digest(encoded: str, suffix: str) -> str:
    """``config_hash`` from its two parts: :func:`encoded_config` and :func:`node_suffix`."""
    return hashlib.sha256((encoded + suffix).encode("ascii")).hexdigest()[:16]


def encoded_config(task: str, config: Mapping[str, Any]) -> str:
    """The opening of the canonical text :func:`config_hash` digests, for :func:`node_hasher`."""
    if type(config) is not dict and not isinstance(config, Mapping):  # the ABC test is slow
        raise FlowError(f"the config of task {task!r} must be a mapping, got {_describe(config)}")
    return _encoded_config(config, task)


def _encoded_config(config: Mapping[str, Any], task: str) -> str:
    # The node is {"config": ..., "requires": [...], "task": ...}, keys sorted: its text is
    # this opening, then _node_suffix. Exactly what dumps of the whole dict writes.
    return '{"config":' + _ENCODE(_checked(config, task))


def _node_suffix(task: str, predecessors: Iterable[tuple[str, str]]) -> str:
    requires: list[tuple[str, str]] = []
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
        requires.append((pair[0], pair[1]))  # tuples sort faster than lists, encode the same
    requires.sort()
    return ',"requires":' + _ENCODE(requires) + ',"task":' + _ENCODE(task) + "}"


def _dumps(value: Any) -> str:
    return _ENCODE(value)


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
    Copy-on-write, so the common all-JSON config is validated without building anything; exact
    type tests come first because this runs for every value of every node."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise _NotJson(f"holds the float {value!r}, which is not JSON-representable")
    if kind is dict:
        out: dict[str, Any] | None = None
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise _NotJson(f"has the key {key!r}, which is not a str as JSON requires")
            try:
                new = _jsonable(item)
            except _NotJson as exc:
                exc.path.append(key)
                raise
            if out is not None:
                out[key] = new
            elif new is not item:
                out = {}
                for done, kept in value.items():  # the keys before this one are unchanged
                    if done is key:
                        break
                    out[done] = kept
                out[key] = new
        return value if out is None else out
    if kind is list or kind is tuple:
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
    return _jsonable_other(value)


def _jsonable_other(value: Any) -> Any:
    """:func:`_jsonable` for the rarer kinds: subclasses of JSON types and pydantic models."""
    if isinstance(value, (str, int)):  # enums and the like: json writes their plain value
        return value
    if isinstance(value, float):
        return _jsonable(float(value))
    if isinstance(value, Mapping):
        return _jsonable(dict(value.items()))
    if isinstance(value, (list, tuple)):
        return _jsonable(list(value))
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump(mode="json")
        except Exception as exc:
            raise _NotJson(
                f"holds {_describe(value)} model that cannot be dumped as JSON ({exc})"
            ) from None
        return _jsonable(dumped)
    raise _NotJson(f"holds {_describe(value)}, which is not JSON-representable")


def _describe(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
