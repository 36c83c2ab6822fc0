"""Effective limits of one customer: plan quotas, replaced by overrides, plus top-ups.

Built once per distinct set of inputs and catalog version, so the Check path usually does one
dict lookup. Also: the RateLimit headers of an answer that spends nothing (402, 403, a feature
without meters), and the live quota counters that ``GET /v1/usage`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from tollhouse.config import Config, PlanConfig
from tollhouse.quota import Limits
from tollhouse.quota.limiter import Headers, Limiter
from tollhouse.subscriber import Subscriber, TopUp

if TYPE_CHECKING:
    from tollhouse.entitlements import Catalog

__all__ = [
    "LimitsBuilder",
    "effective_quotas",
    "live_used",
    "needs_limiter",
    "refresh_quota_gauges",
    "standing_headers",
]


def needs_limiter(cfg: Config) -> bool:
    """Any plan sells a quota or a rate limit, a customer has an override, or a store is set.

    With an entitlement store, overrides and top-ups can appear at any time, without a reload,
    so the limiter must already be there to enforce them.
    """
    return (
        cfg.store is not None
        or any(
            p.quotas or p.rate_limits.per_second or p.rate_limits.per_minute
            for p in cfg.plans.values()
        )
        or any(c.quota_overrides for c in cfg.customers.values())
    )


def effective_quotas(
    plan: PlanConfig, overrides: Mapping[str, int], topups: Iterable[TopUp]
) -> dict[str, int]:
    """Plan quotas, each replaced by an override if one exists, plus top-ups.

    ``topups``: the ones of the period the limits are for (the directory gives a Subscriber the
    current period's only). A top-up adds to a quota; on a meter without one (unlimited) it
    changes nothing, as in ``GET /v1/usage`` and on the invoice: a top-up never turns an
    unlimited meter into a cap.
    """
    quotas = dict(plan.quotas)
    quotas.update(overrides)
    for t in topups:
        if t.meter in quotas:
            quotas[t.meter] += t.units
    return quotas


def limits_key(cust: Subscriber) -> tuple[object, ...]:
    """Everything a customer's :class:`Limits` depends on besides the catalog version.

    A value, not an object identity: the store's directory builds a new Subscriber on every
    lookup, and two customers with equal inputs share one Limits (it names no customer).
    """
    overrides = cust.quota_overrides
    return (
        cust.plan,
        cust.anchor,
        tuple(sorted(overrides.items())) if overrides else (),
        cust.topups,
    )


class LimitsBuilder:
    """``for_customer(catalog, customer, plan) -> quota.Limits``, cached by :func:`limits_key`.

    The catalog is the request's snapshot, passed in: the limits never mix two config versions.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._cache: dict[tuple[object, ...], Limits] = {}
        self._version = ""
        self._req_meters: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self._cache)

    def _sync_version(self, cat: Catalog) -> None:
        """A new catalog: plans and meters may have changed, so nothing cached is kept."""
        if self._version != cat.version:
            self._cache.clear()
            self._req_meters = frozenset(
                n for n, m in cat.config.meters.items() if m.source == "requests"
            )
            self._version = cat.version

    def for_customer(self, catalog: Catalog, cust: Subscriber, plan: PlanConfig) -> Limits:
        """The Limits object the limiter takes, for ``cust`` on ``plan`` of ``catalog``."""
        self._sync_version(catalog)
        key = limits_key(cust)
        hit = self._cache.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        limits = Limits(
            plan=cust.plan,
            quotas=effective_quotas(plan, cust.quota_overrides, cust.topups),
            per_second=plan.rate_limits.per_second,
            per_minute=plan.rate_limits.per_minute,
            overage=plan.overage,
            on_counter_error=plan.on_counter_error,
            anchor=cust.anchor,
            request_meters=self._req_meters,
        )
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = limits
        return limits


def _has_limits(limits: Limits) -> bool:
    return bool(limits.quotas) or limits.per_second is not None or limits.per_minute is not None


def live_used(limiter: Limiter, customer: str, limits: Limits, now_s: float) -> dict[str, int]:
    """Units used per quota meter in the current period, from the counters the Check uses."""
    if not limits.quotas:
        return {}
    return {m: used for m, (used, _) in limiter.snapshot(customer, limits, now_s).items()}


def standing_headers(limiter: Limiter, customer: str, limits: Limits, now_s: float) -> Headers:
    """RateLimit headers of an answer that spends nothing: every quota and rate limit, as is."""
    return limiter.standing(customer, limits, now_s) if _has_limits(limits) else ()


def refresh_quota_gauges(limiter: Limiter, now_s: float) -> None:
    """Recompute the quota gauges now (called on each /metrics scrape)."""
    limiter.refresh_gauges(now_s)
