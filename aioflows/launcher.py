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

A key the API keeps rejecting (401/403) leaves the rotation for the rest of the run
(:mod:`aioflows._key_health`), and a call sent again after a failure prefers another key.
What a run shows of itself, progress lines or a bar and the summary table, is made in
:mod:`aioflows._launch_display` from one snapshot of the run's counters.

With ``cache=`` a pair answered by an earlier run is served from a store without a key or a
call (:mod:`aioflows._launch_cache`, where the digest and the segments are), after the resume
has skipped what the output holds; the tokens calls report are added up per key, with their
cost (:mod:`aioflows._usage`). Both hook into the run here at a few points only.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import sys
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeAlias

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _auto_limits, _launch_cache, _launch_display, _usage, _validate
from ._key_health import KeyHealth
from ._workers import Pool, Source
from .apikeys import (
    Key,
    KeyState,
    LaunchFailed,  # re-exported from here, as before
    SharedBuckets,
    clean_error,
    describe,
    make_keys,
    redact_value,
    text_of,
)
from .calls import Guard
from .errors import (
    AioflowsError,
    AllKeysQuarantined,
    InvalidArgument,
    InvalidArgumentType,
    OutputFileError,  # defined with the other errors, re-exported from here as before
    RateLimited,
)
from .jsonl import append, encode_line, faithful, finish, open_output, show, utc_text
from .limits import RateLike, as_rate
from .redislimits import RedisRateLimiter
from .retry import USE_DEFAULT, RetryLike, UseDefault, as_retry, throttle_delay, wait_cap
from .stores.base import ResultStore

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
#: Bytes up to which a write without an fsync is made in the event loop, not in a thread.
WRITE_INLINE = 64 * 1024

logger = logging.getLogger("aioflows.launcher")


@dataclass(frozen=True, slots=True)
class LaunchSummary:
    """What a run did.

    ``str(summary)`` is a table for a person (rounded, with the throughput and each key's
    share); ``repr`` the fields.

    Attributes:
        total: The (input, sample) pairs of the input.
        succeeded: Pairs that ran and succeeded in this run.
        failed: Pairs that failed for good in this run (recorded with their error).
        skipped: Pairs found done in ``output`` and not run again.
        retried: Calls made again after a failure or a throttle.
        duration_s: Seconds the run took.
        per_key: Calls made with each key, by label.
        quarantined: Labels of the keys taken out of the rotation (401/403 in a row).
        cached: Pairs of ``succeeded`` served from the cache, without a call.
        tokens: Tokens the calls reported (``key.report_usage``), over every key.
        cost: Their cost under ``price_per_1k_tokens`` (None without prices).
        tokens_per_key: Tokens reported on each key, by label (keys with reports).
        cost_per_key: The cost of each priced key's tokens, by label.
    """

    total: int
    succeeded: int
    failed: int
    skipped: int
    retried: int
    duration_s: float
    per_key: dict[str, int] = field(default_factory=dict)
    quarantined: tuple[str, ...] = ()
    cached: int = 0
    tokens: float = 0.0
    cost: float | None = None
    tokens_per_key: dict[str, float] = field(default_factory=dict)
    cost_per_key: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return _launch_display.summary_table(
            total=self.total,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            retried=self.retried,
            duration_s=self.duration_s,
            per_key=self.per_key,
            quarantined=self.quarantined,
            cached=self.cached,
            tokens=self.tokens,
            cost=self.cost,
            tokens_per_key=self.tokens_per_key,
            cost_per_key=self.cost_per_key,
        )


def _check_positive_int(value: object, what: str) -> int:
    return _validate.count(what, value)


