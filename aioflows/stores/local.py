"""LocalFileStore: results as plain files under one directory, written atomically.

Layout (stable; see docs/stores.md)::

    <base_dir>/<task>/<config_hash>/<name>.<extension>   one file per saved object
    <base_dir>/<task>/<config_hash>/_taskinfo.json       the run's TaskInfo record
    <base_dir>/<task>/<config_hash>/.<random>.tmp        a write in progress (hidden)

Every write goes to a temporary file in the target directory, is fsynced and then renamed over
the final name (``save`` does it in one hop to aiofiles' worker threads; ``open(..., "w")``
streams through an aiofiles file and publishes the same way). So a reader only ever sees, and a
process killed with SIGKILL mid-write only ever leaves, the old version or the new one. Many
coroutines and several processes may write the same base_dir; the last rename wins.

Keys are validated before any path is built (no separators, no leading dot, no drive), so
every path is exactly three levels below base_dir. No symlink below base_dir is followed (one
could lead outside it): a call whose task directory, run directory or file is a link raises
``ValueError``; listings pass links over. base_dir itself may be a link.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiofiles
import anyio
import anyio.lowlevel
import pydantic

from .. import _validate
from ..errors import CorruptObject, InvalidArgument, MissingObject
from . import advice, files
from .base import INFO_NAME, MISSING, ResultStore, check_key, check_part
from .records import RawInfos, TaskInfo
from .types import StoreType

__all__ = ["LocalFileStore"]

_INFO_FILE = f"{INFO_NAME}.json"
# aiofiles.open is overloaded on literal modes; ours are chosen at run time.
_aio_open: Callable[..., Any] = aiofiles.open
_MAX_FILENAME = 255  # bytes, on every common file system
_WRITE_MODES = {"w": "text", "wb": "bytes"}
_READ_MODES = frozenset({"r", "rb"})


def _fits(part: str) -> bool:
    """Whether ``part`` encodes to at most _MAX_FILENAME bytes (or raises as encoding does).

    An ASCII str encodes to one byte a character, so the common key is checked without
    encoding it: the save path runs on the event loop, once per part and candidate name.
    """
    if part.isascii():
        return len(part) <= _MAX_FILENAME
    return len(os.fsencode(part)) <= _MAX_FILENAME


class LocalFileStore(ResultStore):
    """Results under ``base_dir``, one directory per task and per config hash.

    Args:
        base_dir: Where to keep results. Created on the first write, not here, so making a
            store never touches the disk.
        stale_after: Age in seconds after which a hidden temporary file is taken for the
            leftover of a crashed writer and removed (by :meth:`get_results` in its run
            directory, and by :meth:`cleanup` everywhere). A file's time changes when data
            reaches it, and ``open(..., "w")`` buffers its writes, so keep this longer than any
            ``open`` block that may sit idle (or flush it now and then).
    """

    def __init__(self, base_dir: str | os.PathLike[str], *, stale_after: float = 3600.0) -> None:
        self._stale_after = _validate.number("stale_after", stale_after, strict=True)
        self._base = os.path.abspath(os.fspath(base_dir))
        # Each task's advice journal as last read, so that checking the records of a flow's
        # instances one by one reads it once, not once per instance (see _load_info).
        self._journals: dict[str, advice.Journal] = {}

    @property
    def base_dir(self) -> str:
        """The absolute base directory (symlinks are kept, not resolved)."""
        return self._base

    def __repr__(self) -> str:
        return f"LocalFileStore({self._base!r})"

    def path(self, name: str, *, task: str, config_hash: str, type_: str = "json") -> str:
        """Where an object of ``type_`` saved under this key lives (whether or not it exists).

        Args:
            name: The object's name within the run.
            task: The run's task name.
            config_hash: The run's config hash.
            type_: The type whose extension the file has.

        Returns:
            ``base_dir/task/config_hash/name.<extension>``, an absolute path.
        """
        check_key(name, task, config_hash)
        return self._file(self._run_dir(task, config_hash), name, self._types[type_])

    def _run_dir(self, task: str, config_hash: str) -> str:
        self._check_run(task, config_hash)
        return os.path.join(self._base, task, config_hash)

    @staticmethod
    def _check_run(task: str, config_hash: str) -> None:
        for kind, part in (("task", task), ("config_hash", config_hash)):
            if not _fits(part):
                raise InvalidArgument(f"{kind} {part[:40]!r}... exceeds {_MAX_FILENAME} bytes")

    def _file(self, run_dir: str, name: str, stype: StoreType) -> str:
        return os.path.join(run_dir, self._filename(name, stype))

    @staticmethod
    def _filename(name: str, stype: StoreType) -> str:
        filename = f"{name}.{stype.extension}"
        if not _fits(filename):
            raise InvalidArgument(
                f"name {name!r} is too long: {filename!r} exceeds {_MAX_FILENAME} bytes"
            )
        return filename

    def _run(self, task: str, config_hash: str) -> files.Run:
        self._check_run(task, config_hash)
        return files.Run(self._base, task, config_hash)

    def _candidates(self, name: str) -> list[tuple[StoreType, str]]:
        """Every file name the name could have: one per registered type whose name fits."""
        return [
            (stype, filename)
            for stype in self._types
            if _fits(filename := f"{name}.{stype.extension}")
        ]

    async def _write(
        self, run: files.Run, filename: str, data: bytes, siblings: Sequence[str] = ()
    ) -> None:
        # A cancelled caller writes nothing; once started, the write runs to its end in
        # aiofiles' worker threads (shielded, as anyio's to_thread is), so no step outlives
        # the call, and a cancellation that arrived meanwhile is raised right after.
        await anyio.lowlevel.checkpoint_if_cancelled()
        await files.off_loop(files.write_atomic, run, filename, data, siblings)
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _save(
        self, obj: Any, name: str, task: str, config_hash: str, type_: StoreType
    ) -> None:
        run = self._run(task, config_hash)
        filename = self._filename(name, type_)
        data = type_.encode(obj, name)
        siblings = [f for t, f in self._candidates(name) if t is not type_]
        await self._write(run, filename, data, siblings)

    async def _load(self, name: str, task: str, config_hash: str) -> Any:
        run = self._run(task, config_hash)
        candidates = self._candidates(name)
        found = await files.off_loop(files.read_newest, run, [f for _, f in candidates])
        if found is None:
            return MISSING
        index, data = found
        stype, filename = candidates[index]
        return stype.decode(data, run.path(filename))

    async def _exists(self, name: str, task: str, config_hash: str) -> bool:
        run = self._run(task, config_hash)
        filenames = [f for _, f in self._candidates(name)]
        return await files.off_loop(files.newest_existing, run, filenames) is not None

    async def _delete(self, name: str, task: str, config_hash: str) -> None:
        filenames = [f for _, f in self._candidates(name)]
        await files.off_loop(files.remove_files, self._run(task, config_hash), filenames)

    async def _delete_run(self, task: str, config_hash: str) -> None:
        await files.off_loop(files.remove_run, self._run(task, config_hash))
        # A deleted run has no record: not even advice.
        await files.off_loop(advice.drop, self._base, task, [config_hash])

    async def _get_results(self, task: str, config_hash: str) -> dict[str, Any]:
        run = self._run(task, config_hash)
        found = await files.off_loop(
            files.scan_run, run, self._types.split, INFO_NAME, self._stale_after, self._candidates
        )
        return {name: stype.decode(data, run.path(f)) for name, stype, f, data in found}

    async def _save_info(self, info: TaskInfo) -> None:
        run = self._run(info.task, info.config_hash)
        data = info.to_bytes()
        await self._write(run, _INFO_FILE, data)

    async def _save_advice(self, batch: RawInfos) -> None:
        """Append records that are advice (a stopped flow's KILLED states) to their task's
        journal, in one thread hop and without fsync (see :mod:`.advice`).

        A crash of the machine may lose them, and a lost KILLED record only means the
        instance runs again, which it would anyway. Readers prefer whichever of a run's record
        file and its journal row was written last. A journal that cannot be written (its task
        directory is a symlink, the disk is full) is logged and skipped: the run already
        reports these states.
        """
        check_part("task", batch.task)
        self._run_dir(batch.task, "")  # checks the length
        for config_hash in batch.config_hash:
            # A flow's hashes are short hex: alphanumeric ASCII is always a usable part.
            if not (type(config_hash) is str and config_hash.isascii() and config_hash.isalnum()):
                check_part("config_hash", config_hash)
            if len(config_hash) > _MAX_FILENAME // 4:  # may be too long once encoded
                self._run_dir(batch.task, config_hash)
        await anyio.lowlevel.checkpoint_if_cancelled()
        await files.off_loop(_write_advice, self._base, batch)

    async def _load_info(self, task: str, config_hash: str) -> TaskInfo | None:
        run = self._run(task, config_hash)
        known = self._journals.get(task)
        record, journal = await files.off_loop(advice.read_run, run, _INFO_FILE, known)
        if journal is None:
            self._journals.pop(task, None)
        else:
            self._journals[task] = journal
        row = None if journal is None else journal[1].get(config_hash)
        if record is not None and (row is None or record[0] >= row.written):
            return _parse_info(run.path(_INFO_FILE), record[1])
        return None if row is None else _advice_info(run, row)

    async def _list_infos(self, task: str | None) -> list[TaskInfo]:
        found = await files.off_loop(files.read_infos, self._base, task, _INFO_FILE)
        journals = await files.off_loop(_read_journals, self._base, task)
        infos = []
        for path, mtime, data in found:
            run_dir = os.path.dirname(path)
            key = (os.path.basename(os.path.dirname(run_dir)), os.path.basename(run_dir))
            row = journals.get(key[0], {}).pop(key[1], None)
            if row is None or mtime >= row.written:
                infos.append(_parse_info(path, data))
            else:
                infos.append(_advice_info(files.Run(self._base, *key), row))
        for task_name, rows in journals.items():
            for config_hash, row in rows.items():
                infos.append(_advice_info(files.Run(self._base, task_name, config_hash), row))
        return infos

    async def cleanup(self) -> int:
        """Remove what crashed writers and deletions left behind; returns how many.

        Only hidden temporaries older than ``stale_after`` are touched. Safe to run while
        other coroutines or processes use the store.
        """
        return await files.off_loop(files.remove_stale, self._base, self._stale_after)

    @asynccontextmanager
    async def open(
        self,
        name: str,
        mode: str = "r",
        *,
        task: str,
        config_hash: str,
        type_: str | None = None,
    ) -> AsyncIterator[Any]:
        """An aiofiles file over one stored object, for data too big to hold in memory.

        ``"r"``/``"rb"`` read the stored file (the newest one under the name, or the one of
        ``type_`` if given). ``"w"``/``"wb"`` write a new version with the same atomicity as
        :meth:`save`: the writes go to a temporary file that replaces the stored one only when
        the block exits without an error, so readers never see a partial file and an error
        keeps the old version. ``type_`` (default ``"text"`` for ``"w"``, ``"bytes"`` for
        ``"wb"``) picks the extension, so ``load`` decodes the file as that type afterwards.

        Args:
            name: The object's name within the run.
            mode: ``"r"``/``"rb"`` to read, ``"w"``/``"wb"`` to write a new version.
            task: The run's task name.
            config_hash: The run's config hash.
            type_: The type whose extension the file has (default: the newest file under
                the name to read; ``"text"`` or ``"bytes"`` to write).

        Raises:
            ValueError: An unsupported mode, or an unusable key part.
            MissingObject: Reading, and nothing is stored under the key.
        """
        check_key(name, task, config_hash)
        if mode in _READ_MODES:
            async with self._open_read(name, mode, task, config_hash, type_) as file:
                yield file
        elif mode in _WRITE_MODES:
            stype = self._types[type_ if type_ is not None else _WRITE_MODES[mode]]
            async with self._open_write(name, mode, task, config_hash, stype) as file:
                yield file
        else:
            raise InvalidArgument(f"mode {mode!r} is not supported; use 'r', 'rb', 'w' or 'wb'")

    @asynccontextmanager
    async def _open_read(
        self, name: str, mode: str, task: str, config_hash: str, type_: str | None
    ) -> AsyncIterator[Any]:
        run = self._run(task, config_hash)
        candidates = self._candidates(name)
        if type_ is not None:
            wanted = self._types[type_]
            candidates = [(t, f) for t, f in candidates if t is wanted]
        # Open the newest existing file the way load() does, then stream from it.
        found = await files.off_loop(files.open_newest, run, [f for _, f in candidates])
        if found is None:
            raise MissingObject(name, task=task, config_hash=config_hash)
        file = await _wrap_fd(found[1], mode)
        try:
            yield file
        finally:
            await _close(file)

    @asynccontextmanager
    async def _open_write(
        self, name: str, mode: str, task: str, config_hash: str, stype: StoreType
    ) -> AsyncIterator[Any]:
        run = self._run(task, config_hash)
        filename = self._filename(name, stype)
        siblings = [f for t, f in self._candidates(name) if t is not stype]
        fd, temp = await files.off_loop(files.create_temp, run)
        try:
            file = await _wrap_fd(fd, mode)
        except BaseException:
            await files.off_loop(files.remove_temp, run, temp)
            raise
        try:
            try:
                yield file
                with anyio.CancelScope(shield=True):
                    await file.flush()
                    await files.off_loop(files.fsync, file.fileno())
            finally:
                await _close(file)
            await files.off_loop(files.commit, run, temp, filename, siblings)
        except BaseException:
            await files.off_loop(files.remove_temp, run, temp)
            raise


async def _wrap_fd(fd: int, mode: str) -> Any:
    """An aiofiles file over a descriptor opened (safely) in a worker thread; it owns the fd."""
    try:
        with anyio.CancelScope(shield=True):
            return await _aio_open(fd, mode, encoding=None if "b" in mode else "utf-8")
    except BaseException:
        os.close(fd)
        raise


async def _close(file: Any) -> None:
    with anyio.CancelScope(shield=True):
        await file.close()


_advice_log = logging.getLogger("aioflows.stores")


def _write_advice(base: str, batch: RawInfos) -> None:
    try:
        advice.write(base, batch)
    except (OSError, InvalidArgument):
        _advice_log.warning("%d KILLED record(s) could not be written", len(batch))


def _read_journals(base: str, task: str | None) -> dict[str, dict[str, advice.Advice]]:
    names = [task] if task is not None else advice.tasks(base)
    return {name: advice.read(base, name) for name in names}


def _advice_info(run: files.Run, row: advice.Advice) -> TaskInfo:
    try:
        return row.info(run.task)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "record"
        raise CorruptObject(
            os.path.join(run.base, run.task, advice.ADVICE_FILE),
            f"row {run.config_hash!r} is not a TaskInfo record ({where}: {first['msg']})",
        ) from exc


def _parse_info(path: str, data: bytes) -> TaskInfo:
    try:
        return TaskInfo.from_json(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "record"
        raise CorruptObject(path, f"not a TaskInfo record ({where}: {first['msg']})") from exc
