"""Served requests: their records, their states, and the book that holds them until they expire.

A request moves PENDING → STARTED → SUCCESS | FAILURE | CANCELLED (Scale Launch's names). The
:class:`Book` keeps every request the server knows, in memory, and — with a persistent store —
writes each record through it at each step, so that a restarted server (even after ``kill -9``)
serves the finished ones until they expire and runs the unfinished ones again.

Memory stays bounded by ``result_ttl``: finished requests expire in the order they finished
(one TTL for all, so a FIFO is an expiry queue, no heap), swept on every finish and by the
server's sweeper, and an expired request is a 404 even between sweeps. Waiting for a request
(``?wait=``, ``/predict``) parks on a future of the request's, made only when someone waits,
and resolved only once the final record is in the store: a client told SUCCESS can always read
the result back, from this replica or another sharing the store. The futures and their timers
are asyncio's own, not an anyio Event under a cancel scope: a wait is on the path of every
``/predict``, and the scope alone cost more than the rest of the wait (``docs/benchmarks.md``,
Serving).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import enum
import functools
import gc
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import MissingObject
from ..stores import MemoryStore, ResultStore

__all__ = ["FINAL", "Book", "Record", "State", "new_id"]

logger = logging.getLogger("aioflows.serving")

#: Where request records live in a store: one "run" holding one object per request id.
STORE_TASK = "aioflows-serving"
STORE_RUN = "requests"


class State(str, enum.Enum):
    """A request's state, as the routes report it."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"


FINAL = frozenset({State.SUCCESS, State.FAILURE, State.CANCELLED})


