"""The batch launcher: one async function over many inputs and API keys, into resumable JSONL.

Each call takes the key whose buckets free soonest (a request bucket per key, and a token
bucket when ``tokens_per_key`` and ``cost`` are given), so keys share the load by their limits
rather than in turn. The calls run on the one worker pool (:mod:`aioflows._workers`), pulling
the input as they free up, and each goes through the one guarded loop of :mod:`aioflows.calls`
(the retry and throttle rules of ``map``), whose "limiter" here is the pick of a key: a throttle
(``RateLimited``, HTTP 429) rests only that key, for as long as the server asked, and the sample
goes again, on any key, without counting an attempt; a throttle asking for more than
``Retry.max_wait`` is not waited for (the pair fails with ``RateLimited``), and no key rests
longer than that.

Every finished (id, sample) pair is one JSON line, written by a single writer task as results
come in and fsynced periodically. The file is the resume state: on start, pairs already in it
without an error are skipped, a torn last line (a crash mid-write) is cut off, and failed pairs
run again; so after any number of ``kill -9`` and restarts, each pair has exactly one line
without an error. A run holds an exclusive lock on the file (``flock``) from that first read to
its end, so a second launcher on the same file is refused at once instead of running every pair
again. Secrets appear nowhere but in the calls: records, logs, reprs and error texts
carry the key's label.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import sys
import time
import types
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeAlias

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _validate
from ._workers import Pool, Source
from .calls import Guard
from .errors import (
    AioflowsError,
    InvalidArgument,
    InvalidArgumentType,
    OutputFileError,  # defined with the other errors, re-exported from here as before
    RateLimited,
)
from .limits import RateLike, RateLimiter, as_rate
from .retry import USE_DEFAULT, RetryLike, UseDefault, as_retry, throttle_delay, wait_cap

if sys.platform != "win32":
    import fcntl

__all__ = ["Key", "LaunchFailed", "LaunchSummary", "Launcher", "OutputFileError", "launch"]

P = ParamSpec("P")

#: What a launcher calls: ``fn(sample, key)``.
LaunchFn: TypeAlias = "Callable[[dict[str, Any], Key], Awaitable[Any]]"
#: What a launcher runs over: dicts, from an iterable or an async iterable.
LaunchData: TypeAlias = Iterable[dict[str, Any]] | AsyncIterable[dict[str, Any]]
#: One call to make: an input and its sample number.
_Work: TypeAlias = tuple[dict[str, Any], int]

#: Seconds between fsyncs of the output file (every write is flushed at once).
FSYNC_EVERY = 1.0
#: Seconds the writer lets finished records gather between two writes.
WRITE_EVERY = 0.02


class LaunchFailed(AioflowsError):
    """What a run with ``fault_tolerant=False`` raises when a pair fails for good.

    The pair's own exception is not raised: its text, its chained ``__cause__`` and
    ``__context__``, and the locals of its traceback may all hold the key the call was made
    with. This error carries what can be said safely instead: ``error_type`` (the original
    class name), ``message`` (its text, secrets replaced by ``<key-N>``), and the pair
    (``id``, ``sample``, ``key`` label); it chains nothing. Where the original class can be
    subclassed, the error raised is also an instance of it, so ``except ValueError`` still
    catches a ``ValueError`` of ``fn``; its simple attributes (numbers, booleans, ``None``,
    strings scrubbed) are copied over, nothing else of the original is.
    """

    def __init__(self, message: str, *, error_type: str, id: Any, sample: int, key: str) -> None:
        # Not super().__init__: in the class mixed with the original type the next __init__
        # is the original's, whose signature is anyone's guess.
        Exception.__init__(self, message)
        self.message = message
        self.error_type = error_type
        self.id = id
        self.sample = sample
        self.key = key

    def __str__(self) -> str:
        return (
            f"{self.error_type}: {self.message} (id {self.id!r}, sample {self.sample}, {self.key})"
        )

    def __repr__(self) -> str:
        return f"LaunchFailed({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        mixed = type(self) is not LaunchFailed  # made by _launch_failed: (LaunchFailed, original)
        base = type(self).__bases__[1] if mixed else None
        fields = (self.message, self.error_type, self.id, self.sample, self.key)
        return (_launch_failed, (base, *fields), _simple_attributes(self.__dict__))


def _launch_failed(
    base: type[BaseException] | None, message: str, error_type: str, id: Any, sample: int, key: str
) -> LaunchFailed:
    """A LaunchFailed that is also a ``base``, when such a class can be made and instantiated."""
    fields: dict[str, Any] = {"error_type": error_type, "id": id, "sample": sample, "key": key}
    if base is not None and base is not LaunchFailed:
        try:
            cls = types.new_class("LaunchFailed", (LaunchFailed, base), exec_body=_name_as_ours)
            return cls(message, **fields)  # type: ignore[no-any-return]
        except Exception:  # a final class, a metaclass conflict, a __new__ wanting more
            pass
    return LaunchFailed(message, **fields)


def _name_as_ours(namespace: dict[str, Any]) -> None:
    namespace["__module__"] = LaunchFailed.__module__
    namespace["__qualname__"] = "LaunchFailed"


def _simple_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in attributes.items()
        if value is None or isinstance(value, (str, int, float))
    }


@dataclass(frozen=True, slots=True)
class LaunchSummary:
    """What a run did. ``per_key`` counts the calls made with each key, by label."""

    total: int
    succeeded: int
    failed: int
    skipped: int
    retried: int
    duration_s: float
    per_key: dict[str, int] = field(default_factory=dict)


class _KeyState:
    """One API key and its buckets, shared by every call that uses it."""

    __slots__ = ("label", "paused_until", "requests", "secret", "tokens")

    def __init__(
        self,
        label: str,
        secret: str | None,
        requests: RateLimiter | None,
        tokens: RateLimiter | None,
    ) -> None:
        self.label = label
        self.secret = secret
        self.requests = requests
        self.tokens = tokens
        self.paused_until = -math.inf  # a throttle rests the key even when it has no bucket

    def delay(self, cost: float) -> float:
        wait = self.requests.delay(1.0) if self.requests is not None else 0.0
        wait = max(wait, self.paused_until - anyio.current_time())
        if self.tokens is not None and cost > 0:
            wait = max(wait, self.tokens.delay(min(cost, self.tokens.burst)))
        return wait

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, anyio.current_time() + seconds)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.pause(seconds)


class Key:
    """The key a call runs with: ``label`` (``"key-0"``...) and ``secret`` (the key string).

    ``report_usage(tokens)`` tells the key's token budget what the call really used: the
    difference from the estimate reserved before the call is charged or refunded. The repr
    shows the label only, so a key can be logged safely.
    """

    __slots__ = ("_reserved", "_state")

    def __init__(self, state: _KeyState, reserved: float) -> None:
        self._state = state
        self._reserved = reserved

    @property
    def label(self) -> str:
        return self._state.label

    @property
    def secret(self) -> str | None:
        return self._state.secret

    def report_usage(self, tokens: float) -> None:
        """Reconcile this call's token estimate with ``tokens`` actually used."""
        tokens = _validate.number("tokens", tokens)
        bucket = self._state.tokens
        if bucket is None:
            return
        difference = tokens - self._reserved
        if difference > 0:
            bucket.charge(difference)
        elif difference < 0:
            bucket.refund(-difference)
        self._reserved = tokens

    def __repr__(self) -> str:
        return f"Key({self._state.label!r})"


