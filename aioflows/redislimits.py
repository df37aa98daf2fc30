"""Per-key token buckets kept in Redis, shared by every process that uses them:
:class:`RedisRateLimiter`.

Every call is one atomic Lua script (EVALSHA, loaded again after a NOSCRIPT), and
the script reads the time with Redis's ``TIME``: the clocks of the client machines never enter
the arithmetic, so two machines whose clocks disagree by seconds still share one bucket
correctly. A bucket is one short string of packed doubles (its tokens, the time they were
counted, a pause and at most one claim), read with GET and written with one ``SET ... PX``: it
expires at the moment it would be full and idle again, when a missing key and the bucket mean
the same thing, so Redis holds only the keys in use.

Waiting. The script answers a refused request with how long until it could be granted; the
caller sleeps that long and asks again. Callers of one process that wait on one key queue in
that process first, in arrival order, and only the head of the queue talks to Redis: N local
waiters cost one round trip per grant, not N. A grant tells the next waiter how long its own
cost will take, so the queue does not ask early.

Starvation. A waiting request records a *claim* on its bucket: the tokens it needs are then
reserved for it, and requests of other processes can take only what is above them. The claim
goes to the waiter that has waited longest (by the Redis clock), so a big request is not
overtaken forever by a stream of small ones, whatever process they come from. Beyond that no
order across processes is promised: a request that arrives when there are tokens above the
claim is served at once, ahead of other processes' waiters. A claim whose holder stops asking
(a process that died) lapses one second after it was due (:data:`CLAIM_GRACE`).

Lost state. The buckets' keys live in the Redis keyspace and a Redis restart without
persistence (or a ``FLUSHDB``) empties it: buckets would come back full and grant their burst
again at once. An *epoch* key guards against that: every client remembers the epoch it has
seen, and a script that finds the epoch gone while the client knew one starts a new epoch in
which every bucket starts empty at that moment, so the loss is paid in waiting, never in an
over-grant. (A client that has never seen an epoch cannot tell a loss from a first use.)
While Redis cannot be reached, every call raises :class:`~aioflows.errors.RedisUnavailable`:
a failure is never a grant.

Names. A key is never written to Redis: its bucket is ``{prefix}:rl:{digest}``, a 128-bit
BLAKE2b digest of the key (API keys and other secrets may be keys). The epoch lives in
``{prefix}:rl:epoch``. A script touches the epoch and the bucket together, so the limiter
needs one Redis server (or a primary with replicas), not a Redis Cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import uuid
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import anyio

from . import _redis, _validate
from .errors import InvalidArgument, InvalidArgumentType, RedisUnavailable
from .limits import (
    Rate,
    RateLike,
    _check_cost,
    _KeySlot,
    _positive_number,
    _token_count,
    as_rate,
)

__all__ = ["CLAIM_GRACE", "RedisRateLimiter"]

#: Seconds a claim outlives the time its holder was told to ask again: long enough for a busy
#: event loop to be late, short enough that a dead holder does not hold its tokens long.
CLAIM_GRACE = 1.0

#: Microseconds per second: the script counts time in whole microseconds of the Redis clock,
#: which a double holds exactly for the next 200 years.
_US = 1_000_000.0

# One script, every operation (one SHA to load). KEYS[1] is the epoch, KEYS[2..] buckets.
# ARGV: the client's claimant id (16 characters, also the start of a new epoch's id) followed
# by the mode, the epoch the client knows ('' if none), and the mode's numbers packed as
# doubles (three words in all: each word costs the client more than the script's unpacking).
# Every reply is an array that starts with the epoch when the client's is out of date (else
# nil), but for the most common one: a grant to a client whose epoch is current is a bare
# integer. A bucket is packed doubles
# (struct), exact and quick to read: tokens, when they were counted, paused until; and with a
# claim, its cost, since and expiry, then the claimant.
_SCRIPT = """
local head, known, nums = ARGV[1], ARGV[2], ARGV[3]
local claimant, mode = string.sub(head, 1, 16), string.sub(head, 17)
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = claimant .. ':' .. tm[1] .. '.' .. tm[2]
  if known ~= '' then epoch = epoch .. '~' .. string.format('%d', now) end
  redis.call('SET', KEYS[1], epoch)
