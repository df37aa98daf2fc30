"""Blocking file-system steps of LocalFileStore, each run whole in one worker-thread hop.

Grouping every sequence of syscalls that belong together (find-and-read, replace-then-fsync,
scan-a-directory) into one function keeps the number of loop↔thread round trips per store call
small, which is most of what a small-file store costs. The threads are aiofiles' own (the
loop's default executor), so aioflows starts no threads of its own.

Atomicity rests on ``os.replace``: data goes to a hidden temporary file in the same directory,
is fsynced, and is renamed over the final name. Readers open a path and keep the inode, so they
read either the whole old version or the whole new one.

Containment rests on :class:`Dir`: every step below ``base_dir`` is taken relative to an open
directory with ``O_NOFOLLOW``, so no symlink inside the store (placed there, or swapped in while
a call runs) takes a save, a load or a deletion outside ``base_dir``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, NoReturn, TypeVar

import aiofiles.os
import anyio

from ..errors import InvalidArgument

__all__ = [
    "Dir",
    "Run",
    "commit",
    "create_temp",
    "fsync",
    "is_temp",
    "make_dirs",
    "newest_existing",
    "off_loop",
    "open_base",
    "open_newest",
    "open_run",
    "read_infos",
    "read_newest",
    "remove_files",
    "remove_run",
    "remove_stale",
    "remove_temp",
    "scan_run",
    "temp_name",
    "write_atomic",
]

T = TypeVar("T")

_TEMP_SUFFIX = ".tmp"
_DELETING_SUFFIX = ".deleting"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
# Whether directories can be held open and entries reached relative to them without following
# a link (POSIX): then no link swapped in between a check and a use can be followed.
_AT = bool(
    _O_NOFOLLOW
    and _O_DIRECTORY
    and {os.open, os.stat, os.mkdir, os.rename, os.unlink, os.utime} <= os.supports_dir_fd
    and os.scandir in os.supports_fd
)
_LOOKUPS = 4  # how many times a name found nowhere is looked up (see _open_newest)


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


class Run(NamedTuple):
    """Where one run's files live: ``<base>/<task>/<config_hash>/`` (parts already checked)."""

    base: str
    task: str
    config_hash: str

    def path(self, filename: str | None = None) -> str:
        """The run directory's path, or that of one of its files (for messages)."""
        directory = os.path.join(self.base, self.task, self.config_hash)
        return directory if filename is None else os.path.join(directory, filename)


class _TempNames:
    """Random per process, counted within it: a fresh name costs no ``getrandom`` syscall
    (a save makes one in its worker thread, where every syscall also means taking the GIL
    back). A fork draws a new prefix, so parent and child never count through the same names;
    ``O_EXCL`` refuses a clash with anything else."""

    prefix = secrets.token_hex(8)
    count = itertools.count()  # next() on it is atomic under the GIL

    @classmethod
    def reseed(cls) -> None:
        cls.prefix = secrets.token_hex(8)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_TempNames.reseed)


def temp_name() -> str:
    """A fresh temporary file name: hidden (saved names never start with '.') and ending in
    .tmp, so it is never mistaken for a saved object."""
    return f".{_TempNames.prefix}{next(_TempNames.count):x}{_TEMP_SUFFIX}"


def is_temp(filename: str) -> bool:
    return filename.startswith(".") and filename.endswith((_TEMP_SUFFIX, _DELETING_SUFFIX))


def fsync(fd: int) -> None:
    os.fsync(fd)


