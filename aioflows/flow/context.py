"""TaskContext: what a running task instance can reach besides its inputs."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from ..errors import FlowError

if TYPE_CHECKING:
    from ..stores.base import ResultStore
    from .graph import TaskNode

__all__ = ["TaskContext"]


class TaskContext:
    """Passed to a task function's ``ctx`` parameter (or the one annotated ``TaskContext``).

    ``save``/``load``/``open`` go to the run's store under this instance's (task, config_hash),
    so whatever a task saves is kept, cached and resumed together with its result. Without a
    store, a private in-memory store serves for the run. ``logger`` is a logger of the task's
    (``aioflows.flow.<task>``) that adds the instance's unique name to every record.
    Made by the run, not by hand.

    Args:
        node: The running instance.
        store: The run's store, also ``ctx.store``.
        resource: The object this instance holds from ``flow.run(resources=...)``, also
            ``ctx.resource`` (None without resources).
    """

    __slots__ = ("_node", "logger", "resource", "store")

    def __init__(self, node: TaskNode, store: ResultStore, resource: Any) -> None:
        self._node = node
        self.store = store
        self.resource = resource
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"aioflows.flow.{node.task}"), {"unique_name": node.unique_name}
        )

    @property
    def unique_name(self) -> str:
        """The instance's unique name (``"train-3"``)."""
        return self._node.unique_name

    @property
    def task(self) -> str:
        """The instance's task name."""
        return self._node.task

    @property
    def config(self) -> dict[str, Any]:
        """The config the function received."""
        return self._node.config

    @property
    def unique_config(self) -> dict[str, Any]:
        """The config that identifies the instance (ignored keys out, predecessors' in)."""
        return self._node.unique_config

    @property
    def config_hash(self) -> str:
        """The digest of ``unique_config``: the instance's key in the store."""
        return self._node.config_hash

    async def save(self, obj: Any, name: str, type_: str = "json") -> None:
        """Save ``obj`` with this instance's results, kept and cached with them.

        Args:
            obj: The object to save.
            name: Its name among this instance's objects.
            type_: How it is encoded: ``"json"``, ``"pickle"``, ``"text"``, ``"bytes"`` or a
                type registered with the store's ``register_type``.
        """
        await self.store.save(
            obj, name, task=self._node.task, config_hash=self._node.config_hash, type_=type_
        )

    async def load(self, name: str, task: str | None = None) -> Any:
        """Load what this instance, or the ancestor instance of ``task``, saved as ``name``.

        Args:
            name: The object's name.
            task: An ancestor task whose instance (the nearest one) saved it; None: this
                instance.

        Raises:
            FlowError: ``task`` is not an ancestor of this instance.
            MissingObject: Nothing is saved under that name.
        """
        node = self._node if task is None or task == self._node.task else self._ancestor(task)
        return await self.store.load(name, task=node.task, config_hash=node.config_hash)

    def open(self, name: str, mode: str = "r", *, type_: str | None = None) -> Any:
        """An async file of this instance's (LocalFileStore only); see ``LocalFileStore.open``.

        Args:
            name: The file's object name.
            mode: ``"r"``/``"rb"`` to read, ``"w"``/``"wb"`` to write a new version.
            type_: The type whose extension the file takes (default: from the mode).
        """
        opened: AbstractAsyncContextManager[Any] = self.store.open(
            name, mode, task=self._node.task, config_hash=self._node.config_hash, type_=type_
        )
        return opened

    def _ancestor(self, task: str) -> TaskNode:
        # Breadth-first, so the nearest instance of that task wins.
        frontier = list(self._node.predecessors)
        seen: set[int] = set()
        while frontier:
            node = frontier.pop(0)
            if node.task == task:
                return node
            if id(node) not in seen:
                seen.add(id(node))
                frontier.extend(node.predecessors)
        raise FlowError(f"task {task!r} is not an ancestor of {self._node.unique_name!r}")

    def __repr__(self) -> str:
        return f"TaskContext({self._node.unique_name!r})"
