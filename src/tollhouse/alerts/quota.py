"""Quota thresholds: ``quota.threshold_reached`` / ``quota.threshold_recovered`` events.

Evaluated periodically in ``serve`` (never in the Check) from the limiter's counters, for the
customers the limiter holds this period. Each threshold fires at most once reached and once
recovered per customer, meter and period, across replicas: the event's dedupe key names all four
(``quota.threshold_reached:acme:requests:80pct:2026-12``), and the outbox records a key once.
Hysteresis: recovered needs usage at or below ``recover_below_percent`` of the threshold, so
usage hovering at a threshold fires one event, not many.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any, Literal

from prometheus_client import Counter

from tollhouse.config.alerts import AlertsConfig, QuotaThreshold
from tollhouse.logs import get_logger
from tollhouse.periods import period_for
from tollhouse.webhooks.models import EmitEvent

__all__ = ["QuotaAlerts", "crossing", "threshold_units"]

log = get_logger(__name__)
Kind = Literal["reached", "recovered"]
Resolve = Callable[[str], tuple[Any, Any] | None]
ALERT_ROUNDS = Counter(
    "tollhouse_alert_rounds_total",
    "Alert evaluation rounds by result (ok, error: retried next round)",
    ["result"],
)


def threshold_units(t: QuotaThreshold, quota: int) -> int:
    """The usage at which ``t`` is reached for a quota of ``quota`` units."""
    return t.units if t.units is not None else math.ceil(quota * (t.percent or 0) / 100)


def crossing(used: int, at: int, *, reached: bool, recover_below_percent: float) -> Kind | None:
    """What usage ``used`` against threshold ``at`` signals, given whether it was reached."""
    if not reached:
        return "reached" if used >= at else None
    return "recovered" if used <= at * recover_below_percent / 100 and used < at else None


class QuotaAlerts:
    """One evaluator per replica; ``emit`` is the outbox's (dedupe across replicas)."""

    def __init__(
        self,
        cfg: AlertsConfig,
        *,
        limiter: Any,
        resolve: Resolve,
        limits_for: Callable[[Any, Any], Any],
        emit: EmitEvent,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self._limiter = limiter
        self._resolve = resolve
        self._limits_for = limits_for
        self._emit = emit
        self._clock = clock
        self._reached: set[str] = set()  # reached keys known to be recorded (this or any replica)
        self._recovered: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every ``interval_ms`` until ``stop``; a failed round is counted and logged."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.evaluate_once(), self.cfg.interval_ms / 1000 + 10)
                ALERT_ROUNDS.labels(result="ok").inc()
            except Exception:  # the store or the counters: the next round tries again
                ALERT_ROUNDS.labels(result="error").inc()
                log.warning("alerts.round_failed", exc=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.interval_ms / 1000)

    async def evaluate_once(self) -> int:
        """Evaluate every held customer's thresholds; return how many events were new."""
        now = self._clock()
        new = 0
        periods: set[str] = set()
        for cid in self._limiter.customer_ids():
            found = self._resolve(cid)
            if found is None:
                continue
            cust, plan = found
            rules = self.cfg.rules_for(cid, cust.plan)
            if not rules.quota or plan is None:
                continue
            limits = self._limits_for(cust, plan)
            snap = self._limiter.snapshot(cid, limits, now)
            period = period_for(now, limits.anchor).key
            periods.add(period)
            for t in rules.quota:
                if t.meter in snap:
                    used, quota = snap[t.meter]
                    new += await self._evaluate(cid, t, used, quota, period)
        self._prune(periods)
        return new

    def _prune(self, periods: set[str]) -> None:
        """Forget the keys of periods no customer is in any more (they cannot fire again)."""
        for keys in (self._reached, self._recovered):
            keys.difference_update([k for k in keys if k.rsplit(":", 1)[1] not in periods])

    async def _evaluate(
        self, cid: str, t: QuotaThreshold, used: int, quota: int, period: str
    ) -> int:
        at = threshold_units(t, quota)
        if at <= 0:
            return 0
        tail = f"{cid}:{t.meter}:{t.label}:{period}"
        reached_key = f"quota.threshold_reached:{tail}"
        recovered_key = f"quota.threshold_recovered:{tail}"
        if recovered_key in self._recovered:
            return 0
        kind = crossing(
            used,
            at,
            reached=reached_key in self._reached,
            recover_below_percent=self.cfg.recover_below_percent,
        )
        if kind is None:
            return 0
        data = {
            "meter": t.meter,
            "threshold": {"percent": t.percent, "units": t.units},
            "threshold_units": at,
            "used": used,
            "quota": quota,
            "period": period,
        }
        key = reached_key if kind == "reached" else recovered_key
        fresh = await self._emit(f"quota.threshold_{kind}", cid, key, data)
        (self._reached if kind == "reached" else self._recovered).add(key)
        if fresh:
            log.info(
                "alerts.quota_threshold",
                kind=kind,
                customer=cid,
                meter=t.meter,
                threshold=t.label,
                used=used,
                quota=quota,
            )
        return int(fresh)