class Launcher:
    """Run ``fn(sample, key)`` over many inputs, ``samples`` times each, across API keys.

    Usage::

        launcher = af.Launcher(ask, keys=api_keys, rate_per_key="60/min", output="out.jsonl")
        summary = await launcher.run(prompts)

    Args:
        fn: ``async fn(sample, key)``: ``sample`` is a copy of the input with its ``"sample"``
            number, ``key`` the :class:`Key` the call must use.
        keys: The API key strings, or a mapping of key string to that key's rate (None or
            ``"auto"``: learned, as below). Empty: one unlimited key, ``"default"``, whose
            secret is None.
        rate_per_key: Requests per unit of time for each key; None or ``"auto"``: learned
            from the provider's rate-limit headers (``x-ratelimit-*``,
            ``anthropic-ratelimit-*``), one call at a time per key until the first response
            says them, and unlimited if it says nothing (docs/launcher.md, "Limits from
            rate-limit headers"). The ``"default"`` key of a launcher without keys learns
            only with ``"auto"``.
        burst_per_key: The requests each key may send at once, its bucket's capacity (at
            least 1; None: one second's worth of its rate). ``1`` for an API that counts
            strictly per second: a full bucket of one second's worth at the start lets the
            first second see up to twice the rate.
        tokens_per_key: A token budget for each key, such as ``"90000/min"``, or ``"auto"``:
            learned from the headers; with ``cost``.
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
        progress: Show progress on stderr: a bar on a terminal, a plain line every few
            seconds elsewhere (a log file, CI); and the summary if the run is interrupted.
        shared: A :class:`~aioflows.RedisRateLimiter` where every key's request and token
            buckets live (named by a digest of the key), so that launcher processes on one
            machine or many that use the same keys stay within each key's limits together,
            and a throttle rests the key for all of them. The rates still come from
            ``rate_per_key``, ``keys`` and ``tokens_per_key``; only the buckets are shared
            (so keys without a rate stay unlimited, and ``"auto"`` is refused).
        cache: A :class:`~aioflows.ResultStore` (a ``LocalFileStore``, a ``RedisStore``...)
            that keeps what each successful call returned, across runs: a later (input,
            sample) whose input (what ``fn`` receives, but its id) was answered before, under
            the same ``cache_key``, is served from it without a call (``"cached": true`` in
            its record). See docs/launcher.md, "A request cache across runs".
        cache_key: Names the model and prompt version the cached answers are of (default:
            ``fn``'s module and qualified name); another one starts an empty cache.
        price_per_1k_tokens: The price of 1,000 reported tokens, one for every key or a
            mapping by key label (``{"key-0": 0.5}``; keys left out have no price): the cost
            shown beside the tokens in the summary, the progress and each record's ``usage``.

    Every argument is checked here, before anything runs; the input as :meth:`run` pulls it
    (a list or tuple whole, before the first call).

    Raises:
        ValueError, TypeError: A bad argument (``InvalidArgument``, ``InvalidArgumentType``).
    """

    def __init__(
        self,
        fn: LaunchFn,
        *,
        keys: Sequence[str] | Mapping[str, RateLike | None] = (),
        rate_per_key: RateLike | None = None,
        burst_per_key: float | None = None,
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
        shared: RedisRateLimiter | None = None,
        cache: ResultStore | None = None,
        cache_key: str | None = None,
        price_per_1k_tokens: float | Mapping[str, float] | None = None,
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
        if rate_per_key is not None and rate_per_key != _auto_limits.AUTO:
            as_rate(rate_per_key, "rate_per_key")
        if burst_per_key is not None:
            burst_per_key = _validate.number("burst_per_key", burst_per_key, low=1.0)
        self._fn = fn
        if shared is not None and not isinstance(shared, RedisRateLimiter):
            raise InvalidArgumentType(f"shared must be a RedisRateLimiter, got {shared!r}")
        self._keys = make_keys(
            keys, rate_per_key, tokens_per_key, burst=burst_per_key, learn=shared is None
        )
        self._shared = shared
        if shared is not None:
            for state in self._keys:
                state.shared = SharedBuckets(shared, state)
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
        self._cache, self._cache_key = _launch_cache.check(cache, cache_key, fn)
        self._prices = _usage.check_prices(price_per_1k_tokens, self._keys)

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

        Args:
            data: The inputs: dicts, each with a unique ``id_key`` field, from an iterable or
                an async iterable.

        Raises:
            ValueError: A bad input (not a dict, a missing or duplicate id), once reached.
            OutputFileError: ``output`` is not a launcher's JSONL file, or another launcher
                is writing it.
            LaunchFailed: With ``fault_tolerant=False``, the first pair that failed for good.
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
            handle, done = await anyio.to_thread.run_sync(open_output, self._output)
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
        run.source = source
        started = time.monotonic()
        try:
            # With a cache: read before the first call, saved as the run goes and at its end.
            await _launch_cache.running(run.cache, lambda: run.go(source.pairs))
        except (KeyboardInterrupt, anyio.get_cancelled_exc_class()):
            # Ctrl-C (asyncio.run cancels the main task) or a cancellation: say what was done
            # before it goes on up, so that an interrupted run ends with its summary.
            interrupted = run.summary(time.monotonic() - started)
            logger.info("launch interrupted:\n%s", interrupted)
            if self._progress:
                print(f"launch interrupted\n{interrupted}", file=sys.stderr, flush=True)
            raise
        summary = run.summary(time.monotonic() - started)
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
        "_before",
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
        self._before: int | None = None
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
        to_run = sum((item[id_key], s) not in done for item in self._list for s in samples)
        self._before = len(self._list) * self._samples - to_run
        return to_run

    @property
    def before(self) -> int:
        """Pairs found done in the output: all of a list's at once, a stream's as pulled."""
        return self.skipped if self._before is None else self._before

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
                f"input item #{index}: id {show(ident)} is not hashable"
            ) from None
        if duplicate:
            raise InvalidArgument(f"duplicate id {show(ident)} in the input (item #{index})")
        if not faithful(ident):  # the file is the resume state: an id must come back as is
            raise InvalidArgument(
                f"input item #{index}: id {show(ident)} cannot be written to the output and "
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
        # Counted as records are written, so that the progress agrees with the file.
        self.succeeded = self.failed = self.retried = self.finished = 0
        self.error: AioflowsError | None = None
        self.per_key = {k.label: 0 for k in launcher._keys}  # calls made with each, this run
        labels = list(self.per_key)
        self.health = KeyHealth(labels, blameless=labels == ["default"])
        self.source: _Input | None = None
        self.started = anyio.current_time()
        self.written = anyio.Event()
        self.send: MemoryObjectSendStream[_Finished]
        self.call = _KeyedCall(self)
        self.pool: Pool
        self.cached = 0  # pairs served from the cache, counted as written
        self.usage = _usage.Usage(launcher._prices)
        self.cache = (
            _launch_cache.RunCache(
                launcher._cache,
                launcher._cache_key,
                id_key=launcher._id_key,
                input_interface=launcher._input_interface,
                output_interface=launcher._output_interface,
                keys=launcher._keys,
            )
            if launcher._cache is not None
            else None
        )

    def summary(self, duration_s: float) -> LaunchSummary:
        source = self.source
        return LaunchSummary(
            total=source.total if source is not None else 0,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=source.skipped if source is not None else 0,
            retried=self.retried,
            duration_s=duration_s,
            per_key=dict(self.per_key),
            quarantined=tuple(self.health.quarantined),
            cached=self.cached,
            tokens=self.usage.tokens,
            cost=self.usage.cost,
            tokens_per_key=dict(self.usage.tokens_per_key),
            cost_per_key=dict(self.usage.cost_per_key),
        )

    def snapshot(self) -> _launch_display.Snapshot:
        """The counters as they stand, at once: what a progress line or frame shows."""
        return _launch_display.Snapshot(
            ok=self.succeeded,
            failed=self.failed,
            retried=self.retried,
            to_run=self.total,
            before=self.source.before if self.source is not None else 0,
            elapsed=anyio.current_time() - self.started,
            per_key=dict(self.per_key),
            quarantined=tuple(self.health.quarantined),
            cached=self.cached,
            tokens=self.usage.tokens,
            cost=self.usage.cost,
        )

    def all_keys_quarantined(self) -> None:
        """Nothing can succeed any more: stop the run, as ``fault_tolerant=False`` does."""
        if self.error is None:
            self.error = AllKeysQuarantined(tuple(self.health.quarantined))
        self.pool.cancel()

    async def go(self, pairs: Iterable[_Work] | AsyncIterable[_Work]) -> None:
        """Run the calls on the one worker pool while the writer writes what finishes."""
        concurrency = self.launcher._concurrency
        send, receive = anyio.create_memory_object_stream[_Finished](math.inf)
        self.send = send
        self.pool = Pool(self._work, Source(pairs), concurrency)
        failure: Exception | None = None
        lines = self.launcher._progress and not _on_a_terminal()
        completed = False
        try:
            # Closed here too: a writer cancelled before its first step has no finally to run.
            with receive:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._writer, receive)
                    if self.launcher._progress:
                        outer.start_soon(self._show_lines if lines else self._show_bar)
                    with send:
                        try:
                            await self.pool.run(
                                None if self.total is None else max(1, min(concurrency, self.total))
                            )
                        except Exception as exc:  # the input failed: a bad item, or its iterator
                            failure = exc  # raised once the writer has written what finished
            completed = failure is None and self.error is None
        finally:
            if lines:  # the last line, once everything that finished is written, however it ends
                end = "finished" if completed else "stopped"
                _print(_launch_display.plain_line(self.snapshot(), final=end))
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

    async def _pick(self, cost: float, avoid: KeyState | None = None) -> KeyState:
        """The key whose buckets free soonest (ties go round the keys), its buckets taken.

        Quarantined keys are left out; ``avoid`` (the key a retried call failed on) too, while
        another key is left.
        """
        launcher = self.launcher
        keys, alive = launcher._keys, self.health.alive
        if launcher._shared is not None:
            return await self._pick_shared(launcher._shared, cost, avoid)
        start = launcher._turn
        count = len(keys)
        launcher._turn = start + 1 if start + 1 < count else 0
        key = keys[start]
        # The key in turn, if it can go now: nothing frees sooner and ties go in turn, so it is
        # the pick, its buckets taken without a look at the others' (and without an await).
        if key is not avoid and alive(key.label) and key.take_now(cost):
            return key
        now = anyio.current_time()
        best: KeyState | None = None
        soonest = math.inf
        for i in range(count):
            candidate = keys[(start + i) % count]
            if candidate is avoid or not alive(candidate.label):
                continue
            wait = candidate.delay(cost, now)
            if best is None or wait < soonest:  # the first of equals: ties go in turn
                best, soonest = candidate, wait
        if best is not None:
            key = best
        elif avoid is not None and alive(avoid.label):
            key = avoid  # the only key left
        else:  # the run is stopping (all_keys_quarantined): wait for the cancellation
            await anyio.sleep_forever()
        rest = key.paused_until - now
        if rest > 0:
            await anyio.sleep(rest)
        if key.requests is not None:
            await key.requests.acquire()
        if key.tokens is not None and cost > 0:
            await key.tokens.acquire(min(cost, key.tokens.burst))
        return key

    async def _pick_shared(
        self, limiter: RedisRateLimiter, cost: float, avoid: KeyState | None
    ) -> KeyState:
        """:meth:`_pick` with the buckets in Redis: every key's delay in one round trip, then
        the chosen key's buckets taken (a round trip each). The same keys are candidates:
        quarantined ones left out, ``avoid`` too while another is left."""
        launcher = self.launcher
        start = launcher._turn
        launcher._turn = (start + 1) % len(launcher._keys)
        turn = [
            launcher._keys[(start + i) % len(launcher._keys)] for i in range(len(launcher._keys))
        ]
        live = [k for k in turn if self.health.alive(k.label)]
        if not live:  # the run is stopping (all_keys_quarantined): wait for the cancellation
            await anyio.sleep_forever()
        keys = [k for k in live if k is not avoid] or live
        start = 0
        if len(keys) == 1:
            key = keys[0]
        else:
            wanted = []
            for state in keys:
                buckets = state.shared
                assert buckets is not None  # set for every key with a shared limiter
                if buckets.requests is not None:
                    wanted.append((buckets.requests, 1.0))
                if buckets.tokens is not None and cost > 0:
                    wanted.append((buckets.tokens, min(cost, buckets.tokens.kr.burst)))
            found = await limiter._delays(wanted) if wanted else []
            waits = dict(zip((spec.name for spec, _ in wanted), found, strict=True))
            now = anyio.current_time()

            def delay(state: KeyState) -> float:
                buckets = state.shared
                assert buckets is not None
                wait = state.paused_until - now
                for spec in (buckets.requests, buckets.tokens):
                    if spec is not None:
                        wait = max(wait, waits.get(spec.name, 0.0))
                return wait

            best = min(range(len(keys)), key=lambda i: (delay(keys[(start + i) % len(keys)]), i))
            key = keys[(start + best) % len(keys)]
        rest = key.paused_until - anyio.current_time()
        if rest > 0:
            await anyio.sleep(rest)
        buckets = key.shared
        assert buckets is not None
        if buckets.requests is not None:
            await limiter._acquire(buckets.requests, 1.0)
        if buckets.tokens is not None and cost > 0:
            await limiter._acquire(buckets.tokens, min(cost, buckets.tokens.kr.burst))
        return key

    async def _call(self, item: dict[str, Any], sample: int) -> _Finished:
        launcher = self.launcher
        pair = _Pair(item, sample, item[launcher._id_key])
        started_at = time.time()  # formatted once the call is done: utc_text(), not datetime
        started = time.monotonic()
        output: Any = None
        error: str | None = None
        cache = self.cache
        if cache is not None:
            served = cache.serve(pair, started_at, started)  # a hit: no key, no call
            if served is not None:
                record, line, failure = served
                if failure is not None:
                    self._failed(failure, pair.ident, sample, "cache")
                await anyio.lowlevel.checkpoint()  # a run of hits still lets the rest run
                return record, line
        try:
            output = await self.call(pair)
        except Exception as exc:  # for good: retries spent, not retried, or the estimate failed
            throttled, asked = throttle_delay(exc)
            cap = wait_cap(self.call.retry)
            if throttled and asked is not None and asked > cap:
                # Not waited for (`Retry-After: 1000000000` is valid HTTP, and a spent daily
                # quota says "tomorrow"); the key rests for the cap, so later pairs still run.
                exc = _too_long(asked, cap)
            error = describe(exc, launcher._keys)
            self._failed(exc, pair.ident, sample, pair.key)
        ident, key_label = pair.ident, pair.key
        record = {
            "id": ident,
            "sample": sample,
            "key": key_label,
            "attempts": pair.attempts,
            "output": output,
            "error": error,
            "started_at": utc_text(started_at),
            "duration_s": round(time.monotonic() - started, 6),
        }
        if pair.tokens is not None:
            record["usage"] = _usage.Usage.of(pair)
        if cache is not None:
            record["cached"] = False
        try:
            if error is None:
                record["output"] = redact_value(output, launcher._keys)
            line = encode_line(record)
        except Exception as exc:  # a tuple as a dict key, a cycle, NaN, an object, 10**5000
            # The pair fails here, in its worker: the writer only ever gets lines it can write.
            not_json = TypeError(f"the output is not JSON ({text_of(exc)})")
            record["output"] = None
            record["error"] = error = describe(not_json, launcher._keys)
            self._failed(not_json, ident, sample, key_label)
            line = encode_line(record)  # the id was checked, the rest is ours: this one always goes
        if cache is not None and record["error"] is None:
            cache.put(pair, line)
        return record, line

    def _failed(self, exc: BaseException, ident: Any, sample: int, key: str) -> None:
        """Keep the first failure, as a clean error, when it is to stop the run."""
        launcher = self.launcher
        if not launcher._fault_tolerant and self.error is None:
            self.error = clean_error(exc, launcher._keys, ident, sample, key)

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
                    if sync or len(text) > WRITE_INLINE:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(append, handle, text, sync)
                    else:
                        # A few KiB into the page cache (written and flushed, as ever) cost
                        # less than the hop to a thread and back; an fsync always hops.
                        append(handle, text, False)
                    if sync:
                        last_sync = time.monotonic()
                    # Let results gather: one write per interval, not per finished call; woken
                    # on a whole multiple of the interval, a tick of the key buckets too
                    # (aioflows.limits._TICK), so the writer costs the loop no wake-up of its own.
                    await anyio.sleep(WRITE_EVERY - anyio.current_time() % WRITE_EVERY)
        finally:
            # Cancelled or done: what had finished is still written, then the file synced.
            rest = _take_ready(receive)
            receive.close()
            self._written(rest)
            try:
                if handle is not None:
                    text = b"".join(line for _, line in rest)
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(finish, handle, text)
            finally:
                self.written.set()

    def _written(self, batch: list[_Finished]) -> None:
        if self.keep:
            self.records.extend(record for record, _ in batch)
        self.finished += len(batch)
        failed = sum(record["error"] is not None for record, _ in batch)
        if self.cache is not None:
            self.cached += sum(record["cached"] for record, _ in batch)
        self.failed += failed
        self.succeeded += len(batch) - failed

    async def _show_bar(self) -> None:
        """On a terminal: a bar until the writer has written the last record.

        Drawn by the one live display (:class:`aioflows._display.LiveDisplay`, the flow's too:
        an anyio task redraws it, no thread), each frame made from one :meth:`snapshot`.
        Imported here: rich costs nothing to a run without a display.
        """
        from rich.console import Console

        from ._display import LiveDisplay

        console = Console(stderr=True)
        async with LiveDisplay(lambda: _launch_display.frame(self.snapshot()), console=console):
            await self.written.wait()

    async def _show_lines(self) -> None:
        """Off a terminal (a log file, CI, ``nohup``): a plain line every ``PLAIN_EVERY``
        seconds; :meth:`go` prints the last one."""
        while not self.written.is_set():
            with anyio.move_on_after(_launch_display.PLAIN_EVERY):
                await self.written.wait()
            if not self.written.is_set():
                _print(_launch_display.plain_line(self.snapshot()))