def _fsync_dir(path: str) -> None:
    # Makes a rename or a new entry durable. Not every platform can open a directory
    # (Windows cannot); there the rename is as durable as the OS makes it.
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_dirs(directory: str) -> None:
    """Create a directory and its missing parents, each new entry durable in its parent."""
    missing = []
    parent = directory
    while not os.path.isdir(parent) and parent != os.path.dirname(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(directory, exist_ok=True)
    for created in missing:
        _fsync_dir(os.path.dirname(created))


def _refuse_link(path: str) -> NoReturn:
    raise InvalidArgument(
        f"{path!r} is a symbolic link: LocalFileStore follows no link below base_dir, "
        f"since one could lead outside it"
    )


class Dir:
    """A directory of the store, reached from ``base_dir`` without following a symlink.

    Where the platform allows (POSIX), it is an open descriptor and every step below it is
    taken relative to that descriptor with ``O_NOFOLLOW``, so a link swapped in at any moment
    is refused, never followed. Elsewhere (Windows) each step checks with ``lstat`` first.
    Only ``base_dir`` itself may be a link: it is the user's choice of where the store lives.
    """

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int = -1) -> None:
        self.path = path
        self.fd = fd

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _at(self, name: str) -> tuple[str, int | None]:
        """``name`` as the os functions take it: relative to our descriptor, or a path."""
        return (name, self.fd) if self.fd >= 0 else (os.path.join(self.path, name), None)

    def lstat(self, name: str) -> os.stat_result:
        where, dir_fd = self._at(name)
        return os.stat(where, dir_fd=dir_fd, follow_symlinks=False)

    def is_link(self, name: str) -> bool:
        try:
            return stat.S_ISLNK(self.lstat(name).st_mode)
        except OSError:
            return False

    def open(self, name: str, flags: int, mode: int = 0o666) -> int:
        """A descriptor of the file ``name`` in this directory; a link is refused."""
        where, dir_fd = self._at(name)
        if dir_fd is None and self.is_link(name):
            _refuse_link(where)
        try:
            return os.open(where, flags | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and self.is_link(name)):
                _refuse_link(os.path.join(self.path, name))  # (EMLINK: FreeBSD's ELOOP)
            raise

    def sub(self, name: str, *, create: bool = False) -> Dir | None:
        """The subdirectory ``name`` (created if ``create``), or None if absent.

        A link is refused; a file where a directory should be reads as absent, and raises
        ``NotADirectoryError`` when ``create``.
        """
        try:
            return self._sub(name)
        except FileNotFoundError:
            if not create:
                return None
        except NotADirectoryError:
            if not create:
                return None
            raise
        where, dir_fd = self._at(name)
        try:
            os.mkdir(where, dir_fd=dir_fd)
        except FileExistsError:
            pass  # another writer made it meanwhile
        else:
            self.fsync()  # the new entry durable in its parent
        return self._sub(name)

    def _sub(self, name: str) -> Dir:
        path = os.path.join(self.path, name)
        try:
            if self.fd >= 0:
                flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
                return Dir(path, os.open(name, flags, dir_fd=self.fd))
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            return Dir(path)
        except NotADirectoryError:  # what O_DIRECTORY | O_NOFOLLOW gives for a link as well
            if self.is_link(name):
                _refuse_link(path)
            raise

    def entries(self) -> list[os.DirEntry[str]]:
        with os.scandir(self.fd if self.fd >= 0 else self.path) as entries:
            return list(entries)

    def replace(self, source: str, target: str) -> None:
        if self.fd >= 0:
            os.replace(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        else:
            os.replace(os.path.join(self.path, source), os.path.join(self.path, target))

    def unlink(self, name: str) -> None:
        where, dir_fd = self._at(name)
        os.unlink(where, dir_fd=dir_fd)

    def set_mtime(self, name: str, mtime: int) -> None:
        where, dir_fd = self._at(name)
        follow = dir_fd is None  # utimensat(AT_SYMLINK_NOFOLLOW) goes with dir_fd on POSIX
        os.utime(where, ns=(mtime, mtime), dir_fd=dir_fd, follow_symlinks=follow)

    def rmtree(self, name: str) -> None:
        """Remove the subdirectory ``name`` and all in it; a link is removed, not followed."""
        if self.is_link(name):
            with contextlib.suppress(FileNotFoundError):
                self.unlink(name)
            return
        # shutil.rmtree never follows links inside what it removes.
        if self.fd >= 0 and sys.version_info >= (3, 11):
            shutil.rmtree(name, ignore_errors=True, dir_fd=self.fd)
        else:
            shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)

    def fsync(self) -> None:
        if self.fd < 0:
            _fsync_dir(self.path)
            return
        with contextlib.suppress(OSError):
            os.fsync(self.fd)


def open_base(base: str, *, create: bool = False) -> Dir | None:
    """``base_dir`` itself (a link there is followed), or None if it does not exist."""
    if not _AT:
        if create:
            make_dirs(base)
        return Dir(base) if os.path.isdir(base) else None
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC
    try:
        return Dir(base, os.open(base, flags))
    except (FileNotFoundError, NotADirectoryError):
        if not create:
            return None
    make_dirs(base)
    return Dir(base, os.open(base, flags))


