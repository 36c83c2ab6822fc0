"""Structured logs: one JSON object per line on stderr, one line per event.

Secrets never reach a log line: fields whose name suggests a credential are replaced, and callers
never pass token, key or Authorization values in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["EventLogger", "configure_logging", "get_logger"]

_SECRET_HINTS = ("token", "authorization", "api_key", "apikey", "secret", "password", "jwt")


def _safe(key: str, value: Any) -> Any:
    if any(h in key.lower() for h in _SECRET_HINTS):
        return "[redacted]"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                doc[k] = _safe(k, v)
        if record.exc_info and record.exc_info[0] is not None:
            doc["error_type"] = record.exc_info[0].__name__
        return json.dumps(doc, separators=(",", ":"), sort_keys=False)


class EventLogger:
    """``log.info("jwks.refreshed", issuer=..., keys=3)`` writes one JSON line."""

    __slots__ = ("_log",)

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, extra={"fields": fields}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at debug level with ``fields``."""
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at info level with ``fields``."""
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at warning level with ``fields``."""
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, *, exc: bool = False, **fields: Any) -> None:
        """Log ``event`` at error level; ``exc`` adds the exception's type (no traceback)."""
        self._emit(logging.ERROR, event, fields, exc)


def get_logger(name: str) -> EventLogger:
    """A structured logger for ``name`` (use the module's ``__name__``)."""
    return EventLogger(name)


def configure_logging(level: str = "info") -> None:
    """Send JSON lines to stderr at ``level``; idempotent."""
    root = logging.getLogger("tollhouse")
    root.setLevel(level.upper())
    if not any(getattr(h, "_tollhouse", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
        handler._tollhouse = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
