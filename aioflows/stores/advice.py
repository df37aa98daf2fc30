"""LocalFileStore's advice journal: records that may be lost, written in bulk.

A stopped flow has to record thousands of KILLED states at once. Those records are advice, not
promises (a lost one only means the instance runs again, as a KILLED one does anyway), so they
are not written one file per run like the records of finished work: that costs a directory and
a file per instance, seconds for ten thousand. Instead each batch is one line appended to one
hidden file per task::

    <base_dir>/<task>/.advice.jsonl
    {"written": <ns since the epoch>,
     "columns": {"config_hash": [...], "unique_name": [...], "state": [...], "config": [...],
                 "unique_config": [...], "started": [...], "ended": [...],
                 "attempts": [...], "error": [...]}}

(one list per field, times in integer microseconds since the epoch, ``unique_config`` null
when it is the config, as a root instance's is): one ``os.write`` with ``O_APPEND``, no fsync.
Readers take, per config_hash, the last row of the journal, and prefer the run's own
``_taskinfo.json`` whenever that file was written after it (whichever was written last wins,
as if the advice had been a record file). A torn or garbled line (a crash mid-append) is
skipped; each line is led by a newline too, so the next append after a torn one is read whole.
The name starts with a dot, which no task, hash or object name may, so it can never collide
with the store's own entries, and listings pass it over.

The journal is rewritten compacted (one row per config_hash) when it grows past
:data:`COMPACT_AT`, and without a config_hash when its run is deleted. Those rewrites replace
the file atomically; an append racing one from another process may be lost, which for advice
is acceptable (documented in docs/stores.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import pydantic_core

from . import files, jsontext
from .records import RawInfos, TaskInfo, TaskState, raw_info

__all__ = ["ADVICE_FILE", "Advice", "Journal", "drop", "read", "read_run", "tasks", "write"]

ADVICE_FILE = ".advice.jsonl"
#: Journal size past which an append also compacts it.
COMPACT_AT = 4 * 2**20

_log = logging.getLogger("aioflows.stores")
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)


class Advice(NamedTuple):
    """One config_hash's newest advice row, and when its line was written."""

    written: int  # ns since the epoch
    row: list[Any]

    def info(self, task: str) -> TaskInfo:
        """The validated record (a row that does not validate raises pydantic's error)."""
        return raw_info(task, *self.row)


#: The journal's columns, in the order of an :class:`Advice` row.
COLUMNS = (
    "config_hash",
    "unique_name",
    "state",
    "config",
    "unique_config",
    "started",
    "ended",
    "attempts",
    "error",
)


def encode(batch: RawInfos, written: int | None = None) -> bytes:
    """One journal line for ``batch``: its lists, as they are.

    The line holds columns, not rows, so ten thousand records are a handful of lists to
    encode, not ten thousand.
    """
    columns = {
        "config_hash": batch.config_hash,
        "unique_name": batch.unique_name,
        "state": [state.value for state in batch.state],
        "config": batch.config,
        "unique_config": batch.unique_config,
        "started": batch.started,
        "ended": batch.ended,
        "attempts": batch.attempts,
        "error": batch.error,
    }
    line = {"written": time.time_ns() if written is None else written, "columns": columns}
    try:
        text = json.dumps(line, separators=(",", ":"))  # ASCII: surrogates come out escaped
    except (TypeError, ValueError):  # a long int, a model in a config: the careful encoder
        text = jsontext.dumps(line, join_pairs=True, default=pydantic_core.to_jsonable_python)
    # Led by a newline as well: a line appended after one torn by a crash starts afresh.
    return b"\n" + text.encode() + b"\n"


def _columns(rows: list[list[Any]]) -> RawInfos:
    """Journal rows (as :class:`Advice` holds them) back into columns, to be written again."""
    fields = list(zip(*rows, strict=True)) if rows else [()] * len(COLUMNS)
    hashes, names, states, configs, uniques, started, ended, attempts, errors = fields
    return RawInfos(
        "",
        list(hashes),
        list(names),
        [TaskState(s) for s in states],
        list(configs),
        list(uniques),
        list(started),
        list(ended),
        list(attempts),
        list(errors),
    )


