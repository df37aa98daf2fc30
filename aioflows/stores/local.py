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
every path is exactly three levels below base_dir. Symlinks someone places inside the store
(say, a task directory moved to a bigger disk) are followed like any directory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiofiles
import anyio
import anyio.lowlevel
import pydantic
import pydantic_core

from ..errors import CorruptObject, InvalidArgument, InvalidArgumentType, MissingObject
from . import files
from .base import INFO_NAME, MISSING, ResultStore, check_key
from .records import TaskInfo
from .types import StoreType

__all__ = ["LocalFileStore"]

_INFO_FILE = f"{INFO_NAME}.json"
# aiofiles.open is overloaded on literal modes; ours are chosen at run time.
_aio_open: Callable[..., Any] = aiofiles.open
_MAX_FILENAME = 255  # bytes, on every common file system
_WRITE_MODES = {"w": "text", "wb": "bytes"}
_READ_MODES = frozenset({"r", "rb"})


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
        if not isinstance(stale_after, (int, float)) or not stale_after > 0:
            raise InvalidArgument(f"stale_after must be seconds > 0, got {stale_after!r}")
        self._base = os.path.abspath(os.fspath(base_dir))
        self._stale_after = float(stale_after)

    @property
    def base_dir(self) -> str:
        """The absolute base directory (symlinks are kept, not resolved)."""
        return self._base

    def __repr__(self) -> str:
        return f"LocalFileStore({self._base!r})"

    def path(self, name: str, *, task: str, config_hash: str, type_: str = "json") -> str:
        """Where an object of ``type_`` saved under this key lives (whether or not it exists)."""
        check_key(name, task, config_hash)
        return self._file(self._run_dir(task, config_hash), name, self._types[type_])

    def _run_dir(self, task: str, config_hash: str) -> str:
        for kind, part in (("task", task), ("config_hash", config_hash)):
            if len(os.fsencode(part)) > _MAX_FILENAME:
                raise InvalidArgument(f"{kind} {part[:40]!r}... exceeds {_MAX_FILENAME} bytes")
        return os.path.join(self._base, task, config_hash)

    def _file(self, run_dir: str, name: str, stype: StoreType) -> str:
        filename = f"{name}.{stype.extension}"
        if len(os.fsencode(filename)) > _MAX_FILENAME:
            raise InvalidArgument(
                f"name {name!r} is too long: {filename!r} exceeds {_MAX_FILENAME} bytes"
            )
        return os.path.join(run_dir, filename)

    def _candidates(self, name: str, task: str, config_hash: str) -> list[tuple[StoreType, str]]:
        """Every path the name could have: one per registered type whose filename fits."""
        run_dir = self._run_dir(task, config_hash)
        return [
            (stype, os.path.join(run_dir, filename))
            for stype in self._types
            if len(os.fsencode(filename := f"{name}.{stype.extension}")) <= _MAX_FILENAME
        ]

    async def _write(self, final: str, data: bytes, siblings: Sequence[str] = ()) -> None:
        # A cancelled caller writes nothing; once started, the write runs to its end in
        # aiofiles' worker threads (shielded, as anyio's to_thread is), so no step outlives
        # the call, and a cancellation that arrived meanwhile is raised right after.
        await anyio.lowlevel.checkpoint_if_cancelled()
        await files.off_loop(files.write_atomic, final, data, siblings)
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _open_temp(self, temp: str, mode: str, **kwargs: Any) -> Any:
        """Open a new temporary file, creating its run directory on first use."""
        try:
            return await _aio_open(temp, mode, **kwargs)
        except FileNotFoundError:
            await files.off_loop(files.make_dirs, os.path.dirname(temp))
            return await _aio_open(temp, mode, **kwargs)

    async def _save(
        self, obj: Any, name: str, task: str, config_hash: str, type_: StoreType
    ) -> None:
        final = self._file(self._run_dir(task, config_hash), name, type_)
        data = type_.encode(obj, name)
        siblings = [p for t, p in self._candidates(name, task, config_hash) if t is not type_]
        await self._write(final, data, siblings)

    async def _load(self, name: str, task: str, config_hash: str) -> Any:
        candidates = self._candidates(name, task, config_hash)
        found = await files.off_loop(files.read_newest, [p for _, p in candidates])
        if found is None:
            return MISSING
        index, path, data = found
        return candidates[index][0].decode(data, path)

    async def _exists(self, name: str, task: str, config_hash: str) -> bool:
        paths = [p for _, p in self._candidates(name, task, config_hash)]
        return await files.off_loop(files.newest_existing, paths) is not None

    async def _delete(self, name: str, task: str, config_hash: str) -> None:
        paths = [p for _, p in self._candidates(name, task, config_hash)]
        await files.off_loop(files.remove_files, paths)

    async def _delete_run(self, task: str, config_hash: str) -> None:
        await files.off_loop(files.remove_run, self._run_dir(task, config_hash))

    async def _get_results(self, task: str, config_hash: str) -> dict[str, Any]:
        found = await files.off_loop(
            files.scan_run,
            self._run_dir(task, config_hash),
            self._types.split,
            INFO_NAME,
            self._stale_after,
        )
        return {name: stype.decode(data, path) for name, stype, path, data in found}

    async def _save_info(self, info: TaskInfo) -> None:
        run_dir = self._run_dir(info.task, info.config_hash)
        try:
            data = info.to_json().encode()
        except pydantic_core.PydanticSerializationError as exc:
            raise InvalidArgumentType(
                f"cannot save the TaskInfo of {info.unique_name!r} as JSON: {exc}"
            ) from exc
        await self._write(os.path.join(run_dir, _INFO_FILE), data)

    async def _load_info(self, task: str, config_hash: str) -> TaskInfo | None:
        path = os.path.join(self._run_dir(task, config_hash), _INFO_FILE)
        found = await files.off_loop(files.read_newest, [path])
        return None if found is None else _parse_info(path, found[2])

    async def _list_infos(self, task: str | None) -> list[TaskInfo]:
        found = await files.off_loop(files.read_infos, self._base, task, _INFO_FILE)
        return [_parse_info(path, data) for path, data in found]

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
        candidates = self._candidates(name, task, config_hash)
        if type_ is not None:
            wanted = self._types[type_]
            candidates = [(t, p) for t, p in candidates if t is wanted]
        paths = [p for _, p in candidates]
        # Pick the newest existing file the way load() does, then open it for streaming.
        newest = await files.off_loop(files.newest_existing, paths)
        encoding = None if "b" in mode else "utf-8"
        try:
            if newest is None:
                raise FileNotFoundError(name)
            with anyio.CancelScope(shield=True):
                file = await _aio_open(newest, mode, encoding=encoding)
        except FileNotFoundError:  # absent, or deleted since we looked
            raise MissingObject(name, task=task, config_hash=config_hash) from None
        try:
            yield file
        finally:
            await _close(file)

    @asynccontextmanager
    async def _open_write(
        self, name: str, mode: str, task: str, config_hash: str, stype: StoreType
    ) -> AsyncIterator[Any]:
        final = self._file(self._run_dir(task, config_hash), name, stype)
        siblings = [p for t, p in self._candidates(name, task, config_hash) if t is not stype]
        temp = files.temp_path(os.path.dirname(final))
        encoding = None if "b" in mode else "utf-8"
        with anyio.CancelScope(shield=True):
            file = await self._open_temp(temp, mode.replace("w", "x"), encoding=encoding)
        try:
            try:
                yield file
                with anyio.CancelScope(shield=True):
                    await file.flush()
                    await files.off_loop(files.fsync, file.fileno())
            finally:
                await _close(file)
            await files.off_loop(files.commit, temp, final, siblings)
        except BaseException:
            await files.off_loop(files.remove_files, [temp])
            raise


async def _close(file: Any) -> None:
    with anyio.CancelScope(shield=True):
        await file.close()


def _parse_info(path: str, data: bytes) -> TaskInfo:
    try:
        return TaskInfo.from_json(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "record"
        raise CorruptObject(path, f"not a TaskInfo record ({where}: {first['msg']})") from exc
