"""MemoryStore: results in a dict, for tests, notebooks and runs that need no persistence."""

from __future__ import annotations

from typing import Any

from .base import MISSING, ResultStore
from .records import TaskInfo
from .types import StoreType

__all__ = ["MemoryStore"]

_Run = tuple[str, str]  # (task, config_hash)


class MemoryStore(ResultStore):
    """Keeps every object as the object itself, in this process only.

    ``type_`` is checked against the registered types, as in every store, but nothing is
    serialised: ``load`` returns the very object that was saved, and mutating it afterwards
    changes what is stored. TaskInfo records are copied in and out, since a record is a snapshot.
    Coroutines of one event loop can share it freely; no method awaits while holding state
    half-changed.
    """

    def __init__(self) -> None:
        self._objects: dict[_Run, dict[str, Any]] = {}
        self._infos: dict[_Run, TaskInfo] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(runs={len(self._objects.keys() | self._infos.keys())})"

    async def _save(
        self, obj: Any, name: str, task: str, config_hash: str, type_: StoreType
    ) -> None:
        self._objects.setdefault((task, config_hash), {})[name] = obj

    async def _load(self, name: str, task: str, config_hash: str) -> Any:
        return self._objects.get((task, config_hash), {}).get(name, MISSING)

    async def _exists(self, name: str, task: str, config_hash: str) -> bool:
        return name in self._objects.get((task, config_hash), {})

    async def _delete(self, name: str, task: str, config_hash: str) -> None:
        run = self._objects.get((task, config_hash))
        if run is not None:
            run.pop(name, None)
            if not run:
                del self._objects[task, config_hash]

    async def _delete_run(self, task: str, config_hash: str) -> None:
        self._objects.pop((task, config_hash), None)
        self._infos.pop((task, config_hash), None)

    async def _get_results(self, task: str, config_hash: str) -> dict[str, Any]:
        return dict(self._objects.get((task, config_hash), {}))

    async def _save_info(self, info: TaskInfo) -> None:
        self._infos[info.task, info.config_hash] = info.model_copy(deep=True)

    async def _load_info(self, task: str, config_hash: str) -> TaskInfo | None:
        info = self._infos.get((task, config_hash))
        return None if info is None else info.model_copy(deep=True)

    async def _list_infos(self, task: str | None) -> list[TaskInfo]:
        return [
            info.model_copy(deep=True)
            for (info_task, _), info in self._infos.items()
            if task is None or info_task == task
        ]
