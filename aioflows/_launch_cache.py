"""The launcher's request cache across runs: answers kept in any ResultStore, by a digest.

An (input, sample) is looked up by the SHA-256 of the canonical JSON (sorted keys, no spaces)
of ``[cache_key, sample, input]``, where the input is what ``fn`` receives (after
``input_interface``) without its id field: another file may number the same input differently,
and the answer is the same. Neither a key nor its secret is part of it. What is kept is what
``fn`` returned (secrets replaced by ``<key-N>``, as in records), so ``output_interface`` is
applied on the way out, in the run that called and in every run served: a change to it needs
no new ``cache_key``. Only pairs that succeeded are kept.

The store holds the cache as *segments*: objects of many entries each (type ``bytes``), under
the task :data:`TASK` and one config hash per ``cache_key`` (a digest of it). A segment is a
header line, then one line per entry: its digest, a space, and a JSON object whose ``output`` is
the answer. That object is the pair's own record line when there is no ``output_interface``
(the record's output *is* what ``fn`` returned, redacted), so an answer is encoded as JSON once,
not once for the output file and once more for the cache. A run reads every segment of its
``cache_key`` once, when it starts, keeps the entries' lines as they are, and decodes one only
when it is a hit; what its calls return is gathered and saved as one new segment every
:data:`FLUSH_EVERY` seconds (or :data:`FLUSH_AT` entries) and when the run ends. One object per
entry would cost a store write (a file, an fsync, a rename) and a lookup per call, several times
what the launcher itself spends on one; a segment costs that once per second. Segment names are
unique per writer, so launchers on one machine or many may share a cache; each sees the entries
saved before it started. A ``kill -9`` loses the entries of the last second at most (their pairs
are in the output file, or are called again). When a run ends with more than
:data:`COMPACT_AT` segments read or written, it saves what it knows as one segment and deletes
the ones it merged.

A store that fails never fails a call: a read error is a miss (logged once, as a warning), a
write error is logged and the entries are lost (called again by a later run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import anyio

from .apikeys import KeyState, describe, redact_value, text_of
from .errors import InvalidArgument, InvalidArgumentType
from .jsonl import encode_line, utc_text
from .stores.base import ResultStore

__all__ = [
    "COMPACT_AT",
    "FLUSH_AT",
    "FLUSH_EVERY",
    "HEADER",
    "TASK",
    "RunCache",
    "check",
    "entries",
    "hash_of",
    "output_of",
]

#: The store task every launcher cache lives under.
TASK = "launcher-cache"
#: Seconds between two segment writes while a run goes.
FLUSH_EVERY = 1.0
#: Entries that make a segment written at once, before FLUSH_EVERY is up.
FLUSH_AT = 5000
#: Segments of one cache_key beyond which a run that ends merges them into one.
COMPACT_AT = 64
#: A segment's first line (a reader skips a segment that does not start with it).
HEADER = b"aioflows launcher cache 1\n"

logger = logging.getLogger("aioflows.launcher")


class _Cached(Protocol):
    """What a pair carries for the cache (the launcher's ``_Pair``)."""

    ident: Any
    sample: int
    item: dict[str, Any]
    argument: dict[str, Any] | None
    digest: str | None
    raw: Any


def check(cache: object, cache_key: object, fn: Callable[..., Any]) -> tuple[Any, str]:
    """The store and the cache key (default: ``fn``'s qualified name), or a clear error."""
    if cache is None:
        if cache_key is not None:
            raise InvalidArgument("cache_key names the entries of a cache: it needs cache=")
        return None, ""
    if not isinstance(cache, ResultStore):
        raise InvalidArgumentType(
            f"cache must be a ResultStore (LocalFileStore, RedisStore...), got {cache!r:.80}"
        )
    if cache_key is None:
        module = getattr(fn, "__module__", None) or type(fn).__module__
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return cache, f"{module}.{name}"
    if not isinstance(cache_key, str):
        raise InvalidArgumentType(f"cache_key must be a str, got {cache_key!r:.80}")
    if not cache_key:
        raise InvalidArgument("cache_key must be a non-empty str")
    return cache, cache_key


def hash_of(cache_key: str) -> str:
    """The store config hash that holds one ``cache_key``'s segments."""
    return hashlib.sha256(cache_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


#: Canonical JSON: one encoder made once (``json.dumps`` with options makes one a call).
_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _digest(argument: Any, id_key: str | None, sample: int, cache_key: str) -> str:
    body = (
        {k: v for k, v in argument.items() if k != id_key}
        if id_key is not None and isinstance(argument, Mapping)
        else argument
    )
    text = _canonical([cache_key, sample, body])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def entries(segment: object) -> dict[str, bytes] | None:
    """A segment's entries, digest to its whole line; None if it is not a segment of ours.

    An entry is kept as the line it is in a segment (``<digest> <JSON>\\n``), so that a
    segment is its lines joined, and only a hit is decoded (:func:`output_of`).
    """
    if not isinstance(segment, bytes) or not segment.startswith(HEADER):
        return None
    found = {}
    for line in segment[len(HEADER) :].splitlines(keepends=True):
        if len(line) > 66 and line[64:65] == b" " and line.endswith(b"\n"):
            found[line[:64].decode("ascii", "replace")] = line
    return found


def output_of(line: bytes) -> Any:
    """The answer an entry's line holds (``ValueError``, ``KeyError``... if it holds none)."""
    return json.loads(line[65:])["output"]


class RunCache:
    """One run's view of the cache: the entries read at its start, and those it adds."""

    __slots__ = (
        "_config",
        "_entries",
        "_id_key",
        "_input_interface",
        "_keys",
        "_output_interface",
        "_pending",
        "_segments",
        "_store",
        "_warned",
        "cache_key",
        "full",
    )

    def __init__(
        self,
        store: ResultStore,
        cache_key: str,
        *,
        id_key: str,
        input_interface: Callable[[dict[str, Any]], dict[str, Any]] | None,
        output_interface: Callable[[Any], Any] | None,
        keys: Sequence[KeyState],
    ) -> None:
        self._store = store
        self.cache_key = cache_key
        self._config = hash_of(cache_key)
        self._id_key = id_key
        self._input_interface = input_interface
        self._output_interface = output_interface
        self._keys = keys
        self._entries: dict[str, bytes] = {}  # digest: its segment line (see entries())
        self._pending: dict[str, bytes] = {}
        self._segments: list[str] = []  # the names read and written by this run
        self._warned: set[str] = set()
        self.full = anyio.Event()  # FLUSH_AT entries are waiting

    def _warn(self, what: str, message: str, *args: Any) -> None:
        """Log ``message`` once per run and kind: a store down must not flood the log."""
        if what not in self._warned:
            self._warned.add(what)
            logger.warning(message, *args)

    # --- reading -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read every segment of this cache_key (a read error: an empty cache, logged)."""
        try:
            found = await self._store.get_results(task=TASK, config_hash=self._config)
        except Exception as exc:
            self._warn(
                "read",
                "the launcher cache could not be read (every pair is a miss): %s",
                describe(exc, self._keys),
            )
            return
        for name, segment in found.items():
            lines = entries(segment)
            if lines is None:
                self._warn("format", "the launcher cache holds objects it does not know: skipped")
                continue
            self._entries.update(lines)
            self._segments.append(name)

    def serve(
        self, pair: _Cached, started_at: float, started: float
    ) -> tuple[dict[str, Any], bytes, Exception | None] | None:
        """A hit's record, line and failure (its ``output_interface`` raised), or None.

        On a miss the pair keeps its argument and digest, for the call and :meth:`put`. An
        input whose digest cannot be made (``input_interface`` raised, not JSON) is a miss
        with no digest: the call goes as without a cache, and its answer is not kept.
        """
        argument: Any = None  # made here only for input_interface (then not made again)
        try:
            if self._input_interface is None:
                # What fn is given (as _KeyedCall.enter makes it), but its id: one dict.
                body = {k: v for k, v in pair.item.items() if k != self._id_key}
                body["sample"] = pair.sample
                digest = _digest(body, None, pair.sample, self.cache_key)
            else:
                argument = dict(pair.item)
                argument["sample"] = pair.sample
                argument = self._input_interface(argument)
                digest = _digest(argument, self._id_key, pair.sample, self.cache_key)
        except Exception as exc:
            self._warn(
                "digest",
                "an input the launcher cache cannot digest (%s): it is called, and not kept",
                describe(exc, self._keys),
            )
            pair.argument, pair.digest = None, None
            return None
        line = self._entries.get(digest)
        stored: Any = _MISS
        if line is not None:
            try:
                stored = output_of(line)
            except (ValueError, TypeError, KeyError):
                self._warn("entry", "the launcher cache holds entries it cannot read: misses")
        if stored is _MISS:
            pair.argument, pair.digest = argument, digest
            return None
        record: dict[str, Any] = {
            "id": pair.ident,
            "sample": pair.sample,
            "key": None,
            "attempts": 0,
            "output": None,
            "error": None,
            "started_at": utc_text(started_at),
            "duration_s": 0.0,
            "cached": True,
        }
        failure: Exception | None = None
        try:
            output = stored
            if self._output_interface is not None:
                output = self._output_interface(output)
        except Exception as exc:  # as a call's output_interface would: the pair fails
            failure = exc
        else:
            record["output"] = redact_value(output, self._keys)
            record["duration_s"] = round(time.monotonic() - started, 6)
            try:
                return record, encode_line(record), None
            except Exception as exc:  # what output_interface made of it is not JSON
                failure = TypeError(f"the output is not JSON ({text_of(exc)})")
        record["output"] = None
        record["error"] = describe(failure, self._keys)
        return record, encode_line(record), failure

    # --- writing -----------------------------------------------------------------------------

    def put(self, pair: _Cached, line: bytes) -> None:
        """Keep a succeeded pair's answer, to be saved with the next segment.

        ``line`` is its record's: with no ``output_interface`` its output is what ``fn``
        returned, redacted, so the line is kept as it is (encoded once, for both).
        """
        digest = pair.digest
        if digest is None:
            return
        if self._output_interface is not None:
            try:
                line = encode_line({"output": redact_value(pair.raw, self._keys)})
            except Exception:  # a set, an object, NaN: what output_interface made JSON of
                self._warn("json", "answers that are not JSON are not kept in the launcher cache")
                return
        line = digest.encode() + b" " + line  # as a segment holds it: one join saves them
        self._entries[digest] = line
        self._pending[digest] = line
        if len(self._pending) >= FLUSH_AT:
            self.full.set()

    async def flush(self) -> None:
        """Save what is pending as one segment (a write error: logged, the entries lost)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        if self.full.is_set():
            self.full = anyio.Event()
        name = f"{time.time_ns():x}-{os.getpid():x}-{secrets.token_hex(6)}"
        try:
            await self._save(name, pending)
        except Exception as exc:
            self._warn(
                "write",
                "the launcher cache could not be written (these answers are not kept): %s",
                describe(exc, self._keys),
            )
            return
        self._segments.append(name)

    async def _save(self, name: str, lines: dict[str, bytes]) -> None:
        data = b"".join([HEADER, *lines.values()])  # one copy of megabytes, not two
        await self._store.save(data, name, task=TASK, config_hash=self._config, type_="bytes")

    async def compact(self) -> None:
        """Merge this cache_key's segments into one when there are many (a run's end)."""
        merged = list(self._segments)
        if len(merged) <= COMPACT_AT:
            return
        name = f"{time.time_ns():x}-{os.getpid():x}-{secrets.token_hex(6)}"
        try:
            # The merged segment is saved first: whoever reads meanwhile sees an entry twice.
            await self._save(name, dict(self._entries))
            for old in merged:
                await self._store.delete(old, task=TASK, config_hash=self._config)
        except Exception as exc:
            self._warn(
                "compact",
                "the launcher cache could not be compacted: %s",
                describe(exc, self._keys),
            )
            return
        self._segments = [name]

    async def _flusher(self) -> None:
        while True:
            with anyio.move_on_after(FLUSH_EVERY):
                await self.full.wait()
            # Shielded: the entries are taken from pending when the save starts.
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await self.flush()


class _Miss:
    __slots__ = ()


_MISS = _Miss()


async def running(cache: RunCache | None, work: Callable[[], Awaitable[None]]) -> None:
    """``work()`` (the run) with the cache: read before the first call, saved as it goes and
    at the end.

    The last segment is saved however the run ends (shielded, for at most 30 s): the answers
    of a run stopped by Ctrl-C are kept too. What ``work`` raises is raised as it is, not in
    an exception group: the flusher's task group only ever ends cancelled.
    """
    if cache is None:
        await work()
        return
    await cache.load()
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(cache._flusher)
            try:
                await work()
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # raised below, once the flusher has stopped
                failure = exc
            finally:
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await cache.flush()
            await cache.compact()
    if failure is not None:
        raise failure