def open_run(run: Run, *, create: bool = False) -> Dir | None:
    """The run's directory (created if ``create``), or None if it does not exist."""
    top = open_base(run.base, create=create)
    if top is None:
        return None
    with top:
        task_dir = top.sub(run.task, create=create)
    if task_dir is None:
        return None
    with task_dir:
        return task_dir.sub(run.config_hash, create=create)


def _run_for_write(run: Run) -> Dir:
    """The run's directory, created if missing.

    Where directories can be held open (POSIX), the task directory is opened by its whole
    path with ``O_NOFOLLOW``: that follows links only in ``base_dir``'s own path, as opening
    ``base_dir`` does, and refuses one at the task directory, so it reaches the same
    directory as :func:`open_run` with one ``open`` and one ``close`` fewer (a save's worker
    thread takes the GIL back after each). Anything unusual (a missing directory, a link, a
    file in the way) goes the general way, which creates what is missing and says what is
    wrong.
    """
    if _AT:
        flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
        try:
            fd = os.open(os.path.join(run.base, run.task), flags)
        except OSError:
            pass
        else:
            with Dir(os.path.join(run.base, run.task), fd) as task_dir:
                found = task_dir.sub(run.config_hash, create=True)
            assert found is not None  # created
            return found
    directory = open_run(run, create=True)
    assert directory is not None  # created
    return directory


def write_atomic(run: Run, filename: str, data: bytes, siblings: Sequence[str] = ()) -> None:
    """Write ``data`` as the run's ``filename`` atomically: temporary file, fsync, rename,
    directory fsync.

    The whole protocol is one worker-thread hop: round trips between the loop and the
    threads, not the syscalls, are most of what a small save costs.
    """
    with _run_for_write(run) as directory:
        temp = temp_name()
        fd = directory.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY)
        try:
            try:
                view = memoryview(data)
                while view:  # a write may be partial
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                # Its time, for the siblings' check, from the descriptor: no lookup by name.
                mtime = os.fstat(fd).st_mtime_ns if siblings else 0
            finally:
                os.close(fd)
            _commit(directory, temp, filename, siblings, mtime)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                directory.unlink(temp)
            raise


def create_temp(run: Run) -> tuple[int, str]:
    """A new temporary file in the run's directory: (its open descriptor, its name)."""
    with _run_for_write(run) as directory:
        temp = temp_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY
        return directory.open(temp, flags), temp


def remove_temp(run: Run, temp: str) -> None:
    directory = open_run(run)
    if directory is not None:
        with directory, contextlib.suppress(FileNotFoundError):
            directory.unlink(temp)


def _mtime(directory: Dir, filename: str) -> int:
    try:
        return directory.lstat(filename).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return -1


def commit(run: Run, temp: str, filename: str, siblings: Sequence[str]) -> None:
    """Publish the run's temporary file ``temp`` as ``filename`` (see :func:`_commit`)."""
    directory = open_run(run)
    if directory is None:
        raise FileNotFoundError(errno.ENOENT, "the run directory was removed", run.path())
    with directory:
        _commit(directory, temp, filename, siblings)


def _commit(
    directory: Dir, temp: str, filename: str, siblings: Sequence[str], mtime: int = -1
) -> None:
    """Publish ``temp`` as ``filename``; drop older files of the same name saved as another type.

    ``siblings`` are the file names the same name has under other extensions. The newest file
    of a name is the current one (here and in :func:`read_newest`), so the new file is first
    made strictly newer than any sibling (file times are coarse: two quick saves can share
    one), and only siblings older than it are removed. Two writers saving one name as two
    types therefore never delete each other's file: one is strictly newer and wins.
    ``mtime`` is ``temp``'s, if the caller has it already (-1: read it here).
    """
    if not siblings:
        mtime = 0
    elif mtime < 0:
        mtime = directory.lstat(temp).st_mtime_ns
    if siblings:
        newest = max(_mtime(directory, s) for s in siblings)
        if newest >= mtime:
            mtime = newest + 1
            directory.set_mtime(temp, mtime)
    directory.replace(temp, filename)  # a link at `filename` is replaced, not followed
    for sibling in siblings:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if 0 <= _mtime(directory, sibling) < mtime:
                directory.unlink(sibling)
    directory.fsync()


