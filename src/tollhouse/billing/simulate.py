"""``tollhouse simulate``: price a period's real usage under a candidate plan. Issues nothing.

For each customer the current invoice is the issued one when the period is issued (its stored
document, so the current total is exactly what ``bill`` issued), else the preview ``bill`` would
build now. The candidate is built by the same code (:func:`tollhouse.billing.invoice.build_invoice`)
over the same ledger generations, with every plan of the customer's history replaced by the
candidate: proration by the subscription's own dates, top-ups and late-usage adjustments are kept.
So a candidate equal to the current plan gives exactly the current totals.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tollhouse.billing.invoice import BuildInput, InvoiceProblem, build_invoice
from tollhouse.billing.ledger import Ledger
from tollhouse.billing.periods import Period, period_for_label
from tollhouse.billing.subscriptions import SubscriptionSource, segments
from tollhouse.config import Config, ConfigError, PlanConfig
from tollhouse.subscriber import PlanChange, Subscriber

__all__ = [
    "LineChange",
    "Simulation",
    "load_plan_file",
    "shadow_simulation",
    "simulate_customer",
    "simulate_period",
]


@dataclass(frozen=True, slots=True)
class LineChange:
    """One amount of the invoice that the candidate changes."""

    what: str  # "base_fee", "meter:<name>", "minimum_topup", "adjustments"
    current: Decimal
    candidate: Decimal


@dataclass(frozen=True, slots=True)
class Simulation:
    """One customer's period: the current invoice against the candidate plan's."""

    customer: str
    period: str
    current_plan: str
    candidate_plan: str
    currency: str
    candidate_currency: str
    current_total: Decimal
    candidate_total: Decimal
    issued: bool
    changes: tuple[LineChange, ...]

    @property
    def difference(self) -> Decimal | None:
        """Candidate minus current (``None`` when the currencies differ)."""
        if self.currency != self.candidate_currency:
            return None
        return self.candidate_total - self.current_total

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (money as decimal strings)."""
        diff = self.difference
        return {
            "customer": self.customer,
            "period": self.period,
            "current_plan": self.current_plan,
            "candidate_plan": self.candidate_plan,
            "currency": self.currency,
            "candidate_currency": self.candidate_currency,
            "current_total": str(self.current_total),
            "candidate_total": str(self.candidate_total),
            "difference": None if diff is None else str(diff),
            "issued": self.issued,
            "changes": [
                {"what": c.what, "current": str(c.current), "candidate": str(c.candidate)}
                for c in self.changes
            ],
        }


def load_plan_file(path: Path, cfg: Config) -> tuple[str, PlanConfig]:
    """Read a candidate plan: ``NAME: {plan}`` or a bare plan (named after the file's stem)."""
    src = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([("(file)", f"cannot read {path}: {e.strerror}")], src) from None
    except yaml.YAMLError as e:
        raise ConfigError([("(file)", f"invalid YAML: {e}")], src) from None
    if not isinstance(data, dict):
        raise ConfigError([("(root)", "must be a plan, or NAME: plan")], src)
    name, body = path.stem, data
    if len(data) == 1 and not set(data) & set(PlanConfig.model_fields):
        name, body = next(iter(data.items()))
    try:
        plan = PlanConfig.model_validate(body)
    except ValidationError as e:
        raise ConfigError(
            [(".".join(str(p) for p in (name, *err["loc"])), err["msg"]) for err in e.errors()], src
        ) from None
    unknown = [m for m in (plan.price.meters if plan.price else {}) if m not in cfg.meters]
    if unknown:
        raise ConfigError(
            [(f"{name}.price.meters.{m}", f"unknown meter {m!r}") for m in unknown], src
        )
    return str(name), plan


def _upto(ledger: Ledger, customer: str, label: str) -> tuple[dict[str, Any] | None, int, int]:
    """The issued document (if any), the generation it (or a preview) covers, the previous one."""
    row = ledger.one(
        "SELECT document, upto_seq FROM invoices WHERE customer = ? AND period = ?",
        (customer, label),
    )
    prev = ledger.one(
        "SELECT upto_seq FROM invoices WHERE customer = ? AND period < ?"
        " ORDER BY period DESC LIMIT 1",
        (customer, label),
    )
    before = 0 if prev is None else int(prev[0])
    if row is None:
        return None, ledger.max_seq(), before
    return json.loads(str(row[0])), int(row[1]), before


