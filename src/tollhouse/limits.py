"""Effective limits of one customer: plan quotas, replaced by overrides, plus top-ups.

Built once per customer object and catalog version, so the Check path usually does a dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tollhouse.check import State
from tollhouse.config import Config, PlanConfig

__all__ = ["LimitsBuilder", "effective_quotas", "needs_limiter"]


def needs_limiter(cfg: Config) -> bool:
    """Any plan sells a quota or a rate limit, or a customer has an override."""
    return any(
        p.quotas or p.rate_limits.per_second or p.rate_limits.per_minute
        for p in cfg.plans.values()
    ) or any(c.quota_overrides for c in cfg.customers.values())


def _pairs(value: Any) -> Mapping[str, int]:
    if not value:
        return {}
    return value if isinstance(value, Mapping) else dict(value)


def effective_quotas(plan: PlanConfig, overrides: Any, topups: Any) -> dict[str, int]:
    """Plan quotas, each replaced by an override if one exists, plus top-ups."""
    quotas = dict(plan.quotas)
    quotas.update(_pairs(overrides))
    for meter, units in _pairs(topups).items():
        quotas[meter] = quotas.get(meter, 0) + units
    return quotas


class LimitsBuilder:
    """``for_customer(customer, plan) -> quota.Limits``, cached per customer object."""

    def __init__(self, state: State, max_entries: int = 200_000) -> None:
        self.state = state
        self.max_entries = max_entries
        self._cache: dict[int, tuple[Any, str, Any]] = {}
        self._req_meters: tuple[str, frozenset[str]] = ("", frozenset())

    def _request_meters(self) -> frozenset[str]:
        """Meters that count one unit per admitted request (the rest grow from the access log)."""
        cat = self.state.catalog
        if self._req_meters[0] != cat.version:
            names = frozenset(n for n, m in cat.config.meters.items() if m.source == "requests")
            self._req_meters = (cat.version, names)
        return self._req_meters[1]

    def for_customer(self, cust: Any, plan: PlanConfig) -> Any:
        """The Limits object the limiter takes."""
        version = self.state.catalog.version
        hit = self._cache.get(id(cust))
        if hit is not None and hit[0] is cust and hit[1] == version:
            return hit[2]
        from tollhouse.quota import Limits

        limits = Limits(
            plan=cust.plan,
            quotas=effective_quotas(plan, getattr(cust, "quota_overrides", None),
                                    getattr(cust, "topups", None)),
            per_second=plan.rate_limits.per_second,
            per_minute=plan.rate_limits.per_minute,
            overage=plan.overage,
            on_counter_error=plan.on_counter_error,
            anchor=getattr(cust, "anchor", None),
            request_meters=self._request_meters(),
        )
        if getattr(cust, "source", "") != "default_plan":
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[id(cust)] = (cust, version, limits)
        return limits
