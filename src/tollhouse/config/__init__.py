"""YAML config -> validated, frozen models. The only module that reads the config file.

Every model is frozen and rejects unknown keys, so a typo is an error with its dotted path
(``plans.pro.quotas.requets``) instead of a silently ignored setting. Durations carry their unit in
their name (``leeway_s``, ``flush_interval_ms``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tollhouse.config._base import ConfigError, Name, _Model, friendly_message
from tollhouse.config.alerts import AlertRules, AlertsConfig
from tollhouse.config.auth import ApiKeyEntry, ApiKeysConfig, AuthConfig, JwtIssuerConfig
from tollhouse.config.catalog import (
    CustomerConfig,
    FeatureConfig,
    MeterConfig,
    MeterPrice,
    PlanConfig,
    PriceConfig,
    RateLimits,
    Rule,
    Tier,
)
from tollhouse.config.checks import reference_problems
from tollhouse.config.export import ExportConfig, StripeExportConfig
from tollhouse.config.locations import MeterLocation, fix_url, sqlite_path
from tollhouse.config.runtime import (
    AdminConfig,
    AuthzHttpConfig,
    BillingConfig,
    MeteringConfig,
    StoreConfig,
)
from tollhouse.config.webhooks import WebhooksConfig

__all__ = [
    "COUNTERS_FILE",
    "AdminConfig",
    "AlertRules",
    "AlertsConfig",
    "ApiKeyEntry",
    "ApiKeysConfig",
    "AuthConfig",
    "AuthzHttpConfig",
    "BillingConfig",
    "Config",
    "ConfigError",
    "CustomerConfig",
    "ExportConfig",
    "FeatureConfig",
    "JwtIssuerConfig",
    "MeterConfig",
    "MeterLocation",
    "MeterPrice",
    "MeteringConfig",
    "PlanConfig",
    "PriceConfig",
    "RateLimits",
    "Rule",
    "StoreConfig",
    "StripeExportConfig",
    "Tier",
    "WebhooksConfig",
    "counters_file",
    "load_config",
    "parse_config",
    "sqlite_path",
]


COUNTERS_FILE = "tollhouse-counters.db"  # the default name, beside the spool directory


def counters_file(cfg: Config) -> Path:
    """The embedded limiter's counter file: ``counters_file``, or beside the spool directory."""
    return cfg.counters_file or cfg.metering.spool.parent / COUNTERS_FILE


def _feature(v: Any) -> Any:
    """Accept the short form: a bare list of rules means ``{rules: [...], meters: [requests]}``."""
    return {"rules": v} if isinstance(v, list) else v


class Config(_Model):
    """The whole catalog and runtime settings; one frozen snapshot per request."""

    listen: str = Field(default="127.0.0.1:9001", pattern=r"^[^\s:]+:\d{1,5}$")
    admin_listen: str | None = Field(default="127.0.0.1:9002", pattern=r"^[^\s:]+:\d{1,5}$")
    # /metrics on a listener of its own (null: /metrics stays on admin_listen), so scrapers can be
    # let in without reaching /admin.
    metrics_listen: str | None = Field(default=None, pattern=r"^[^\s:]+:\d{1,5}$")
    usage_listen: str | None = Field(default=None, pattern=r"^[^\s:]+:\d{1,5}$")
    authz_http_listen: str | None = Field(default=None, pattern=r"^[^\s:]+:\d{1,5}$")
    authz_http: AuthzHttpConfig = AuthzHttpConfig()
    instance: str | None = None
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    check_deadline_ms: int = Field(default=150, gt=0)
    reload_settle_s: float = Field(default=1.0, ge=0, le=3600)  # unchanged this long, then applied
    auth: AuthConfig = AuthConfig()
    meters: Mapping[Name, MeterConfig] = Field(default_factory=lambda: {"requests": MeterConfig()})
    features: Mapping[Name, FeatureConfig] = Field(default_factory=dict)
    plans: Mapping[Name, PlanConfig] = Field(default_factory=dict)
    customers: Mapping[Name, CustomerConfig] = Field(default_factory=dict)
    default_plan: Name | None = None
    counters: str = "memory"
    # `counters: memory` only: where the embedded counters survive restarts; null = the file
    # `tollhouse-counters.db` beside the spool directory (docs/quota.md).
    counters_file: Path | None = None
    metering: MeteringConfig = MeteringConfig()
    billing: BillingConfig = BillingConfig()
    store: StoreConfig | None = None  # the entitlement store (docs/store.md)
    admin: AdminConfig = AdminConfig()  # the admin API on admin_listen
    export: ExportConfig = ExportConfig()  # Stripe meter events (docs/billing.md)
    webhooks: WebhooksConfig = WebhooksConfig()  # delivery from the outbox (docs/webhooks.md)
    alerts: AlertsConfig = AlertsConfig()  # usage alerts: events to the outbox

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
        problems = reference_problems(self)
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
            loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
            msg = friendly_message(Config, loc, err["type"], err["msg"])
            problems.append((_dotted(loc) or "(root)", msg))
        raise ConfigError(problems, source) from None
    return _resolve_paths(cfg, base_dir) if base_dir is not None else cfg


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    api_keys = cfg.auth.api_keys
    if api_keys.keys_file is not None:
        api_keys = api_keys.model_copy(update={"keys_file": fix(api_keys.keys_file)})
    issuers = tuple(
        i.model_copy(
            update={"jwks_file": fix(i.jwks_file), "hs_secret_file": fix(i.hs_secret_file)}
        )
        for i in cfg.auth.jwt
    )
    metering = cfg.metering.model_copy(
        update={
            "spool": fix(cfg.metering.spool) or cfg.metering.spool,
            "meter": cfg.metering.meter.relative_to(base),
        }
    )
    billing = cfg.billing.model_copy(
        update={
            "invoices_dir": fix(cfg.billing.invoices_dir),
            "ledger": fix_url(cfg.billing.ledger, base),
        }
    )
    return cfg.model_copy(
        update={
            "auth": cfg.auth.model_copy(update={"jwt": issuers, "api_keys": api_keys}),
            "metering": metering,
            "billing": billing,
            "counters_file": fix(cfg.counters_file),
            # the entitlement store URL and the admin token file
            "store": None
            if cfg.store is None
            else cfg.store.model_copy(update={"url": fix_url(cfg.store.url, base)}),
            "admin": cfg.admin.model_copy(update={"token_file": fix(cfg.admin.token_file)}),
            "export": cfg.export
            if cfg.export.stripe is None
            else cfg.export.model_copy(
                update={
                    "stripe": cfg.export.stripe.model_copy(
                        update={"api_key_file": fix(cfg.export.stripe.api_key_file)}
                    )
                }
            ),
        }
    )