def _open_newest_once(directory: Dir, filenames: Sequence[str]) -> tuple[int, int] | None:
    """Open the most recently written of the files that exist: (its index, a descriptor).

    An open descriptor pins the inode, so a concurrent replace cannot tear a read of it.
    """
    best_fd, best_index, best_mtime = -1, -1, -1
    try:
        for index, filename in enumerate(filenames):
            try:
                fd = directory.open(filename, os.O_RDONLY | _O_BINARY)
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
        found, best_fd = (best_index, best_fd), -1  # now the caller's
        return found
    finally:
        if best_fd >= 0:
            os.close(best_fd)


def _open_newest(directory: Dir, filenames: Sequence[str]) -> tuple[int, int] | None:
    """:func:`_open_newest_once`, looked again when it found nothing.

    A writer changing the type of a name publishes the new file and then removes the old one,
    so one of them always exists; but a reader trying the names one by one can try the new
    one just before it appears and the old one just after it went. Such a miss needs a save in
    the microseconds between two of our opens, and the next one needs a whole further save
    (write and fsync), so looking again (a few times, for several writers) finds the object.
    A name that is really absent costs those few failed opens, in the same thread hop.
    """
    for _ in range(_LOOKUPS):
        found = _open_newest_once(directory, filenames)
        if found is not None:
            return found
    return None


def _read_fd(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as file:
        return file.read()


def read_newest(run: Run, filenames: Sequence[str]) -> tuple[int, bytes] | None:
    """Read the run's most recently written existing file: (its index, its bytes)."""
    directory = open_run(run)
    if directory is None:
        return None
    with directory:
        found = _open_newest(directory, filenames)
    if found is None:
        return None
    return found[0], _read_fd(found[1])


def open_newest(run: Run, filenames: Sequence[str]) -> tuple[int, int] | None:
    """Open the run's most recently written existing file: (its index, a descriptor)."""
    directory = open_run(run)
    if directory is None:
        return None
    with directory:
        return _open_newest(directory, filenames)


def newest_existing(run: Run, filenames: Sequence[str]) -> int | None:
    """The index of the most recently written of the run's files that exist, if any."""
    directory = open_run(run)
    if directory is None:
        return None
    with directory:
        for _ in range(_LOOKUPS):  # looked again: see _open_newest
            best: tuple[int, int] | None = None
            for index, filename in enumerate(filenames):
                try:
                    info = directory.lstat(filename)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if stat.S_ISLNK(info.st_mode):
                    _refuse_link(os.path.join(directory.path, filename))
                if best is None or info.st_mtime_ns > best[0]:
                    best = (info.st_mtime_ns, index)
            if best is not None:
                return best[1]
    return None


def remove_files(run: Run, filenames: Iterable[str]) -> None:
    directory = open_run(run)
    if directory is None:
        return
    with directory:
        removed = False
        for filename in filenames:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                directory.unlink(filename)  # a link is removed itself, as rm would
                removed = True
        if removed:
            directory.fsync()


def remove_run(run: Run) -> None:
    """Remove a run directory so that readers see it all or not at all.

    It is first renamed to a hidden name (atomic), then deleted at leisure; a crash in between
    leaves a hidden ``.deleting`` directory that :func:`remove_stale` removes later. A run
    directory that is a link is refused: what it leads to is not the store's to delete.
    """
    top = open_base(run.base)
    if top is None:
        return
    with top:
        task_dir = top.sub(run.task)
    if task_dir is None:
        return
    with task_dir:
        if task_dir.is_link(run.config_hash):
            _refuse_link(run.path())
        doomed = f".{run.config_hash}.{secrets.token_hex(4)}{_DELETING_SUFFIX}"
        try:
            task_dir.replace(run.config_hash, doomed)
        except FileNotFoundError:
            return
        task_dir.fsync()
        task_dir.rmtree(doomed)  # a link swapped in meanwhile is removed, not followed


def _remove_if_stale(directory: Dir, entry: os.DirEntry[str], cutoff: float) -> int:
    try:
        if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
            return 0
        if entry.is_dir(follow_symlinks=False):
            directory.rmtree(entry.name)
        else:
            directory.unlink(entry.name)
    except FileNotFoundError:
        return 0
    return 1


def scan_run(
    run: Run,
    split: Callable[[str], tuple[str, Any] | None],
    skip: str,
    stale_after: float,
    candidates: Callable[[str], Sequence[tuple[Any, str]]],
) -> list[tuple[str, Any, str, bytes]]:
    """Read every saved object of a run: (name, type, file name, bytes), newest file per name.

    Files no registered type claims are left alone (they may belong to a type registered only
    in another process); temporary files older than ``stale_after`` are removed on the way. A
    file that went between the listing and its opening (saved meanwhile as another type) is
    looked up again among ``candidates(name)``, the (type, file name) pairs the name can have.
    """
    directory = open_run(run)
    if directory is None:
        return []
    with directory:
        return _scan(directory, split, skip, time.time() - stale_after, candidates)


def _scan(
    directory: Dir,
    split: Callable[[str], tuple[str, Any] | None],
    skip: str,
    cutoff: float,
    candidates: Callable[[str], Sequence[tuple[Any, str]]],
) -> list[tuple[str, Any, str, bytes]]:
    newest: dict[str, tuple[int, Any, str]] = {}
    for entry in directory.entries():
        if is_temp(entry.name):
            _remove_if_stale(directory, entry, cutoff)
            continue
        parsed = split(entry.name)
        if parsed is None or parsed[0] == skip:
            continue
        if entry.is_symlink():
            _refuse_link(os.path.join(directory.path, entry.name))
        if not entry.is_file(follow_symlinks=False):
            continue
        name, stype = parsed
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime_ns
        except FileNotFoundError:
            mtime = -1  # gone already: looked up again below
        if name not in newest or mtime > newest[name][0]:
            newest[name] = (mtime, stype, entry.name)
    found = []
    for name, (_, stype, filename) in sorted(newest.items()):
        try:
            data = _read_fd(directory.open(filename, os.O_RDONLY | _O_BINARY))
        except FileNotFoundError:  # replaced by another type's file since the listing
            pairs = candidates(name)
            again = _open_newest(directory, [f for _, f in pairs])
            if again is None:
                continue  # deleted meanwhile
            stype, filename = pairs[again[0]]
            data = _read_fd(again[1])
        found.append((name, stype, filename, data))
    return found


def store_dirs(directory: Dir) -> list[str]:
    """Names of the subdirectories that belong to the store: not hidden, and not links."""
    try:
        entries = directory.entries()
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
    ]


