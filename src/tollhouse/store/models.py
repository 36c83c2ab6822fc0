"""Plain values of the entitlement store, and the one error type of its service layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from tollhouse.periods import period_for

__all__ = [
    "STATUSES",
    "ApiKeyInfo",
    "AuditEntry",
    "Customer",
    "IssuedKey",
    "PlanChangeRecord",
    "ServiceError",
    "Status",
    "TopUpRecord",
    "period_start",
]

Status = Literal["active", "past_due", "suspended", "cancelled"]
STATUSES: tuple[Status, ...] = ("active", "past_due", "suspended", "cancelled")


class ServiceError(Exception):
    """A request the store cannot honour; ``code`` is stable (the admin API maps it to a status).

    Codes: ``not_found``, ``already_exists``, ``invalid``, ``unknown_plan``, ``unknown_meter``,
    ``already_revoked``, ``effective_at_too_early``.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PlanChangeRecord:
    """A plan-change row as the admin API shows it (``tollhouse.subscriber.PlanChange``: in use)."""

    plan: str
    effective_from: float
    created_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "plan": self.plan,
            "effective_from": self.effective_from,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Customer:
    """The store's customer account as the admin API reads and writes it (name, e-mail, ...).

    Never passed down the Check path or to billing: those read a
    :class:`tollhouse.subscriber.Subscriber` (built from this by
    ``billing.store_subscriptions.to_subscriber``, or by the directory from its snapshot).
    """

    id: str
    name: str
    email: str
    metadata: Mapping[str, Any]
    created_at: float
    plan: str  # in effect when this value was read
    anchor: date | None
    status: Status
    status_since: float
    plan_changes: tuple[PlanChangeRecord, ...]
    quota_overrides: Mapping[str, int] = field(default_factory=dict)
    stripe_customer_id: str | None = None  # where `tollhouse export stripe` bills

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (admin API, audit log)."""
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "plan": self.plan,
            "anchor": self.anchor.isoformat() if self.anchor else None,
            "status": self.status,
            "status_since": self.status_since,
            "plan_changes": [c.to_json() for c in self.plan_changes],
            "quota_overrides": dict(self.quota_overrides),
            "stripe_customer_id": self.stripe_customer_id,
        }


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as stored: never the key, only its id, display prefix and lifecycle."""

    id: str
    customer: str
    prefix: str
    created_at: float
    revoked_at: float | None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "id": self.id,
            "customer": self.customer,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly issued key: ``key`` is returned exactly once and never stored or logged."""

    key: str = field(repr=False)
    info: ApiKeyInfo


@dataclass(frozen=True, slots=True)
class TopUpRecord:
    """A top-up row (``period``: the period's start date); ``subscriber.TopUp`` is in use."""

    id: int
    customer: str
    meter: str
    units: int
    period: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "id": self.id,
            "customer": self.customer,
            "meter": self.meter,
            "units": self.units,
            "period": self.period,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: who (admin token id or ``cli``), what, to which target, before and after."""

    id: int
    actor: str
    action: str
    target: str
    before: Any
    after: Any
    at: float

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "id": self.id,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
            "at": self.at,
        }


def period_start(anchor: date | None, at: float) -> date:
    """Return the start (UTC date) of the billing period containing ``at``.

    Periods start on the anchor's day of month (clamped to the month's last day); without an
    anchor, on the 1st. The boundaries are :mod:`tollhouse.periods`' (one implementation for
    quotas, the store and invoices).
    """
    return period_for(at, anchor).start.date()
