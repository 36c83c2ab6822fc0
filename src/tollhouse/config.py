"""YAML config -> validated, frozen models. The only module that reads the config file.

Every model is frozen and rejects unknown keys, so a typo is an error with its dotted path
(``plans.pro.quotas.requets``) instead of a silently ignored setting. Durations carry their unit in
their name (``leeway_s``, ``flush_interval_ms``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AdminConfig",
    "ApiKeyEntry",
    "ApiKeysConfig",
    "AuthConfig",
    "BillingConfig",
    "Config",
    "ConfigError",
    "CustomerConfig",
    "FeatureConfig",
    "JwtIssuerConfig",
    "MeterConfig",
    "MeterPrice",
    "MeteringConfig",
    "PlanConfig",
    "PriceConfig",
    "RateLimits",
    "Rule",
    "StoreConfig",
    "Tier",
    "load_config",
    "parse_config",
    "sqlite_path",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
Name = Annotated[str, Field(pattern=_NAME)]
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
_HS_ALGS = {"HS256", "HS384", "HS512"}
_ASYM_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA"}
Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class ConfigError(Exception):
    """A config that cannot be used: ``problems`` lists ``(dotted.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = "; ".join(f"{p}: {m}" for p, m in problems)
        super().__init__(f"{source}: {lines}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class JwtIssuerConfig(_Model):
    """One trusted token issuer. Exactly one key source: a JWKS file, a JWKS URL or an HS secret."""

    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_uri: str | None = None
    hs_secret_file: Path | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    customer_claim: str = "sub"
    plan_claim: str | None = None
    leeway_s: int = Field(default=30, ge=0, le=600)
    max_lifetime_s: int = Field(default=86400, gt=0)
    jwks_refresh_s: float = Field(default=300.0, gt=0)
    jwks_cooldown_s: float = Field(default=10.0, ge=0)
    jwks_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("algorithms")
    @classmethod
    def _algs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one algorithm is required")
        for alg in v:
            if alg.lower() == "none":
                raise ValueError("'none' is never allowed")
            if alg not in _HS_ALGS | _ASYM_ALGS:
                raise ValueError(f"unknown algorithm {alg!r}")
        return v

    @field_validator("jwks_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuerConfig:
        sources = [s for s in (self.jwks_file, self.jwks_uri, self.hs_secret_file) if s]
        if len(sources) != 1:
            raise ValueError("set exactly one of jwks_file, jwks_uri, hs_secret_file")
        hs = [a for a in self.algorithms if a in _HS_ALGS]
        if hs and self.hs_secret_file is None:
            raise ValueError(f"{hs[0]} needs hs_secret_file (HS* only with a shared secret)")
        if self.hs_secret_file is not None and len(hs) != len(self.algorithms):
            raise ValueError("an hs_secret_file issuer may only allow HS* algorithms")
        return self


class ApiKeyEntry(_Model):
    """An API key by its SHA-256 (hex); the key itself is never stored."""

    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    customer: Name

    @field_validator("sha256")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class ApiKeysConfig(_Model):
    """API keys: the header they arrive in and the known key hashes."""

    header: str = Field(default="x-api-key", pattern=r"^[a-z0-9\-]+$")
    keys: tuple[ApiKeyEntry, ...] = ()


class AuthConfig(_Model):
    """How callers authenticate: JWT issuers, API keys, the verified-token cache."""

    jwt: tuple[JwtIssuerConfig, ...] = ()
    api_keys: ApiKeysConfig = ApiKeysConfig()
    realm: str = "tollhouse"
    token_cache_size: int = Field(default=100_000, ge=0)

    @model_validator(mode="after")
    def _unique_issuers(self) -> AuthConfig:
        seen = [i.issuer for i in self.jwt]
        if len(seen) != len(set(seen)):
            raise ValueError("issuers must be unique")
        return self


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

    @field_validator("quotas")
    @classmethod
    def _nonneg(cls, v: Mapping[str, int]) -> Mapping[str, int]:
        for k, q in v.items():
            if q < 0:
                raise ValueError(f"quota for {k!r} must be >= 0")
        return v


class CustomerConfig(_Model):
    """A static customer of the config file (the entitlement store wins)."""

    plan: Name
    period_anchor: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    quota_overrides: Mapping[Name, int] = Field(default_factory=dict)


class MeteringConfig(_Model):
    """The usage path: the local spool, the meter and the billing policy."""

    enabled: bool = True
    spool: Path = Path("tollhouse-spool")
    meter: str = "sqlite:///./tollhouse-meter.db"
    unconfirmed_after_s: float = Field(default=300.0, gt=0)
    bill_unconfirmed: bool = True
    bill_upstream_5xx: bool = False
    flush_interval_ms: int = Field(default=200, gt=0)
    batch_size: int = Field(default=500, gt=0, le=10_000)
    group_commit_ms: float = Field(default=2.0, ge=0)

    @field_validator("meter")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqlite:///.+|redis://.+)$", v):
            raise ValueError("must be sqlite:///path or redis://host:port/db")
        return v


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


# --- entitlement store + admin API (issue 4) -------------------------------------------------


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


def _feature(v: Any) -> Any:
    """Accept the short form: a bare list of rules means ``{rules: [...], meters: [requests]}``."""
    return {"rules": v} if isinstance(v, list) else v


class Config(_Model):
    """The whole catalog and runtime settings; one frozen snapshot per request."""

    listen: str = Field(default="127.0.0.1:9001", pattern=r"^[^\s:]+:\d{1,5}$")
    admin_listen: str | None = Field(default="127.0.0.1:9002", pattern=r"^[^\s:]+:\d{1,5}$")
    usage_listen: str | None = Field(default=None, pattern=r"^[^\s:]+:\d{1,5}$")
    instance: str | None = None
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    check_deadline_ms: int = Field(default=150, gt=0)
    auth: AuthConfig = AuthConfig()
    meters: Mapping[Name, MeterConfig] = Field(default_factory=lambda: {"requests": MeterConfig()})
    features: Mapping[Name, FeatureConfig] = Field(default_factory=dict)
    plans: Mapping[Name, PlanConfig] = Field(default_factory=dict)
    customers: Mapping[Name, CustomerConfig] = Field(default_factory=dict)
    default_plan: Name | None = None
    counters: str = "memory"
    metering: MeteringConfig = MeteringConfig()
    billing: BillingConfig = BillingConfig()
    store: StoreConfig | None = None  # issue 4
    admin: AdminConfig = AdminConfig()  # issue 4

    @field_validator("features", mode="before")
    @classmethod
    def _short_features(cls, v: Any) -> Any:
        return {k: _feature(x) for k, x in v.items()} if isinstance(v, dict) else v

    @field_validator("meters", mode="before")
    @classmethod
    def _meters(cls, v: Any) -> Any:
        if isinstance(v, dict):
            v = {k: ({} if x is None else x) for k, x in v.items()}
            v.setdefault("requests", {})
        return v

    @field_validator("counters")
    @classmethod
    def _counters(cls, v: str) -> str:
        if v != "memory" and not v.startswith("redis://"):
            raise ValueError("must be 'memory' or redis://host:port/db")
        return v

    @model_validator(mode="after")
    def _references(self) -> Config:
        problems: list[tuple[str, str]] = []
        for fname, feat in self.features.items():
            for i, m in enumerate(feat.meters):
                if m not in self.meters:
                    problems.append((f"features.{fname}.meters.{i}", f"unknown meter {m!r}"))
        for pname, plan in self.plans.items():
            for i, f in enumerate(plan.features):
                if f not in self.features:
                    problems.append((f"plans.{pname}.features.{i}", f"unknown feature {f!r}"))
            for m in plan.quotas:
                if m not in self.meters:
                    problems.append((f"plans.{pname}.quotas.{m}", f"unknown meter {m!r}"))
            if plan.price is not None:
                for m in plan.price.meters:
                    if m not in self.meters:
                        problems.append(
                            (f"plans.{pname}.price.meters.{m}", f"unknown meter {m!r}")
                        )
        for cname, cust in self.customers.items():
            if cust.plan not in self.plans:
                problems.append((f"customers.{cname}.plan", f"unknown plan {cust.plan!r}"))
            for m in cust.quota_overrides:
                if m not in self.meters:
                    problems.append(
                        (f"customers.{cname}.quota_overrides.{m}", f"unknown meter {m!r}")
                    )
        for i, key in enumerate(self.auth.api_keys.keys):
            if key.customer not in self.customers and self.default_plan is None:
                problems.append(
                    (f"auth.api_keys.keys.{i}.customer", f"unknown customer {key.customer!r}")
                )
        if self.default_plan is not None and self.default_plan not in self.plans:
            problems.append(("default_plan", f"unknown plan {self.default_plan!r}"))
        if problems:
            raise ConfigError(problems)
        return self


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def parse_config(data: Any, *, base_dir: Path | None = None, source: str = "config") -> Config:
    """Validate a parsed YAML document; relative file paths are resolved against ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("(root)", "the config must be a mapping")], source)
    try:
        cfg = Config.model_validate(data)
    except ConfigError as e:
        raise ConfigError(e.problems, source) from None
    except ValidationError as e:
        problems = []
        for err in e.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, ConfigError):
                problems.extend(ctx_err.problems)
                continue
            problems.append((_dotted(err["loc"]) or "(root)", err["msg"]))
        raise ConfigError(problems, source) from None
    return _resolve_paths(cfg, base_dir) if base_dir is not None else cfg


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    issuers = tuple(
        i.model_copy(
            update={"jwks_file": fix(i.jwks_file), "hs_secret_file": fix(i.hs_secret_file)}
        )
        for i in cfg.auth.jwt
    )
    metering = cfg.metering.model_copy(
        update={"spool": fix(cfg.metering.spool) or cfg.metering.spool,
                "meter": _fix_url(cfg.metering.meter, base)}
    )
    billing = cfg.billing.model_copy(
        update={
            "invoices_dir": fix(cfg.billing.invoices_dir),
            "ledger": _fix_url(cfg.billing.ledger, base),
        }
    )
    return cfg.model_copy(
        update={
            "auth": cfg.auth.model_copy(update={"jwt": issuers}),
            "metering": metering,
            "billing": billing,
            # issue 4: entitlement store URL and admin token file
            "store": None if cfg.store is None else cfg.store.model_copy(
                update={"url": _fix_url(cfg.store.url, base)}
            ),
            "admin": cfg.admin.model_copy(update={"token_file": fix(cfg.admin.token_file)}),
        }
    )


def _fix_url(url: str, base: Path) -> str:
    """``sqlite:///./x.db`` and ``sqlite:///../x.db`` are relative to the config file's folder."""
    prefix = "sqlite:///"
    rest = url[len(prefix):]
    if url.startswith(prefix) and rest.startswith(("./", "../")):
        return "sqlite://" + str((base / rest).resolve())
    return url


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///...`` URL: ``sqlite:///var/x.db`` is ``/var/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite:/// URL: {url}")
    return Path(url[len("sqlite://"):])


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raise :class:`ConfigError` with dotted paths."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([("(file)", f"cannot read {p}: {e.strerror}")], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise ConfigError([(where, f"invalid YAML: {getattr(e, 'problem', e)}")], str(p)) from None
    return parse_config(data, base_dir=p.parent.resolve(), source=str(p))