def _on_a_terminal() -> bool:
    """Whether stderr is where a redrawn bar can be read (a terminal, a notebook)."""
    from rich.console import Console

    console = Console(stderr=True)
    return console.is_terminal or console.is_jupyter


def _print(line: str) -> None:
    """A line on stderr as it is now (a test's capture, a redirected stream)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed stderr must not break the run
        logger.debug("the progress line could not be written")


class _Pair:
    """One (input, sample) as it goes through the guard: what its record will say."""

    __slots__ = (
        "argument",
        "attempts",
        "cost",
        "digest",
        "held",
        "ident",
        "item",
        "key",
        "prepared",
        "raw",
        "sample",
        "spent",
        "tokens",
    )

    def __init__(self, item: dict[str, Any], sample: int, ident: Any) -> None:
        self.item = item
        self.sample = sample
        self.ident = ident
        self.attempts = 0  # calls that counted: throttled ones are given back
        self.key = ""  # the label of the key of the last call
        self.prepared: dict[str, Any] = item
        self.cost = 0.0
        self.held: KeyState | None = None  # the key of the last call: a retry prefers another
        # The cache's: fn's argument made for the digest (its first attempt's), the digest,
        # and what fn returned (before output_interface).
        self.argument: dict[str, Any] | None = None
        self.digest: str | None = None
        self.raw: Any = None
        self.tokens: float | None = None  # what its attempts reported (key.report_usage)
        self.spent: float | None = None  # and what that cost, under price_per_1k_tokens


class _KeyedCall(Guard[_Pair, KeyState, Any]):
    """The launcher's calls through the one guarded loop (:class:`aioflows.calls.Guard`).

    Its "limiter" is the pick of a key: each attempt takes the key whose buckets free soonest,
    so a throttle rests only the key it came from and the pair goes again on any key; its
    hooks count the record's ``attempts``, the calls per key and the summary's ``retried``.
    """

    __slots__ = ("_run",)

    def __init__(self, run: _Run) -> None:
        super().__init__(run.launcher._retry, None)
        self._run = run

    async def enter(self, item: _Pair) -> KeyState:
        run = self._run
        prepared = dict(item.item)
        prepared["sample"] = item.sample
        # An estimate that fails is a failure of the pair, not retried (it would fail again).
        item.cost = _cost(run.launcher._cost, prepared)
        item.prepared = prepared
        key = await run._pick(item.cost, avoid=item.held)
        item.held = key
        item.key = key.label
        item.attempts += 1
        run.per_key[key.label] += 1
        return key

    async def attempt(self, item: _Pair, held: KeyState) -> Any:
        launcher = self._run.launcher
        argument, item.argument = item.argument, None  # made for the cache's digest: once
        if argument is None:
            argument = item.prepared
            if launcher._input_interface is not None:
                argument = launcher._input_interface(argument)
        key = Key(held, item.cost)
        reporting = _auto_limits.enter(key._report if held.auto is not None else None)
        try:
            output = await launcher._fn(argument, key)
        except Exception as exc:
            run = self._run
            if run.health.failed(held.label, exc) and run.health.all_dead:
                run.all_keys_quarantined()
            raise
        finally:
            if key.used is not None:
                self._run.usage.charge(item, held.label, key.used)
            _auto_limits.leave(held, reporting)
            if held.shared is not None:
                # What report_usage said goes to Redis now, even if the call was cancelled.
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await held.shared.settle(key.unsettled)
        self._run.health.succeeded(held.label)
        item.raw = output
        if launcher._output_interface is not None:
            output = launcher._output_interface(output)
        return output

    def throttled(self, item: _Pair, held: KeyState, seconds: float) -> bool | Awaitable[bool]:
        if held.shared is not None:
            return held.shared.pause(held, seconds)  # for every process using the key
        held.pause(seconds)
        return True  # the next pick waits, or takes another key

    def retrying(self, item: _Pair, held: KeyState, throttled: bool) -> None:
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


#: What a worker hands the writer: the record and its line, made in the worker, so that a
#: record that cannot be written fails its own pair and never the writer.
_Finished: TypeAlias = "tuple[dict[str, Any], bytes]"


def _run_once(
    make: Callable[Concatenate[LaunchFn, P], Launcher],
) -> Callable[Concatenate[LaunchFn, LaunchData, P], Awaitable[list[dict[str, Any]]]]:
    """``launch``, whose options are :class:`Launcher`'s own, written once: type checkers and
    IDEs take them from ``Launcher.__init__`` (a ParamSpec), ``help()`` from its signature."""

    async def launch(
        fn: LaunchFn, data: LaunchData, /, *args: P.args, **options: P.kwargs
    ) -> list[dict[str, Any]]:
        """Run a :class:`Launcher` once and return every record, in input and sample order
        (including those found done in ``output`` on resume).

        Usage::

            records = await af.launch(fn, data, keys=keys, rate_per_key="60/min")

        The options are those of :class:`Launcher`, with the same defaults and checks (and
        listed here from its docstring).

        Args:
            fn: ``async fn(sample, key)``, as :class:`Launcher` calls it.
            data: The inputs, as :meth:`Launcher.run` takes them.

        Returns:
            One record per (input, sample), the dicts the output file holds: ``id``,
            ``sample``, ``key`` (a label), ``attempts``, ``output``, ``error``,
            ``started_at`` and ``duration_s``; ``usage`` when ``fn`` reported some, and
            ``cached`` with a ``cache``.

        Raises:
            ValueError, TypeError: A bad option or input.
            OutputFileError: ``output`` is not a launcher's JSONL file, or is in use.
            LaunchFailed: With ``fault_tolerant=False``, the first pair that failed for good.
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
    launch.__doc__ = _with_options(launch.__doc__ or "", make.__doc__ or "")
    return launch


def _with_options(doc: str, options_doc: str) -> str:
    """``doc`` with the ``Args:`` entries of ``options_doc`` but its first (``fn``) after its own:
    ``help(af.launch)`` and the API reference list every option, written once in Launcher's."""
    if "Args:" not in doc or "Args:" not in options_doc:
        return doc  # python -OO: no docstrings to join
    own, options = inspect.cleandoc(doc).splitlines(), inspect.cleandoc(options_doc).splitlines()
    start = options.index("Args:") + 1
    end = options.index("", start) if "" in options[start:] else len(options)
    entries = options[start:end]
    second = next(i for i, line in enumerate(entries[1:], 1) if not line.startswith("     "))
    at = own.index("Args:") + 1
    at = own.index("", at) if "" in own[at:] else len(own)
    return "\n".join([*own[:at], *entries[second:], *own[at:]])


#: ``await af.launch(fn, data, **options)``: a :class:`Launcher` with those options, run once.
launch = _run_once(Launcher)