def _check_positive_int(value: object, what: str) -> int:
    return _validate.count(what, value)


def _keys(
    keys: Sequence[str] | Mapping[str, RateLike | None],
    rate_per_key: RateLike | None,
    tokens_per_key: RateLike | None,
) -> list[_KeyState]:
    if isinstance(keys, str):
        raise InvalidArgumentType(
            "keys must be a sequence or a mapping of key strings, not one str"
        )
    pairs: list[tuple[str, RateLike | None]]
    if isinstance(keys, Mapping):
        pairs = [(k, r if r is not None else rate_per_key) for k, r in keys.items()]
    else:
        pairs = [(k, rate_per_key) for k in keys]
    token_rate = as_rate(tokens_per_key, "tokens_per_key") if tokens_per_key is not None else None
    states = []
    for i, (secret, rate) in enumerate(pairs):
        if not isinstance(secret, str) or not secret:
            raise InvalidArgument(f"key #{i} must be a non-empty str")
        states.append(
            _KeyState(
                f"key-{i}",
                secret,
                RateLimiter(rate) if rate is not None else None,
                RateLimiter(token_rate, burst=token_rate.limit) if token_rate else None,
            )
        )
    if len({s.secret for s in states}) != len(states):
        raise InvalidArgument("keys holds the same key twice")
    if not states:
        states.append(
            _KeyState(
                "default",
                None,
                RateLimiter(rate_per_key) if rate_per_key is not None else None,
                RateLimiter(token_rate, burst=token_rate.limit) if token_rate else None,
            )
        )
    return states


def _redact(text: str, keys: Sequence[_KeyState]) -> str:
    for key in keys:
        if key.secret:
            text = text.replace(key.secret, f"<{key.label}>")
    return text


