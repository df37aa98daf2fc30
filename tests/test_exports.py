"""The public surface: exactly the names of API.md that exist so far, reported as ``aioflows.X``."""

from __future__ import annotations

import inspect
import re

import aioflows as af

# API.md section 1 (limits). Later sections add their names here as they land.
SECTION_1 = {
    "AioflowsError",
    "KeyedRateLimiter",
    "Rate",
    "RateLimited",
    "RateLimiter",
    "Retry",
    "imap",
    "map",
}
# API.md section 2 (stores), plus TaskState/TaskInfo of section 3.
SECTION_2 = {
    "LocalFileStore",
    "MemoryStore",
    "Promise",
    "ResultStore",
    "TaskInfo",
    "TaskState",
}
# API.md section 3 (flows).
SECTION_3 = {
    "Flow",
    "FlowError",
    "FlowFailed",
    "FlowRun",
    "Graph",
    "Sweep",
    "TaskContext",
    "TaskEvent",
    "TaskNode",
    "TaskResult",
    "TaskSpec",
    "expand_config",
    "task",
}
# API.md section 4 (streams).
SECTION_4 = {"Batch", "Failed", "Filter", "Pipeline", "Stage", "Unbatch", "Union"}
# API.md section 6 (HTTP).
SECTION_6 = {"HttpClient"}
# API.md section 5 (launcher).
SECTION_5 = {"Key", "LaunchSummary", "Launcher", "RateLimitInfo", "launch"}
# The whole error hierarchy (issue 11), drawn in aioflows/errors.py's docstring.
ERRORS = {
    "AioflowsError",
    "AllKeysQuarantined",
    "CorruptObject",
    "FlowError",
    "FlowFailed",
    "InvalidArgument",
    "InvalidArgumentType",
    "LaunchFailed",
    "MissingObject",
    "OutputFileError",
    "RateLimited",
    "RedisUnavailable",
    "EndpointLoadFailed",
    "ServingError",
}
# API.md section 7 (serving).
SECTION_7 = {"Client", "Endpoint", "Server", "Stats"}
# API.md section 8 (beyond one machine), one set per part.
SECTION_8_REDIS_LIMITS: set[str] = {"RedisRateLimiter"}
SECTION_8_REDIS_STORE: set[str] = {"RedisStore"}
SECTION_8_DASK = {"DaskExecutor"}
SECTION_8 = SECTION_8_REDIS_LIMITS | SECTION_8_REDIS_STORE | SECTION_8_DASK
# Web-app helpers (issue 14, docs/web.md): beyond API.md, which does not list them yet.
WEB = {"cancel_on_disconnect"}
PUBLIC = (
    SECTION_1
    | SECTION_2
    | SECTION_3
    | SECTION_4
    | SECTION_5
    | SECTION_6
    | SECTION_7
    | SECTION_8
    | WEB
    | ERRORS
)


def test_all_is_exactly_the_public_api() -> None:
    assert set(af.__all__) == PUBLIC | {"__version__"}
    for name in af.__all__:
        assert hasattr(af, name), name


def test_public_objects_report_the_public_module() -> None:
    for name in PUBLIC:
        assert getattr(af, name).__module__ == "aioflows", name
    assert repr(af.Rate(1)) == "Rate(limit=1, period=1.0)"


def test_library_errors_share_one_base() -> None:
    from aioflows import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), af.AioflowsError)


def test_issue11_the_whole_error_hierarchy_is_exported_and_drawn() -> None:
    from aioflows import errors, launcher

    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and not name.startswith("_")
    }
    assert defined == set(errors.__all__)
    exported = {
        name
        for name in af.__all__
        if inspect.isclass(obj := getattr(af, name)) and issubclass(obj, BaseException)
    }
    assert defined <= exported
    assert exported == ERRORS
    for name in exported:
        assert issubclass(getattr(af, name), af.AioflowsError), name
    # The drawing names every class, and no class that is not exported.
    doc = errors.__doc__ or ""
    drawing = doc[doc.index("    AioflowsError") :]
    drawn = set(re.findall(r"^    (AioflowsError)\b|── (\w+)", drawing, re.MULTILINE))
    assert {a or b for a, b in drawn} == exported
    # The launcher's names still import from where they always did.
    assert launcher.OutputFileError is af.OutputFileError
    assert launcher.LaunchFailed is af.LaunchFailed
