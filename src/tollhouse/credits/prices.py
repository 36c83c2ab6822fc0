"""What a prepaid plan charges against the credit balance, in 1/1000 minor units (``MILLI``).

A prepaid plan's meters are priced ``per_unit`` with nothing included (the config refuses
anything else, naming the field), so one unit always costs the same and a request's cost is
known exactly at admission for request meters, and from the access log for the others (bytes,
tokens). A cost finer than 1/1000 of a minor unit is rounded up, once per request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from tollhouse.billing.pricing import minor_unit
from tollhouse.config import Config
from tollhouse.store.credit_models import MILLI

__all__ = ["CreditPrices", "build_credit_prices"]


@dataclass(frozen=True, slots=True)
class CreditPrices:
    """One prepaid plan's prices: meter -> exact cost of one unit in 1/1000 minor units."""

    plan: str
    currency: str
    unit_milli: Mapping[str, Decimal]
    deny_when_exhausted: bool
    request_meters: frozenset[str]  # meters whose unit is one admitted request

    def cost(self, meter: str, units: int) -> int:
        """Cost of ``units`` of ``meter`` (0 when the meter is free), rounded up."""
        price = self.unit_milli.get(meter)
        return 0 if price is None or units <= 0 else math.ceil(price * units)

    def admission_costs(self, meters: Sequence[str]) -> dict[str, int]:
        """Per priced meter of a feature: what admitting one request costs now.

        A request meter costs one unit; a priced meter known only after the response (bytes,
        tokens) costs 0 here, but still needs a balance above zero (see ``CreditBook.spend``).
        """
        return {
            m: self.cost(m, 1) if m in self.request_meters else 0
            for m in meters
            if m in self.unit_milli
        }


def build_credit_prices(cfg: Config) -> dict[str, CreditPrices]:
    """The prices of every prepaid plan of ``cfg`` (validated: per_unit, nothing included)."""
    out: dict[str, CreditPrices] = {}
    per_request = frozenset(n for n, m in cfg.meters.items() if m.source == "requests")
    for name, plan in cfg.plans.items():
        if not plan.prepaid or plan.price is None:
            continue
        scale = Decimal(MILLI) / minor_unit(plan.price.currency)
        unit = {
            m: (p.unit_price or Decimal(0)) * scale
            for m, p in plan.price.meters.items()
            if p.unit_price
        }
        out[name] = CreditPrices(
            name, plan.price.currency, unit, plan.on_credit_exhausted == "deny", per_request
        )
    return out
