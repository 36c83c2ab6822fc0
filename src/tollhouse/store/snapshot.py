"""The whole entitlement set in compact in-memory structures, loaded in full or by delta.

Sizes matter (a million customers, two million keys): a customer is one 4-tuple
``(plan_changes, status, status_since, anchor)`` with interned plan / status strings and shared
date objects; an API key is its 32-byte digest mapped to the interned customer id (revoked keys are
simply absent). Overrides and top-ups exist only for the customers that have them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tollhouse.store.backend import Backend, Row, Tx
from tollhouse.store.credit_snapshot import CreditRows, load_credit_rows

__all__ = ["CustomerRecord", "Delta", "Snapshot", "load_delta", "load_full"]

# (plan_changes ((plan, effective_from), ...) sorted, status, status_since, anchor)
CustomerRecord = tuple[tuple[tuple[str, float], ...], str, float, date | None]
TopUpRow = tuple[str, str, int]  # (period, meter, units)
_TOPUP_HORIZON_DAYS = 70  # periods that started earlier than this are over: not loaded
_IN_CHUNK = 500

_SUBS = """SELECT s.customer, s.anchor, s.status, s.status_since, p.plan, p.effective_from
    FROM subscriptions s JOIN plan_changes p ON p.customer = s.customer"""


@dataclass(slots=True)
class Snapshot:
    """What a replica serves from; mutated only by the Directory's own sync task."""

    version: int = 0
    customers: dict[str, CustomerRecord] = field(default_factory=dict)
    keys: dict[bytes, str] = field(default_factory=dict)
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    topups: dict[str, tuple[TopUpRow, ...]] = field(default_factory=dict)
    credits: CreditRows = field(default_factory=CreditRows)


@dataclass(slots=True)
class Delta:
    """Reloaded entities: ``None`` for a customer means it no longer exists."""

    version: int
    customers: dict[str, CustomerRecord | None]
    overrides: dict[str, dict[str, int]]
    topups: dict[str, tuple[TopUpRow, ...]]
    keys: list[tuple[bytes, str | None]]  # (digest, customer or None when revoked)
    credits: CreditRows = field(default_factory=CreditRows)

    def apply(self, snap: Snapshot) -> int:
        """Apply to ``snap``; return how many entities changed."""
        for cid, rec in self.customers.items():
            if rec is None:
                snap.customers.pop(cid, None)
            else:
                snap.customers[cid] = rec
            _put(snap.overrides, cid, self.overrides.get(cid))
            _put(snap.topups, cid, self.topups.get(cid))
            _put(snap.credits.grants, cid, self.credits.grants.get(cid))
            _put(snap.credits.caps, cid, self.credits.caps.get(cid))
            _put(snap.credits.recharge, cid, self.credits.recharge.get(cid))
        for gid, consumed in self.credits.consumed.items():
            snap.credits.consumed.setdefault(gid, consumed)  # a seed: replicas own spend after
        for digest, customer in self.keys:
            if customer is None:
                snap.keys.pop(digest, None)
            else:
                snap.keys[digest] = customer
        snap.version = max(snap.version, self.version)
        return len(self.customers) + len(self.keys)


def _put(d: dict[str, Any], k: str, v: Any) -> None:
    if v:
        d[k] = v
    else:
        d.pop(k, None)


class _Builder:
    """Turns rows into records, sharing equal strings and dates."""

    def __init__(self) -> None:
        self.dates: dict[str, date] = {}

    def date(self, s: str | None) -> date | None:
        if not s:
            return None
        d = self.dates.get(s)
        if d is None:
            d = self.dates[s] = date.fromisoformat(s)
        return d

    def customers(self, rows: Iterable[Row], out: dict[str, CustomerRecord]) -> None:
        """Fold rows ordered by customer, then plan change, into ``out``."""
        intern = sys.intern
        get = out.get
        for cid, anchor, status, since, plan, eff in rows:
            pair = (intern(plan), float(eff))
            prev = get(cid)
            if prev is not None:
                out[cid] = ((*prev[0], pair), prev[1], prev[2], prev[3])
                continue
            since = pair[1] if since == pair[1] else float(since)
            out[intern(cid)] = ((pair,), intern(status), since, self.date(anchor))


def _marks(ids: list[str]) -> str:
    """Return ``(?,?,...)``: only placeholders are ever interpolated into SQL."""
    return "(" + ",".join("?" * len(ids)) + ")"