def _amounts(doc: Mapping[str, Any]) -> dict[str, Decimal]:
    out = {"base_fee": sum((Decimal(b["amount"]) for b in doc["base_fees"]), Decimal(0))}
    for ln in doc["lines"]:
        out[f"meter:{ln['meter']}"] = Decimal(ln["amount"])
    out["minimum_topup"] = Decimal(doc["minimum_topup"])
    out["adjustments"] = Decimal(doc["adjustments_total"])
    return out


def _changes(cur: Mapping[str, Any], cand: Mapping[str, Any]) -> tuple[LineChange, ...]:
    a, b = _amounts(cur), _amounts(cand)
    keys = list(a) + [k for k in b if k not in a]
    return tuple(
        LineChange(k, a.get(k, Decimal(0)), b.get(k, Decimal(0)))
        for k in keys
        if a.get(k, Decimal(0)) != b.get(k, Decimal(0))
    )


def _not_billed(plans: Mapping[str, PlanConfig], sub: Subscriber, p: Period) -> str | None:
    """Why ``bill`` would not price this period (as its gate says), or ``None``."""
    unknown = sorted({plan for plan, _, _ in segments(sub.changes, p)} - set(plans))
    if unknown:
        return f"plan {unknown[0]!r} is not in the config's catalog"
    if sub.cancelled_before(p):
        return f"cancelled before {p.label}: nothing is billed"
    return None


def simulate_customer(
    ledger: Ledger, plans: Mapping[str, PlanConfig], sub: Subscriber, label: str, candidate: str
) -> Simulation | InvoiceProblem:
    """Price ``sub``'s period ``label`` as it is and under ``candidate`` (a name in ``plans``)."""
    p: Period = period_for_label(label, sub.anchor)
    issued, upto, prev = _upto(ledger, sub.id, p.label)
    current: dict[str, Any]
    if issued is not None:
        current = issued
    else:
        problem = _not_billed(plans, sub, p)
        if problem is not None:
            return InvoiceProblem(sub.id, problem)
        built = build_invoice(ledger, BuildInput(plans, sub, p, upto, prev, "preview"))
        if isinstance(built, InvoiceProblem):
            return built
        current = built.document
    alt = dataclasses.replace(
        sub, changes=tuple(PlanChange(candidate, c.effective_from_s) for c in sub.changes)
    )
    cand = build_invoice(ledger, BuildInput(plans, alt, p, upto, prev, "preview"))
    if isinstance(cand, InvoiceProblem):
        return cand
    doc = cand.document
    return Simulation(
        sub.id,
        p.label,
        str(current["plan"]),
        candidate,
        str(current["currency"]),
        str(doc["currency"]),
        Decimal(current["total"]),
        Decimal(doc["total"]),
        issued is not None,
        _changes(current, doc),
    )


def shadow_simulation(
    ledger: Ledger, plans: Mapping[str, PlanConfig], sub: Subscriber, label: str, plan: str
) -> Simulation | InvoiceProblem | None:
    """``plan``'s ``shadow_price:`` applied to the period: exactly ``simulate --plan <shadow>``.

    ``None`` when ``plan`` names no shadow. Nothing is issued or stored.
    """
    current = plans.get(plan)
    if current is None or current.shadow_price is None:
        return None
    return simulate_customer(ledger, plans, sub, label, current.shadow_price)


def simulate_period(
    ledger: Ledger,
    cfg: Config,
    subs: SubscriptionSource,
    label: str,
    candidates: Sequence[str],
    *,
    extra: Mapping[str, PlanConfig] | None = None,
    customer: str | None = None,
) -> list[Simulation | InvoiceProblem]:
    """Every subscribed customer (or one) x every candidate plan, in that order."""
    period_for_label(label, None)  # validates the label
    plans = {**cfg.plans, **(extra or {})}
    unknown = [c for c in candidates if c not in plans]
    if unknown:
        raise ValueError(f"unknown plan {unknown[0]!r} (not in the config's catalog)")
    names = [customer] if customer is not None else sorted(subs.customers())
    out: list[Simulation | InvoiceProblem] = []
    for cust in names:
        sub = subs.subscription(cust)
        if sub is None:
            out.append(InvoiceProblem(cust, "no subscription"))
            continue
        for cand in candidates:
            out.append(simulate_customer(ledger, plans, sub, label, cand))
    return out
