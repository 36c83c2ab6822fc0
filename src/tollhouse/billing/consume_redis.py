"""Redis meter stream -> ledger through a consumer group. At least once in, exactly once out.

Order of operations per batch: read (XAUTOCLAIM of idle pending entries first, then XREADGROUP
``>``), commit to the ledger (duplicates ignored by usage_id), then XACK. A crash between commit and
ack redelivers the entries; the ledger ignores them. Entries that cannot be parsed, or that were
delivered more than ``max_deliveries`` times, are copied to the dead-letter stream and acked in one
MULTI, with a metric and a log line: never dropped silently. After acking, the stream is trimmed
with ``XTRIM MINID`` below the oldest entry some group still needs; never by length.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]

from tollhouse.billing.ledger import FailureHook, Ledger, LedgerRow
from tollhouse.billing.metrics import DEAD_LETTERED, RECORDS_CONSUMED
from tollhouse.logs import get_logger
from tollhouse.metering.schema import (
    DEAD_LETTER_KEY,
    FIELD_RECORD,
    FIELD_USAGE_ID,
    STREAM_KEY,
    UsageRecord,
)

__all__ = ["ConsumeStats", "RedisConsumer", "safe_trim_id"]

log = get_logger(__name__)
T = TypeVar("T")
Entry = tuple[bytes, dict[bytes, bytes]]


def _noop(_: str) -> None:
    return None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class ConsumeStats:
    """What one consume run did."""

    read: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    trimmed: int = 0


@dataclass
class RedisConsumer:
    """One consumer of the meter stream's consumer group; keys are configurable for tests."""

    client: aioredis.Redis
    ledger: Ledger
    group: str
    consumer: str
    max_deliveries: int = 5
    stream_key: str = STREAM_KEY
    dead_key: str = DEAD_LETTER_KEY
    batch: int = 1000
    claim_idle_ms: int = 60_000
    timeout_s: float = 10.0
    hook: FailureHook = field(default=_noop)

    async def _t(self, aw: Awaitable[T]) -> T:
        return await asyncio.wait_for(aw, self.timeout_s)

    async def ensure_group(self) -> None:
        """Create the group at the stream's start (MKSTREAM); an existing group is kept."""
        try:
            await self._t(
                self.client.xgroup_create(self.stream_key, self.group, id="0", mkstream=True)
            )
        except aioredis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def run(self) -> ConsumeStats:
        """Reclaim idle pending entries, read new ones until the stream is drained, then trim."""
        stats = ConsumeStats()
        await self.ensure_group()
        start = "0-0"
        while True:
            res = await self._t(
                self.client.xautoclaim(
                    self.stream_key,
                    self.group,
                    self.consumer,
                    self.claim_idle_ms,
                    start_id=start,
                    count=self.batch,
                )
            )
            start, entries = _s(res[0]), list(res[1])
            entries = [e for e in entries if e is not None and e[1] is not None]
            if entries:
                await self._process(entries, await self._deliveries(entries), stats)
            if start == "0-0":
                break
        while True:
            resp: Any = await self._t(
                self.client.xreadgroup(
                    self.group, self.consumer, {self.stream_key: ">"}, count=self.batch
                )
            )
            entries = [e for _, es in resp for e in es] if resp else []
            if not entries:
                break
            await self._process(entries, {}, stats)
        stats.trimmed = await self.trim()
        RECORDS_CONSUMED.labels("redis").inc(stats.read)
        log.info(
            "billing.consumed",
            source="redis",
            records=stats.read,
            new=stats.inserted,
            dead_lettered=stats.dead_lettered,
            trimmed=stats.trimmed,
        )
        return stats

    async def _deliveries(self, entries: list[Entry]) -> dict[str, int]:
        ids = [_s(e[0]) for e in entries]
        lo, hi = min(ids, key=_id_key), max(ids, key=_id_key)
        pend = await self._t(
            self.client.xpending_range(
                self.stream_key,
                self.group,
                min=lo,
                max=hi,
                count=len(ids) + self.batch,
                consumername=self.consumer,
            )
        )
        return {_s(p["message_id"]): int(p["times_delivered"]) for p in pend}

    def _parse(self, fields: dict[bytes, bytes]) -> LedgerRow | str:
        raw = fields.get(FIELD_RECORD.encode())
        if raw is None:
            return "missing_record"
        try:
            rec = UsageRecord.FromString(raw)
        except DecodeError:
            return "unparsable"
        claimed = fields.get(FIELD_USAGE_ID.encode())
        if not rec.usage_id or not rec.customer or (claimed and claimed.decode() != rec.usage_id):
            return "invalid"
        units = tuple(sorted((str(k), int(v)) for k, v in rec.units.items()))
        if any(v < 0 for _, v in units):
            return "invalid"
        return LedgerRow(
            rec.usage_id,
            rec.customer,
            int(rec.admitted_at_ms),
            bool(rec.billable),
            units,
            bytes(raw),
        )

    async def _process(
        self, entries: list[Entry], deliveries: dict[str, int], stats: ConsumeStats
    ) -> None:
        rows: list[LedgerRow] = []
        dead: list[tuple[str, dict[bytes, bytes], str, int]] = []
        for raw_id, fields in entries:
            eid, n = _s(raw_id), deliveries.get(_s(raw_id), 1)
            parsed = "max_deliveries" if n > self.max_deliveries else self._parse(fields)
            if isinstance(parsed, str):
                dead.append((eid, fields, parsed, n))
            else:
                rows.append(parsed)
        stats.read += len(entries)
        if rows:
            stats.inserted += await asyncio.to_thread(self.ledger.insert_rows, rows, hook=self.hook)
        pipe = self.client.pipeline(transaction=True)
        for eid, fields, reason, n in dead:
            doc: dict[Any, Any] = dict(fields)
            doc.update(
                {"source_id": eid, "reason": reason, "deliveries": str(n), "group": self.group}
            )
            pipe.xadd(self.dead_key, doc)
        pipe.xack(self.stream_key, self.group, *[_s(e[0]) for e in entries])
        await self._t(pipe.execute())
        for eid, _, reason, n in dead:
            DEAD_LETTERED.labels(reason).inc()
            log.error(
                "billing.dead_lettered",
                entry_id=eid,
                reason=reason,
                deliveries=n,
                stream=self.stream_key,
            )
        stats.dead_lettered += len(dead)

    async def trim(self) -> int:
        """XTRIM MINID below what every group still needs; return how many entries went."""
        groups = await self._t(self.client.xinfo_groups(self.stream_key))
        floors: list[str] = []
        for g in groups:
            if int(g["pending"]) > 0:
                summary = await self._t(self.client.xpending(self.stream_key, _s(g["name"])))
                floors.append(_s(summary["min"]))
            else:
                floors.append(_successor(_s(g["last-delivered-id"])))
        if not floors:
            return 0
        return int(
            await self._t(
                self.client.xtrim(self.stream_key, minid=safe_trim_id(floors), approximate=False)
            )
        )


def _successor(entry_id: str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"


def safe_trim_id(floors: list[str]) -> str:
    """Return the smallest of the groups' floors: entries below it are acked by every group."""
    return min(floors, key=_id_key)
