"""The shared finaliser of the Redis meter: facts of every replica meet in Redis.

Every replica forwards the facts of its local log (reserved, served, and final ones carried
over from an old spool) to Redis with :data:`FACTS_LUA`, one script call per batch. Per usage id,
atomically: a fact whose partner is absent is stored (hash ``tollhouse:join:p:<id>``, plus the
sorted set ``due`` by admission time for a reservation, ``orphans`` by receipt time for a served
fact); a fact whose partner is present is appended with it, as one entry, to the stream
``tollhouse:joined`` and the pending hash is deleted; a done-marker (``done:<id>``, TTL) makes any
later fact for that id a counted duplicate. A served fact without usage id (an entry without
metadata) is matched by Envoy request id (``req:<rid>``), in either order.

:data:`SWEEP_LUA` (any replica, periodically, atomic) moves reservations older than the grace
period to ``tollhouse:joined`` alone (UNCONFIRMED) and drops served facts whose reservation
never came (counted, never billed). Nothing is decided twice: each usage id is joined or swept
exactly once, inside one script.

Every replica is a consumer of the group ``tollhouse-finaliser`` on ``tollhouse:joined``: it turns
each entry into the final ``UsageRecord`` (the billing policy, in Python), and in ONE
MULTI/EXEC appends the records to the meter stream and acks and deletes the joined entries. A
crash before EXEC leaves the entries pending; they are claimed by a live consumer after
``claim_idle_ms``. So each record enters the meter stream exactly once, whichever replica
received the access log or ran the sweep. ``finalized_at_ms`` is the joined entry's id time, so a
redelivered entry builds the identical record. Keys are not cluster-safe (one Redis, as the
meter stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from tollhouse._pb.tollhouse.v1.usage_pb2 import ServedFact
from tollhouse.logs import get_logger
from tollhouse.metering.facts import Fact, Final, Reserved, Served, served_from_message
from tollhouse.metering.policy import Finalizer
from tollhouse.metering.schema import (
    DEAD_LETTER_KEY,
    FIELD_RECORD,
    FIELD_USAGE_ID,
    STREAM_KEY,
    UsageRecord,
)
from tollhouse.metering.sinks import SinkError

__all__ = ["FACTS_LUA", "JOINED_KEY", "SWEEP_LUA", "FactCounts", "RedisJoin"]

log = get_logger(__name__)

PREFIX = "tollhouse:join:"
JOINED_KEY = "tollhouse:joined"
GROUP = "tollhouse-finaliser"

FACTS_LUA = """
local P, ttl, void_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local joined_key, meter_key = ARGV[4], ARGV[5]
local joined, dup, waiting, unknown = 0, 0, 0, 0
local function join(uid, r, s)
  redis.call('XADD', joined_key, '*', 'usage_id', uid, 'reserved', r, 'served', s)
  redis.call('DEL', P .. 'p:' .. uid)
  redis.call('ZREM', P .. 'due', uid)
  redis.call('ZREM', P .. 'orphans', uid)
  redis.call('SET', P .. 'done:' .. uid, '1', 'EX', ttl)
  joined = joined + 1
end
local i = 6
while i <= #ARGV do
  local kind, uid, score, payload, rid = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  i = i + 5
  if kind == 's' and uid == '' then
    local seen = redis.call('GET', P .. 'req:' .. rid)
    if seen and string.sub(seen, 1, 1) ~= '!' then
      uid = seen
    elseif seen then
      dup = dup + 1
    else
      redis.call('SET', P .. 'req:' .. rid, '!' .. payload, 'EX', void_ttl)
      waiting = waiting + 1
    end
  end
  if uid == '' then
    -- handled above: a void waiting for its reservation, or a duplicate of one
  elseif redis.call('EXISTS', P .. 'done:' .. uid) == 1 then
    dup = dup + 1
  elseif kind == 'f' then
    redis.call('XADD', meter_key, '*', 'usage_id', uid, 'record', payload)
    redis.call('DEL', P .. 'p:' .. uid)
    redis.call('ZREM', P .. 'due', uid)
    redis.call('SET', P .. 'done:' .. uid, '1', 'EX', ttl)
    joined = joined + 1
  else
    local key = P .. 'p:' .. uid
    local other = redis.call('HGET', key, kind == 'r' and 's' or 'r')
    local void = false
    if kind == 'r' and rid ~= '' then
      void = redis.call('GET', P .. 'req:' .. rid)
      if void and string.sub(void, 1, 1) == '!' then other = string.sub(void, 2) end
    end
    if other and kind == 'r' then
      join(uid, payload, other)
    elseif other then
      join(uid, other, payload)
    elseif redis.call('HSETNX', key, kind, payload) == 1 then
      if kind == 'r' then
        redis.call('ZADD', P .. 'due', score, uid)
        if rid ~= '' then redis.call('SET', P .. 'req:' .. rid, uid, 'EX', ttl) end
      else
        redis.call('ZADD', P .. 'orphans', score, uid)
      end
      waiting = waiting + 1
    else
      dup = dup + 1
    end
  end
