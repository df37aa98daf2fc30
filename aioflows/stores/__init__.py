"""Result stores: where task results and TaskInfo records are kept between runs."""

from .base import Promise as Promise
from .base import ResultStore as ResultStore
from .local import LocalFileStore as LocalFileStore
from .memory import MemoryStore as MemoryStore
from .records import TaskInfo as TaskInfo
from .records import TaskState as TaskState
from .redis import RedisStore as RedisStore

__all__ = [
    "LocalFileStore",
    "MemoryStore",
    "Promise",
    "RedisStore",
    "ResultStore",
    "TaskInfo",
    "TaskState",
]
