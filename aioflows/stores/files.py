"""Blocking file-system steps of LocalFileStore, each run whole in one worker-thread hop.

Grouping every sequence of syscalls that belong together (find-and-read, replace-then-fsync,
scan-a-directory) into one function keeps the number of loop↔thread round trips per store call
small, which is most of what a small-file store costs. The threads are aiofiles' own (the
loop's default executor), so aioflows starts no threads of its own.

Atomicity rests on ``os.replace``: data goes to a hidden temporary file in the same directory,
is fsynced, and is renamed over the final name. Readers open a path and keep the inode, so they
read either the whole old version or the whole new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import aiofiles.os
import anyio

__all__ = [
    "commit",
    "fsync",
    "is_temp",
    "make_dirs",
    "newest_existing",
    "off_loop",
    "read_infos",
    "read_newest",
    "remove_files",
    "remove_run",
    "remove_stale",
    "scan_run",
    "temp_path",
    "write_atomic",
]

T = TypeVar("T")

_TEMP_SUFFIX = ".tmp"
_DELETING_SUFFIX = ".deleting"


def _apply(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


_in_executor = aiofiles.os.wrap(_apply)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in aiofiles' worker threads and wait for it to finish.

    Shielded: a cancelled caller still waits for the step (milliseconds), as anyio's
    ``to_thread.run_sync`` does, so no file operation is still running after the store call
    has returned, and cleanup after a cancelled write sees the file in its final state.
    """
    with anyio.CancelScope(shield=True):
        result: T = await _in_executor(fn, *args)
    return result


def temp_path(directory: str) -> str:
    """A fresh temporary name: hidden (saved names never start with '.') and ending in .tmp,
    so it is never mistaken for a saved object."""
    return os.path.join(directory, f".{secrets.token_hex(8)}{_TEMP_SUFFIX}")


def is_temp(filename: str) -> bool:
    return filename.startswith(".") and filename.endswith((_TEMP_SUFFIX, _DELETING_SUFFIX))


def fsync(fd: int) -> None:
    os.fsync(fd)


