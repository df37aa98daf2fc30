"""RedisStore: results and TaskInfo records in a Redis server, shared by every process using it.

Layout (stable; see docs/stores.md), every key under ``prefix`` (default ``"aioflows"``)::

    <prefix>:run:<task>/<config_hash>   a hash: one field per saved object, plus the field
                                        "_taskinfo" holding the run's TaskInfo record (JSON)
    <prefix>:infos:<task>               a set: the config hashes of <task> that have a record
    <prefix>:tasks                      a set: the tasks that have an ``infos`` set

An object's field value is its type's extension, a NUL byte, then the bytes the type's ``save``
made (the extension is how LocalFileStore tells types apart too; it never holds a NUL). Neither
a task nor a config hash may hold ``/``, so ``<task>/<config_hash>`` names one run only.

One run is one hash, so each object operation is one command on one key: ``save`` is one
``HSET`` (atomic: a reader sees the old value or the new one, never a mix, also across
processes), ``load`` one ``HGET``, ``exists`` one ``HEXISTS``, ``delete`` one ``HDEL``: one
round trip each. ``get_results`` is one ``HGETALL``. A record is written together with its index
entries in one ``MULTI``/``EXEC``, and ``delete_run`` is one Lua script (removing the run, its
index entry, and the task from ``tasks`` once it has no records left), so the index never lists
a run that has no record nor misses one that has. Records are listed from the index sets
(``SMEMBERS``, then every record in one pipelined round trip), never with ``KEYS``.

Keys, field names and set members are built here as bytes (UTF-8, lone surrogates passed
through), so every str the key checks accept is a usable key and reads back as the same str.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Final

import pydantic
import pydantic_core

from .. import _redis
from ..errors import CorruptObject, InvalidArgument, InvalidArgumentType
from . import jsontext
from .base import INFO_NAME, MISSING, ResultStore, check_part
from .records import RawInfos, TaskInfo, from_micros
from .types import StoreType

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStore"]

_INFO: Final = INFO_NAME.encode()
_SEP: Final = b"\0"

# KEYS: the run, the task's infos set, the tasks set; ARGV: the config hash, the task.
_DELETE_RUN: Final = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 then
    redis.call('SREM', KEYS[3], ARGV[2])
end
return 0
"""


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _s(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "surrogatepass")


def _raw(data: bytes | str) -> bytes:
    # redis-py's annotations allow str for clients with decode_responses, which is refused.
    return data if isinstance(data, bytes) else _b(data)