def _redact_value(value: Any, keys: Sequence[_KeyState]) -> Any:
    """``value`` with secrets replaced inside its strings (never in its structure)."""
    if isinstance(value, str):
        return _redact(value, keys)
    if isinstance(value, dict):
        return {_redact_value(k, keys): _redact_value(v, keys) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v, keys) for v in value]
    return value


def _text(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose own ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"


def _describe(exc: BaseException, keys: Sequence[_KeyState]) -> str:
    """A record's ``error``: ``"Type: message"``, secrets replaced."""
    return _redact(f"{type(exc).__name__}: {_text(exc)}", keys)


def _clean_error(
    exc: BaseException, keys: Sequence[_KeyState], ident: Any, sample: int, key: str
) -> LaunchFailed:
    """The error to raise for ``exc``: its type and scrubbed text, none of its chain or frames."""
    error = _launch_failed(
        type(exc),
        _redact(_text(exc), keys),
        type(exc).__name__,
        ident,
        sample,
        key,
    )
    with contextlib.suppress(Exception):  # vars() of an exotic exception, a read-only name
        for name, value in _simple_attributes(vars(exc)).items():
            if name not in vars(error):
                setattr(error, name, _redact(value, keys) if isinstance(value, str) else value)
    return error


class Launcher:
    """Run ``fn(sample, key)`` over many inputs, ``samples`` times each, across API keys.

    Usage::

        launcher = af.Launcher(ask, keys=api_keys, rate_per_key="60/min", output="out.jsonl")
        summary = await launcher.run(prompts)

    Args:
        fn: ``async fn(sample, key)``: ``sample`` is a copy of the input with its ``"sample"``
            number, ``key`` the :class:`Key` the call must use.
        keys: The API key strings, or a mapping of key string to that key's rate. Empty: one
            unlimited key, ``"default"``, whose secret is None.
        rate_per_key: Requests per unit of time for each key (None: no limit).
        tokens_per_key: A token budget for each key, such as ``"90000/min"``; with ``cost``.
        cost: ``cost(sample)``: the tokens a call is expected to use, reserved before it.
        concurrency: Most calls in flight at once.
        samples: How many independent times each input runs.
        retry: The policy of each call (a ``Retry``, a number of attempts, or None: no retry;
            by default ``Retry(3)``). Throttles follow the rules of ``map``: they rest the
            key, do not count an attempt, and the pair goes again on any key.
        fault_tolerant: False: the first pair that fails for good stops the run, raised as a
            :class:`LaunchFailed`.
        output: The JSONL file each finished pair is appended to (None: no file).
        resume: Skip the pairs already in ``output`` without an error.
        id_key: The field that identifies an input, unique within the input.
        input_interface: What ``fn`` receives instead of the sample.
        output_interface: What is recorded instead of ``fn``'s result.
        progress: Draw a progress bar on stderr.

    Every argument is checked here, before anything runs; the input as :meth:`run` pulls it
    (a list or tuple whole, before the first call). docs/launcher.md says more.

    Raises:
        ValueError, TypeError: A bad argument (``InvalidArgument``, ``InvalidArgumentType``).
    """

    def __init__(
        self,
        fn: LaunchFn,
        *,
        keys: Sequence[str] | Mapping[str, RateLike | None] = (),
        rate_per_key: RateLike | None = None,
        tokens_per_key: RateLike | None = None,
        cost: Callable[[dict[str, Any]], float] | None = None,
        concurrency: int = 16,
        samples: int = 1,
        retry: RetryLike | UseDefault = USE_DEFAULT,
        fault_tolerant: bool = True,
        output: str | os.PathLike[str] | None = None,
        resume: bool = True,
        id_key: str = "id",
        input_interface: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        output_interface: Callable[[Any], Any] | None = None,
        progress: bool = False,
    ) -> None:
        if not callable(fn):
            raise InvalidArgumentType(f"fn must be an async callable, got {fn!r}")
        for name, hook in (
            ("cost", cost),
            ("input_interface", input_interface),
            ("output_interface", output_interface),
        ):
            if hook is not None and not callable(hook):
                raise InvalidArgumentType(f"{name} must be callable, got {hook!r}")
        if (tokens_per_key is None) != (cost is None):
            raise InvalidArgument("tokens_per_key and cost go together")
        if rate_per_key is not None:
            as_rate(rate_per_key, "rate_per_key")
        self._fn = fn
        self._keys = _keys(keys, rate_per_key, tokens_per_key)
        self._cost = cost
        self._concurrency = _check_positive_int(concurrency, "concurrency")
        self._samples = _check_positive_int(samples, "samples")
        self._retry = as_retry(retry)
        self._fault_tolerant = bool(fault_tolerant)
        self._output = Path(output) if output is not None else None
        if self._output is not None and not self._output.parent.is_dir():
            raise InvalidArgument(f"the directory of output {str(self._output)!r} does not exist")
        self._resume = bool(resume)
        if not isinstance(id_key, str):
            raise InvalidArgumentType(f"id_key must be a str, got {id_key!r}")
        self._id_key = id_key
        self._input_interface = input_interface
        self._output_interface = output_interface
        self._progress = bool(progress)
        self._turn = 0

    def __repr__(self) -> str:
        labels = [k.label for k in self._keys]
        return f"Launcher(keys={labels}, samples={self._samples}, output={self._output})"

    async def run(self, data: LaunchData) -> LaunchSummary:
        """Run every (input, sample) not already done in ``output``; returns the summary.

        ``data`` is pulled as calls free up, never read whole: an infinite generator or a file
        of millions of lines is fine. Each item is checked when it is pulled (a dict, with a
        hashable id that is unique and reads back from JSON as itself); a bad one stops the run
        with ``InvalidArgument`` once reached, after what finished has been written, so that a
        resume goes on from there. A list or tuple, already in memory, is checked whole before
        the first call.
        """
        summary, _ = await self._run(data, keep=False)
        return summary

    async def _run(
        self, data: LaunchData, keep: bool
    ) -> tuple[LaunchSummary, list[dict[str, Any]]]:
        source = _Input(data, self._id_key, self._samples, keep)  # a list is checked here, whole
        if self._output is None:
            return await self._go(source, {}, None)
        # Read even without resume: a file that is not ours is refused, never appended to.
        # Shielded, so that a cancellation cannot drop the open, locked handle on its way here.
        with anyio.CancelScope(shield=True):
            handle, done = await anyio.to_thread.run_sync(_open_output, self._output)
        try:
            return await self._go(source, done if self._resume else {}, handle)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(handle.close)  # and the lock goes with it

    async def _go(
        self,
        source: _Input,
        done: dict[tuple[Any, int], dict[str, Any]],
        handle: BinaryIO | None,
    ) -> tuple[LaunchSummary, list[dict[str, Any]]]:
        """Run what ``done`` does not hold, appending to ``handle``; the summary and records."""
        run = _Run(self, handle, source.start(done), keep=source.order is not None)
        started = time.monotonic()
        await run.go(source.pairs)
        summary = LaunchSummary(
            total=source.total,
            succeeded=run.succeeded,
            failed=run.failed,
            skipped=source.skipped,
            retried=run.retried,
            duration_s=time.monotonic() - started,
            per_key=dict(run.per_key),
        )
        if run.error is not None:
            raise run.error from None  # a clean error: nothing chained, nothing to leak
        records = []
        if source.order is not None:
            by_pair = {(r["id"], r["sample"]): r for r in run.records}
            for pair in source.order:
                record = by_pair.get(pair) or done.get(pair)
                if record is not None:
                    records.append(record)
        return summary, records


class _Input:
    """A run's input as it is pulled: each item checked as it comes, then its pairs not done.

    A list or tuple is checked whole when the run starts (it is in memory already, and then a
    bad item fails before any work); any other iterable item by item, as the pool pulls it.
    What the checks keep is the ids seen (they must be unique); with ``keep`` (``launch``),
    the order of the pairs as well, for the records it returns.
    """

    __slots__ = (
        "_done",
        "_id_key",
        "_list",
        "_samples",
        "_seen",
        "order",
        "pairs",
        "skipped",
        "total",
    )

    def __init__(self, data: LaunchData, id_key: str, samples: int, keep: bool) -> None:
        if not isinstance(data, AsyncIterable) and (
            not isinstance(data, Iterable) or isinstance(data, (str, bytes, Mapping))
        ):
            raise InvalidArgumentType(f"data must be an iterable of dicts, got {data!r}")
        self._id_key = id_key
        self._samples = samples
        self._seen: set[Any] = set()
        self._done: dict[tuple[Any, int], dict[str, Any]] = {}
        self.order: list[tuple[Any, int]] | None = [] if keep else None
        self.total = self.skipped = 0  # pairs pulled so far, and those of them found done
        self._list = data if isinstance(data, (list, tuple)) else None
        for index, item in enumerate(self._list or ()):
            self._check(index, item)
        self.pairs: Iterable[_Work] | AsyncIterable[_Work] = (
            self._async_pairs(data) if isinstance(data, AsyncIterable) else self._sync_pairs(data)
        )

    def start(self, done: dict[tuple[Any, int], dict[str, Any]]) -> int | None:
        """Skip the pairs of ``done``; the number of pairs to run, if known before (a list)."""
        self._done = done
        if self._list is None:
            return None
        samples, id_key = range(self._samples), self._id_key
        return sum((item[id_key], s) not in done for item in self._list for s in samples)

    def _check(self, index: int, item: Any) -> Any:
        """``item``'s id, once the item is known good (and its id new); else InvalidArgument."""
        if not isinstance(item, Mapping):
            raise InvalidArgument(f"input item #{index} is not a dict: {item!r:.80}")
        if self._id_key not in item:
            raise InvalidArgument(f"input item #{index} has no {self._id_key!r}: {item!r:.80}")
        ident = item[self._id_key]
        try:
            duplicate = ident in self._seen
        except TypeError:
            raise InvalidArgument(
                f"input item #{index}: id {_show(ident)} is not hashable"
            ) from None
        if duplicate:
            raise InvalidArgument(f"duplicate id {_show(ident)} in the input (item #{index})")
        if not _faithful(ident):  # the file is the resume state: an id must come back as is
            raise InvalidArgument(
                f"input item #{index}: id {_show(ident)} cannot be written to the output and "
                "read back as the same value; an id is a str, an int, a finite float, a "
                "bool, None, or a tuple of these"
            )
        self._seen.add(ident)
        return ident

    def _pairs_of(self, item: dict[str, Any], ident: Any) -> Iterator[_Work]:
        for sample in range(self._samples):
            pair = (ident, sample)
            self.total += 1
            if self.order is not None:
                self.order.append(pair)
            if pair in self._done:
                self.skipped += 1
            else:
                yield item, sample

    def _sync_pairs(self, data: Iterable[dict[str, Any]]) -> Iterator[_Work]:
        for index, item in enumerate(data):
            ident = item[self._id_key] if self._list is not None else self._check(index, item)
            yield from self._pairs_of(item, ident)

    async def _async_pairs(self, data: AsyncIterable[dict[str, Any]]) -> AsyncIterator[_Work]:
        items = aiter(data)
        try:
            index = 0
            async for item in items:
                for pair in self._pairs_of(item, self._check(index, item)):
                    yield pair
                index += 1
        finally:
            # Stopped early (a failure, a cancellation): the input's own cleanup runs now.
            closer = getattr(items, "aclose", None)
            if closer is not None:
                await closer()


class _Run:
    """The state of one :meth:`Launcher.run`: the pool of calls, the writer, counters."""

    def __init__(
        self, launcher: Launcher, handle: BinaryIO | None, total: int | None, keep: bool
    ) -> None:
        self.launcher = launcher
        self.handle = handle
        self.total = total  # pairs to run, when known before the first (a list or tuple input)
        self.keep = keep
        self.records: list[dict[str, Any]] = []
        self.succeeded = self.failed = self.retried = self.finished = 0
        self.error: LaunchFailed | None = None
        self.per_key = {k.label: 0 for k in launcher._keys}  # calls made with each, this run
        self.written = anyio.Event()
        self.send: MemoryObjectSendStream[_Finished]
        self.call = _KeyedCall(self)
        self.pool: Pool

    async def go(self, pairs: Iterable[_Work] | AsyncIterable[_Work]) -> None:
        """Run the calls on the one worker pool while the writer writes what finishes."""
        concurrency = self.launcher._concurrency
        send, receive = anyio.create_memory_object_stream[_Finished](math.inf)
        self.send = send
        self.pool = Pool(self._work, Source(pairs), concurrency)
        failure: Exception | None = None
        # Closed here too: a writer cancelled before its first step has no finally to run.
        with receive:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._writer, receive)
                if self.launcher._progress:
                    outer.start_soon(self._show_progress)
                with send:
                    try:
                        await self.pool.run(
                            None if self.total is None else max(1, min(concurrency, self.total))
                        )
                    except Exception as exc:  # the input failed: a bad item, its iterator raised
                        failure = exc  # raised once the writer has written what finished
        if failure is not None:
            raise failure

    async def _work(self, pair: _Work) -> None:
        if self.error is not None:
            # Stopping (fault_tolerant=False): this item is not started, and the worker ends
            # here, at the checkpoint of its cancelled pool, before it pulls another.
            await anyio.lowlevel.checkpoint()
            return
        record, line = await self._call(*pair)
        self.send.send_nowait((record, line))
        if record["error"] is not None and not self.launcher._fault_tolerant:
            self.pool.cancel()  # admit nothing more, stop the rest

    async def _pick(self, cost: float) -> _KeyState:
        """The key whose buckets free soonest (ties go round the keys), its buckets taken."""
        launcher = self.launcher
        keys = launcher._keys
        start = launcher._turn
        launcher._turn = (start + 1) % len(keys)
        best = min(range(len(keys)), key=lambda i: (keys[(start + i) % len(keys)].delay(cost), i))
        key = keys[(start + best) % len(keys)]
        rest = key.paused_until - anyio.current_time()
        if rest > 0:
            await anyio.sleep(rest)
        if key.requests is not None:
            await key.requests.acquire()
        if key.tokens is not None and cost > 0:
            await key.tokens.acquire(min(cost, key.tokens.burst))
        return key

    async def _call(self, item: dict[str, Any], sample: int) -> _Finished:
        launcher = self.launcher
        pair = _Pair(item, sample, item[launcher._id_key])
        started_at = datetime.now(timezone.utc)
        started = time.monotonic()
        output: Any = None
        error: str | None = None
        try:
            output = await self.call(pair)
        except Exception as exc:  # for good: retries spent, not retried, or the estimate failed
            throttled, asked = throttle_delay(exc)
            cap = wait_cap(self.call.retry)
            if throttled and asked is not None and asked > cap:
                # Not waited for (`Retry-After: 1000000000` is valid HTTP, and a spent daily
                # quota says "tomorrow"); the key rests for the cap, so later pairs still run.
                exc = _too_long(asked, cap)
            error = _describe(exc, launcher._keys)
            self._failed(exc, pair.ident, sample, pair.key)
        ident, key_label = pair.ident, pair.key
        record = {
            "id": ident,
            "sample": sample,
            "key": key_label,
            "attempts": pair.attempts,
            "output": output,
            "error": error,
            "started_at": started_at.isoformat(),
            "duration_s": round(time.monotonic() - started, 6),
        }
        try:
            if error is None:
                record["output"] = _redact_value(output, launcher._keys)
            line = _line(record)
        except Exception as exc:  # a tuple as a dict key, a cycle, NaN, an object, 10**5000
            # The pair fails here, in its worker: the writer only ever gets lines it can write.
            not_json = TypeError(f"the output is not JSON ({_text(exc)})")
            record["output"] = None
            record["error"] = error = _describe(not_json, launcher._keys)
            self._failed(not_json, ident, sample, key_label)
            line = _line(record)  # the id was checked, the rest is ours: this one always goes
        if error is None:
            self.succeeded += 1
        else:
            self.failed += 1
        return record, line

    def _failed(self, exc: BaseException, ident: Any, sample: int, key: str) -> None:
        """Keep the first failure, as a clean error, when it is to stop the run."""
        launcher = self.launcher
        if not launcher._fault_tolerant and self.error is None:
            self.error = _clean_error(exc, launcher._keys, ident, sample, key)

    async def _writer(self, receive: MemoryObjectReceiveStream[_Finished]) -> None:
        handle = self.handle
        last_sync = time.monotonic()
        try:
            while True:
                try:
                    batch = [await receive.receive()]
                except anyio.EndOfStream:
                    break
                batch += _take_ready(receive)  # everything already finished: one write
                self._written(batch)
                if handle is not None:
                    text = b"".join(line for _, line in batch)
                    sync = time.monotonic() - last_sync >= FSYNC_EVERY
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(_append, handle, text, sync)
                    if sync:
                        last_sync = time.monotonic()
                    # Let results gather: one thread hop per interval, not per finished call.
                    await anyio.sleep(WRITE_EVERY)
        finally:
            # Cancelled or done: what had finished is still written, then the file synced.
            rest = _take_ready(receive)
            receive.close()
            self._written(rest)
            try:
                if handle is not None:
                    text = b"".join(line for _, line in rest)
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(_finish, handle, text)
            finally:
                self.written.set()

    def _written(self, batch: list[_Finished]) -> None:
        if self.keep:
            self.records.extend(record for record, _ in batch)
        self.finished += len(batch)

    async def _show_progress(self) -> None:
        """A bar with done, failed, retried, calls per key and the ETA, on stderr, until the
        writer has written the last record.

        Drawn by the one live display (:class:`aioflows._display.LiveDisplay`, the flow's too:
        an anyio task redraws it, no thread); rich's ``Progress`` is used only as the frame
        (its columns and ETA), never started. Imported here: rich costs nothing to a run
        without a display.
        """
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        from ._display import LiveDisplay

        console = Console(stderr=True)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,
        )
        bar = progress.add_task("launch", total=self.total)
        async with LiveDisplay(lambda: self._draw(progress, bar), console=console):
            await self.written.wait()

    def _draw(self, progress: Any, bar: Any) -> Any:
        """The frame as it stands: the bar's counts and ETA brought up to date."""
        keys = " ".join(f"{label}:{n}" for label, n in self.per_key.items())
        description = f"ok {self.succeeded} failed {self.failed} retried {self.retried} | {keys}"
        progress.update(bar, completed=self.finished, description=description)
        return progress.get_renderable()


class _Pair:
    """One (input, sample) as it goes through the guard: what its record will say."""

    __slots__ = ("attempts", "cost", "ident", "item", "key", "prepared", "sample")

    def __init__(self, item: dict[str, Any], sample: int, ident: Any) -> None:
        self.item = item
        self.sample = sample
        self.ident = ident
        self.attempts = 0  # calls that counted: throttled ones are given back
        self.key = ""  # the label of the key of the last call
        self.prepared: dict[str, Any] = item
        self.cost = 0.0


class _KeyedCall(Guard[_Pair, _KeyState, Any]):
    """The launcher's calls through the one guarded loop (:class:`aioflows.calls.Guard`).

    Its "limiter" is the pick of a key: each attempt takes the key whose buckets free soonest,
    so a throttle rests only the key it came from and the pair goes again on any key; its
    hooks count the record's ``attempts``, the calls per key and the summary's ``retried``.
    """

    __slots__ = ("_run",)

    def __init__(self, run: _Run) -> None:
        super().__init__(run.launcher._retry, None)
        self._run = run

    async def enter(self, item: _Pair) -> _KeyState:
        run = self._run
        prepared = dict(item.item)
        prepared["sample"] = item.sample
        # An estimate that fails is a failure of the pair, not retried (it would fail again).
        item.cost = _cost(run.launcher._cost, prepared)
        item.prepared = prepared
        key = await run._pick(item.cost)
        item.key = key.label
        item.attempts += 1
        run.per_key[key.label] += 1
        return key

    async def attempt(self, item: _Pair, held: _KeyState) -> Any:
        launcher = self._run.launcher
        argument = item.prepared
        if launcher._input_interface is not None:
            argument = launcher._input_interface(argument)
        output = await launcher._fn(argument, Key(held, item.cost))
        if launcher._output_interface is not None:
            output = launcher._output_interface(output)
        return output

    def throttled(self, item: _Pair, held: _KeyState, seconds: float) -> bool:
        held.pause(seconds)
        return True  # the next pick waits, or takes another key

    def retrying(self, item: _Pair, held: _KeyState, throttled: bool) -> None:
        self._run.retried += 1
        if throttled:
            item.attempts -= 1  # a throttle is not an attempt