def _fsync_dir(path: str) -> None:
    # Makes a rename or a new entry durable. Not every platform can open a directory
    # (Windows cannot); there the rename is as durable as the OS makes it.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_dirs(directory: str) -> None:
    """Create a run directory and make the new entries durable in their parents."""
    missing = []
    parent = directory
    while not os.path.isdir(parent) and parent != os.path.dirname(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(directory, exist_ok=True)
    for created in missing:
        _fsync_dir(os.path.dirname(created))


def write_atomic(final: str, data: bytes, siblings: Sequence[str]) -> None:
    """Write ``data`` as ``final`` atomically: temporary file, fsync, rename, directory fsync.

    The whole protocol is one worker-thread hop: round trips between the loop and the
    threads, not the syscalls, are most of what a small save costs.
    """
    directory = os.path.dirname(final)
    temp = temp_path(directory)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temp, flags, 0o666)
    except FileNotFoundError:  # the run's first object: create its directory
        make_dirs(directory)
        fd = os.open(temp, flags, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:  # a write may be partial
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        commit(temp, final, siblings)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return -1


def commit(temp: str, final: str, siblings: Sequence[str]) -> None:
    """Publish ``temp`` as ``final``; drop older files of the same name saved as another type.

    ``siblings`` are the paths the same name has under other extensions. The newest file of a
    name is the current one (here and in :func:`read_newest`), so the new file is first made
    strictly newer than any sibling (file times are coarse: two quick saves can share one),
    and only siblings older than it are removed. Two writers saving one name as two types
    therefore never delete each other's file: one is strictly newer and wins.
    """
    if siblings:
        mtime = os.stat(temp).st_mtime_ns
        newest = max(_mtime(s) for s in siblings)
        if newest >= mtime:
            mtime = newest + 1
            os.utime(temp, ns=(mtime, mtime))
    os.replace(temp, final)
    if siblings:
        for sibling in siblings:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if 0 <= _mtime(sibling) < mtime:
                    os.remove(sibling)
    _fsync_dir(os.path.dirname(final))


def read_newest(candidates: Sequence[str]) -> tuple[int, str, bytes] | None:
    """Read the most recently written existing path: (its index, the path, its bytes).

    An open file descriptor pins the inode, so a concurrent replace cannot tear the read.
    """
    best_fd, best_index, best_mtime = -1, -1, -1
    try:
        for index, path in enumerate(candidates):
            try:
                fd = os.open(path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                continue
            mtime = os.fstat(fd).st_mtime_ns
            if mtime > best_mtime:
                if best_fd >= 0:
                    os.close(best_fd)
                best_fd, best_index, best_mtime = fd, index, mtime
            else:
                os.close(fd)
        if best_fd < 0:
            return None
        with os.fdopen(best_fd, "rb") as file:
            best_fd = -1  # now owned by `file`
            data = file.read()
        return best_index, candidates[best_index], data
    finally:
        if best_fd >= 0:
            os.close(best_fd)


def newest_existing(paths: Iterable[str]) -> str | None:
    """The most recently written of the paths that exist, if any."""
    best: tuple[int, str] | None = None
    for path in paths:
        try:
            mtime = os.stat(path).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            continue
        if best is None or mtime > best[0]:
            best = (mtime, path)
    return None if best is None else best[1]


def remove_files(paths: Iterable[str]) -> None:
    directories = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.remove(path)
            directories.add(os.path.dirname(path))
    for directory in directories:
        _fsync_dir(directory)


def remove_run(run_dir: str) -> None:
    """Remove a run directory so that readers see it all or not at all.

    It is first renamed to a hidden name (atomic), then deleted at leisure; a crash in between
    leaves a hidden ``.deleting`` directory that :func:`remove_stale` removes later.
    """
    doomed = os.path.join(
        os.path.dirname(run_dir),
        f".{os.path.basename(run_dir)}.{secrets.token_hex(4)}{_DELETING_SUFFIX}",
    )
    try:
        os.replace(run_dir, doomed)
    except FileNotFoundError:
        return
    _fsync_dir(os.path.dirname(run_dir))
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_if_stale(entry: os.DirEntry[str], cutoff: float) -> int:
    try:
        if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
            return 0
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.remove(entry.path)
    except FileNotFoundError:
        return 0
    return 1


def scan_run(
    run_dir: str,
    split: Callable[[str], tuple[str, Any] | None],
    skip: str,
    stale_after: float,
) -> list[tuple[str, Any, str, bytes]]:
    """Read every saved object of a run: (name, type, path, bytes), newest file per name.

    Files no registered type claims are left alone (they may belong to a type registered only
    in another process); temporary files older than ``stale_after`` are removed on the way.
    """
    newest: dict[str, tuple[int, Any, str]] = {}
    cutoff = time.time() - stale_after
    try:
        entries = list(os.scandir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if is_temp(entry.name):
            _remove_if_stale(entry, cutoff)
            continue
        parsed = split(entry.name)
        if parsed is None or parsed[0] == skip or not entry.is_file(follow_symlinks=False):
            continue
        name, stype = parsed
        try:
            mtime = entry.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if name not in newest or mtime > newest[name][0]:
            newest[name] = (mtime, stype, entry.path)
    found = []
    for name, (_, stype, path) in sorted(newest.items()):
        try:
            with open(path, "rb") as file:
                found.append((name, stype, path, file.read()))
        except FileNotFoundError:
            continue  # deleted while we scanned
    return found


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [
                e.path
                for e in entries
                if not e.name.startswith(".") and e.is_dir()  # a symlinked task dir counts
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_infos(base: str, task: str | None, filename: str) -> list[tuple[str, bytes]]:
    """Read every run record under ``base`` (or under one task): (path, bytes)."""
    task_dirs = [os.path.join(base, task)] if task is not None else _subdirs(base)
    found = []
    for task_dir in task_dirs:
        for run_dir in _subdirs(task_dir):
            path = os.path.join(run_dir, filename)
            try:
                with open(path, "rb") as file:
                    found.append((path, file.read()))
            except (FileNotFoundError, NotADirectoryError):
                continue
    return found


def remove_stale(base: str, stale_after: float) -> int:
    """Remove leftovers of crashed writers and deletions anywhere in the store."""
    cutoff = time.time() - stale_after
    removed = 0
    for task_dir in _subdirs(base):
        # Task directories hold interrupted deletions; run directories hold interrupted writes.
        for directory in [task_dir, *_subdirs(task_dir)]:
            try:
                with os.scandir(directory) as entries:
                    stale = [e for e in entries if is_temp(e.name)]
            except (FileNotFoundError, NotADirectoryError):
                continue
            removed += sum(_remove_if_stale(e, cutoff) for e in stale)
    return removed