def load_config(path: str | Path, *, key_files: bool = False) -> Config:
    """Read and validate a YAML config file; raise :class:`ConfigError` with dotted paths.

    ``key_files``: also require every issuer's ``jwks_file`` / ``hs_secret_file`` to be readable,
    and ``admin.token_file`` to hold a token (``serve``, its hot reload and ``check-config``; the
    billing and store commands never read keys, so a job without the key Secret mounted still
    runs).
    """
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
    cfg = parse_config(data, base_dir=p.parent.resolve(), source=str(p))
    if key_files:
        _check_key_files(cfg, str(p))
    return _with_keys_file(cfg, str(p))


def _check_key_files(cfg: Config, source: str) -> None:
    """Every issuer's ``jwks_file`` / ``hs_secret_file`` exists and is readable now.

    Only presence is checked here; the content is the key set's business (a bad document keeps
    the last good key set), but a path that names nothing is a typo worth refusing the config for.
    """
    problems: list[tuple[str, str]] = []
    for i, issuer in enumerate(cfg.auth.jwt):
        for name in ("jwks_file", "hs_secret_file"):
            path: Path | None = getattr(issuer, name)
            if path is None:
                continue
            why = _unreadable(path)
            if why is not None:
                problems.append((f"auth.jwt.{i}.{name}", f"{why}: {path}"))
    token_file = cfg.admin.token_file
    if token_file is not None:
        why = _unreadable(token_file) or _blank(token_file)
        if why is not None:
            problems.append(("admin.token_file", f"{why}: {token_file}"))
    if problems:
        raise ConfigError(problems, source)


def _blank(path: Path) -> str | None:
    """``"the file is empty"`` when ``path`` holds only white space (no admin token in it)."""
    try:
        return None if path.read_bytes().strip() else "the file is empty"
    except OSError as e:
        return f"cannot read ({e.strerror})"


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, or None when it can."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "not a file"
    except OSError as e:
        return f"cannot read ({e.strerror})"
    return None


def _with_keys_file(cfg: Config, source: str) -> Config:
    """Merge ``auth.api_keys.keys_file`` (a YAML list of {sha256, customer}) into the keys."""
    api_keys = cfg.auth.api_keys
    if api_keys.keys_file is None:
        return cfg
    where = "auth.api_keys.keys_file"
    try:
        data = yaml.safe_load(api_keys.keys_file.read_text(encoding="utf-8")) or []
    except OSError as e:
        raise ConfigError(
            [(where, f"cannot read {api_keys.keys_file}: {e.strerror}")], source
        ) from None
    except yaml.YAMLError:
        raise ConfigError([(where, "invalid YAML")], source) from None
    if not isinstance(data, list):
        raise ConfigError([(where, "must hold a YAML list of {sha256, customer}")], source)
    entries, problems = [], []
    for i, item in enumerate(data):
        try:
            entries.append(ApiKeyEntry.model_validate(item))
        except ValidationError as e:
            problems += [
                (
                    f"{where}[{i}.{_dotted(err['loc'])}]",
                    friendly_message(ApiKeyEntry, tuple(err["loc"]), err["type"], err["msg"]),
                )
                for err in e.errors()
            ]
    if problems:
        raise ConfigError(problems, source)
    extra = tuple(entries)
    merged = api_keys.model_copy(update={"keys": api_keys.keys + extra})
    return cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"api_keys": merged})})