def _take_ready(receive: MemoryObjectReceiveStream[_Finished]) -> list[_Finished]:
    taken = []
    while True:
        try:
            taken.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return taken


def _cost(estimate: Callable[[dict[str, Any]], float] | None, sample: dict[str, Any]) -> float:
    if estimate is None:
        return 0.0
    return _validate.number("the cost estimate", estimate(sample))


def _too_long(after: float, cap: float) -> RateLimited:
    """The throttle a pair ends with when the remote end asks for more than ``max_wait``."""
    throttle = RateLimited(after)
    throttle.args = (
        f"the remote end asked to wait {after:g} s, longer than max_wait ({cap:g} s): "
        "not waited for",
    )
    return throttle


def _line(record: dict[str, Any]) -> bytes:
    """One strict JSON line (no NaN) in UTF-8, readable where it can be.

    A string with a lone surrogate (an API reply cut mid-emoji) has no UTF-8 form; such a line
    is written with ``\\uXXXX`` escapes instead, which read back as the same string.
    """
    text = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def _faithful(ident: Any) -> bool:
    """Whether ``ident`` written as JSON reads back as the same value, of the same types."""
    if type(ident) is str or (type(ident) is int and ident.bit_length() < 4000):
        return True  # the usual ids, without a round trip (an int of 1,200 digits reads back)
    try:
        back = _decode_id(json.loads(json.dumps(ident, ensure_ascii=True, allow_nan=False)))
    except (TypeError, ValueError, RecursionError):  # not JSON; NaN; more digits than int() reads
        return False
    return _same(ident, back)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):  # an Enum or a str subclass comes back as the plain value
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _decode_id(value: Any) -> Any:
    """An id as read from the file: JSON lists were tuples (a list cannot be an id)."""
    if isinstance(value, list):
        return tuple(_decode_id(v) for v in value)
    return value


