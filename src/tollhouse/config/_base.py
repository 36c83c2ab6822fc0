"""Shared pieces of the config models: the error type, the frozen base model, name types."""

from __future__ import annotations

import difflib
from decimal import Decimal
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

__all__ = ["ConfigError", "Money", "Name", "friendly_message"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
Name = Annotated[str, Field(pattern=_NAME)]
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
_HS_ALGS = {"HS256", "HS384", "HS512"}
_ASYM_ALGS = {
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
}
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


# --- messages a person can act on ------------------------------------------------------------

_PYDANTIC_WORDS = (
    ("a valid tuple", "a list"),
    ("Tuple should", "List should"),
    ("a valid dictionary", "a mapping"),
    ("Dictionary should", "Mapping should"),
)


def friendly_message(root: type[BaseModel], loc: tuple[int | str, ...], kind: str, msg: str) -> str:
    """Reword a pydantic error for a YAML author: YAML has lists and mappings, not tuples.

    An unknown key (``extra_forbidden``) names the closest allowed key at that place, when one
    is close enough to be a likely typo: ``unknown key 'featurs' (did you mean 'features'?)``.
    """
    if kind == "extra_forbidden" and loc:
        known = _keys_at(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {str(loc[-1])!r}{hint}"
    for old, new in _PYDANTIC_WORDS:
        msg = msg.replace(old, new)
    return msg


def _keys_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys a mapping at ``loc`` may have (by alias), following models, lists and maps."""
    node: Any = root
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = _field_named(node, str(part))
            if field is None:
                return []
            node = field.annotation
            continue
        args = get_args(node)
        if get_origin(node) in (tuple, list) and args:
            node = args[0]  # the element of a list; ``part`` is its index
        elif args and len(args) == 2:
            node = args[1]  # the value of a mapping; ``part`` is its key
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [f.alias or name for name, f in node.model_fields.items()]
    return []


def _field_named(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _unwrap(node: Any) -> Any:
    """``X | None`` -> ``X``; ``Annotated[X, ...]`` -> ``X`` (other unions are left alone)."""
    while True:
        origin, args = get_origin(node), get_args(node)
        if origin is Annotated:
            node = args[0]
        elif origin in (Union, UnionType) and len(args) == 2 and type(None) in args:
            node = next(a for a in args if a is not type(None))
        else:
            return node
