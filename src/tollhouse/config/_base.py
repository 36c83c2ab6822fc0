"""Shared pieces of the config models: the error type, the frozen base model, name types."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ConfigError", "Money", "Name"]

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