end
local lost_at = nil
local sep = string.find(epoch, '~', 1, true)
if sep then lost_at = tonumber(string.sub(epoch, sep + 1)) end
local told = false
if epoch ~= known then told = epoch end
local grace = GRACE_US

local function load(key, per_us, burst)
  local v = redis.call('GET', key)
  local b
  if v then
    local t, u, p = struct.unpack('<ddd', v)
    if now > u then
      t = math.min(burst, t + (now - u) * per_us)
      u = now
    end
    b = {t = t, u = u, p = p, ci = false, cc = 0, cs = 0, cx = 0}
    if #v > 24 then
      b.cc, b.cs, b.cx = struct.unpack('<ddd', v, 25)
      if b.cx > now then b.ci = string.sub(v, 49) end
    end
  else
    local t = burst
    if lost_at then t = math.min(burst, math.max(0, now - lost_at) * per_us) end
    b = {t = t, u = now, p = 0, ci = false, cc = 0, cs = 0, cx = 0}
  end
  return b
end

local function save(key, b, per_us, burst)
  local last = math.max(b.u + (burst - b.t) / per_us, b.p)
  if b.ci then last = math.max(last, b.cx) end
  if b.t >= burst and last <= now then
    redis.call('DEL', key)
    return
  end
  local v = struct.pack('<ddd', b.t, b.u, b.p)
  if b.ci then v = v .. struct.pack('<ddd', b.cc, b.cs, b.cx) .. b.ci end
  local ttl = math.ceil((last - now) / 1000) + 1
  if ttl > 1e15 then redis.call('SET', key, v) else redis.call('SET', key, v, 'PX', ttl) end
end

-- Microseconds until `cost` could be granted to `claimant` (whose claim is not reserved).
local function wait_for(b, cost, claimant, per_us, slack)
  local reserved = 0
  if b.ci and b.ci ~= claimant then reserved = b.cc end
  local short = reserved + cost - b.t
  local w = 0
  if short > slack then w = short / per_us end
  return math.ceil(math.max(w, b.p - now, 0))
end

if mode == 'take' or mode == 'try' then
  local cost, per_us, burst, since, nxt = struct.unpack('<ddddd', nums)
  local slack = burst * 1e-9
  local b = load(KEYS[2], per_us, burst)
  local mine = b.ci == claimant
  local reserved = 0
  if b.ci and not mine then reserved = b.cc end
  if now >= b.p and b.t - reserved + slack >= cost then
    b.t = b.t - cost
    if mine then b.ci = false end
    save(KEYS[2], b, per_us, burst)
    local after = 0
    if nxt > 0 then after = wait_for(b, nxt, claimant, per_us, slack) end
    if told then return {told, 1, after} end
    return after  -- the common answer, a bare integer: granted
  end
  if mode == 'take' then
    if since == 0 then since = now end
    if (not b.ci) or mine or b.cs > since or (b.cs == since and b.ci > claimant) then
      b.ci, b.cc, b.cs = claimant, cost, since
      b.cx = now + wait_for(b, cost, claimant, per_us, slack) + grace
      save(KEYS[2], b, per_us, burst)
    end
  end
  return {told, 0, wait_for(b, cost, claimant, per_us, slack), since}
elseif mode == 'delays' then
  local out = {told}
  for i = 2, #KEYS do
    local cost, per_us, burst = struct.unpack('<ddd', nums, 1 + (i - 2) * 24)
    local b = load(KEYS[i], per_us, burst)
    out[i] = wait_for(b, cost, claimant, per_us, burst * 1e-9)
  end
  return out