end
return {joined, dup, waiting, unknown}
"""

SWEEP_LUA = """
local P, cutoff, joined_key = ARGV[1], ARGV[2], ARGV[5]
local limit, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local expired, orphans = 0, 0
local due = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', cutoff, 'LIMIT', 0, limit)
for _, uid in ipairs(due) do
  local r = redis.call('HGET', P .. 'p:' .. uid, 'r')
  if r then
    redis.call('XADD', joined_key, '*', 'usage_id', uid, 'reserved', r)
    expired = expired + 1
  end
  redis.call('DEL', P .. 'p:' .. uid)
  redis.call('ZREM', P .. 'due', uid)
  redis.call('SET', P .. 'done:' .. uid, '1', 'EX', ttl)
end
local old = redis.call('ZRANGEBYSCORE', P .. 'orphans', '-inf', cutoff, 'LIMIT', 0, limit)
for _, uid in ipairs(old) do
  if not redis.call('HGET', P .. 'p:' .. uid, 'r') then
    redis.call('DEL', P .. 'p:' .. uid)
    orphans = orphans + 1
  end
  redis.call('ZREM', P .. 'orphans', uid)
end
return {expired, orphans}
"""


@dataclass(frozen=True, slots=True)
class FactCounts:
    """What one facts batch did in Redis."""

    joined: int = 0
    duplicate: int = 0
    waiting: int = 0
    unknown: int = 0


def _args(fact: Fact, headers: Sequence[str]) -> list[bytes | str | int]:
    if isinstance(fact, Reserved):
        return ["r", fact.usage_id, fact.admitted_ms, fact.record, fact.request_id]
    if isinstance(fact, Served):
        e = fact.entry
        msg = ServedFact(
            usage_id=e.usage_id or "",
            response_code=e.response_code,
            request_bytes=e.request_bytes,
            response_bytes=e.response_bytes,
            duration_us=e.duration_us,
            upstream_served=e.upstream_served,
            response_flags=e.response_flags,
            request_id=e.request_id,
            meter_headers={h: e.response_headers[h] for h in headers if h in e.response_headers},
            received_at_ms=fact.received_ms,
            instance=fact.instance,
        )
        return ["s", e.usage_id or "", fact.received_ms, msg.SerializeToString(), e.request_id]
    assert isinstance(fact, Final)
    return ["f", fact.record.usage_id, 0, fact.record.SerializeToString(), ""]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def final_record(entry_id: str, fields: dict[bytes, bytes], fin: Finalizer) -> UsageRecord:
    """The final record of one joined entry; deterministic (a redelivery builds the same)."""
    now_ms = int(entry_id.partition("-")[0])
    rec = UsageRecord.FromString(fields[b"reserved"])
    served = fields.get(b"served")
    if served is None:
        return fin.expire(rec, now_ms)
    return fin.confirm(rec, served_from_message(ServedFact.FromString(served)).entry, now_ms)


class RedisJoin:
    """One replica's client of the shared join (facts in, final records out)."""

    def __init__(
        self,
        url: str,
        *,
        consumer: str,
        ttl_s: float,
        void_ttl_s: float,
        timeout_s: float = 5.0,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._consumer = consumer
        self._ttl = max(1, int(ttl_s))
        self._void_ttl = max(1, int(void_ttl_s))
        self._timeout_s = timeout_s
        self._claim_idle_ms = claim_idle_ms
        self._facts = self._redis.register_script(FACTS_LUA)
        self._sweep = self._redis.register_script(SWEEP_LUA)
        self._group_ready = False

    async def _t(self, aw: Any) -> Any:
        try:
            return await asyncio.wait_for(aw, self._timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            raise SinkError(f"redis join: {type(e).__name__}: {e}") from e

    async def send(self, facts: Sequence[Fact], headers: Sequence[str]) -> FactCounts:
        """Apply a batch of facts atomically; raises :class:`SinkError` if Redis did not."""
        argv: list[Any] = [PREFIX, self._ttl, self._void_ttl, JOINED_KEY, STREAM_KEY]
        for f in facts:
            argv += _args(f, headers)
        res = await self._t(self._facts(keys=[], args=argv))
        return FactCounts(*(int(x) for x in res))

    async def sweep(self, cutoff_ms: int, limit: int = 1000) -> tuple[int, int]:
        """Finalise overdue reservations (joined alone) and drop overdue orphans; counts."""
        res = await self._t(
            self._sweep(keys=[], args=[PREFIX, cutoff_ms, limit, self._ttl, JOINED_KEY])
        )
        return int(res[0]), int(res[1])

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._t(self._redis.xgroup_create(JOINED_KEY, GROUP, id="0", mkstream=True))
        except SinkError as e:
            if not isinstance(e.__cause__, ResponseError) or "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    async def _read(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Own pending entries first (a restart), then others' idle ones (a crash), then new."""
        got = await self._t(
            self._redis.xreadgroup(GROUP, self._consumer, {JOINED_KEY: "0"}, count=count)
        )
        entries = list(got[0][1]) if got else []
        if not entries:
            claimed = await self._t(
                self._redis.xautoclaim(
                    JOINED_KEY, GROUP, self._consumer, self._claim_idle_ms, "0-0", count=count
                )
            )
            entries = list(claimed[1]) if claimed else []
        if not entries:
            got = await self._t(
                self._redis.xreadgroup(GROUP, self._consumer, {JOINED_KEY: ">"}, count=count)
            )
            entries = list(got[0][1]) if got else []
        return [(e_id, f) for e_id, f in entries if f]

    async def finalise(self, fin: Finalizer, count: int) -> tuple[list[UsageRecord], int]:
        """Turn up to ``count`` joined entries into final records, in the meter stream once.

        Returns the records and how many entries could not be turned into one: those are copied
        to the dead-letter stream in the same transaction (never dropped silently).
        """
        await self._ensure_group()
        try:
            entries = await self._read(count)
        except SinkError as e:
            if isinstance(e.__cause__, ResponseError) and "NOGROUP" in str(e):
                # Redis lost the group (restarted without persistence, flushed): create it
                # again next time, or nothing would ever be finalised again.
                self._group_ready = False
                log.warning("redis_join.group_lost", group=GROUP)
            raise
        if not entries:
            return [], 0
        records: list[UsageRecord] = []
        poison: list[dict[bytes, bytes]] = []
        for e_id, fields in entries:
            try:
                records.append(final_record(_s(e_id), fields, fin))
            except Exception:
                poison.append(fields)
                log.error("redis_join.bad_joined_entry", entry=_s(e_id))
        ids = [_s(e_id) for e_id, _ in entries]
        async with self._redis.pipeline(transaction=True) as pipe:
            for r in records:
                pipe.xadd(
                    STREAM_KEY, {FIELD_USAGE_ID: r.usage_id, FIELD_RECORD: r.SerializeToString()}
                )
            for fields in poison:
                pipe.xadd(DEAD_LETTER_KEY, fields)  # type: ignore[arg-type]
            pipe.xack(JOINED_KEY, GROUP, *ids)
            pipe.xdel(JOINED_KEY, *ids)
            await self._t(pipe.execute(raise_on_error=True))
        return records, len(poison)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
