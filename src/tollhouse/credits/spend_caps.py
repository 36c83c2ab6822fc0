"""Customers' own spend caps: evaluated off the hot path, enforced by the Check from memory.

Every ``interval_s`` the evaluator prices each capped customer's usage of the open period the
way ``GET /v1/usage`` shows it (the same lookup: meter totals raised to the live quota counters,
the plan's prices), and keeps the customers at or over their cap in one dict the Check reads
(:meth:`SpendCaps.blocked`), swapped whole. Spend counts usage charges, not the base fee.

Bound (``docs/credits.md``): spend can pass the cap by what is admitted between two rounds plus
what the meter had not yet seen of meters without a live counter. When a customer becomes
blocked, ``spend_cap.reached`` is emitted once per customer and period (outbox dedupe key).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tollhouse.billing.pricing import minor_unit
from tollhouse.logs import get_logger
from tollhouse.webhooks.models import EmitEvent

__all__ = ["Capped", "SpendCaps"]

log = get_logger(__name__)
Lookup = Callable[[str], Awaitable[Any]]  # customer -> billing.usage.UsageReport | None


@dataclass(frozen=True, slots=True)
class Capped:
    """A customer at or over its cap: what the 402 tells it (minor units)."""

    cap: int
    spent: int
    currency: str
    period: str


class SpendCaps:
    """The evaluator and the Check's view of who is capped."""

    def __init__(
        self,
        directory: Any,
        lookup: Lookup,
        *,
        emit: EmitEvent | None,
        interval_s: float = 1.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._directory = directory
        self._lookup = lookup
        self._emit = emit
        self.interval_s = interval_s
        self._timeout_s = timeout_s
        self._blocked: dict[str, Capped] = {}
        self._emitted: set[str] = set()

    def blocked(self, customer: str) -> Capped | None:
        """Whether ``customer`` is at its cap (as of the last round)."""
        return self._blocked.get(customer) if self._blocked else None

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every ``interval_s`` until ``stop``; a failed round is logged, not fatal."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.evaluate_once(), self._timeout_s)
            except Exception:  # the meter or the outbox: the next round tries again
                log.warning("spend_caps.round_failed", exc=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def evaluate_once(self) -> int:
        """Recompute who is capped; return how many customers are."""
        blocked: dict[str, Capped] = {}
        for cid in self._directory.capped_customers():
            ent = self._directory.customer(cid)
            if ent is None or ent.spend_cap is None:
                continue
            report = await self._lookup(cid)
            if report is None:
                continue
            spent = _minor(sum((m.amount for m in report.meters), Decimal(0)), report.currency)
            if spent >= ent.spend_cap:
                blocked[cid] = Capped(ent.spend_cap, spent, report.currency, report.period)
        self._blocked = blocked
        for cid, c in blocked.items():
            await self._reached(cid, c)
        return len(blocked)

    async def _reached(self, cid: str, c: Capped) -> None:
        key = f"spend_cap.reached:{cid}:{c.period}"
        if self._emit is None or key in self._emitted:
            return
        data = {"cap": c.cap, "spent": c.spent, "currency": c.currency, "period": c.period}
        if await self._emit("spend_cap.reached", cid, key, data):
            log.info("spend_caps.reached", customer=cid, cap=c.cap, spent=c.spent)
        self._emitted.add(key)


def _minor(amount: Decimal, currency: str) -> int:
    """``amount`` (major units) in whole minor units, rounded down."""
    return int(amount // minor_unit(currency))