class RedisStore(ResultStore):
    """Results in Redis, one hash per (task, config_hash) run; see the module docstring.

    Args:
        url_or_client: A ``redis://`` URL (the store makes a client and closes it in
            :meth:`aclose` or at the end of ``async with store:``), or a
            ``redis.asyncio.Redis`` client, which stays the caller's: the store never closes
            it. The client must return bytes (not ``decode_responses=True``): stored objects
            are bytes.
        prefix: Leads every key the store writes, so several stores (or applications) can
            share one database. Two stores with the same prefix on one server see the same
            results.

    Every failure to talk to Redis (refused, reset, timed out, a server error) is raised as
    :class:`~aioflows.errors.RedisUnavailable`. Runs on asyncio (redis-py's client does).
    """

    def __init__(self, url_or_client: Any, *, prefix: str = "aioflows") -> None:
        if not isinstance(prefix, str):
            raise InvalidArgumentType(f"prefix must be a str, got {type(prefix).__name__}")
        if not prefix:
            raise InvalidArgument("prefix must be a non-empty str")
        self._redis, self._owned = _redis.client(url_or_client, "RedisStore")
        if self._redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise InvalidArgument(
                "RedisStore needs a client that returns bytes: this one has "
                "decode_responses=True, which cannot read pickled or binary objects back"
            )
        self._shown = (
            _redis.redacted(url_or_client)
            if isinstance(url_or_client, str)
            else _redis.address(self._redis)
        )
        self._prefix = prefix
        self._p = _b(prefix) + b":"
        self._tasks_key = self._p + b"tasks"
        self._url = url_or_client if self._owned else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delete_run_script = self._redis.register_script(_DELETE_RUN)

    @property
    def prefix(self) -> str:
        """What every key of this store starts with (before a ``:``)."""
        return self._prefix

    @property
    def redis(self) -> Redis:
        """The client the store talks through (its own for this event loop, or the one passed
        in)."""
        return self._client()

    def __repr__(self) -> str:
        return f"RedisStore({self._shown!r}, prefix={self._prefix!r})"

    def _client(self) -> Redis:
        """The client, for the running event loop.

        redis-py's connections belong to the loop that opened them. A client the store made
        from a URL is made again for a new loop, so a store used in one ``asyncio.run`` after
        another keeps working (close it in each, with ``async with store:``, so that no
        connection of a finished loop is left open). A client passed in is used as it is.
        """
        if self._url is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # outside any loop (the `redis` property): as it is
                return self._redis
            if loop is not self._loop:
                if self._loop is not None:
                    self._redis = _redis.client(self._url, "RedisStore")[0]
                self._loop = loop
        return self._redis

    async def aclose(self) -> None:
        """Close the client if the store made it from a URL; a client passed in stays open."""
        if self._owned:
            await self._client().aclose()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- keys --------------------------------------------------------------------------------

    def _run_key(self, task: str, config_hash: str) -> bytes:
        return self._p + b"run:" + _b(task) + b"/" + _b(config_hash)

    def _infos_key(self, task: str) -> bytes:
        return self._p + b"infos:" + _b(task)

    def _where(self, key: bytes, field: bytes) -> str:
        return f"redis {self._shown} key {_s(key)!r} field {_s(field)!r}"

    # -- objects -----------------------------------------------------------------------------

    async def _save(
        self, obj: Any, name: str, task: str, config_hash: str, type_: StoreType
    ) -> None:
        value = _b(type_.extension) + _SEP + type_.encode(obj, name)
        redis = self._client()
        with _redis.unavailable(redis):
            await redis.hset(self._run_key(task, config_hash), _b(name), value)

    def _decode(self, key: bytes, field: bytes, value: bytes) -> Any:
        extension, sep, data = value.partition(_SEP)
        if sep:
            for stype in self._types:
                if _b(stype.extension) == extension:
                    return stype.decode(data, self._where(key, field))
            reason = f"its type (extension {_s(extension)!r}) is not registered in this store"
        else:
            reason = "it has no type (not written by a RedisStore)"
        raise CorruptObject(self._where(key, field), reason)

    async def _load(self, name: str, task: str, config_hash: str) -> Any:
        key, field, redis = self._run_key(task, config_hash), _b(name), self._client()
        with _redis.unavailable(redis):
            value = await redis.hget(key, field)
        return MISSING if value is None else self._decode(key, field, _raw(value))

    async def _exists(self, name: str, task: str, config_hash: str) -> bool:
        redis = self._client()
        with _redis.unavailable(redis):
            return bool(await redis.hexists(self._run_key(task, config_hash), _b(name)))

    async def _delete(self, name: str, task: str, config_hash: str) -> None:
        # A hash whose last field goes is removed by Redis itself: nothing is left behind.
        redis = self._client()
        with _redis.unavailable(redis):
            await redis.hdel(self._run_key(task, config_hash), _b(name))

    async def _delete_run(self, task: str, config_hash: str) -> None:
        keys = [self._run_key(task, config_hash), self._infos_key(task), self._tasks_key]
        args = [_b(config_hash), _b(task)]
        redis = self._client()
        with _redis.unavailable(redis):
            await self._delete_run_script(keys=keys, args=args, client=redis)

    async def _get_results(self, task: str, config_hash: str) -> dict[str, Any]:
        key, redis = self._run_key(task, config_hash), self._client()
        with _redis.unavailable(redis):
            fields = await redis.hgetall(key)
        return {
            _s(field): self._decode(key, _raw(field), _raw(value))
            for field, value in fields.items()
            if field != _INFO
        }

    # -- records -----------------------------------------------------------------------------

    async def _save_info(self, info: TaskInfo) -> None:
        data = info.to_bytes()
        await self._write_infos(info.task, [(info.config_hash, data)])

    async def _save_advice(self, batch: RawInfos) -> None:
        """Write a stopped flow's KILLED records in one transaction, one round trip.

        The rows are checked as every key is and encoded straight from their columns, without
        building a TaskInfo each (see :class:`RawInfos`); they are validated when read. In
        Redis advice costs no more than a record, so it is stored as one: whichever of a
        record and advice was written last is what a run reads.
        """
        check_part("task", batch.task)
        for config_hash in batch.config_hash:
            # A flow's hashes are short hex: alphanumeric ASCII is always a usable part.
            if not (type(config_hash) is str and config_hash.isascii() and config_hash.isalnum()):
                check_part("config_hash", config_hash)
        if len(batch):
            await self._write_infos(batch.task, _advice_rows(batch))

    async def _write_infos(self, task: str, rows: list[tuple[str, bytes]]) -> None:
        redis = self._client()
        pipe = redis.pipeline(transaction=True)
        for config_hash, data in rows:
            pipe.hset(self._run_key(task, config_hash), _INFO, data)
        pipe.sadd(self._infos_key(task), *(_b(config_hash) for config_hash, _ in rows))
        pipe.sadd(self._tasks_key, _b(task))
        with _redis.unavailable(redis):
            await pipe.execute()

    def _parse_info(self, key: bytes, data: bytes) -> TaskInfo:
        try:
            return TaskInfo.from_json(data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "record"
            raise CorruptObject(
                self._where(key, _INFO), f"not a TaskInfo record ({where}: {first['msg']})"
            ) from exc

    async def _load_info(self, task: str, config_hash: str) -> TaskInfo | None:
        key, redis = self._run_key(task, config_hash), self._client()
        with _redis.unavailable(redis):
            data = await redis.hget(key, _INFO)
        return None if data is None else self._parse_info(key, _raw(data))

    async def _list_infos(self, task: str | None) -> list[TaskInfo]:
        redis = self._client()
        with _redis.unavailable(redis):
            if task is None:
                tasks = sorted(_s(t) for t in await redis.smembers(self._tasks_key))
            else:
                tasks = [task]
            pipe = redis.pipeline(transaction=False)
            for name in tasks:
                pipe.smembers(self._infos_key(name))
            runs = [
                self._run_key(name, _s(config_hash))
                for name, hashes in zip(tasks, await pipe.execute(), strict=True)
                for config_hash in hashes
            ]
            pipe = redis.pipeline(transaction=False)
            for key in runs:
                pipe.hget(key, _INFO)
            found = await pipe.execute() if runs else []
        # A run removed by hand (not through delete_run) may still be indexed: passed over.
        return [
            self._parse_info(key, _raw(data))
            for key, data in zip(runs, found, strict=True)
            if data is not None
        ]


def _advice_rows(batch: RawInfos) -> list[tuple[str, bytes]]:
    """Each row of ``batch`` as the JSON of its TaskInfo record, keyed by its config hash."""
    rows = []
    for values in zip(
        batch.config_hash,
        batch.unique_name,
        batch.state,
        batch.config,
        batch.unique_config,
        batch.started,
        batch.ended,
        batch.attempts,
        batch.error,
        strict=True,
    ):
        config_hash, unique_name, state, config, unique, started, ended, attempts, error = values
        record = {
            "task": batch.task,
            "config_hash": config_hash,
            "unique_name": unique_name,
            "state": state.value,
            "config": config,
            "unique_config": config if unique is None else unique,
            "started": _iso(started),
            "ended": _iso(ended),
            "attempts": attempts,
            "error": error,
        }
        rows.append((config_hash, _json(record)))
    return rows


def _iso(value: int | None) -> str | None:
    when = from_micros(value)
    return None if when is None else when.isoformat()


def _json(record: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(record, separators=(",", ":"))  # ASCII: surrogates come out escaped
    except (TypeError, ValueError):  # a long int, a model in a config: the careful encoder
        text = jsontext.dumps(record, join_pairs=True, default=pydantic_core.to_jsonable_python)
    return text.encode()
