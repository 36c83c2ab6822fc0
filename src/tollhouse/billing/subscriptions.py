"""Who is subscribed to which plan, since when: the input to proration.

:class:`SubscriptionSource` is what the billing job reads. :class:`ConfigSubscriptions` serves it
from ``Config.customers`` (one plan, from ``since:``, else from the first usage) and
``default_plan`` (from the first usage);
:class:`tollhouse.billing.store_subscriptions.StoreSubscriptions` serves it from the entitlement
store (plan changes with their effective times, status, top-ups), falling back to the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from tollhouse.billing.periods import Period
from tollhouse.config import Config
from tollhouse.subscriber import PlanChange, Subscriber

__all__ = ["ConfigSubscriptions", "SubscriptionSource", "segments"]


class SubscriptionSource(Protocol):
    """Where subscriptions come from (the config file, or the entitlement store)."""

    def customers(self) -> Iterable[str]:
        """Every customer that may be billed."""
        ...

    def subscription(self, customer: str) -> Subscriber | None:
        """Return the customer's subscription, or ``None`` when unknown."""
        ...


class ConfigSubscriptions:
    """Subscriptions from ``Config.customers`` and ``default_plan``: one plan each.

    A customer with ``since:`` starts then; one without, and a ``default_plan`` caller, is
    ``from_first_usage`` (the billing job starts it at its first billable request in the ledger;
    ``GET /v1/usage`` treats it as in effect for the whole open period).
    """

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg

    def customers(self) -> Iterable[str]:
        """Return the configured customers, sorted."""
        return sorted(self._cfg.customers)

    def subscription(self, customer: str) -> Subscriber | None:
        """Return a single-plan subscription (``default_plan`` for unknown customers, if set)."""
        c = self._cfg.customers.get(customer)
        if c is not None:
            return Subscriber.from_config(customer, c)
        if self._cfg.default_plan is not None:
            return Subscriber.on_default_plan(customer, self._cfg.default_plan)
        return None


def segments(changes: Sequence[PlanChange], period: Period) -> list[tuple[str, int, int]]:
    """``(plan, start_s, end_s)`` pieces of ``period``, one per plan in effect, in time order."""
    out: list[tuple[str, int, int]] = []
    ordered = sorted(changes, key=lambda c: c.effective_from_s)
    for i, c in enumerate(ordered):
        nxt = ordered[i + 1].effective_from_s if i + 1 < len(ordered) else period.end_s
        start, end = max(c.effective_from_s, period.start_s), min(nxt, period.end_s)
        if start < end:
            if out and out[-1][0] == c.plan:
                out[-1] = (c.plan, out[-1][1], end)
            else:
                out.append((c.plan, start, end))
    return out