def new_id() -> str:
    """An unguessable request id: 122 random bits, so ids cannot be enumerated.

    It is ``uuid.uuid4().hex`` (the version and variant bits set as uuid4 sets them) without
    the ``UUID`` object, a third of the cost on the path of every request.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


@dataclass(slots=True, eq=False)
class Record:
    """One request: what it asked, where it stands, what it gave. Times are Unix seconds."""

    id: str
    endpoint: str
    body: Any
    state: State = State.PENDING
    result: Any = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    #: How many times it was started: more than 1 after a restart ran it again.
    attempts: int = 0
    #: Whether its FAILURE is the endpoint's timeout (``/predict`` answers 504, not 500).
    timed_out: bool = False
    #: A ``/predict`` request: its HTTP request is its lifetime, so it is never written to the
    #: store, and it is forgotten once answered unless it failed (its id is in the error).
    ephemeral: bool = False
    #: ``result`` as the JSON text it was checked as: what ``/predict`` answers, unencoded again.
    result_json: str | None = None
    #: The futures of those waiting for the final state; made when someone waits (most
    #: requests are polled or never waited on), resolved and dropped once the final record is
    #: written.
    waiters: list[asyncio.Future[None]] | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/requests/{id}`` answers."""
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "state": self.state.value,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
        }

    def stored(self) -> dict[str, Any]:
        """What the store keeps: the public record, the body (to run it again) and the kind
        of failure."""
        data = self.public()
        data["body"] = self.body
        data["timed_out"] = self.timed_out
        return data

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Record:
        return cls(
            id=data["id"],
            endpoint=data["endpoint"],
            body=data.get("body"),
            state=State(data["state"]),
            result=data.get("result"),
            error=data.get("error"),
            created_at=data["created_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            attempts=data.get("attempts", 0),
            timed_out=data.get("timed_out", False),
        )


class Book:
    """Every request the server knows, by id, with write-through to a persistent store.

    Args:
        store: Where records are written (None or a MemoryStore: nowhere; memory only).
        ttl: Seconds a finished request is kept, from its ``finished_at``.
    """

    def __init__(self, store: ResultStore | None, ttl: float) -> None:
        self.store = None if store is None or isinstance(store, MemoryStore) else store
        self.ttl = ttl
        self._records: dict[str, Record] = {}
        self._expiry: collections.deque[Record] = collections.deque()
        self._peak = 0
        #: Whether the last compaction left requests behind: the book is compacted once more
        #: when they are gone too, or what they hold would keep what the first one freed.
        self._residue = False

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: Record) -> None:
        self._records[record.id] = record
        if len(self._records) > self._peak:
            self._peak = len(self._records)

    def forget(self, records: Iterable[Record]) -> None:
        """Drop requests that were not accepted after all (their write failed)."""
        for record in records:
            self._records.pop(record.id, None)

    async def write(self, record: Record) -> None:
        """Write ``record`` through to the store, if there is one (and it is not ephemeral)."""
        if self.store is not None and not record.ephemeral:
            await self.store.save(
                record.stored(), record.id, task=STORE_TASK, config_hash=STORE_RUN
            )

    async def write_all(self, records: list[Record]) -> None:
        """Write many records, a few at once (a batch submission answers once all are in)."""
        if self.store is None or all(record.ephemeral for record in records):
            return
        from ..concurrency import map as map_

        await map_(self.write, records, concurrency=16)

    def local(self, request_id: str) -> Record | None:
        """The record in this server's memory, unless it has expired."""
        record = self._records.get(request_id)
        if record is not None and self._expired(record, time.time()):
            return None
        return record

    async def get(self, request_id: str) -> Record | None:
        """The record, from memory or else from the store (another replica's request)."""
        record = self.local(request_id)
        if record is not None or self.store is None:
            return record
        return await self._load(request_id)

    async def _load(self, request_id: str) -> Record | None:
        assert self.store is not None
        try:
            data = await self.store.load(request_id, task=STORE_TASK, config_hash=STORE_RUN)
        except (MissingObject, ValueError, TypeError):  # unknown, or not a usable store key
            return None
        record = Record.from_stored(data)
        return None if self._expired(record, time.time()) else record

    async def wait(self, record: Record, seconds: float) -> Record:
        """``record`` once final or after ``seconds``, whichever comes first."""
        if record.final or seconds <= 0:
            return record
        if record.id not in self._records:  # another replica's: only the store can tell
            return await self._poll(record, seconds)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if record.waiters is None:
            record.waiters = [waiter]
        else:
            record.waiters.append(waiter)
        timer = None if seconds == math.inf else loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if record.waiters is not None:  # not woken by finish: timed out or cancelled
                with contextlib.suppress(ValueError):
                    record.waiters.remove(waiter)
        return record

    async def _poll(self, record: Record, seconds: float) -> Record:
        """Wait for another replica's request by reading the store now and then: no event
        crosses processes. Backs off from 50 ms to 1 s."""
        deadline, pause = anyio.current_time() + seconds, 0.05
        while not record.final and (left := deadline - anyio.current_time()) > 0:
            await anyio.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)
            fresh = await self._load(record.id)
            if fresh is None:
                break
            record = fresh
        return record

    async def finish(self, record: Record) -> None:
        """Record a final state: write it, then wake whoever waits, then queue its expiry."""
        record.finished_at = time.time()
        try:
            await self.write(record)
        except Exception:  # the request is over whatever the store says; say so in the log
            logger.exception("could not write the final record of request %s", record.id)
        finally:
            _wake_all(record)
            if record.ephemeral and record.state is State.SUCCESS:
                self._records.pop(record.id, None)
            else:
                self._expiry.append(record)
            self.sweep()

    def abandon(self, record: Record) -> None:
        """The server stopped before ``record`` finished: CANCELLED here (waiters are told),
        and left as it is in the store, where a restart finds it unfinished."""
        record.state, record.finished_at = State.CANCELLED, time.time()
        record.error = "the server stopped before the request finished"
        _wake_all(record)

    def sweep(self) -> list[str]:
        """Forget the requests whose TTL has passed; return their ids, whose copies in the
        store are the caller's to delete (none without a store). Only the ids, and only for a
        store: what the requests held must be gone before their memory is handed back."""
        now, expiry, records, gone = time.time(), self._expiry, self._records, []
        keep_ids, count, request_id = self.store is not None, 0, ""
        while expiry and self._expired(expiry[0], now):
            request_id = expiry[0].id
            if records.get(request_id) is expiry[0]:
                del records[request_id]
            expiry.popleft()
            count += 1
            if keep_ids:
                gone.append(request_id)
        request_id = ""  # not even the last one is kept
        if count and (
            (self._peak > 4096 and len(self._records) < self._peak // 4)
            or (self._residue and not self._records)
        ):
            # A dict never shrinks its table by deletion: copy it once it is mostly empty, and
            # hand the freed memory back to the system.
            self._records = dict(self._records)
            self._expiry = collections.deque(self._expiry)
            self._peak = len(self._records)
            self._residue = bool(self._records)
            _release_memory()
        return gone

    async def delete(self, request_ids: Iterable[str]) -> None:
        """Delete expired records from the store."""
        if self.store is None:
            return
        for request_id in request_ids:
            with contextlib.suppress(MissingObject):
                await self.store.delete(request_id, task=STORE_TASK, config_hash=STORE_RUN)

    async def recover(self) -> list[Record]:
        """Load what the store kept: finished requests are served until they expire (expired
        ones are deleted); unfinished ones are returned, PENDING, to be run again."""
        if self.store is None:
            return []
        try:
            stored = await self.store.get_results(task=STORE_TASK, config_hash=STORE_RUN)
        except MissingObject:
            return []
        now, again, expired = time.time(), [], []
        finished: list[Record] = []
        for data in stored.values():
            record = Record.from_stored(data)
            if record.final:
                if self._expired(record, now):
                    expired.append(record)
                else:
                    finished.append(record)
                    self.add(record)
            else:
                record.state, record.started_at = State.PENDING, None
                again.append(record)
                self.add(record)
        finished.sort(key=lambda r: r.finished_at or 0.0)
        self._expiry.extend(finished)
        await self.delete([record.id for record in expired])
        return again

    def _expired(self, record: Record, now: float) -> bool:
        finished = record.finished_at
        return finished is not None and now - finished >= self.ttl


def _wake_all(record: Record) -> None:
    """Wake whoever waits for ``record``, once."""
    waiters, record.waiters = record.waiters, None
    if waiters is not None:
        for waiter in waiters:
            _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _release_memory() -> None:
    """Give the memory of many freed requests back to the system.

    A full collection first: it empties the interpreter's free lists (floats, dicts, lists,
    tuples), which keep the last requests' blocks; each such block keeps its 1 MiB arena of
    the small-object allocator, and so did most of the arenas of 100,000 expired requests
    (``docs/benchmarks.md``, Serving). Then glibc's ``malloc_trim``, which returns the free
    pages of its own heap (a no-op elsewhere).
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], object] | None:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], object] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim
