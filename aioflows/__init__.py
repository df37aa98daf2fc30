"""aioflows: run many async things well.

Rate-limited concurrent calls, task graphs, streaming pipelines, resumable batch jobs and a
submit-and-poll server, async-native on anyio. ``import aioflows as af``.
"""

from __future__ import annotations

import contextlib

from ._version import __version__
from .concurrency import imap as imap
from .concurrency import map as map
from .errors import AioflowsError as AioflowsError
from .errors import RateLimited as RateLimited
from .limits import KeyedRateLimiter as KeyedRateLimiter
from .limits import Rate as Rate
from .limits import RateLimiter as RateLimiter
from .retry import Retry as Retry
from .stores import LocalFileStore as LocalFileStore
from .stores import MemoryStore as MemoryStore
from .stores import Promise as Promise
from .stores import ResultStore as ResultStore
from .stores import TaskInfo as TaskInfo
from .stores import TaskState as TaskState

__all__ = [
    "AioflowsError",
    "KeyedRateLimiter",
    "LocalFileStore",
    "MemoryStore",
    "Promise",
    "Rate",
    "RateLimited",
    "RateLimiter",
    "ResultStore",
    "Retry",
    "TaskInfo",
    "TaskState",
    "__version__",
    "imap",
    "map",
]

# Public objects say where users import them from, in reprs and tracebacks.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        with contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = __name__
del _name, _obj, contextlib