def _show(value: Any) -> str:
    """A short repr, even of a value whose repr fails (an int of 5,000 digits)."""
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


# --- the output file, in worker threads -----------------------------------------------------------


def _open_output(path: Path) -> tuple[BinaryIO, dict[tuple[Any, int], dict[str, Any]]]:
    """Open the output for a run: locked, read, a torn last line cut; the handle and the pairs
    done. Anything refused (the lock held, a file not ours) leaves the file as it was."""
    handle = open(path, "a+b")  # noqa: SIM115 - the run closes it, and so drops the lock
    try:
        _lock(handle, path)
        handle.seek(0)
        raw = handle.read()
        done = _read_done(raw, path)
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line left unfinished by a crash: the next line starts clean
            handle.truncate(end)
    except BaseException:
        handle.close()
        raise
    return handle, done


def _lock(handle: BinaryIO, path: Path) -> None:
    """Take the output's exclusive lock for the run, or refuse at once.

    Two launchers appending to one file would each run every pair. ``flock`` rather than
    ``lockf``: its lock belongs to this open file, so a second launcher in the same process is
    refused too, and closing some other descriptor of the file does not drop it. The kernel
    drops it when the handle is closed, also when the process dies (``kill -9``).
    """
    if sys.platform == "win32":  # no flock: one launcher per file is then the user's to keep
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputFileError(
            f"{path} is in use by another launcher, which holds its lock: two runs appending "
            "to one file would write every pair twice; wait for it to end, or use another file"
        ) from None


