"""Prepaid credits on an invoice: which grants apply, how much of each, what is left.

Deterministic on purpose (the live ``credit_consumed`` counters move while the job runs and are
never read here). The inputs are the customer's grants as the store holds them, what the
customer's issued invoices already applied from each grant (the ledger's ``credits_applied``),
the invoice's charges and ``as_of``, the instant the invoice is built (the job's clock, ``--now``).
Rules (``docs/billing.md``, "Credits on invoices"):

* a grant applies to the invoice of period ``[start, end)`` when it is in the invoice's currency,
  was granted by ``as_of`` (``created_at <= as_of``), is not voided by then (``voided_at`` unset or
  ``> as_of``), is in effect before the period ends (``effective_at < end``), has not expired
  before the period ends (``expires_at`` unset or ``>= end``), is not scoped to features (an
  invoice has no per-feature amounts), and has something left after earlier invoices;
* grants are applied in consumption order (:func:`~tollhouse.store.credit_models.grant_order`),
  each as far as it covers the charges still unpaid: an unscoped grant covers everything (base
  fees and the minimum top-up first, then meters by name), a meter-scoped one only the usage lines
  and late-usage adjustments of its meters;
* ``amount_due = total - applied`` (never below 0: a grant never covers more than the charges).

Grants that could have mattered to this period but do not apply (another currency, scoped to
features, voided or expired during the period, granted after ``as_of``) are listed under
``not_applied`` with the reason, never skipped quietly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tollhouse.billing.pricing import minor_unit
from tollhouse.logs import get_logger
from tollhouse.store.credit_models import CreditGrant, grant_order

__all__ = ["FEES", "AppliedCredits", "apply_credits", "charge_buckets", "log_not_applied"]

log = get_logger(__name__)

FEES = ""  # the bucket of base fees and the minimum top-up (covered by unscoped grants only)


@dataclass(frozen=True, slots=True)
class AppliedCredits:
    """The invoice's ``credits`` section, the amount due, and what the ledger records on issue."""

    document: dict[str, Any]
    amount_due: Decimal
    applied: tuple[tuple[str, int], ...]  # (grant id, minor units), only non-zero


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def charge_buckets(
    fees: Decimal, lines: Iterable[dict[str, Any]], adjustments: Iterable[dict[str, Any]]
) -> dict[str, Decimal]:
    """``{FEES: base fees + minimum top-up, meter: its line + its adjustments}``."""
    out = {FEES: fees}
    for item in (*lines, *adjustments):
        out[item["meter"]] = out.get(item["meter"], Decimal(0)) + Decimal(item["amount"])
    return out


def _refusal(
    g: CreditGrant, currency: str, start: float, end: float, as_of: float
) -> tuple[str | None, bool]:
    """``(reason, listed)``: why ``g`` does not apply (``None``: it does), and whether to say so.

    Grants whose story ended before the period (expired or voided before it started) or that
    start after it are left out of the list: they never concerned this invoice.
    """
    if g.created_at > as_of:
        return f"granted at {_iso(g.created_at)}, after this invoice was built", True
    if g.voided_at is not None and g.voided_at <= as_of:
        return f"voided at {_iso(g.voided_at)}", g.voided_at >= start
    if g.effective_at >= end:
        return "not in effect before the period ends", False
    if g.expires_at is not None and g.expires_at < end:
        return f"expired at {_iso(g.expires_at)}, before the period ended", g.expires_at > start
    if g.currency != currency:
        return f"in {g.currency}; this invoice is in {currency}", True
    if g.features:
        return "scoped to features; an invoice has no per-feature amounts", True
    return None, False


def _covered(g: CreditGrant, buckets: Mapping[str, int]) -> list[str]:
    return [
        k
        for k in sorted(buckets)
        if (k == FEES and not g.meters) or (k != FEES and (not g.meters or k in g.meters))
    ]


def apply_credits(
    grants: Sequence[CreditGrant],
    *,
    currency: str,
    start: float,
    end: float,
    as_of: float,
    total: Decimal,
    buckets: Mapping[str, Decimal],
    used_before: Mapping[str, int],
) -> AppliedCredits:
    """Apply the customer's grants to one invoice (see the module's rules)."""
    unit = minor_unit(currency)
    unpaid = {k: max(0, int(v / unit)) for k, v in buckets.items()}
    applied_docs: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    applied: list[tuple[str, int]] = []
    remaining = 0
    for g in sorted(grants, key=grant_order):
        reason, listed = _refusal(g, currency, start, end, as_of)
        if reason is not None:
            if listed:
                refused.append(
                    {
                        "grant": g.id,
                        "currency": g.currency,
                        "amount": _money(g.amount, g.currency),
                        "reason": reason,
                    }
                )
            continue
        available = max(0, g.amount - used_before.get(g.id, 0))
        if available == 0:
            continue
        take = 0
        for k in _covered(g, unpaid):
            part = min(available - take, unpaid[k])
            unpaid[k] -= part
            take += part
        if take:
            applied.append((g.id, take))
        remaining += available - take
        applied_docs.append(
            {
                "grant": g.id,
                "source": g.source,
                "priority": g.priority,
                "scope": {"meters": sorted(g.meters), "features": sorted(g.features)},
                "expires_at": _iso(g.expires_at),
                "granted": _money(g.amount, currency),
                "available": _money(available, currency),
                "applied": _money(take, currency),
                "remaining": _money(available - take, currency),
            }
        )
    applied_total = sum(t for _, t in applied) * unit
    doc = {
        "applied": applied_docs,
        "applied_total": _money(sum(t for _, t in applied), currency),
        "remaining_total": _money(remaining, currency),
        "not_applied": refused,
    }
    return AppliedCredits(
        doc, max(Decimal(0), total - applied_total).quantize(unit), tuple(applied)
    )


def _money(minor: int, currency: str) -> str:
    return format(minor * minor_unit(currency), "f")


def log_not_applied(doc: dict[str, Any]) -> None:
    """Log each grant an invoice document lists as not applied (it says so on the invoice too)."""
    for g in doc.get("credits", {}).get("not_applied", ()):
        log.warning(
            "billing.credit_not_applied",
            invoice=doc["number"],
            customer=doc["customer"],
            grant=g["grant"],
            reason=g["reason"],
        )
