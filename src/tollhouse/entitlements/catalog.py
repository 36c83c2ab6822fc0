"""The catalog snapshot: one immutable view of the config, swapped atomically on reload.

A Check takes ``state.snapshot`` once and uses only that object, so a reload mid-request never
mixes two configs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tollhouse.config import Config, PlanConfig
from tollhouse.entitlements.matcher import FeatureMatcher
from tollhouse.metering.policy import Finalizer
from tollhouse.subscriber import Subscriber

if TYPE_CHECKING:
    from tollhouse.credits.prices import CreditPrices

__all__ = ["Catalog", "build_catalog"]


@dataclass(frozen=True, slots=True)
class Catalog:
    """Features, plans and static customers of one config version."""

    config: Config
    matcher: FeatureMatcher
    plan_features: dict[str, frozenset[str]]
    customers: dict[str, Subscriber]
    version: str
    # Prepaid plans' prices (plan -> ``tollhouse.credits.CreditPrices``); empty without any.
    credit_prices: dict[str, CreditPrices] = field(default_factory=dict)
    # Units known at admission, per feature (1 per request-counted meter): the reservation's.
    request_units: dict[str, dict[str, int]] = field(default_factory=dict)

    def plan(self, name: str) -> PlanConfig | None:
        """The plan called ``name``, if the catalog has it."""
        return self.config.plans.get(name)


def _credit_prices(cfg: Config) -> dict[str, CreditPrices]:
    if not any(p.prepaid for p in cfg.plans.values()):
        return {}
    from tollhouse.credits.prices import build_credit_prices  # only configs with prepaid plans

    return dict(build_credit_prices(cfg))


def build_catalog(cfg: Config, raw: bytes = b"") -> Catalog:
    """Compile a validated config into a snapshot (regexes compiled, plans indexed)."""
    return Catalog(
        config=cfg,
        matcher=FeatureMatcher(cfg.features),
        plan_features={n: frozenset(p.features) for n, p in cfg.plans.items()},
        customers={cid: Subscriber.from_config(cid, c) for cid, c in cfg.customers.items()},
        version=hashlib.sha256(raw or cfg.model_dump_json().encode()).hexdigest()[:12],
        credit_prices=_credit_prices(cfg),
        request_units={name: Finalizer(cfg).request_units(name) for name in cfg.features},
    )
