"""The catalog snapshot: one immutable view of the config, swapped atomically on reload.

A Check takes ``state.snapshot`` once and uses only that object, so a reload mid-request never
mixes two configs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from tollhouse.config import Config, CustomerConfig, PlanConfig
from tollhouse.entitlements.matcher import FeatureMatcher

__all__ = ["Catalog", "Customer", "build_catalog"]


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer as the Check path sees it, from the entitlement store or the config file."""

    id: str
    plan: str
    status: str = "active"  # active | past_due | suspended | cancelled
    status_since: float = 0.0
    anchor: date | None = None
    quota_overrides: tuple[tuple[str, int], ...] = ()
    topups: tuple[tuple[str, int], ...] = ()
    source: str = "config"


@dataclass(frozen=True, slots=True)
class Catalog:
    """Features, plans and static customers of one config version."""

    config: Config
    matcher: FeatureMatcher
    plan_features: dict[str, frozenset[str]]
    customers: dict[str, Customer]
    version: str
    # Prepaid plans' prices (plan -> ``tollhouse.credits.CreditPrices``); empty without any.
    credit_prices: dict[str, Any] = field(default_factory=dict)

    def plan(self, name: str) -> PlanConfig | None:
        """The plan called ``name``, if the catalog has it."""
        return self.config.plans.get(name)


def _customer(cid: str, c: CustomerConfig) -> Customer:
    anchor = date.fromisoformat(c.period_anchor) if c.period_anchor else None
    return Customer(
        id=cid,
        plan=c.plan,
        anchor=anchor,
        quota_overrides=tuple(sorted(c.quota_overrides.items())),
    )


def _credit_prices(cfg: Config) -> dict[str, Any]:
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
        customers={cid: _customer(cid, c) for cid, c in cfg.customers.items()},
        version=hashlib.sha256(raw or cfg.model_dump_json().encode()).hexdigest()[:12],
        credit_prices=_credit_prices(cfg),
    )
