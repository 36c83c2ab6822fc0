"""Cross-section checks of a whole config: references between sections and rules across them.

Each check returns ``(dotted path, problem)`` pairs; :class:`tollhouse.config.Config` raises one
:class:`~tollhouse.config.ConfigError` with all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tollhouse.config.catalog import PlanConfig
from tollhouse.config.runtime import LISTENERS, listener_clashes

if TYPE_CHECKING:
    from tollhouse.config import Config

__all__ = ["reference_problems"]

Problems = list[tuple[str, str]]


def reference_problems(cfg: Config) -> Problems:
    """Every problem of the config as a whole (unknown names, rules across sections)."""
    problems = _catalog_problems(cfg) + _customer_problems(cfg)
    if cfg.default_plan is not None and cfg.default_plan not in cfg.plans:
        problems.append(("default_plan", f"unknown plan {cfg.default_plan!r}"))
    problems.extend(listener_clashes({name: getattr(cfg, name) for name in LISTENERS}))
    problems.extend(cfg.alerts.problems(cfg.plans, cfg.meters))
    if (cfg.alerts.any_quota or cfg.alerts.any_spend) and cfg.store is None:
        problems.append(("alerts", "alert events go to the webhook outbox: set store.url"))
    return problems


def _catalog_problems(cfg: Config) -> Problems:
    """Features name known meters; plans name known features and meters."""
    problems: Problems = []
    for fname, feat in cfg.features.items():
        for i, m in enumerate(feat.meters):
            if m not in cfg.meters:
                problems.append((f"features.{fname}.meters.{i}", f"unknown meter {m!r}"))
    for pname, plan in cfg.plans.items():
        for i, f in enumerate(plan.features):
            if f not in cfg.features:
                problems.append((f"plans.{pname}.features.{i}", f"unknown feature {f!r}"))
        for m in plan.quotas:
            if m not in cfg.meters:
                problems.append((f"plans.{pname}.quotas.{m}", f"unknown meter {m!r}"))
        if plan.price is not None:
            for m in plan.price.meters:
                if m not in cfg.meters:
                    problems.append((f"plans.{pname}.price.meters.{m}", f"unknown meter {m!r}"))
        problems.extend(_shadow_problems(cfg, pname, plan.shadow_price))
        problems.extend(_prepaid_problems(cfg, pname, plan))
    if cfg.export.stripe is not None:
        problems += [
            (f"export.stripe.meters.{m}", f"unknown meter {m!r}")
            for m in cfg.export.stripe.meters
            if m not in cfg.meters
        ]
    return problems


def _customer_problems(cfg: Config) -> Problems:
    """Static customers name known plans and meters; config API keys name known customers."""
    problems: Problems = []
    for cname, cust in cfg.customers.items():
        if cust.plan not in cfg.plans:
            problems.append((f"customers.{cname}.plan", f"unknown plan {cust.plan!r}"))
        for m in cust.quota_overrides:
            if m not in cfg.meters:
                problems.append((f"customers.{cname}.quota_overrides.{m}", f"unknown meter {m!r}"))
    for i, key in enumerate(cfg.auth.api_keys.keys):
        if key.customer not in cfg.customers and cfg.default_plan is None:
            problems.append(
                (f"auth.api_keys.keys.{i}.customer", f"unknown customer {key.customer!r}")
            )
    return problems


def _prepaid_problems(cfg: Config, pname: str, plan: PlanConfig) -> Problems:
    """A prepaid plan charges fixed per-unit prices against credit kept in the store."""
    if not plan.prepaid:
        return []
    where = f"plans.{pname}"
    if cfg.store is None:
        return [(f"{where}.prepaid", "credit grants live in the entitlement store: set store.url")]
    if plan.price is None:
        return [(f"{where}.price", "a prepaid plan needs a price to charge against credit")]
    return [
        (
            f"{where}.price.meters.{m}.model",
            "a prepaid plan charges per_unit prices with nothing included",
        )
        for m, p in plan.price.meters.items()
        if p.model != "per_unit" or p.included
    ]


def _shadow_problems(cfg: Config, pname: str, shadow: str | None) -> Problems:
    """``shadow_price`` names another plan that has a price."""
    where = f"plans.{pname}.shadow_price"
    if shadow is None:
        return []
    if shadow == pname:
        return [(where, "must name another plan, not the plan itself")]
    target = cfg.plans.get(shadow)
    if target is None:
        return [(where, f"unknown plan {shadow!r}")]
    if target.price is None:
        return [(where, f"plan {shadow!r} has no price")]
    return []
