"""Spend thresholds: ``spend.threshold_reached`` when a customer's charges pass an amount.

Evaluated every ``alerts.interval_ms`` in ``serve`` (never in the Check), for the customers the
limiter holds this period, from the same figures ``GET /v1/usage`` shows (usage charges, not the
base fee). Spend only grows within a period, so each threshold fires at most once per customer
and period, across replicas: the dedupe key is ``spend.threshold_reached:<customer>:<amount>minor:
<period>``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from tollhouse.billing.pricing import minor_unit
from tollhouse.config.alerts import AlertsConfig
from tollhouse.logs import get_logger
from tollhouse.webhooks.models import EmitEvent

__all__ = ["SpendAlerts"]

log = get_logger(__name__)


class SpendAlerts:
    """One evaluator per replica; ``lookup`` prices a customer's open period (a UsageReport)."""

    def __init__(
        self,
        cfg: AlertsConfig,
        *,
        customers: Callable[[], list[str]],
        plan_of: Callable[[str], str | None],
        lookup: Callable[[str], Awaitable[Any]],
        emit: EmitEvent,
    ) -> None:
        self.cfg = cfg
        self._customers = customers
        self._plan_of = plan_of
        self._lookup = lookup
        self._emit = emit
        self._sent: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every ``interval_ms`` until ``stop``; a failed round is logged and retried."""
        every = self.cfg.interval_ms / 1000
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.evaluate_once(), every + 10)
            except Exception:  # the meter or the outbox: the next round tries again
                log.warning("alerts.spend_round_failed", exc=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def evaluate_once(self) -> int:
        """Evaluate every held customer's spend thresholds; return how many events were new."""
        new = 0
        for cid in self._customers():
            plan = self._plan_of(cid)
            rules = self.cfg.rules_for(cid, plan) if plan is not None else None
            if rules is None or not rules.spend:
                continue
            report = await self._lookup(cid)
            if report is None:
                continue
            charges = sum((m.amount for m in report.meters), Decimal(0))
            spent = int(charges // minor_unit(report.currency))
            for t in rules.spend:
                key = f"spend.threshold_reached:{cid}:{t.amount_minor}minor:{report.period}"
                if spent < t.amount_minor or key in self._sent:
                    continue
                data = {
                    "threshold": {"amount_minor": t.amount_minor},
                    "spent": spent,
                    "currency": report.currency,
                    "period": report.period,
                }
                new += int(await self._emit("spend.threshold_reached", cid, key, data))
                self._sent.add(key)
        return new
