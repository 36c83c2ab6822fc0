"""The operations on the entitlement store, shared by the admin API and the CLI.

Every change writes, in its own transaction: the change itself, one ``audit_log`` row (actor,
action, target, before, after) and one ``changes`` row (the entity that replicas must reload).
On PostgreSQL the transaction also sends ``NOTIFY tollhouse_changes`` (delivered at commit).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from tollhouse.keyhash import hash_api_key
from tollhouse.logs import get_logger
from tollhouse.store.backend import Backend, Row, Tx
from tollhouse.store.credit_service import CreditOps
from tollhouse.store.models import (
    STATUSES,
    ApiKeyInfo,
    AuditEntry,
    Customer,
    IssuedKey,
    PlanChangeRecord,
    ServiceError,
    Status,
    TopUpRecord,
    period_start,
)

__all__ = ["INTEGRITY_ERRORS", "NOTIFY_CHANNEL", "StoreService", "hash_key"]

log = get_logger(__name__)
NOTIFY_CHANNEL = "tollhouse_changes"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_PERIOD = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CUSTOMER_SQL = """SELECT c.id, c.name, c.email, c.metadata, c.created_at, s.anchor, s.status,
    s.status_since, c.stripe_customer_id
    FROM customers c JOIN subscriptions s ON s.customer = c.id"""
_STRIPE_ID = re.compile(r"^cus_[A-Za-z0-9]{1,250}$")
_KEEP: Any = object()  # update_customer: leave the Stripe customer id as it is


hash_key = hash_api_key  # the store's name for the one API-key hash (tollhouse.keyhash)


def _check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:  # not "evil\n"
        raise ServiceError("invalid", f"{what} must match {_ID.pattern}")
    return value


class StoreService(CreditOps):
    """Customers, subscriptions, API keys, overrides, top-ups, credits and the audit log.

    ``plans`` / ``meters``: the catalog's names (from the config file); when given, a change that
    names another plan or meter is refused (``unknown_plan`` / ``unknown_meter``).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Callable[[], float],
        plans: Collection[str] | None = None,
        meters: Collection[str] | None = None,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._plans = plans
        self._meters = meters

    @property
    def clock(self) -> Callable[[], float]:
        """The injected clock (the webhook outbox on the same store shares it)."""
        return self._clock

    # --- reads ---------------------------------------------------------------------------

    async def get_customer(self, customer_id: str) -> Customer:
        """Return one customer, or raise ``not_found``."""
        async with self.backend.transaction(readonly=True) as tx:
            return await self._customer(tx, customer_id)

    async def list_customers(self, *, after: str | None = None, limit: int = 100) -> list[Customer]:
        """Return up to ``limit`` customers with ids greater than ``after``, by id."""
        limit = max(1, min(limit, 1000))
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.execute(
                f"{_CUSTOMER_SQL} WHERE c.id > ? ORDER BY c.id LIMIT ?", (after or "", limit)
            )
            return [await self._assemble(tx, r) for r in rows]

    async def list_keys(self, customer_id: str) -> list[ApiKeyInfo]:
        """Return the customer's keys (revoked ones included), oldest first."""
        async with self.backend.transaction(readonly=True) as tx:
            await self._customer(tx, customer_id)
            rows = await tx.execute(
                "SELECT id, customer, prefix, created_at, revoked_at FROM api_keys"
                " WHERE customer = ? ORDER BY created_at, id",
                (customer_id,),
            )
            return [ApiKeyInfo(*r) for r in rows]

    async def list_topups(self, customer_id: str) -> list[TopUpRecord]:
        """Return the customer's top-ups, oldest first."""
        async with self.backend.transaction(readonly=True) as tx:
            await self._customer(tx, customer_id)
            rows = await tx.execute(
                "SELECT id, customer, meter, units, period, created_at FROM topups"
                " WHERE customer = ? ORDER BY id",
                (customer_id,),
            )
            return [TopUpRecord(int(r[0]), r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

    async def audit_log(
        self, *, target: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[AuditEntry]:
        """Return audit entries with ids above ``after_id`` (optionally for one target), by id."""
        limit = max(1, min(limit, 1000))
        sql = "SELECT id, actor, action, target, before, after, at FROM audit_log WHERE id > ?"
        params: list[Any] = [after_id]
        if target is not None:
            sql += " AND target = ?"
            params.append(target)
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.execute(sql + " ORDER BY id LIMIT ?", [*params, limit])
        return [
            AuditEntry(int(r[0]), r[1], r[2], r[3], _loads(r[4]), _loads(r[5]), r[6]) for r in rows
        ]

    # --- customers and subscriptions -----------------------------------------------------

    async def create_customer(
        self,
        *,
        actor: str,
        name: str,
        plan: str,
        email: str = "",
        metadata: Mapping[str, Any] | None = None,
        anchor: date | None = None,
        customer_id: str | None = None,
    ) -> Customer:
        """Create a customer with an active subscription to ``plan`` (anchor: today, UTC)."""
        cid = _check_id("id", customer_id) if customer_id else "cus_" + secrets.token_hex(8)
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ServiceError("invalid", "name must be 1 to 200 characters")
        self._check_plan(plan)
        now = self._clock()
        anchor = anchor or datetime.fromtimestamp(now, UTC).date()
        meta = json.dumps(dict(metadata or {}), sort_keys=True)
        async with self.backend.transaction() as tx:
            if await tx.execute("SELECT 1 FROM customers WHERE id = ?", (cid,)):
                raise ServiceError("already_exists", f"customer {cid!r} exists")
            await tx.execute(
                "INSERT INTO customers (id, name, email, metadata, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (cid, name, email, meta, now),
            )
            await tx.execute(
                "INSERT INTO subscriptions (customer, anchor, status, status_since)"
                " VALUES (?, ?, 'active', ?)",
                (cid, anchor.isoformat(), now),
            )
            await tx.execute(
                "INSERT INTO plan_changes (customer, plan, effective_from,"
                " created_at) VALUES (?, ?, ?, ?)",
                (cid, plan, now, now),
            )
            after = await self._customer(tx, cid)
            await self._record(tx, actor, "customer.create", cid, None, after.to_json())
        return after

    async def update_customer(
        self,
        customer_id: str,
        *,
        actor: str,
        name: str | None = None,
        email: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        stripe_customer_id: str | None = _KEEP,
    ) -> Customer:
        """Change a customer's name, email, metadata (``None``: unchanged) or Stripe customer id.

        ``stripe_customer_id``: ``cus_...``, or ``None`` to remove it; left out: unchanged.
        """
        if (
            stripe_customer_id is not _KEEP
            and stripe_customer_id is not None
            and (
                not isinstance(stripe_customer_id, str) or not _STRIPE_ID.match(stripe_customer_id)
            )
        ):
            raise ServiceError("invalid", f"stripe_customer_id must match {_STRIPE_ID.pattern}")
        async with self.backend.transaction() as tx:
            before = await self._customer(tx, customer_id)
            stripe_id = (
                before.stripe_customer_id if stripe_customer_id is _KEEP else stripe_customer_id
            )
            await tx.execute(
                "UPDATE customers SET name = ?, email = ?, metadata = ?, stripe_customer_id = ?"
                " WHERE id = ?",
                (
                    before.name if name is None else name,
                    before.email if email is None else email,
                    json.dumps(
                        dict(before.metadata if metadata is None else metadata), sort_keys=True
                    ),
                    stripe_id,
                    customer_id,
                ),
            )
            after = await self._customer(tx, customer_id)
            await self._record(
                tx, actor, "customer.update", customer_id, before.to_json(), after.to_json()
            )
        return after

    async def change_plan(
        self, customer_id: str, plan: str, *, actor: str, effective_at: float | None = None
    ) -> Customer:
        """Move the customer to ``plan`` from ``effective_at`` (default now).

        Past changes are history and stay; ``effective_at`` may not precede the start of the
        plan in effect now (``effective_at_too_early``). Changes scheduled after
        ``effective_at`` are superseded (removed; the audit log keeps them).
        """
        self._check_plan(plan)
        now = self._clock()
        effective = now if effective_at is None else float(effective_at)
        async with self.backend.transaction() as tx:
            before = await self._customer(tx, customer_id)
            started = max(c.effective_from for c in before.plan_changes if c.effective_from <= now)
            if effective < started:
                raise ServiceError(
                    "effective_at_too_early", "effective_at precedes the current plan's start"
                )
            await tx.execute(
                "DELETE FROM plan_changes WHERE customer = ? AND effective_from > ?",
                (customer_id, effective),
            )
            await tx.execute(
                "INSERT INTO plan_changes (customer, plan, effective_from,"
                " created_at) VALUES (?, ?, ?, ?)",
                (customer_id, plan, effective, now),
            )
            after = await self._customer(tx, customer_id)
            await self._record(
                tx,
                actor,
                "subscription.change_plan",
                customer_id,
                before.to_json(),
                {**after.to_json(), "effective_from": effective},
            )
        return after

    async def set_status(self, customer_id: str, status: str, *, actor: str) -> Customer:
        """Set the subscription status (active, past_due, suspended, cancelled)."""
        if status not in STATUSES:
            raise ServiceError("invalid", f"status must be one of {', '.join(STATUSES)}")
        async with self.backend.transaction() as tx:
            before = await self._customer(tx, customer_id)
            if before.status != status:
                await tx.execute(
                    "UPDATE subscriptions SET status = ?, status_since = ? WHERE customer = ?",
                    (status, self._clock(), customer_id),
                )
            after = await self._customer(tx, customer_id)
            await self._record(
                tx, actor, "subscription.set_status", customer_id, before.to_json(), after.to_json()
            )
        return after

    # --- API keys --------------------------------------------------------------------------

    async def issue_key(self, customer_id: str, *, actor: str) -> IssuedKey:
        """Issue a key (``th_`` + 32 random bytes, urlsafe); only its SHA-256 is stored."""
        key = "th_" + secrets.token_urlsafe(32)
        info = ApiKeyInfo("key_" + secrets.token_hex(8), customer_id, key[:10], self._clock(), None)
        async with self.backend.transaction() as tx:
            await self._customer(tx, customer_id)
            await tx.execute(
                "INSERT INTO api_keys (id, customer, sha256, prefix, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                (info.id, customer_id, hash_key(key), info.prefix, info.created_at),
            )
            await self._record(tx, actor, "key.issue", info.id, None, info.to_json(), entity="key")
        return IssuedKey(key, info)

    async def revoke_key(self, key_id: str, *, actor: str) -> ApiKeyInfo:
        """Revoke a key at once; revoking twice is ``already_revoked``."""
        async with self.backend.transaction() as tx:
            before = await self._key(tx, key_id)
            if before.revoked_at is not None:
                raise ServiceError("already_revoked", f"key {key_id!r} is already revoked")
            await tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ?", (self._clock(), key_id)
            )
            after = await self._key(tx, key_id)
            await self._record(
                tx, actor, "key.revoke", key_id, before.to_json(), after.to_json(), entity="key"
            )
        return after

    # --- overrides and top-ups -------------------------------------------------------------

    async def set_override(
        self, customer_id: str, meter: str, units: int | None, *, actor: str
    ) -> Customer:
        """Override the plan's quota of ``meter`` for this customer (``None`` removes it)."""
        self._check_meter(meter)
        if units is not None and (isinstance(units, bool) or units < 0):
            raise ServiceError("invalid", "units must be an integer >= 0")
        async with self.backend.transaction() as tx:
            before = await self._customer(tx, customer_id)
            await tx.execute(
                "DELETE FROM quota_overrides WHERE customer = ? AND meter = ?", (customer_id, meter)
            )
            if units is not None:
                await tx.execute(
                    "INSERT INTO quota_overrides (customer, meter, units) VALUES (?, ?, ?)",
                    (customer_id, meter, units),
                )
            after = await self._customer(tx, customer_id)
            await self._record(
                tx, actor, "override.set", customer_id, before.to_json(), after.to_json()
            )
        return after

    async def add_topup(
        self, customer_id: str, meter: str, units: int, *, actor: str, period: str | None = None
    ) -> TopUpRecord:
        """Add ``units`` to the customer's allowance of ``meter`` for one period (default now)."""
        self._check_meter(meter)
        if isinstance(units, bool) or units <= 0:
            raise ServiceError("invalid", "units must be an integer > 0")
        if period is not None and not _valid_date(period):
            raise ServiceError("invalid", "period must be a date YYYY-MM-DD (the period start)")
        now = self._clock()
        async with self.backend.transaction() as tx:
            cust = await self._customer(tx, customer_id)
            key = period or period_start(cust.anchor, now).isoformat()
            rows = await tx.execute(
                "INSERT INTO topups (customer, meter, units, period, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (customer_id, meter, units, key, now),
            )
            topup = TopUpRecord(int(rows[0][0]), customer_id, meter, units, key, now)
            await self._record(tx, actor, "topup.add", customer_id, None, topup.to_json())
        return topup

    # --- internals -------------------------------------------------------------------------

    def _check_plan(self, plan: str) -> None:
        _check_id("plan", plan)
        if self._plans is not None and plan not in self._plans:
            raise ServiceError("unknown_plan", f"plan {plan!r} is not in the catalog")

    def _check_meter(self, meter: str) -> None:
        _check_id("meter", meter)
        if self._meters is not None and meter not in self._meters:
            raise ServiceError("unknown_meter", f"meter {meter!r} is not in the catalog")

    async def _customer(self, tx: Tx, customer_id: str) -> Customer:
        rows = await tx.execute(f"{_CUSTOMER_SQL} WHERE c.id = ?", (customer_id,))
        if not rows:
            raise ServiceError("not_found", f"no customer {customer_id!r}")
        return await self._assemble(tx, rows[0])

    async def _assemble(self, tx: Tx, r: Row) -> Customer:
        changes = tuple(
            PlanChangeRecord(p, e, c)
            for p, e, c in await tx.execute(
                "SELECT plan, effective_from, created_at FROM plan_changes WHERE customer = ?"
                " ORDER BY effective_from, id",
                (r[0],),
            )
        )
        overrides = {
            m: int(u)
            for m, u in await tx.execute(
                "SELECT meter, units FROM quota_overrides WHERE customer = ? ORDER BY meter",
                (r[0],),
            )
        }
        now = self._clock()
        current = [c.plan for c in changes if c.effective_from <= now]
        plan = current[-1] if current else changes[0].plan
        status: Status = r[6]
        return Customer(
            r[0],
            r[1],
            r[2],
            json.loads(r[3]),
            r[4],
            plan,
            date.fromisoformat(r[5]) if r[5] else None,
            status,
            r[7],
            changes,
            overrides,
            r[8],
        )

    async def _key(self, tx: Tx, key_id: str) -> ApiKeyInfo:
        rows = await tx.execute(
            "SELECT id, customer, prefix, created_at, revoked_at FROM api_keys WHERE id = ?",
            (key_id,),
        )
        if not rows:
            raise ServiceError("not_found", f"no key {key_id!r}")
        return ApiKeyInfo(*rows[0])

    async def _record(
        self,
        tx: Tx,
        actor: str,
        action: str,
        target: str,
        before: Any,
        after: Any,
        *,
        entity: str = "customer",
    ) -> None:
        now = self._clock()
        if self.backend.dialect == "postgresql":
            # Writers take versions in commit order, so a replica never skips a late commit.
            await tx.execute("SELECT pg_advisory_xact_lock(7461727)")
        await tx.execute(
            "INSERT INTO audit_log (actor, action, target, before, after, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (actor, action, target, _dumps(before), _dumps(after), now),
        )
        rows = await tx.execute(
            "INSERT INTO changes (entity, entity_id, at) VALUES (?, ?, ?) RETURNING version",
            (entity, target, now),
        )
        if self.backend.dialect == "postgresql":
            await tx.execute("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, str(rows[0][0])))
        log.info(
            "store.changed", actor=actor, action=action, target=target, version=int(rows[0][0])
        )


def _dumps(v: Any) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=True)


def _loads(v: str | None) -> Any:
    return None if v is None else json.loads(v)


def _valid_date(s: str) -> bool:
    if not _PERIOD.match(s):
        return False
    try:
        date.fromisoformat(s)
    except ValueError:
        return False
    return True


#: Driver errors for a constraint that a concurrent writer won (the admin API answers 409).
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)
