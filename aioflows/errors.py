"""The exceptions aioflows raises.

Every error the library raises derives from :class:`AioflowsError`, so one ``except`` clause
catches them all. Where the contract promises a builtin (``ValueError`` for a bad argument,
``TypeError`` for something that is not callable), the class derives from both, so code written
against the builtin keeps working. All of them are importable from ``aioflows``::

    AioflowsError
     ├── InvalidArgument (also ValueError)       a bad value, reported before any work starts
     ├── InvalidArgumentType (also TypeError)    a value of the wrong kind
     ├── RateLimited                             the remote end throttled a call
     ├── MissingObject (also KeyError)           a store holds no object under that key
     ├── CorruptObject                           a stored file cannot be decoded
     ├── FlowError (also ValueError)             a flow cannot be built as declared
     ├── FlowFailed                              a flow ran and some task instances failed
     ├── RedisUnavailable                        a Redis server cannot be reached or answered
     │                                           with an error (the redis-py error is chained)
     ├── EndpointLoadFailed                      a served endpoint's load() raised: the server
     │                                           does not start (the error is chained)
     ├── ServingError                            an aioflows server answered a Client with an
     │                                           HTTP error (status and its JSON error kept)
     ├── OutputFileError (also ValueError)       a launcher's output file is not one it wrote,
     │                                           or another launcher is writing it
     └── LaunchFailed                            a launch with fault_tolerant=False stopped at a
                                                 pair that failed (also that pair's error class
                                                 where it can be; defined in aioflows.launcher,
                                                 beside the scrubbing it needs)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AioflowsError",
    "CorruptObject",
    "EndpointLoadFailed",
    "FlowError",
    "FlowFailed",
    "InvalidArgument",
    "InvalidArgumentType",
    "MissingObject",
    "OutputFileError",
    "RateLimited",
    "RedisUnavailable",
    "ServingError",
]


class AioflowsError(Exception):
    """Base class of every error raised by aioflows."""


class InvalidArgument(AioflowsError, ValueError):
    """An argument has a value aioflows cannot accept; the message names it and what is."""


class InvalidArgumentType(AioflowsError, TypeError):
    """An argument is of a kind aioflows cannot accept (e.g. ``fn`` is not callable)."""


class RateLimited(AioflowsError):
    """Raised by a callable to say "the remote end throttled me".

    The one guarded call under ``map``, ``imap``, ``Stage``, ``task``, ``HttpClient`` and
    ``Launcher`` (:mod:`aioflows.calls`) treats it as back-pressure, not failure: it pauses the
    limiter (or key) the call went through for ``retry_after`` seconds (when ``None``, the
    policy's backoff, or :data:`aioflows.retry.THROTTLE_BACKOFF` without a policy), then calls
    again without counting a failed attempt.
    Throttles are bounded separately (``Retry.max_throttles``) so a call throttled forever still
    ends, with this exception.

    Args:
        retry_after: Seconds the remote end asked us to wait, if it said.
    """

    def __init__(self, retry_after: float | None = None) -> None:
        if retry_after is not None and (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, (int, float))
            or not 0 <= retry_after < float("inf")
        ):
            raise InvalidArgument(f"retry_after must be None or a number >= 0, got {retry_after!r}")
        self.retry_after = retry_after
        when = "" if retry_after is None else f" (retry after {retry_after:g} s)"
        super().__init__(f"the remote end throttled the call{when}")

    def __reduce__(self) -> tuple[type[RateLimited], tuple[float | None]]:
        return (type(self), (self.retry_after,))


class MissingObject(AioflowsError, KeyError):
    """A result store holds nothing under (task, config_hash, name).

    A ``KeyError``, as for a missing dict key, but its message is a sentence naming all three
    parts of the key rather than the quoted repr ``KeyError`` prints by default.

    Args:
        name: The object's name within the run.
        task: The run's task name.
        config_hash: The run's config hash.
    """

    def __init__(self, name: str, *, task: str, config_hash: str) -> None:
        super().__init__(name)
        self.name = name
        self.task = task
        self.config_hash = config_hash

    def __str__(self) -> str:
        return (
            f"no object {self.name!r} stored for task {self.task!r} "
            f"with config_hash {self.config_hash!r}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_missing_object, (self.name, self.task, self.config_hash))


def _missing_object(name: str, task: str, config_hash: str) -> MissingObject:
    return MissingObject(name, task=task, config_hash=config_hash)


class CorruptObject(AioflowsError):
    """A stored file exists but cannot be decoded as its type.

    aioflows' own writes are atomic, so this means something else wrote or truncated the file.
    The message names the file so it can be inspected or removed; the decoder's own exception
    is chained as ``__cause__``.

    Args:
        path: The file (or key) that cannot be decoded.
        reason: Why, in a few words.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class FlowError(AioflowsError, ValueError):
    """A flow is declared wrongly: a cycle, an unknown or duplicate task name, a config key the
    function cannot take, a config value that is not JSON... Raised before any task runs, with a
    message naming the culprit."""


class FlowFailed(AioflowsError):
    """``Flow.run`` finished with failed task instances.

    ``run`` is the :class:`~aioflows.FlowRun` with every instance's state and result;
    ``errors`` maps the unique name of each failed instance to the exception it raised.

    Args:
        run: The :class:`~aioflows.FlowRun`.
        errors: Unique name to exception, for each failed instance.
    """

    def __init__(self, run: Any, errors: dict[str, BaseException]) -> None:
        self.run = run
        self.errors = errors
        shown = "; ".join(
            f"{name}: {type(exc).__name__}: {exc}" for name, exc in list(errors.items())[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} task instance(s) failed: {shown}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run, self.errors))


class OutputFileError(AioflowsError, ValueError):
    """The output file is not a JSONL file written by the launcher, or another launcher is
    writing it (it holds the file's lock)."""


class RedisUnavailable(AioflowsError):
    """A Redis-backed limiter or store could not talk to its server (refused, reset, timed out,
    or a server error). Never a grant: a limiter that cannot reach Redis raises rather than let a
    call through. The redis-py exception is chained as ``__cause__``; the message names the
    server's address but never a password in its URL."""


class EndpointLoadFailed(AioflowsError):
    """An endpoint's ``load`` hook raised while the server started.

    A server never serves an endpoint that failed to load: entering ``async with server:``
    (or the app's lifespan, or ``aioflows serve``) raises this, naming the endpoint, with the
    hook's own exception chained as ``__cause__``.

    Args:
        endpoint: The endpoint's name.
        error: What its ``load`` raised, or a description of it.
    """

    def __init__(self, endpoint: str, error: BaseException | str) -> None:
        self.endpoint = endpoint
        #: What went wrong, as ``Type: message``.
        self.reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"endpoint {endpoint!r} failed to load: {self.reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.endpoint, self.reason))


class ServingError(AioflowsError):
    """An aioflows server answered an :class:`~aioflows.Client` call with an HTTP error.

    ``status_code`` is the HTTP status, ``error`` the server's ``{"error": ...}`` message and
    ``payload`` its whole JSON body (``/predict`` of a failed request adds the request's
    ``id``). The message never holds the API key.

    Args:
        status_code: The HTTP status of the answer.
        error: The server's ``{"error": ...}`` message.
        payload: The answer's whole JSON body (None: ``{}``).
    """

    def __init__(self, status_code: int, error: str, payload: dict[str, Any] | None = None) -> None:
        self.status_code = status_code
        self.error = error
        self.payload = {} if payload is None else payload
        super().__init__(f"HTTP {status_code}: {error}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status_code, self.error, self.payload))
