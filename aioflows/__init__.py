"""aioflows: run many async things well.

Rate-limited concurrent calls (``map``, ``imap``), task graphs over config grids whose results
are kept in a store (``Flow``, ``LocalFileStore``), streaming pipelines (``Pipeline``),
resumable batch jobs over many API keys (``Launcher``), a rate-limited HTTP client
(``HttpClient``) and a submit-and-poll server for models and flows (``Server``), async-native
on anyio. ``import aioflows as af``; the API reference is docs/reference.md.
"""

from __future__ import annotations

import contextlib

from ._version import __version__
from .concurrency import imap as imap
from .concurrency import map as map
from .errors import AioflowsError as AioflowsError
from .errors import AllKeysQuarantined as AllKeysQuarantined
from .errors import CorruptObject as CorruptObject
from .errors import EndpointLoadFailed as EndpointLoadFailed
from .errors import FlowError as FlowError
from .errors import FlowFailed as FlowFailed
from .errors import InvalidArgument as InvalidArgument
from .errors import InvalidArgumentType as InvalidArgumentType
from .errors import MissingObject as MissingObject
from .errors import OutputFileError as OutputFileError
from .errors import RateLimited as RateLimited
from .errors import RedisUnavailable as RedisUnavailable
from .errors import ServingError as ServingError
from .flow.config import expand_config as expand_config
from .flow.context import TaskContext as TaskContext
from .flow.dask import DaskExecutor as DaskExecutor
from .flow.graph import Graph as Graph
from .flow.graph import TaskNode as TaskNode
from .flow.run import FlowRun as FlowRun
from .flow.run import Sweep as Sweep
from .flow.run import TaskEvent as TaskEvent
from .flow.run import TaskResult as TaskResult
from .flow.spec import Flow as Flow
from .flow.spec import TaskSpec as TaskSpec
from .flow.spec import task as task
from .http import HttpClient as HttpClient
from .launcher import Key as Key
from .launcher import Launcher as Launcher
from .launcher import LaunchFailed as LaunchFailed
from .launcher import LaunchSummary as LaunchSummary
from .launcher import launch as launch
from .limits import KeyedRateLimiter as KeyedRateLimiter
from .limits import Rate as Rate
from .limits import RateLimiter as RateLimiter
from .ratelimit_headers import RateLimitInfo as RateLimitInfo
from .redislimits import RedisRateLimiter as RedisRateLimiter
from .retry import Retry as Retry
from .serving import Client as Client
from .serving import Endpoint as Endpoint
from .serving import Server as Server
from .serving import Stats as Stats
from .stores import LocalFileStore as LocalFileStore
from .stores import MemoryStore as MemoryStore
from .stores import Promise as Promise
from .stores import RedisStore as RedisStore
from .stores import ResultStore as ResultStore
from .stores import TaskInfo as TaskInfo
from .stores import TaskState as TaskState
from .stream import Batch as Batch
from .stream import Failed as Failed
from .stream import Filter as Filter
from .stream import Pipeline as Pipeline
from .stream import Stage as Stage
from .stream import Unbatch as Unbatch
from .stream import Union as Union
from .web import cancel_on_disconnect as cancel_on_disconnect

__all__ = [
    "AioflowsError",
    "AllKeysQuarantined",
    "Batch",
    "Client",
    "CorruptObject",
    "DaskExecutor",
    "Endpoint",
    "EndpointLoadFailed",
    "Failed",
    "Filter",
    "Flow",
    "FlowError",
    "FlowFailed",
    "FlowRun",
    "Graph",
    "HttpClient",
    "InvalidArgument",
    "InvalidArgumentType",
    "Key",
    "KeyedRateLimiter",
    "LaunchFailed",
    "LaunchSummary",
    "Launcher",
    "LocalFileStore",
    "MemoryStore",
    "MissingObject",
    "OutputFileError",
    "Pipeline",
    "Promise",
    "Rate",
    "RateLimitInfo",
    "RateLimited",
    "RateLimiter",
    "RedisRateLimiter",
    "RedisStore",
    "RedisUnavailable",
    "ResultStore",
    "Retry",
    "Server",
    "ServingError",
    "Stage",
    "Stats",
    "Sweep",
    "TaskContext",
    "TaskEvent",
    "TaskInfo",
    "TaskNode",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "Unbatch",
    "Union",
    "cancel_on_disconnect",
    "expand_config",
    "imap",
    "launch",
    "map",
    "task",
    "__version__",
]

# Public objects say where users import them from, in reprs and tracebacks.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        with contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = __name__
del _name, _obj, contextlib