def read_infos(base: str, task: str | None, filename: str) -> list[tuple[str, int, bytes]]:
    """Read every run record under ``base`` (or under one task): (path, mtime in ns, bytes).

    Links found on the way are not the store's and are passed over; a ``task`` that is a
    link is refused, as every call naming a key refuses it.
    """
    top = open_base(base)
    if top is None:
        return []
    found = []
    with top:
        for task_name in [task] if task is not None else store_dirs(top):
            # A task named by the caller that is a link is refused; one listed is passed over.
            task_dir = top.sub(task_name) if task is not None else _sub_or_none(top, task_name)
            if task_dir is None:
                continue
            with task_dir:
                for run_name in store_dirs(task_dir):
                    run_dir = _sub_or_none(task_dir, run_name)
                    if run_dir is None:
                        continue
                    with run_dir:
                        try:
                            fd = run_dir.open(filename, os.O_RDONLY | _O_BINARY)
                        except (FileNotFoundError, NotADirectoryError, InvalidArgument):
                            continue
                    mtime = os.fstat(fd).st_mtime_ns
                    found.append((os.path.join(run_dir.path, filename), mtime, _read_fd(fd)))
    return found


def remove_stale(base: str, stale_after: float) -> int:
    """Remove leftovers of crashed writers and deletions anywhere in the store."""
    cutoff = time.time() - stale_after
    top = open_base(base)
    if top is None:
        return 0
    removed = 0
    with top:
        for task_name in store_dirs(top):
            task_dir = _sub_or_none(top, task_name)
            if task_dir is None:
                continue
            with task_dir:
                # Task directories hold interrupted deletions; run directories interrupted writes.
                removed += _remove_stale_in(task_dir, cutoff)
                for run_name in store_dirs(task_dir):
                    run_dir = _sub_or_none(task_dir, run_name)
                    if run_dir is not None:
                        with run_dir:
                            removed += _remove_stale_in(run_dir, cutoff)
    return removed


def _sub_or_none(directory: Dir, name: str) -> Dir | None:
    try:
        return directory.sub(name)
    except InvalidArgument:  # became a link since it was listed: not the store's
        return None


def _remove_stale_in(directory: Dir, cutoff: float) -> int:
    try:
        stale = [e for e in directory.entries() if is_temp(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return sum(_remove_if_stale(directory, e, cutoff) for e in stale)