def parse(data: bytes) -> dict[str, Advice]:
    """Per config_hash, the last row of a journal's lines; damaged lines are skipped."""
    found: dict[str, Advice] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            entry = jsontext.loads(line)
            written, columns = int(entry["written"]), entry["columns"]
            for row in zip(*(columns[c] for c in COLUMNS), strict=True):
                if isinstance(row[0], str):
                    found[row[0]] = Advice(written, list(row))
        except (ValueError, KeyError, TypeError):
            _log.debug("skipped a damaged line of an advice journal")
    return found


def _task_dir(base: str, task: str, *, create: bool) -> files.Dir | None:
    top = files.open_base(base, create=create)
    if top is None:
        return None
    with top:
        return top.sub(task, create=create)


def write(base: str, batch: RawInfos) -> None:
    """Append ``batch`` to its task's journal: one write, no fsync (blocking; off the loop)."""
    if not len(batch):
        return
    task = batch.task
    line = encode(batch)
    directory = _task_dir(base, task, create=True)
    assert directory is not None  # created
    with directory:
        fd = directory.open(ADVICE_FILE, _APPEND)
        try:
            view = memoryview(line)
            while view:  # a write may be partial
                view = view[os.write(fd, view) :]
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > COMPACT_AT:
            _rewrite(directory, lambda advice: advice)


def read(base: str, task: str) -> dict[str, Advice]:
    """``task``'s journal rows (empty if it has none)."""
    directory = _task_dir(base, task, create=False)
    if directory is None:
        return {}
    with directory:
        journal = _journal(directory, None)
    return {} if journal is None else journal[1]


def tasks(base: str) -> list[str]:
    """The tasks that have a journal."""
    top = files.open_base(base)
    if top is None:
        return []
    found = []
    with top:
        for name in files.store_dirs(top):
            directory = top.sub(name) if not top.is_link(name) else None
            if directory is None:
                continue
            with directory:
                try:
                    directory.lstat(ADVICE_FILE)
                except FileNotFoundError:
                    continue
            found.append(name)
    return found


def drop(base: str, task: str, hashes: Iterable[str]) -> None:
    """Remove the rows of ``hashes`` from ``task``'s journal (a deleted run has no advice)."""
    gone = set(hashes)
    directory = _task_dir(base, task, create=False)
    if directory is None:
        return
    with directory:
        _rewrite(directory, lambda advice: {h: a for h, a in advice.items() if h not in gone})


def _rewrite(directory: files.Dir, keep: Any) -> None:
    """Replace the journal by the rows ``keep(rows)`` returns, one line per written time."""
    try:
        fd = directory.open(ADVICE_FILE, _READ)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as file:
        before = parse(file.read())
    after: dict[str, Advice] = keep(before)
    if after == before and directory.lstat(ADVICE_FILE).st_size <= COMPACT_AT:
        return
    by_time: dict[int, list[list[Any]]] = {}
    for advice in after.values():
        by_time.setdefault(advice.written, []).append(advice.row)
    data = b"".join(encode(_columns(rows), written) for written, rows in sorted(by_time.items()))
    temp = files.temp_name()
    fd = directory.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0))
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            files.fsync(file.fileno())
        directory.replace(temp, ADVICE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            directory.unlink(temp)
        raise
    directory.fsync()


#: A journal as read: its identity (inode, size, mtime) and its rows; None when absent.
Journal = tuple[tuple[int, int, int], dict[str, Advice]]


def read_run(
    run: files.Run, record: str, known: Journal | None
) -> tuple[tuple[int, bytes] | None, Journal | None]:
    """The run's record file (its mtime in ns, its bytes) and its task's journal, in one go.

    ``known`` is the journal as last read: when its identity has not changed it is returned
    as it is, without reading the file again (a flow checks every instance's record in turn).
    """
    top = files.open_base(run.base)
    if top is None:
        return None, None
    with top:
        task_dir = top.sub(run.task)
    if task_dir is None:
        return None, None
    with task_dir:
        journal = _journal(task_dir, known)
        run_dir = task_dir.sub(run.config_hash)
    if run_dir is None:
        return None, journal
    with run_dir:
        try:
            fd = run_dir.open(record, _READ)
        except (FileNotFoundError, NotADirectoryError):
            return None, journal
    with os.fdopen(fd, "rb") as file:
        return (os.fstat(fd).st_mtime_ns, file.read()), journal


def _journal(directory: files.Dir, known: Journal | None) -> Journal | None:
    try:
        fd = directory.open(ADVICE_FILE, _READ)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        if known is not None and known[0] == ident:
            return known
        return ident, parse(file.read())
