"""Who the billing job bills, and from when: every subscription with its start resolved.

A subscription's start is its first plan change: a store customer's anchor (or creation), a
config customer's ``since:``. Where that is not known (a config customer without ``since:``, a
caller served through ``default_plan``: ``Subscriber.from_first_usage``), it is the customer's
first billable request in the ledger, over every generation the run may see, or the start of its
first issued invoice's period if that is earlier (a customer invoiced before this rule, or before
its ``since:`` was removed, has started, usage or not). Callers in the
ledger that no source lists are billed on ``default_plan`` when the config sets one (else the job
reports them as usage without a subscription). A config customer with neither ``since:`` nor
usage has not started: it is not invoiced, and the run says so (a :class:`Notice`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tollhouse.billing.periods import iso_utc, period_for_label
from tollhouse.billing.subscriptions import SubscriptionSource
from tollhouse.subscriber import Subscriber

__all__ = ["Notice", "Roster", "build_roster", "not_subscribed"]


@dataclass(frozen=True, slots=True)
class Notice:
    """Why a customer was not invoiced although nothing is wrong (a value, printed by the job)."""

    customer: str
    message: str


@dataclass(frozen=True, slots=True)
class Roster:
    """The run's customers, sorted: a subscription (start resolved) or ``None`` (unknown)."""

    entries: tuple[tuple[str, Subscriber | None], ...]
    default_plan: tuple[Subscriber, ...]  # callers billed on ``default_plan``
    notices: tuple[Notice, ...]  # config customers not started yet


def _waiting(customer: str) -> Notice:
    return Notice(
        customer,
        "not billed: no billable usage yet and no `since:` (set "
        f"customers.{customer}.since to bill its base fee from a date)",
    )


def _start_s(sub: Subscriber, first_ms: int | None, first_invoice: str | None) -> int | None:
    starts = [] if first_ms is None else [first_ms // 1000]
    if first_invoice is not None:
        starts.append(period_for_label(first_invoice, sub.anchor).start_s)
    return min(starts, default=None)


def build_roster(
    subs: SubscriptionSource, first_ms: Mapping[str, int], first_invoices: Mapping[str, str]
) -> Roster:
    """Resolve every listed customer's start, and add the ``default_plan`` callers of the ledger.

    ``first_ms``: each customer's earliest billable admission (``Ledger.first_admissions``);
    ``first_invoices``: each customer's earliest invoiced period (``Ledger.first_invoices``).
    """
    listed = set(subs.customers())
    entries: list[tuple[str, Subscriber | None]] = []
    defaults: list[Subscriber] = []
    notices: list[Notice] = []
    for cust in sorted(listed | set(first_ms)):
        sub = subs.subscription(cust)
        if cust not in listed and (sub is None or not sub.from_first_usage):
            continue  # no subscription: the job's unknown-customer check reports its usage
        if sub is not None and sub.from_first_usage:
            start = _start_s(sub, first_ms.get(cust), first_invoices.get(cust))
            if start is None:
                notices.append(_waiting(cust))
                continue
            sub = sub.starting_at(start)
            if cust not in listed:
                defaults.append(sub)
        entries.append((cust, sub))
    return Roster(tuple(entries), tuple(defaults), tuple(notices))


def not_subscribed(sub: Subscriber, label: str) -> Notice:
    """The notice for a period that ends before ``sub`` starts (nothing to invoice)."""
    return Notice(sub.id, f"{label}: not invoiced, the subscription starts {iso_utc(sub.start_s)}")
