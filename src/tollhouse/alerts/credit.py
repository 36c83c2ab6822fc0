"""Credit alerts: ``credit.low``, ``credit.exhausted`` and ``credit.recharge_requested`` events.

Evaluated periodically in ``serve`` (never in the Check) from this replica's credit book, for
the customers it holds grant counters for. The balance only falls between top-ups, so each event
fires at most once per customer, threshold and *grant epoch*: the newest usable grant's id is in
the dedupe key (``credit.low:acme:20pct:cg_1f...``), and the outbox records a key once across
replicas. A new grant (a purchase, or the top-up a recharge request asked for) re-arms them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from tollhouse.config.alerts import AlertsConfig, CreditThreshold
from tollhouse.logs import get_logger
from tollhouse.store.credit_models import MILLI, CreditGrant
from tollhouse.subscriber import Subscriber
from tollhouse.webhooks.models import EmitEvent

__all__ = ["CreditAlerts", "credit_threshold"]

log = get_logger(__name__)


def credit_threshold(t: CreditThreshold, granted: int) -> tuple[str, int]:
    """``(label, minor units)``: the balance below which ``t`` fires, for ``granted`` in total."""
    if t.amount_minor is not None:
        return f"{t.amount_minor}minor", t.amount_minor
    return f"{t.percent:g}pct", math.ceil(granted * (t.percent or 0) / 100)


class CreditAlerts:
    """One evaluator per replica; ``emit`` is the outbox's (dedupe across replicas)."""

    def __init__(
        self,
        cfg: AlertsConfig,
        *,
        book: Any,
        directory: Any,
        emit: EmitEvent,
        clock: Callable[[], float],
        interval_s: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self._book = book
        self._directory = directory
        self._emit = emit
        self._clock = clock
        self.interval_s = interval_s
        self._sent: dict[str, tuple[str, set[str]]] = {}  # customer -> (epoch, keys recorded)

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every ``interval_s`` until ``stop``; a failed round is logged and retried."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.evaluate_once(), self.interval_s + 10)
            except Exception:  # the outbox's store: the next round tries again
                log.warning("alerts.credit_round_failed", exc=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def evaluate_once(self) -> int:
        """Evaluate every held customer's balance; return how many events were new."""
        now, new = self._clock(), 0
        for cid in self._book.customer_ids():
            ent = self._directory.customer(cid)
            grants = [g for g in (ent.credit_grants if ent is not None else ()) if g.usable(now)]
            if ent is None or not grants:
                continue
            currency = grants[0].currency
            grants = [g for g in grants if g.currency == currency]
            balance = self._book.balance(grants, now) // MILLI
            for event, label, data in self._due(cid, ent, grants, balance):
                new += await self._send(
                    event, cid, label, grants, {"balance": balance, "currency": currency, **data}
                )
        return new

    def _due(
        self, cid: str, ent: Subscriber, grants: Sequence[CreditGrant], balance: int
    ) -> list[tuple[str, str, dict[str, object]]]:
        """The events the balance calls for now: (type, label, data)."""
        granted = sum(g.amount for g in grants)
        out: list[tuple[str, str, dict[str, object]]] = []
        for t in self.cfg.rules_for(cid, ent.plan).credit:
            label, at = credit_threshold(t, granted)
            if balance < at:
                out.append(
                    (
                        "credit.low",
                        label,
                        {
                            "threshold": {"percent": t.percent, "amount_minor": t.amount_minor},
                            "below": at,
                            "granted": granted,
                        },
                    )
                )
        if balance <= 0:
            out.append(("credit.exhausted", "zero", {"granted": granted}))
        if ent.recharge is not None and balance < ent.recharge[0]:
            threshold, target = ent.recharge
            out.append(
                (
                    "credit.recharge_requested",
                    "rule",
                    {"threshold": threshold, "target": target, "amount": target - balance},
                )
            )
        return out

    async def _send(
        self,
        event: str,
        cid: str,
        label: str,
        grants: Sequence[CreditGrant],
        data: dict[str, object],
    ) -> int:
        epoch = max(grants, key=lambda g: (g.created_at, g.id)).id
        seen_epoch, keys = self._sent.get(cid, ("", set()))
        if seen_epoch != epoch:
            keys = set()
            self._sent[cid] = (epoch, keys)
        key = f"{event}:{cid}:{label}:{epoch}"
        if key in keys:
            return 0
        fresh = await self._emit(event, cid, key, {**data, "epoch_grant": epoch})
        keys.add(key)
        if fresh:
            log.info("alerts.credit", type=event, customer=cid, balance=data["balance"])
        return int(fresh)
