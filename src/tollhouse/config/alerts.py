"""Config model of usage alerts: thresholds per plan, per customer, default.

Three kinds of threshold, all evaluated by ``serve`` off the hot path: ``quota`` (percent of a
meter's quota, or absolute units: ``tollhouse.alerts.quota``), ``credit`` (percent or amount of
the credit balance left: ``tollhouse.alerts.credit``) and ``spend`` (usage charges in the period:
``tollhouse.alerts.spend``).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, model_validator

from tollhouse.config._base import Name, _Model

__all__ = ["AlertRules", "AlertsConfig", "CreditThreshold", "QuotaThreshold", "SpendThreshold"]


class QuotaThreshold(_Model):
    """``meter`` reaching ``percent`` of its quota, or ``units`` used (exactly one of the two)."""

    meter: Name = "requests"
    percent: float | None = Field(default=None, gt=0, le=1000)
    units: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> QuotaThreshold:
        if (self.percent is None) == (self.units is None):
            raise ValueError("give exactly one of percent or units")
        return self

    @property
    def label(self) -> str:
        """A stable name for this threshold (part of the event's dedupe key)."""
        return f"{self.percent:g}pct" if self.percent is not None else f"{self.units}units"


class CreditThreshold(_Model):
    """Credit balance left below ``percent`` of the granted amount, or below ``amount_minor``."""

    percent: float | None = Field(default=None, gt=0, le=100)
    amount_minor: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one(self) -> CreditThreshold:
        if (self.percent is None) == (self.amount_minor is None):
            raise ValueError("give exactly one of percent or amount_minor")
        return self


class SpendThreshold(_Model):
    """Spend in the period reaching ``amount_minor`` (minor units of the plan's currency)."""

    amount_minor: int = Field(gt=0)


class AlertRules(_Model):
    """The thresholds of one plan, one customer, or the default."""

    quota: tuple[QuotaThreshold, ...] = ()
    credit: tuple[CreditThreshold, ...] = ()
    spend: tuple[SpendThreshold, ...] = ()


class AlertsConfig(_Model):
    """Where thresholds apply: a customer's own rules, else its plan's, else ``default``.

    ``recover_below_percent``: a reached threshold recovers when usage falls to this percent of
    it (hysteresis); each threshold fires at most once reached and once recovered per period.
    """

    interval_ms: int = Field(default=10_000, gt=0, le=3_600_000)
    recover_below_percent: float = Field(default=95.0, gt=0, lt=100)
    default: AlertRules = AlertRules()
    plans: Mapping[Name, AlertRules] = Field(default_factory=dict)
    customers: Mapping[Name, AlertRules] = Field(default_factory=dict)

    def rules_for(self, customer: str, plan: str) -> AlertRules:
        """The rules that apply to ``customer`` on ``plan``."""
        return self.customers.get(customer) or self.plans.get(plan) or self.default

    @property
    def any_spend(self) -> bool:
        """Whether any spend threshold is configured."""
        return any(r.spend for r in (self.default, *self.plans.values(), *self.customers.values()))

    @property
    def any_quota(self) -> bool:
        """Whether any quota threshold is configured."""
        return any(r.quota for r in (self.default, *self.plans.values(), *self.customers.values()))

    def problems(
        self, plans: Mapping[str, object], meters: Mapping[str, object]
    ) -> list[tuple[str, str]]:
        """Unknown plans and meters, as (dotted path, message)."""
        out = [(f"alerts.plans.{p}", f"unknown plan {p!r}") for p in self.plans if p not in plans]
        scopes = [("alerts.default", self.default)]
        scopes += [(f"alerts.plans.{p}", r) for p, r in self.plans.items()]
        scopes += [(f"alerts.customers.{c}", r) for c, r in self.customers.items()]
        for where, rules in scopes:
            out += [
                (f"{where}.quota.{i}.meter", f"unknown meter {t.meter!r}")
                for i, t in enumerate(rules.quota)
                if t.meter not in meters
            ]
        return out