else
  local amount, per_us, burst = struct.unpack('<ddd', nums)
  local b = load(KEYS[2], per_us, burst)
  if mode == 'charge' then
    b.t = b.t - amount
  elseif mode == 'refund' then
    b.t = math.min(burst, b.t + amount)
  elseif mode == 'pause' then
    b.p = math.max(b.p, now + amount)
  elseif mode == 'release' then
    if b.ci == claimant then b.ci = false end
  elseif mode == 'available' then
    return {told, string.format('%.17g', b.t)}
  else
    return redis.error_reply('aioflows: unknown mode ' .. mode)
  end
  save(KEYS[2], b, per_us, burst)
  return {told}
end
""".replace("GRACE_US", str(int(CLAIM_GRACE * _US)))
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_FIVE = struct.Struct("<5d").pack
#: Keys whose bucket names a limiter keeps, so that a hot key is not digested on every call.
_SPECS = 4096
_THREE = struct.Struct("<3d").pack


class _KeyRate:
    """A rate and burst as the script takes them."""

    __slots__ = ("burst", "per_us", "rate")

    def __init__(self, rate: Rate, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.per_us = rate.per_second / _US


class _Spec:
    """One bucket as the script sees it: its Redis key and its rate."""

    __slots__ = ("kr", "name")

    def __init__(self, name: str, kr: _KeyRate) -> None:
        self.name = name
        self.kr = kr


class _Waiter:
    __slots__ = ("cost", "turn")

    def __init__(self, cost: float) -> None:
        self.cost = cost
        self.turn = anyio.Event()  # set when this waiter reaches the head of its line


class _Line:
    """This process's waiters on one bucket, in arrival order; only the head asks Redis."""

    __slots__ = ("not_before", "since", "waiters")

    def __init__(self, since: int, not_before: float) -> None:
        self.waiters: deque[_Waiter] = deque()
        self.since = since  # when the head's claim started waiting (Redis µs), 0 for none
        self.not_before = not_before  # loop time before which asking again is pointless


def _key_bytes(key: object) -> bytes:
    """A stable encoding of a key, the same in every process (``hash()`` is not). Keys a dict
    holds as one (``1``, ``1.0``, ``True``) are one bucket here too."""
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + key
    if key is None:
        return b"o"
    if isinstance(key, int):  # bool included
        return b"i" + str(int(key)).encode()
    if isinstance(key, float):
        return b"i" + str(int(key)).encode() if key.is_integer() else b"f" + repr(key).encode()
    if isinstance(key, tuple):
        parts = [_key_bytes(part) for part in key]
        return b"t" + b"".join(len(part).to_bytes(8, "big") + part for part in parts)
    raise InvalidArgumentType(
        "a RedisRateLimiter key must be a str, bytes, int, float, bool, None or a tuple of "
        f"those (it is named in Redis by a digest of its bytes), got {type(key).__name__}"
    )


def bucket_name(prefix: str, key: object) -> str:
    """The Redis key of ``key``'s bucket: a digest, never the key itself."""
    digest = hashlib.blake2b(_key_bytes(key), digest_size=16, person=b"aioflows.rl").hexdigest()
    return f"{prefix}:rl:{digest}"


