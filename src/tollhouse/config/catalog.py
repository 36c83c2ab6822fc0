"""Config models of the catalog: features, meters, plans, prices, static customers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from tollhouse.config._base import _HTTP_METHODS, Money, Name, _Model

__all__ = [
    "CustomerConfig",
    "FeatureConfig",
    "MeterConfig",
    "MeterPrice",
    "PlanConfig",
    "PriceConfig",
    "RateLimits",
    "Rule",
    "Tier",
]


class Rule(_Model):
    """HTTP methods plus a path pattern: ``*`` matches within a segment, ``**`` across segments."""

    methods: tuple[str, ...] = ("GET",)
    path: str = Field(pattern=r"^/")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        up = tuple(m.upper() for m in v)
        bad = [m for m in up if m not in _HTTP_METHODS and m != "*"]
        if bad:
            raise ValueError(f"unknown HTTP method {bad[0]!r}")
        return up


class FeatureConfig(_Model):
    """A feature: the routes it covers and the meters that count its use."""

    rules: tuple[Rule, ...] = Field(min_length=1)
    meters: tuple[Name, ...] = ("requests",)


class MeterConfig(_Model):
    """What one unit of a meter is: a request (default), bytes, or a response header's number."""

    from_: Literal["requests", "request_bytes", "response_bytes"] | None = Field(
        default=None, alias="from"
    )
    from_response_header: str | None = Field(default=None, pattern=r"^[a-z0-9\-]+$")
    bill_upstream_5xx: bool | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_source(self) -> MeterConfig:
        if self.from_ is not None and self.from_response_header is not None:
            raise ValueError("set at most one of from, from_response_header")
        return self

    @property
    def source(self) -> str:
        """``requests``, ``request_bytes``, ``response_bytes`` or ``header:<name>``."""
        if self.from_response_header:
            return f"header:{self.from_response_header}"
        return self.from_ or "requests"


class RateLimits(_Model):
    """Requests per second and per minute, per customer."""

    per_second: int | None = Field(default=None, gt=0)
    per_minute: int | None = Field(default=None, gt=0)


class Tier(_Model):
    """One price tier: units up to ``up_to`` (the last tier has none) at ``unit_price``."""

    up_to: int | None = Field(default=None, gt=0)
    unit_price: Money
    flat_fee: Money = Decimal(0)


class MeterPrice(_Model):
    """How one meter is priced: per unit, graduated or volume tiers, or packages."""

    model: Literal["per_unit", "graduated", "volume", "package"] = "per_unit"
    included: int = Field(default=0, ge=0)
    unit_price: Money | None = None
    tiers: tuple[Tier, ...] = ()
    package_size: int | None = Field(default=None, gt=0)
    package_price: Money | None = None

    @model_validator(mode="after")
    def _shape(self) -> MeterPrice:
        if self.model == "per_unit" and self.unit_price is None:
            raise ValueError("per_unit needs unit_price")
        if self.model in ("graduated", "volume"):
            if not self.tiers:
                raise ValueError(f"{self.model} needs tiers")
            ups = [t.up_to for t in self.tiers]
            if ups[-1] is not None or any(u is None for u in ups[:-1]):
                raise ValueError("every tier but the last needs up_to; the last has none")
            bounded = [u for u in ups if u is not None]
            if bounded != sorted(set(bounded)):
                raise ValueError("tier up_to values must increase")
        if self.model == "package" and (self.package_size is None or self.package_price is None):
            raise ValueError("package needs package_size and package_price")
        return self


class PriceConfig(_Model):
    """A plan's price: currency, base fee per period, meter prices, minimum charge."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    base_fee: Money = Decimal(0)
    meters: Mapping[Name, MeterPrice] = Field(default_factory=dict)
    minimum: Money = Decimal(0)


class PlanConfig(_Model):
    """A plan: its features, quotas, rate limits, overage policy and price."""

    features: tuple[Name, ...] = ()
    quotas: Mapping[Name, int] = Field(default_factory=dict)
    rate_limits: RateLimits = RateLimits()
    overage: Literal["deny", "allow"] = "deny"
    on_counter_error: Literal["fail_closed", "local"] = "fail_closed"
    price: PriceConfig | None = None
    # Prepaid: the plan's meter prices are charged against the customer's credit balance as
    # requests are admitted (docs/credits.md); when it runs out, ``deny`` answers 402
    # ``credit_exhausted`` and ``allow`` keeps serving (the invoice bills what credit did not pay).
    prepaid: bool = False
    on_credit_exhausted: Literal["deny", "allow"] = "deny"
    # Another plan whose prices are applied to this plan's usage, shown beside the real amounts
    # (bill --preview, /v1/usage); never on an invoice.
    shadow_price: Name | None = None

    @field_validator("quotas")
    @classmethod
    def _nonneg(cls, v: Mapping[str, int]) -> Mapping[str, int]:
        for k, q in v.items():
            if q < 0:
                raise ValueError(f"quota for {k!r} must be >= 0")
        return v


def _utc_instant(v: Any) -> datetime:
    """``since:``: a date (midnight UTC) or a date-time (no offset: UTC), whole seconds, >= 1970.

    YAML gives unquoted dates and times as ``date`` / ``datetime``; quoted ones are ISO 8601
    strings (``Z`` allowed). An offset other than UTC is converted to UTC.
    """
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.strip())
        except ValueError:
            raise ValueError(
                "must be an ISO 8601 date or date-time (UTC), e.g. 2026-11-03 or "
                "2026-11-03T09:30:00Z"
            ) from None
    if isinstance(v, date) and not isinstance(v, datetime):
        v = datetime(v.year, v.month, v.day, tzinfo=UTC)
    if not isinstance(v, datetime):
        raise ValueError("must be an ISO 8601 date or date-time (UTC), e.g. 2026-11-03")
    t = (v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)).replace(microsecond=0)
    if t.year < 1970:
        raise ValueError("must not be before 1970-01-01")
    return t


class CustomerConfig(_Model):
    """A static customer of the config file (the entitlement store wins).

    ``since``: when the subscription starts (UTC); nothing is invoiced before it. Absent: at the
    customer's first billable request in the ledger (``docs/billing.md``).
    """

    plan: Name
    period_anchor: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    since: datetime | None = None
    quota_overrides: Mapping[Name, int] = Field(default_factory=dict)

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, v: Any) -> Any:
        return None if v is None else _utc_instant(v)

    @property
    def since_s(self) -> int | None:
        """``since`` in Unix seconds, or ``None``."""
        return None if self.since is None else int(self.since.timestamp())
