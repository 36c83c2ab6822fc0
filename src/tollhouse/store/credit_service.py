"""Store operations on prepaid credits, spend caps and auto-recharge rules (a StoreService mixin).

Each admin change is audited and recorded in ``changes`` as a change of the customer, so every
replica's Directory reloads the customer's grants with it (within its poll / NOTIFY delay).
Consumption (:meth:`CreditOps.add_consumed`) is usage, not an admin change: no audit row.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from tollhouse.store.backend import Backend, Row, Tx
from tollhouse.store.credit_models import (
    GRANT_SOURCES,
    CreditGrant,
    RechargeRule,
    SpendCap,
    grant_order,
)
from tollhouse.store.models import Customer, ServiceError, period_start

__all__ = ["GRANT_SQL", "MAX_AMOUNT", "CreditOps", "grant_from_row"]

MAX_AMOUNT = 10**12  # x MILLI stays below 2**53: exact in Redis Lua (doubles) and JSON
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
GRANT_SQL = (
    "SELECT id, customer, amount, currency, priority, effective_at, expires_at, scope,"
    " source, voided_at, created_at FROM credit_grants"
)


def grant_from_row(r: Row) -> CreditGrant:
    """Build a grant from a ``GRANT_SQL`` row."""
    scope = json.loads(r[7])
    return CreditGrant(
        r[0],
        r[1],
        int(r[2]),
        r[3],
        int(r[4]),
        float(r[5]),
        None if r[6] is None else float(r[6]),
        frozenset(scope.get("meters", ())),
        frozenset(scope.get("features", ())),
        r[8],
        None if r[9] is None else float(r[9]),
        float(r[10]),
    )


def _amount(field: str, v: object, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_AMOUNT:
        raise ServiceError(
            "invalid", f"{field} must be an integer from {lo} to {MAX_AMOUNT} (minor units)"
        )
    return v


def _names(field: str, values: Iterable[str]) -> frozenset[str]:
    out = frozenset(values)
    if len(out) > 64 or any(not isinstance(n, str) or not _NAME.fullmatch(n) for n in out):
        raise ServiceError("invalid", f"{field} must be at most 64 names matching {_NAME.pattern}")
    return out


class CreditOps:
    """Credit operations; mixed into :class:`~tollhouse.store.service.StoreService`."""

    backend: Backend
    _clock: Callable[[], float]
    _meters: Collection[str] | None

    async def _customer(self, tx: Tx, customer_id: str) -> Customer:
        raise NotImplementedError

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
        raise NotImplementedError

    # --- grants ----------------------------------------------------------------------------

    async def grant_credit(
        self,
        customer_id: str,
        *,
        actor: str,
        amount: int,
        currency: str,
        priority: int = 10,
        effective_at: float | None = None,
        expires_at: float | None = None,
        meters: Sequence[str] = (),
        features: Sequence[str] = (),
        source: str = "purchase",
    ) -> CreditGrant:
        """Grant ``amount`` minor units of ``currency`` to the customer."""
        _amount("amount", amount)
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise ServiceError("invalid", "currency must be an ISO 4217 code such as USD")
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 1000:
            raise ServiceError("invalid", "priority must be an integer from 0 to 1000")
        if source not in GRANT_SOURCES:
            raise ServiceError("invalid", f"source must be one of {', '.join(GRANT_SOURCES)}")
        scope_m, scope_f = _names("scope.meters", meters), _names("scope.features", features)
        unknown = sorted(m for m in scope_m if self._meters is not None and m not in self._meters)
        if unknown:
            raise ServiceError("unknown_meter", f"meter {unknown[0]!r} is not in the catalog")
        now = self._clock()
        start = now if effective_at is None else float(effective_at)
        if expires_at is not None and float(expires_at) <= start:
            raise ServiceError("invalid", "expires_at must be after effective_at")
        grant = CreditGrant(
            "cg_" + secrets.token_hex(8),
            customer_id,
            amount,
            currency,
            priority,
            start,
            None if expires_at is None else float(expires_at),
            scope_m,
            scope_f,
            source,
            None,
            now,
        )
        scope = json.dumps({"meters": sorted(scope_m), "features": sorted(scope_f)})
        async with self.backend.transaction() as tx:
            await self._customer(tx, customer_id)
            await tx.execute(
                "INSERT INTO credit_grants (id, customer, amount, currency, priority,"
                " effective_at, expires_at, scope, source, voided_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    grant.id,
                    customer_id,
                    amount,
                    currency,
                    priority,
                    grant.effective_at,
                    grant.expires_at,
                    scope,
                    source,
                    now,
                ),
            )
            await self._record(tx, actor, "credit.grant", customer_id, None, grant.to_json())
        return grant

    async def void_grant(self, customer_id: str, grant_id: str, *, actor: str) -> CreditGrant:
        """Void a grant at once: what is left of it is no longer usable."""
        async with self.backend.transaction() as tx:
            before = await self._grant(tx, customer_id, grant_id)
            if before.voided_at is not None:
                raise ServiceError("already_voided", f"grant {grant_id!r} is already voided")
            await tx.execute(
                "UPDATE credit_grants SET voided_at = ? WHERE id = ?", (self._clock(), grant_id)
            )
            after = await self._grant(tx, customer_id, grant_id)
            await self._record(
                tx, actor, "credit.void", customer_id, before.to_json(), after.to_json()
            )
        return after

    async def list_grants(self, customer_id: str) -> list[CreditGrant]:
        """Return the customer's grants (voided and expired included), in consumption order."""
        async with self.backend.transaction(readonly=True) as tx:
            await self._customer(tx, customer_id)
            rows = await tx.execute(f"{GRANT_SQL} WHERE customer = ?", (customer_id,))
        return sorted((grant_from_row(r) for r in rows), key=grant_order)

    async def consumed(self, customer_id: str) -> dict[str, int]:
        """Grant id -> 1/1000 minor units spent of it (:data:`MILLI`), as flushed by replicas."""
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.execute(
                "SELECT c.grant_id, c.consumed FROM credit_consumed c JOIN credit_grants g"
                " ON g.id = c.grant_id WHERE g.customer = ?",
                (customer_id,),
            )
        return {r[0]: int(r[1]) for r in rows}

    async def add_consumed(self, deltas: Sequence[tuple[str, int]]) -> None:
        """Add spent 1/1000 minor units per grant (a replica's flush; atomic adds, any replica)."""
        if not deltas:
            return
        async with self.backend.transaction() as tx:
            for grant_id, units in deltas:
                await tx.execute(
                    "INSERT INTO credit_consumed (grant_id, consumed) VALUES (?, ?)"
                    " ON CONFLICT (grant_id) DO UPDATE SET consumed ="
                    " credit_consumed.consumed + excluded.consumed",
                    (grant_id, int(units)),
                )

    async def _grant(self, tx: Tx, customer_id: str, grant_id: str) -> CreditGrant:
        rows = await tx.execute(
            f"{GRANT_SQL} WHERE id = ? AND customer = ?", (grant_id, customer_id)
        )
        if not rows:
            raise ServiceError("not_found", f"no grant {grant_id!r} for {customer_id!r}")
        return grant_from_row(rows[0])

    # --- auto-recharge and spend caps ------------------------------------------------------

    async def set_recharge_rule(
        self, customer_id: str, threshold: int | None, target: int = 0, *, actor: str
    ) -> RechargeRule | None:
        """Set the auto-recharge rule (``threshold`` None: remove it)."""
        if threshold is not None:
            _amount("threshold", threshold, 0)
            if _amount("target", target) <= threshold:
                raise ServiceError("invalid", "target must be greater than threshold")
        now = self._clock()
        async with self.backend.transaction() as tx:
            before = await self._rule(tx, customer_id)
            await tx.execute("DELETE FROM credit_recharge_rules WHERE customer = ?", (customer_id,))
            after = None
            if threshold is not None:
                after = RechargeRule(customer_id, threshold, target, now)
                await tx.execute(
                    "INSERT INTO credit_recharge_rules (customer, threshold, target,"
                    " set_at) VALUES (?, ?, ?, ?)",
                    (customer_id, threshold, target, now),
                )
            await self._record(
                tx,
                actor,
                "credit.recharge_rule",
                customer_id,
                before and before.to_json(),
                after and after.to_json(),
            )
        return after

    async def recharge_rule(self, customer_id: str) -> RechargeRule | None:
        """Return the customer's auto-recharge rule, or None."""
        async with self.backend.transaction(readonly=True) as tx:
            return await self._rule(tx, customer_id)

    async def _rule(self, tx: Tx, customer_id: str) -> RechargeRule | None:
        await self._customer(tx, customer_id)
        rows = await tx.execute(
            "SELECT threshold, target, set_at FROM credit_recharge_rules WHERE customer = ?",
            (customer_id,),
        )
        return (
            RechargeRule(customer_id, int(rows[0][0]), int(rows[0][1]), rows[0][2])
            if rows
            else None
        )

    async def set_spend_cap(
        self, customer_id: str, amount: int | None, *, actor: str
    ) -> SpendCap | None:
        """Set (None: remove) the customer's cap on spend in the current period."""
        if amount is not None:
            _amount("amount", amount, 0)
        now = self._clock()
        async with self.backend.transaction() as tx:
            cust = await self._customer(tx, customer_id)
            period = period_start(cust.anchor, now).isoformat()
            before = await self._cap(tx, customer_id, period)
            await tx.execute(
                "DELETE FROM spend_caps WHERE customer = ? AND period = ?", (customer_id, period)
            )
            after = None
            if amount is not None:
                after = SpendCap(customer_id, period, amount, now)
                await tx.execute(
                    "INSERT INTO spend_caps (customer, period, amount, set_at) VALUES (?, ?, ?, ?)",
                    (customer_id, period, amount, now),
                )
            await self._record(
                tx,
                actor,
                "spend_cap.set",
                customer_id,
                before and before.to_json(),
                after and after.to_json(),
            )
        return after

    async def spend_cap(self, customer_id: str) -> SpendCap | None:
        """Return the customer's spend cap for the current period, or None."""
        async with self.backend.transaction(readonly=True) as tx:
            cust = await self._customer(tx, customer_id)
            return await self._cap(
                tx, customer_id, period_start(cust.anchor, self._clock()).isoformat()
            )

    async def _cap(self, tx: Tx, customer_id: str, period: str) -> SpendCap | None:
        rows = await tx.execute(
            "SELECT amount, set_at FROM spend_caps WHERE customer = ? AND period = ?",
            (customer_id, period),
        )
        return SpendCap(customer_id, period, int(rows[0][0]), rows[0][1]) if rows else None
