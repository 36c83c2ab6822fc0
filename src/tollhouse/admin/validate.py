"""Checks of admin API input: every bad value is a 422 ``invalid`` naming its field, never a 500."""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

from tollhouse.store.models import ServiceError

__all__ = [
    "ID",
    "check_id",
    "opt_date",
    "opt_int",
    "opt_number",
    "opt_object",
    "opt_str",
    "req_int",
    "req_str",
]

ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
MAX_UNITS = 10**15
MAX_EPOCH = 1e11
_MISSING = object()


def _bad(field: str, msg: str) -> ServiceError:
    return ServiceError("invalid", f"{field}: {msg}")


def check_id(value: str) -> bool:
    r"""Return whether all of ``value`` can name a customer, key, plan or meter.

    A full match: ``$`` alone would also accept a trailing newline (``"evil\n"``).
    """
    return ID.fullmatch(value) is not None


def _utf8_ok(v: str) -> bool:
    r"""No lone surrogate: JSON allows ``"\ud800"``, UTF-8 and the store do not."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def opt_str(body: dict[str, Any], field: str, max_len: int = 200) -> str | None:
    """Return an optional string field (no NUL, at most ``max_len`` characters)."""
    v = body.get(field, _MISSING)
    if v is _MISSING or v is None:
        return None
    if not isinstance(v, str) or len(v) > max_len or "\x00" in v or not _utf8_ok(v):
        raise _bad(field, f"must be a string of at most {max_len} characters")
    return v


def req_str(body: dict[str, Any], field: str, max_len: int = 200) -> str:
    """Return a required non-empty string field."""
    v = opt_str(body, field, max_len)
    if not v:
        raise _bad(field, "is required")
    return v


def opt_int(body: dict[str, Any], field: str, lo: int = 0, hi: int = MAX_UNITS) -> int | None:
    """Return an optional integer field within ``[lo, hi]``."""
    v = body.get(field)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(field, f"must be an integer from {lo} to {hi}")
    return v


def req_int(body: dict[str, Any], field: str, lo: int = 0, hi: int = MAX_UNITS) -> int:
    """Return a required integer field within ``[lo, hi]``."""
    v = opt_int(body, field, lo, hi)
    if v is None:
        raise _bad(field, "is required")
    return v


def opt_number(body: dict[str, Any], field: str) -> float | None:
    """Return an optional Unix time (seconds) field."""
    v = body.get(field)
    if v is None:
        return None
    if (
        isinstance(v, bool)
        or not isinstance(v, int | float)
        or not math.isfinite(v)
        or not 0 <= v <= MAX_EPOCH
    ):
        raise _bad(field, f"must be Unix seconds from 0 to {MAX_EPOCH:.0f}")
    return float(v)


def opt_date(body: dict[str, Any], field: str) -> date | None:
    """Return an optional ``YYYY-MM-DD`` field."""
    v = opt_str(body, field, 10)
    if v is None:
        return None
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v):
            raise ValueError(v)
        return date.fromisoformat(v)
    except ValueError:
        raise _bad(field, "must be a date YYYY-MM-DD") from None


def opt_object(body: dict[str, Any], field: str, max_keys: int = 64) -> dict[str, Any] | None:
    """Return an optional JSON object of scalar values."""
    v = body.get(field)
    if v is None:
        return None
    if not isinstance(v, dict) or len(v) > max_keys:
        raise _bad(field, f"must be an object of at most {max_keys} keys")
    for k, x in v.items():  # stored as JSON text: NUL is safe, a lone surrogate is not
        if not (x is None or isinstance(x, bool | int | float | str)):
            raise _bad(field, "values are strings, numbers, booleans or null")
        if not all(_utf8_ok(t) for t in (k, x) if isinstance(t, str)):
            raise _bad(field, "keys and values must be valid Unicode text")
        if isinstance(x, str) and len(x) > 1000:
            raise _bad(field, "string values are at most 1000 characters")
        if isinstance(x, float) and not math.isfinite(x):
            raise _bad(field, "numbers must be finite")
    return v
