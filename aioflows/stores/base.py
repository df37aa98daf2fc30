"""The ResultStore interface, key validation, and lazy ``Promise`` handles.

Every store keys objects by (task, config_hash, name). The public methods here check those
parts and the type *before* any storage is touched, then call the abstract ``_``-hooks a concrete
store implements. So a custom store (Redis, S3, a database) gets the same validation, error
messages and lazy loading for free, and a bad name can never reach a file path or a query.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from ..errors import InvalidArgument, InvalidArgumentType, MissingObject
from .records import RawInfos, TaskInfo
from .types import StoreType, TypeRegistry

__all__ = ["INFO_NAME", "MISSING", "Promise", "ResultStore", "check_key", "check_part"]

#: The name under which a run's TaskInfo record is kept; not available for objects.
INFO_NAME: Final = "_taskinfo"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Returned by ``_load`` when nothing is stored under the key.
MISSING: Final = _Missing()


def check_part(kind: str, value: object) -> str:
    """Reject anything that could leave the store's namespace once used as a path component.

    Separators of any platform, NUL, a leading ``.`` (which also rules out ``.`` and ``..``, and
    keeps hidden names free for a store's own bookkeeping) and drive or absolute forms are all
    refused, whatever the store: a flow that runs on a MemoryStore must run on a file store too.
    """
    if not isinstance(value, str):
        raise InvalidArgumentType(f"{kind} must be a str, got {type(value).__name__}")
    bad = (
        not value
        or value[0] == "."
        or "/" in value
        or "\\" in value
        or "\0" in value
        or (value[1:2] == ":" and value[0].isascii() and value[0].isalpha())  # a drive: C:x
    )
    if bad:
        raise InvalidArgument(
            f"{kind} {value!r} is not usable: it must be non-empty and contain no '/', '\\', "
            f"NUL or drive, and not start with '.'"
        )
    return value


def check_key(name: str, task: str, config_hash: str) -> None:
    check_part("task", task)
    check_part("config_hash", config_hash)
    check_part("name", name)
    if name == INFO_NAME:
        raise InvalidArgument(f"name {INFO_NAME!r} is reserved for the task's TaskInfo record")


class Promise:
    """A stored object not read yet: ``await promise.load()`` reads it when needed.

    A reduce task over a large sweep can take promises of every result and load only the ones
    it picks. The promise reads at ``load`` time, so it sees the latest saved version. Made by
    ``store.load(..., lazy=True)``.

    Args:
        store: The store it reads from.
        name: The object's name within the run.
        task: The run's task name.
        config_hash: The run's config hash.
    """

    __slots__ = ("_store", "config_hash", "name", "task")

    def __init__(self, store: ResultStore, name: str, *, task: str, config_hash: str) -> None:
        self._store = store
        self.name = name
        self.task = task
        self.config_hash = config_hash

    async def load(self) -> Any:
        """Read and return the object (``MissingObject`` if it was deleted since)."""
        return await self._store.load(self.name, task=self.task, config_hash=self.config_hash)

    def __repr__(self) -> str:
        return f"Promise(name={self.name!r}, task={self.task!r}, config_hash={self.config_hash!r})"


class ResultStore(abc.ABC):
    """Where task results and TaskInfo records live, keyed by (task, config_hash, name).

    Subclasses implement the ``_``-prefixed hooks; keys and types reaching them are already
    validated. Every method is a coroutine so a store may do I/O, but none may block the loop.
    """

    _type_registry: TypeRegistry | None = None

    @property
    def _types(self) -> TypeRegistry:
        # Created on first use, so subclasses need not remember to call super().__init__().
        if self._type_registry is None:
            self._type_registry = TypeRegistry()
        return self._type_registry

    def register_type(
        self,
        name: str,
        *,
        save: Callable[[Any], str | bytes],
        load: Callable[[Any], Any],
        extension: str | None = None,
        binary: bool = False,
    ) -> None:
        """Teach this store a new ``type_`` (or replace one).

        ``save(obj)`` returns ``str`` or ``bytes``; ``load`` receives ``bytes`` if ``binary``
        else ``str``. ``extension`` (default: ``name``) names files of this type and must not
        be confusable with another type's.

        Usage::

            store.register_type("npy", save=to_npy_bytes, load=from_npy_bytes, binary=True)
            await store.save(array, "weights", task=..., config_hash=..., type_="npy")

        Args:
            name: The type's name, as ``type_=`` gives it.
            save: Encodes an object as ``str`` or ``bytes``.
            load: Decodes what ``save`` made (``bytes`` if ``binary`` else ``str``).
            extension: The file extension of this type (default: ``name``).
            binary: Whether ``load`` receives ``bytes`` rather than ``str``.

        Raises:
            ValueError: The name or extension is not usable or is confusable with another's.
        """
        self._types.register(name, save=save, load=load, extension=extension, binary=binary)

    async def save(
        self, obj: Any, name: str, *, task: str, config_hash: str, type_: str = "json"
    ) -> None:
        """Store ``obj`` under the key, replacing what was there (last writer wins).

        A reader sees the whole old value or the whole new one, never a part.

        Args:
            obj: The object to store.
            name: The object's name within the run.
            task: The run's task name.
            config_hash: The run's config hash.
            type_: How it is encoded: ``"json"``, ``"text"``, ``"bytes"``, ``"pickle"`` or a
                name given to :meth:`register_type`.

        Raises:
            ValueError: A key part is not usable (empty, a separator, a leading ``.``...) or
                ``type_`` is unknown.
        """
        check_key(name, task, config_hash)
        await self._save(obj, name, task, config_hash, self._types[type_])

    async def load(self, name: str, *, task: str, config_hash: str, lazy: bool = False) -> Any:
        """Return the stored object, or a :class:`Promise` of it when ``lazy``.

        Raises ``MissingObject`` (a ``KeyError``) naming the key if nothing is stored, also
        when ``lazy`` so a missing result is reported where it is asked for.

        Args:
            name: The object's name within the run.
            task: The run's task name.
            config_hash: The run's config hash.
            lazy: Return a :class:`Promise` that reads the object when awaited.

        Raises:
            MissingObject: Nothing is stored under the key.
            CorruptObject: What is stored cannot be decoded.
        """
        check_key(name, task, config_hash)
        if lazy:
            if not await self._exists(name, task, config_hash):
                raise MissingObject(name, task=task, config_hash=config_hash)
            return Promise(self, name, task=task, config_hash=config_hash)
        obj = await self._load(name, task, config_hash)
        if obj is MISSING:
            raise MissingObject(name, task=task, config_hash=config_hash)
        return obj

    async def exists(self, name: str, *, task: str, config_hash: str) -> bool:
        """Whether an object is stored under the key.

        Args:
            name: The object's name within the run.
            task: The run's task name.
            config_hash: The run's config hash.
        """
        check_key(name, task, config_hash)
        return await self._exists(name, task, config_hash)

    async def delete(self, name: str, *, task: str, config_hash: str) -> None:
        """Remove the object if present; deleting what is absent is not an error.

        Args:
            name: The object's name within the run.
            task: The run's task name.
            config_hash: The run's config hash.
        """
        check_key(name, task, config_hash)
        await self._delete(name, task, config_hash)

    async def delete_run(self, *, task: str, config_hash: str) -> None:
        """Remove every object and the TaskInfo record of one run, if present.

        Args:
            task: The run's task name.
            config_hash: The run's config hash.
        """
        check_part("task", task)
        check_part("config_hash", config_hash)
        await self._delete_run(task, config_hash)

    async def get_results(self, *, task: str, config_hash: str) -> dict[str, Any]:
        """Every object of one run, by name (empty if the run saved nothing).

        Args:
            task: The run's task name.
            config_hash: The run's config hash.
        """
        check_part("task", task)
        check_part("config_hash", config_hash)
        return await self._get_results(task, config_hash)

    async def save_info(self, info: TaskInfo) -> None:
        """Store the run's record, replacing the previous one.

        Args:
            info: The record; its ``task`` and ``config_hash`` say which run's it is.

        Raises:
            TypeError: ``info`` is not a :class:`TaskInfo`.
        """
        if not isinstance(info, TaskInfo):
            raise InvalidArgumentType(f"info must be a TaskInfo, got {type(info).__name__}")
        check_part("task", info.task)
        check_part("config_hash", info.config_hash)
        await self._save_info(info)

    async def _save_advice(self, batch: RawInfos) -> None:
        """Store records that are advice, not promises: the KILLED states of a stopped flow.

        Losing one in a crash only means its instance runs again, which a KILLED one would
        anyway, so a store may write them all in one batch and without fsync (a FINISHED
        record, a promise, always goes through :meth:`save_info`). They come unvalidated and
        in columns (:class:`RawInfos`, one task's), since building ten thousand records costs
        more than stopping the tasks did. This default validates and saves them one by one,
        so every store, custom ones included, keeps working; the flow executor calls it once
        per task, after the cancellation, never once per instance.
        """
        for info in batch.infos():
            await self.save_info(info)

    async def load_info(self, *, task: str, config_hash: str) -> TaskInfo | None:
        """The run's record, or None if it has none.

        Args:
            task: The run's task name.
            config_hash: The run's config hash.
        """
        check_part("task", task)
        check_part("config_hash", config_hash)
        return await self._load_info(task, config_hash)

    async def list_infos(self, task: str | None = None) -> list[TaskInfo]:
        """Every record (of one task, if given), ordered by task then config_hash.

        Args:
            task: Only this task's records; None: every task's.
        """
        if task is not None:
            check_part("task", task)
        infos = await self._list_infos(task)
        return sorted(infos, key=lambda i: (i.task, i.config_hash))

    def open(
        self,
        name: str,
        mode: str = "r",
        *,
        task: str,
        config_hash: str,
        type_: str | None = None,
    ) -> AbstractAsyncContextManager[Any]:
        """An async file over one stored object; only stores backed by files have one.

        Usage::

            async with store.open("log", "w", task=..., config_hash=...) as f:
                await f.write("epoch 1\\n")

        Args:
            name: The object's name within the run.
            task: The run's task name.
            config_hash: The run's config hash.
            mode: ``"r"``/``"rb"`` to read, ``"w"``/``"wb"`` to write a new version.
            type_: The type whose extension the file has (default: the newest file under
                the name to read; ``"text"`` or ``"bytes"`` to write).

        Raises:
            NotImplementedError: The store holds no files (every store but LocalFileStore).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not hold files; open() needs a LocalFileStore"
        )

    # The hooks a concrete store implements. Arguments are validated; `type_` is resolved.

    @abc.abstractmethod
    async def _save(
        self, obj: Any, name: str, task: str, config_hash: str, type_: StoreType
    ) -> None: ...

    @abc.abstractmethod
    async def _load(self, name: str, task: str, config_hash: str) -> Any:
        """The object, or ``MISSING``."""

    @abc.abstractmethod
    async def _exists(self, name: str, task: str, config_hash: str) -> bool: ...

    @abc.abstractmethod
    async def _delete(self, name: str, task: str, config_hash: str) -> None: ...

    @abc.abstractmethod
    async def _delete_run(self, task: str, config_hash: str) -> None: ...

    @abc.abstractmethod
    async def _get_results(self, task: str, config_hash: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _save_info(self, info: TaskInfo) -> None: ...

    @abc.abstractmethod
    async def _load_info(self, task: str, config_hash: str) -> TaskInfo | None: ...

    @abc.abstractmethod
    async def _list_infos(self, task: str | None) -> list[TaskInfo]: ...
