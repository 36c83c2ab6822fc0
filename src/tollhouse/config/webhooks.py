"""Config model of webhook delivery from the durable outbox."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from tollhouse.config._base import _Model

__all__ = ["WebhooksConfig"]


class WebhooksConfig(_Model):
    """How ``serve`` delivers the outbox's events (needs ``store``; docs/webhooks.md).

    Attempt ``n`` that fails is retried after ``min(backoff_max_s, backoff_initial_s * 2**(n-1))``
    times a random factor in [0.5, 1); after ``max_attempts`` attempts the delivery is dead.
    """

    enabled: bool = True
    max_attempts: int = Field(default=12, ge=1, le=100)
    backoff_initial_s: float = Field(default=5.0, gt=0, le=86400)
    backoff_max_s: float = Field(default=3600.0, gt=0, le=7 * 86400)
    request_timeout_ms: int = Field(default=10_000, gt=0, le=120_000)
    poll_interval_ms: int = Field(default=1000, gt=0, le=600_000)
    lease_s: float = Field(default=60.0, gt=0, le=3600)
    batch_size: int = Field(default=20, ge=1, le=500)
    emit_deadline_ms: int = Field(default=2000, gt=0, le=60_000)

    @field_validator("backoff_max_s")
    @classmethod
    def _max_above_initial(cls, v: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial_s")
        if initial is not None and v < initial:
            raise ValueError("must be >= backoff_initial_s")
        return v

    @field_validator("lease_s")
    @classmethod
    def _lease_above_timeout(cls, v: float, info: ValidationInfo) -> float:
        timeout_ms = info.data.get("request_timeout_ms")
        if timeout_ms is not None and v <= timeout_ms / 1000:
            raise ValueError("must be longer than request_timeout_ms (a claim outlives a send)")
        return v
