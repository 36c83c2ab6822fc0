"""Config models of authentication: JWT issuers, API keys."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from tollhouse.config._base import _ASYM_ALGS, _HS_ALGS, Name, _Model

__all__ = ["ApiKeyEntry", "ApiKeysConfig", "AuthConfig", "JwtIssuerConfig"]


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
    # A YAML list of {sha256, customer} (e.g. a mounted Kubernetes Secret), merged into ``keys``
    # at load time and re-read when it changes.
    keys_file: Path | None = None


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
