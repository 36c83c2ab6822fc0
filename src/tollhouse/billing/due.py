"""Which periods ``tollhouse bill`` (without ``--period``) issues: every ended, unissued one.

Per customer, by that customer's own periods (calendar months, or anniversaries of its anchor):
the periods after its last issued invoice, up to the last one that has ended at ``now``. Periods
are issued in order, so "not yet issued" is "after the last issued invoice".

A customer without an issued invoice starts at the period of its subscription's start (the first
plan change: a store customer's anchor, a config customer's ``since:``, else, resolved by
:mod:`tollhouse.billing.roster`, its first billable request, as for ``default_plan`` callers).
A subscription given in effect since the epoch (a caller's own ``SubscriptionSource``) starts at
the period of its first billable usage in the ledger, or, with none, at the last ended period;
never at 1970.
"""

from __future__ import annotations

from tollhouse.billing.ledger import Ledger
from tollhouse.billing.periods import Period, period_containing, period_for_label
from tollhouse.subscriber import Subscriber

__all__ = ["due_periods"]


def _first_period(sub: Subscriber, ledger: Ledger, now_s: int, upto: int) -> Period:
    anchor = sub.anchor
    last = ledger.last_invoice(sub.id)
    if last is not None:
        return period_for_label(last[0], anchor).next(anchor)
    start_s = sub.start_s
    if start_s > 0:
        return period_containing(start_s, anchor)
    first_ms = ledger.first_admitted_ms(sub.id, now_s * 1000, min_seq=0, max_seq=upto)
    if first_ms is None:
        return period_containing(now_s, anchor).previous(anchor)
    return period_containing(first_ms // 1000, anchor)


def due_periods(sub: Subscriber, ledger: Ledger, now_s: float, upto: int) -> list[Period]:
    """Return ``sub``'s ended periods not yet issued at ``now_s``, oldest first.

    ``upto`` is the run's sealed generation (the usage the run may see).
    """
    now = int(now_s // 1)
    p = _first_period(sub, ledger, now, upto)
    out: list[Period] = []
    while p.end_s <= now:
        out.append(p)
        p = p.next(sub.anchor)
    return out