class RedisRateLimiter:
    """One token bucket per key, kept in Redis so that many processes and machines share it.

    Usage::

        async with af.RedisRateLimiter("redis://localhost:6379/0", "10/s") as per_host:
            async with per_host("api.example.com"):
                ...
            await af.map(fetch, urls, key=host_of, per_key_rate=per_host)

    The API of :class:`~aioflows.KeyedRateLimiter`, with the same validation and errors (a cost
    above the burst is an ``InvalidArgument`` at once), and the same no-over-grant bound per
    key, now across every process using the same Redis and ``prefix``. ``acquire``,
    ``try_acquire``, ``charge``, ``refund``, ``pause``, ``delay`` and ``available`` are
    coroutines: each is one round trip to Redis. Every process must give a key the same rate
    and burst (they are sent with each call, not stored). Keys are str, bytes, numbers, None
    or tuples of those: they are named in Redis by a digest, which must be the same in every
    process.

    A limiter made from a URL owns its client: close it with ``await limiter.aclose()`` or
    ``async with``. A client passed in is left open.

    Args:
        url_or_client: A ``redis://`` URL or a ``redis.asyncio.Redis`` client.
        rate: Default rate of every key.
        burst: Bucket capacity of every key (default: one second's worth of its rate, at least 1).
        overrides: Per-key rates that replace the default for those keys.
        prefix: The start of every Redis key the limiter writes.

    Raises:
        ValueError, TypeError: A bad rate, burst, override or prefix.
        RedisUnavailable: (from each call) Redis could not be reached or answered an error.
    """

    def __init__(
        self,
        url_or_client: Any,
        rate: RateLike,
        *,
        burst: float | None = None,
        overrides: Mapping[Hashable, RateLike] | None = None,
        prefix: str = "aioflows",
    ) -> None:
        if not isinstance(prefix, str):
            raise InvalidArgumentType(f"prefix must be a str, got {prefix!r}")
        if not prefix:
            raise InvalidArgument("prefix must be a non-empty str")
        self._burst = None if burst is None else _token_count(burst, "burst")
        self._default = self._rate(as_rate(rate))
        self._overrides = {
            key: self._rate(as_rate(value, f"overrides[{key!r}]"))
            for key, value in (overrides or {}).items()
        }
        self._prefix = prefix
        self._where = _redis.redacted(url_or_client) if isinstance(url_or_client, str) else None
        self._redis, self._owned = _redis.client(url_or_client, "RedisRateLimiter")
        from redis.exceptions import NoScriptError, RedisError

        self._errors = (RedisError, NoScriptError)
        self._sha = _SHA
        self._epoch_key = f"{prefix}:rl:epoch"
        self._epoch = ""  # the epoch this limiter has seen ('' until its first call)
        self._claimant = uuid.uuid4().hex[:16].encode()  # this limiter's claims, on every key
        self._lines: dict[str, _Line] = {}
        self._specs: dict[Hashable, _Spec] = {}

    def _rate(self, rate: Rate) -> _KeyRate:
        burst = max(1.0, rate.per_second) if self._burst is None else self._burst
        return _KeyRate(rate, burst)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def rate(self) -> Rate:
        """The default rate of a key."""
        return self._default.rate

    @property
    def prefix(self) -> str:
        """What every Redis key of this limiter starts with."""
        return self._prefix

    def rate_for(self, key: Hashable) -> Rate:
        """The rate that applies to ``key``.

        Args:
            key: The bucket.
        """
        return self._overrides.get(key, self._default).rate

    def bucket_name(self, key: Hashable) -> str:
        """The Redis key of ``key``'s bucket (a digest of the key, never the key).

        Args:
            key: The bucket.
        """
        return bucket_name(self._prefix, key)

    def __repr__(self) -> str:
        where = self._where if self._where is not None else _redis.address(self._redis)
        return (
            f"{type(self).__name__}({where!r}, rate={str(self.rate)!r}, "
            f"overrides={len(self._overrides)}, prefix={self._prefix!r})"
        )

    # -- the client's life --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the Redis client if this limiter made it (from a URL)."""
        if self._owned:
            await self._redis.aclose()

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- talking to Redis ---------------------------------------------------------------------

    def _spec(self, key: Hashable) -> _Spec:
        """The key's bucket; the specs of recent keys are kept (a digest costs more than the
        rest of the client's work on a call), at most ``_SPECS`` of them."""
        spec = self._specs.get(key)
        if spec is None:
            kr = self._overrides.get(key, self._default) if self._overrides else self._default
            spec = _Spec(bucket_name(self._prefix, key), kr)
            if len(self._specs) >= _SPECS:
                self._specs.clear()  # bounded; the hot keys come back at once
            self._specs[key] = spec
        return spec

    async def _run(self, mode: bytes, names: Sequence[str], numbers: bytes) -> Any:
        """One script call (EVALSHA; the script is loaded again after a NOSCRIPT, as redis-py's
        ``register_script`` does); keeps the epoch the reply tells. The reply: a list, or for a
        plain grant an int."""
        redis = self._redis
        words: tuple[str | bytes, ...] = (
            self._epoch_key,
            *names,
            self._claimant + mode,
            self._epoch,
            numbers,
        )
        failure, missing = self._errors
        try:
            try:
                reply = await redis.evalsha(self._sha, 1 + len(names), *words)
            except missing:  # a restarted or flushed Redis has forgotten the script
                self._sha = await redis.script_load(_SCRIPT)
                reply = await redis.evalsha(self._sha, 1 + len(names), *words)
        except failure as exc:
            raise RedisUnavailable(
                f"Redis at {_redis.address(self._redis)} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if reply.__class__ is int:
            return reply
        told = reply[0]
        if told is not None:
            self._epoch = told.decode() if isinstance(told, bytes) else str(told)
        return reply

    async def _take(
        self, spec: _Spec, cost: float, *, claim: bool, since: int = 0, then: float = 0.0
    ) -> tuple[bool, int, int]:
        """(granted, µs, since): if granted, µs until ``then`` more would fit; if not, µs to
        wait, and since when this request's claim has waited (Redis µs). ``claim=False``: a
        refusal records no claim (``try_acquire``)."""
        kr = spec.kr
        reply = await self._run(
            b"take" if claim else b"try",
            (spec.name,),
            _FIVE(cost, kr.per_us, kr.burst, since, then),
        )
        if reply.__class__ is int:
            return True, reply, 0
        return bool(reply[1]), int(reply[2]), int(reply[3]) if len(reply) > 3 else 0

    async def _one(self, mode: bytes, spec: _Spec, amount: float) -> list[Any]:
        kr = spec.kr
        reply: list[Any] = await self._run(mode, (spec.name,), _THREE(amount, kr.per_us, kr.burst))
        return reply

    async def _delays(self, wanted: Sequence[tuple[_Spec, float]]) -> list[float]:
        """Seconds until each (bucket, cost) could be granted, this process's queue first:
        every bucket in one round trip."""
        args = []
        for spec, cost in wanted:
            line = self._lines.get(spec.name)
            queued = sum(w.cost for w in line.waiters) if line is not None else 0.0
            args.append(_THREE(cost + queued, spec.kr.per_us, spec.kr.burst))
        reply = await self._run(b"delays", [spec.name for spec, _ in wanted], b"".join(args))
        return [int(us) / _US for us in reply[1:]]

    # -- acquiring ----------------------------------------------------------------------------

    async def acquire(self, key: Hashable, cost: float = 1.0) -> None:
        """Wait for ``cost`` tokens from ``key``'s bucket and take them.

        One round trip when the tokens are there and no one in this process waits on the key.

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
            cost: Tokens to take (a weighted call), at most the bucket's burst.

        Raises:
            ValueError: ``cost <= 0`` or ``cost > burst``.
            RedisUnavailable: Redis failed; nothing was granted.
        """
        spec = self._spec(key)
        if cost != 1.0 or spec.kr.burst < 1.0:
            _check_cost(cost, spec.kr.burst)
        await self._acquire(spec, cost)

    async def _acquire(self, spec: _Spec, cost: float) -> None:
        line = self._lines.get(spec.name)
        if line is None:
            granted, us, since = await self._take(spec, cost, claim=True)
            if granted:
                return
            line = self._lines.get(spec.name)  # another caller may have queued meanwhile
            if line is None:
                line = _Line(since, anyio.current_time() + us / _US)
                self._lines[spec.name] = line
        await self._wait_in_line(spec, cost, line)

    async def _wait_in_line(self, spec: _Spec, cost: float, line: _Line) -> None:
        waiter = _Waiter(cost)
        line.waiters.append(waiter)
        granted = False
        try:
            if line.waiters[0] is not waiter:
                await waiter.turn.wait()
            while True:
                wait = line.not_before - anyio.current_time()
                if wait > 0:
                    await anyio.sleep(wait)
                then = line.waiters[1].cost if len(line.waiters) > 1 else 0.0
                granted, us, since = await self._take(
                    spec, cost, claim=True, since=line.since, then=then
                )
                line.not_before = anyio.current_time() + us / _US
                if granted:
                    line.since = 0  # the next waiter's claim starts when it waits
                    return
                line.since = since
        finally:
            head = line.waiters[0] is waiter
            line.waiters.remove(waiter)
            if line.waiters:
                if head:
                    line.waiters[0].turn.set()
            else:
                if self._lines.get(spec.name) is line:
                    del self._lines[spec.name]
                if not granted and line.since:
                    await self._release(spec)

    async def _release(self, spec: _Spec) -> None:
        """Drop this process's claim on a bucket nobody here waits for any more: best effort
        (a claim nobody renews lapses on its own)."""
        with anyio.move_on_after(0.5, shield=True):
            with contextlib.suppress(RedisUnavailable):
                await self._one(b"release", spec, 0.0)

    async def try_acquire(self, key: Hashable, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if that needs no waiting (and no one here waits on the key).

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
            cost: Tokens to take.

        Returns:
            Whether they were taken.
        """
        spec = self._spec(key)
        if cost != 1.0 or spec.kr.burst < 1.0:
            _check_cost(cost, spec.kr.burst)
        if spec.name in self._lines:
            return False
        granted, _, _ = await self._take(spec, cost, claim=False)
        return granted

    def __call__(self, key: Hashable) -> _KeySlot:
        """``async with limiter(key):`` acquires one token of ``key``.

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
        """
        return _KeySlot(self, key)

    async def delay(self, key: Hashable, cost: float = 1.0) -> float:
        """Seconds until ``cost`` more tokens of ``key`` could be granted, after this process's
        waiters, other processes' claim and any pause: how to pick the key that frees soonest.

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
            cost: Tokens that would be asked for.
        """
        _positive_number(cost, "cost")
        return (await self._delays([(self._spec(key), cost)]))[0]

    async def available(self, key: Hashable) -> float:
        """Tokens in ``key``'s bucket now; negative while in debt after :meth:`charge`.

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
        """
        reply = await self._one(b"available", self._spec(key), 0.0)
        return float(reply[1])

    # -- reconciling --------------------------------------------------------------------------

    async def charge(self, key: Hashable, cost: float) -> None:
        """Take ``cost`` tokens from ``key`` now; its bucket may go into debt.

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
            cost: Tokens to take (what a call used beyond what it acquired).
        """
        await self._one(b"charge", self._spec(key), _positive_number(cost, "cost"))

    async def refund(self, key: Hashable, cost: float) -> None:
        """Give ``cost`` tokens back to ``key`` (never above its burst).

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
            cost: Tokens to give back (what a call acquired and did not use).
        """
        await self._one(b"refund", self._spec(key), _positive_number(cost, "cost"))

    async def pause(self, key: Hashable, seconds: float) -> None:
        """Grant nothing to ``key`` until ``seconds`` from now, in every process; pauses only
        extend.

        Args:
            key: The bucket (any hashable; only a digest of it reaches Redis).
            seconds: How long the key rests (a throttle's ``Retry-After``).
        """
        seconds = _validate.number("pause seconds", seconds)
        await self._one(b"pause", self._spec(key), seconds * _US)