def _append(handle: BinaryIO, text: bytes, sync: bool) -> None:
    handle.write(text)
    handle.flush()
    if sync:
        os.fsync(handle.fileno())


def _finish(handle: BinaryIO, text: bytes) -> None:
    if text:
        handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())


#: What a worker hands the writer: the record and its line, made in the worker, so that a
#: record that cannot be written fails its own pair and never the writer.
_Finished: TypeAlias = "tuple[dict[str, Any], bytes]"

_FIELDS = frozenset({"id", "sample", "key", "attempts", "output", "error"})


def _read_done(raw: bytes, path: Path) -> dict[tuple[Any, int], dict[str, Any]]:
    """Pairs already done without error, from the output's bytes (a torn last line ignored).

    Anything else that does not parse as one of our records is an OutputFileError.
    """
    done: dict[tuple[Any, int], dict[str, Any]] = {}
    lines = raw.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is a torn line (or empty)
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise OutputFileError(
                f"{path} line {number} is not JSON: it was not written by the launcher"
            ) from None
        if not isinstance(record, dict) or not record.keys() >= _FIELDS:
            raise OutputFileError(
                f"{path} line {number} is not a launcher record (fields {sorted(_FIELDS)})"
            )
        if record["error"] is None:
            ident = _decode_id(record["id"])
            record["id"] = ident
            try:
                done[(ident, record["sample"])] = record
            except TypeError:  # a dict as id: not ours
                raise OutputFileError(
                    f"{path} line {number} has an id the launcher does not write: {_show(ident)}"
                ) from None
    return done