def _topup_cutoff(now: float) -> str:
    today = datetime.fromtimestamp(now, UTC).date()
    return (today - timedelta(days=_TOPUP_HORIZON_DAYS)).isoformat()


async def _version(tx: Tx) -> int:
    rows = await tx.execute("SELECT coalesce(max(version), 0) FROM changes")
    return int(rows[0][0])


async def load_full(backend: Backend, now: float) -> Snapshot:
    """Read the whole entitlement set in one consistent read transaction."""
    snap = Snapshot()
    b = _Builder()
    intern = sys.intern
    fromhex = bytes.fromhex
    async with backend.transaction(readonly=True) as tx:
        snap.version = await _version(tx)
        async for rows in tx.chunks(f"{_SUBS} ORDER BY p.customer, p.effective_from, p.id"):
            b.customers(rows, snap.customers)
        keys = snap.keys
        async for rows in tx.chunks(
            "SELECT sha256, customer FROM api_keys WHERE revoked_at IS NULL"
        ):
            for sha, cid in rows:
                keys[fromhex(sha)] = intern(cid)
        for cid, meter, units in await tx.execute(
            "SELECT customer, meter, units FROM quota_overrides"
        ):
            snap.overrides.setdefault(intern(cid), {})[intern(meter)] = int(units)
        snap.topups = await _topups(tx, None, now)
        snap.credits = await load_credit_rows(tx, None, now)
    return snap


async def _topups(tx: Tx, ids: list[str] | None, now: float) -> dict[str, tuple[TopUpRow, ...]]:
    sql = "SELECT customer, period, meter, units FROM topups WHERE period >= ?"
    params: list[Any] = [_topup_cutoff(now)]
    if ids is not None:
        sql += f" AND customer IN {_marks(ids)}"
        params += ids
    out: dict[str, list[TopUpRow]] = {}
    for cid, period, meter, units in await tx.execute(sql + " ORDER BY id", params):
        out.setdefault(sys.intern(cid), []).append((period, sys.intern(meter), int(units)))
    return {k: tuple(v) for k, v in out.items()}


async def load_delta(
    backend: Backend, since: int, now: float, max_entities: int = 10_000
) -> Delta | None:
    """Reload what changed after ``since``; ``None`` when so much changed that a full load is due.

    SQL below interpolates only ``?`` placeholders, never values.
    """
    async with backend.transaction(readonly=True) as tx:
        rows = await tx.execute(
            "SELECT version, entity, entity_id FROM changes WHERE version > ? ORDER BY version"
            " LIMIT ?",
            (since, max_entities + 1),
        )
        if len(rows) > max_entities:
            return None
        if not rows:
            return Delta(since, {}, {}, {}, [])
        cids = sorted({r[2] for r in rows if r[1] == "customer"})
        kids = sorted({r[2] for r in rows if r[1] == "key"})
        delta = Delta(int(rows[-1][0]), {c: None for c in cids}, {}, {}, [])
        for i in range(0, len(cids), _IN_CHUNK):
            await _delta_customers(tx, cids[i : i + _IN_CHUNK], delta, now)
        for i in range(0, len(kids), _IN_CHUNK):
            part = kids[i : i + _IN_CHUNK]
            sql = f"SELECT sha256, customer, revoked_at FROM api_keys WHERE id IN {_marks(part)}"  # noqa: S608
            for sha, cid, revoked in await tx.execute(sql, part):
                delta.keys.append((bytes.fromhex(sha), None if revoked else sys.intern(cid)))
    return delta


async def _delta_customers(tx: Tx, ids: list[str], delta: Delta, now: float) -> None:
    marks = _marks(ids)
    rows = await tx.execute(
        f"{_SUBS} WHERE s.customer IN {marks} ORDER BY p.customer, p.effective_from, p.id", ids
    )
    fresh: dict[str, CustomerRecord] = {}
    _Builder().customers(rows, fresh)
    delta.customers.update(fresh)
    sql = f"SELECT customer, meter, units FROM quota_overrides WHERE customer IN {marks}"  # noqa: S608
    for cid, meter, units in await tx.execute(sql, ids):
        delta.overrides.setdefault(sys.intern(cid), {})[sys.intern(meter)] = int(units)
    delta.topups.update(await _topups(tx, ids, now))
    credits = await load_credit_rows(tx, ids, now)
    delta.credits.grants.update(credits.grants)
    delta.credits.consumed.update(credits.consumed)
    delta.credits.caps.update(credits.caps)
    delta.credits.recharge.update(credits.recharge)
