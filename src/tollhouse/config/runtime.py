"""Config models of the usage path, the billing job, the entitlement store and the admin API."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_serializer, field_validator

from tollhouse.config._base import _Model
from tollhouse.config.locations import MeterLocation

__all__ = [
    "LISTENERS",
    "AdminConfig",
    "AuthzHttpConfig",
    "BillingConfig",
    "MeteringConfig",
    "StoreConfig",
    "listener_clashes",
]

# Every address setting that ``serve`` binds, in start-up order.
LISTENERS = ("listen", "admin_listen", "metrics_listen", "usage_listen", "authz_http_listen")
_WILDCARD = {"", "0.0.0.0", "*"}  # noqa: S104 (compared against, never bound)


def listener_clashes(addresses: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """``(setting, problem)`` for each address that another setting already binds.

    Two listeners clash on the same port when their hosts are equal or either is a wildcard
    (``0.0.0.0:9002`` takes ``127.0.0.1:9002`` too).
    """
    seen: list[tuple[str, str, str]] = []  # (setting, host, port)
    problems: list[tuple[str, str]] = []
    for name, addr in addresses.items():
        if addr is None:
            continue
        host, _, port = addr.rpartition(":")
        for other, other_host, other_port in seen:
            if port == other_port and (host == other_host or {host, other_host} & _WILDCARD):
                problems.append((name, f"{addr} clashes with {other} (port {port})"))
                break
        seen.append((name, host, port))
    return problems


class AuthzHttpConfig(_Model):
    """The HTTP ext_authz listener (``authz_http_listen``): Envoy's ``http_service`` transport.

    Limits protect the listener from anything that is not Envoy behaving well; Envoy itself sends
    small requests (the allowed headers, no body) on a few pooled keep-alive connections.
    """

    path_prefix: str = Field(default="", pattern=r"^(/[^\s?#]*)?$")
    max_connections: int = Field(default=1024, gt=0)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16384, ge=1024)
    max_headers: int = Field(default=100, gt=0)
    max_body_bytes: int = Field(default=65536, ge=0)
    max_pipelined: int = Field(default=64, gt=0)


class MeteringConfig(_Model):
    """The usage path: the local spool, the meter and the billing policy."""

    enabled: bool = True
    spool: Path = Path("tollhouse-spool")
    # parsed once: consumers read .kind / .path, never the string (tollhouse.config.locations)
    meter: MeterLocation = MeterLocation.parse("sqlite:///./tollhouse-meter.db")
    unconfirmed_after_s: float = Field(default=300.0, gt=0)
    bill_unconfirmed: bool = True
    bill_upstream_5xx: bool = False
    flush_interval_ms: int = Field(default=200, gt=0)
    batch_size: int = Field(default=500, gt=0, le=10_000)
    group_commit_ms: float = Field(default=0.0, ge=0)
    # Istio's envoyExtAuthzHttp has no dynamic metadata: take the usage id from the logged request
    # header x-tollhouse-usage-id (docs/metering.md says when that header can be trusted).
    usage_id_from_request_header: bool = False
    join: Literal["auto", "local", "redis"] = "auto"  # auto: redis when the meter is Redis
    # worker: a process `serve` starts decodes, joins and forwards; inline: all in one process
    process: Literal["worker", "inline"] = "worker"

    @field_validator("meter", mode="before")
    @classmethod
    def _url(cls, v: Any) -> Any:
        if isinstance(v, str):
            return MeterLocation.parse(v)
        if isinstance(v, MeterLocation):
            return v
        raise ValueError("must be sqlite:///path or redis://host:port/db")

    @field_serializer("meter")
    def _meter_str(self, v: MeterLocation) -> str:
        return v.url


class BillingConfig(_Model):
    """The billing job: the ledger, where invoices go, the Redis consumer group."""

    ledger: str = "sqlite:///./tollhouse-ledger.db"
    invoices_dir: Path = Path("invoices")
    consumer_group: str = "tollhouse-billing"
    max_deliveries: int = Field(default=5, gt=0)

    @field_validator("ledger")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", v):
            raise ValueError("must be sqlite:///path or postgresql://...")
        return v


# --- entitlement store + admin API --------------------------------------------------------


class StoreConfig(_Model):
    """The entitlement store: customers, subscriptions, API key hashes, overrides, top-ups."""

    url: str
    poll_interval_ms: int = Field(default=500, gt=0)
    past_due_grace_s: int = Field(default=7 * 86400, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", v):
            raise ValueError("must be sqlite:///path or postgresql://...")
        return v


class AdminConfig(_Model):
    """The admin API: ``token_file`` holds the bearer token (no file: the admin API is off)."""

    token_file: Path | None = None


# --- end entitlement store + admin API -------------------------------------------------------
