"""The record of a flow's last run kept beside a store's results, and the staleness of records.

A store's task records say how each instance last ended, but not which of them made up the last
run: a cached instance's record is the one an older run wrote, instances skipped after a failure
have none, and records of older grids of the same tasks sit beside the current ones. So
``aioflows run`` also writes one JSON file, :data:`LAST_RUN_FILE` in the store's directory (a
hidden name, which no task can have), describing the run as a whole: every instance with its
state, times, predecessors, config and, for a failure, its error and traceback. ``aioflows
show`` marks the records of that run apart from older ones, and ``aioflows report`` draws it.

:func:`stale_keys` applies the rule the executor applies (make's rule, see
:mod:`aioflows.flow.cache`) to records alone: a finished record is stale when a predecessor's
record is missing, not finished, written by another run than the one it consumed, or stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import traceback
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pydantic_core

from ..stores.records import TaskInfo, TaskState

if TYPE_CHECKING:
    from .run import FlowRun

__all__ = [
    "FORMAT",
    "LAST_RUN_FILE",
    "build",
    "read_last",
    "stale_keys",
    "user_traceback",
    "write_last",
]

#: The file, in a LocalFileStore's directory, that describes the last ``aioflows run``.
LAST_RUN_FILE = ".last_run.json"
#: The ``format`` field of that file; a reader refuses others.
FORMAT = "aioflows-run/1"

Key = tuple[str, str]  # (task, config_hash)


def _seconds(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _machinery() -> tuple[str, ...]:
    import anyio

    import aioflows

    return tuple(
        os.path.dirname(module.__file__ or "") + os.sep for module in (aioflows, anyio, asyncio)
    )


def user_traceback(error: BaseException) -> str:
    """The traceback of an error raised by user code, without the leading frames of aioflows
    and of what runs the user's code (the scheduler, importlib, anyio's worker threads): it
    starts at the line to look at."""
    machinery = _machinery()
    tb = error.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith(machinery)
        or "importlib" in tb.tb_frame.f_code.co_filename
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def _jsonable(value: Any) -> Any:
    """A config as JSON (configs are JSON already, pydantic models aside); anything else by
    its repr, since the record describes the config rather than restores it."""
    return pydantic_core.to_jsonable_python(value, fallback=repr)


def build(
    run: FlowRun,
    *,
    started: datetime,
    ended: datetime,
    settled: Mapping[str, datetime],
    target: str = "",
) -> dict[str, Any]:
    """The last-run record of ``run``.

    ``settled`` maps instances to when they reached their final state (from the run's events):
    the time a cached or skipped instance has in this run, whose own record holds an older
    run's times or none.
    """
    results = {r.unique_name: r for rs in run.results.values() for r in rs}
    depth: dict[str, int] = {}
    instances = []
    for node in run.graph.nodes:
        result = results.get(node.unique_name)
        if result is None:  # not in this run (targets)
            continue
        preds = [p.unique_name for p in node.predecessors]
        depth[node.unique_name] = 1 + max((depth.get(p, 0) for p in preds), default=-1)
        ran = result.state is not TaskState.CACHED
        error = result.error
        instances.append(
            {
                "unique_name": node.unique_name,
                "task": node.task,
                "config_hash": node.config_hash,
                "state": result.state.value,
                "depth": depth[node.unique_name],
                "predecessors": preds,
                "config": _jsonable(node.config),
                "attempts": result.attempts,
                "started": _seconds(result.started) if ran else None,
                "ended": _seconds(result.ended) if ran else None,
                "settled": _seconds(settled.get(node.unique_name)),
                "error": None if error is None else f"{type(error).__name__}: {error}",
                "traceback": None if error is None else user_traceback(error),
            }
        )
    return {
        "format": FORMAT,
        "flow": run.graph.flow.name,
        "run_id": run.run_id,
        "target": target,
        "ok": run.ok,
        "started": started.timestamp(),
        "ended": ended.timestamp(),
        "tasks": [t for t in run.graph.specs if run.results.get(t)],
        "instances": instances,
    }


def write_last(store_dir: str, record: Mapping[str, Any]) -> None:
    """Write ``record`` as the store's last run, atomically (a reader sees the old or the new)."""
    os.makedirs(store_dir, exist_ok=True)
    data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=".last_run.", suffix=".tmp", dir=store_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, os.path.join(store_dir, LAST_RUN_FILE))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_last(store_dir: str) -> dict[str, Any] | None:
    """The store's last-run record; None if no run was recorded.

    Raises:
        ValueError: The file is not a last-run record (edited, truncated, another version).
    """
    path = os.path.join(store_dir, LAST_RUN_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a last-run record ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path}: not a last-run record of this aioflows (format {FORMAT})")
    instances = record.get("instances")
    if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
        raise ValueError(f"{path}: not a last-run record (no list of instances)")
    return record


def stale_keys(infos: Iterable[TaskInfo]) -> set[Key]:
    """The (task, config_hash) of every finished record whose value was computed from a
    predecessor value that is no longer the stored one (directly or further up)."""
    index = {(i.task, i.config_hash): i for i in infos}
    consumers: dict[Key, list[Key]] = {}
    stale: set[Key] = set()
    for key, info in index.items():
        if info.state is not TaskState.FINISHED or info.inputs is None:
            continue
        for task, hashes in info.inputs.items():
            for config_hash, run_id in hashes.items():
                pred_key = (task, config_hash)
                consumers.setdefault(pred_key, []).append(key)
                pred = index.get(pred_key)
                if pred is None or pred.state is not TaskState.FINISHED or pred.run_id != run_id:
                    stale.add(key)
    # Staleness flows downstream: a record computed from a stale one is stale too.
    queue = deque(stale)
    while queue:
        for key in consumers.get(queue.popleft(), ()):
            if key not in stale and index[key].state is TaskState.FINISHED:
                stale.add(key)
                queue.append(key)
    return stale
