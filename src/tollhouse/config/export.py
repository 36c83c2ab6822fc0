"""Config of the exports to other billing systems (``tollhouse export``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from tollhouse.config._base import Name, _Model

__all__ = ["ExportConfig", "StripeExportConfig"]


class StripeExportConfig(_Model):
    """Stripe billing meter events: which Stripe meter (``event_name``) each tollhouse meter feeds.

    The Stripe customer of a tollhouse customer is the store's ``stripe_customer_id``; ``customers``
    maps the config file's static customers (the store wins on the same id).
    """

    meters: Mapping[Name, str] = Field(min_length=1)
    customers: Mapping[Name, str] = Field(default_factory=dict)
    api_key_file: Path | None = None  # holds the secret key (sk_...); needed by --push only
    api_base: str = Field(default="https://api.stripe.com", pattern=r"^https?://[^\s/]+(/.*)?$")
    meter_events_base: str = Field(
        default="https://meter-events.stripe.com", pattern=r"^https?://[^\s/]+(/.*)?$"
    )
    max_attempts: int = Field(default=5, ge=1, le=20)  # per batch of 100, same identifiers


class ExportConfig(_Model):
    """``export.stripe``: optional; ``tollhouse export stripe`` needs it."""

    stripe: StripeExportConfig | None = None