def _run_once(
    make: Callable[Concatenate[LaunchFn, P], Launcher],
) -> Callable[Concatenate[LaunchFn, LaunchData, P], Coroutine[Any, Any, list[dict[str, Any]]]]:
    """``launch``, whose options are :class:`Launcher`'s own, written once: type checkers and
    IDEs take them from ``Launcher.__init__`` (a ParamSpec), ``help()`` from its signature."""

    async def launch(
        fn: LaunchFn, data: LaunchData, /, *args: P.args, **options: P.kwargs
    ) -> list[dict[str, Any]]:
        """Run a :class:`Launcher` once and return every record, in input and sample order
        (including those found done in ``output`` on resume).

        Usage::

            records = await af.launch(fn, data, keys=keys, rate_per_key="60/min")

        The options are those of :class:`Launcher`, with the same defaults and checks.
        """
        _, records = await make(fn, *args, **options)._run(data, keep=True)
        return records

    own = inspect.signature(Launcher)
    fn, *options = own.parameters.values()
    first = inspect.Parameter.POSITIONAL_ONLY
    data = inspect.Parameter("data", first, annotation="LaunchData")
    # In the function's __dict__, where inspect looks first (an attribute mypy does not know).
    launch.__dict__["__signature__"] = own.replace(
        parameters=[fn.replace(kind=first), data, *options],
        return_annotation="list[dict[str, Any]]",
    )
    launch.__qualname__ = "launch"
    return launch


#: ``await af.launch(fn, data, **options)``: a :class:`Launcher` with those options, run once.
launch = _run_once(Launcher)
