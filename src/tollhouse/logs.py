"""Structured logs: one JSON object per line on stderr, one line per event.

Secrets never reach a log line: fields whose name suggests a credential are replaced, strings that
look like a bearer token, a JWT or an API key are cut out, exception messages of libraries that
quote their raw input (HTTP parsing, JWT decoding) are withheld, and callers never pass token, key
or Authorization values in the first place. An exception is logged as fields of the same line
(``error_type``, ``error_message``, ``traceback``): a traceback never breaks the format, and
aiohttp's, asyncio's and grpc's own log records go through the same formatter.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from typing import Any

__all__ = ["EventLogger", "configure_logging", "exception_fields", "get_logger", "scrub"]

_SECRET_HINTS = ("token", "authorization", "api_key", "apikey", "secret", "password", "jwt")
# Bearer / Basic credentials, JWT-shaped strings (their prefix too), tollhouse API keys.
_SECRET_TEXT = re.compile(
    r"(?i:\b(?P<scheme>bearer|basic)\s+)[^\s\"',;]+"
    r"|eyJ[A-Za-z0-9_\-]{2,}(?:\.[A-Za-z0-9_\-]*){0,2}"
    r"|\bth_[A-Za-z0-9_\-]{6,}"
)
# Exceptions of these modules quote the raw request (headers, token segments) in their message.
_OPAQUE_MODULES = ("aiohttp.http_exceptions", "jwt.", "jwt")
_THIRD_PARTY = ("aiohttp", "asyncio", "grpc")
_TRACEBACK_FRAMES = 40
_MESSAGE_CHARS = 2000


def scrub(text: str) -> str:
    """Return ``text`` with anything shaped like a credential replaced by ``[redacted]``."""
    return _SECRET_TEXT.sub(_redact, text)


def _redact(m: re.Match[str]) -> str:
    scheme = m.group("scheme")
    return f"{scheme} [redacted]" if scheme else "[redacted]"


def _safe(key: str, value: Any) -> Any:
    if any(h in key.lower() for h in _SECRET_HINTS):
        return "[redacted]"
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return scrub(str(value))


def _message(exc: BaseException) -> str:
    module = type(exc).__module__
    if any(module == m or (m.endswith(".") and module.startswith(m)) for m in _OPAQUE_MODULES):
        return "[withheld: it may quote the request]"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not lose the log line
        text = "[unprintable]"
    return scrub(text[:_MESSAGE_CHARS])


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, innermost first (the order Python prints them in)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not x for x in out):
        out.append(e)
        e = (
            e.__cause__
            if e.__cause__ is not None
            else (None if e.__suppress_context__ else e.__context__)
        )
    return out[::-1]


def _traceback(exc: BaseException) -> str:
    parts: list[str] = []
    for e in _chain(exc):
        if parts:
            parts.append("caused:\n")
        parts.extend(traceback.format_tb(e.__traceback__, limit=-_TRACEBACK_FRAMES))
        parts.append(f"{type(e).__module__}.{type(e).__qualname__}: {_message(e)}\n")
    return scrub("".join(parts))


def exception_fields(exc: BaseException) -> dict[str, str]:
    """``error_type``, ``error_message`` and ``traceback`` of ``exc``, with secrets removed."""
    return {
        "error_type": type(exc).__name__,
        "error_message": _message(exc),
        "traceback": _traceback(exc),
    }


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": self._event(record),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                doc[k] = _safe(k, v)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            doc.update(exception_fields(exc))
        return json.dumps(doc, separators=(",", ":"), sort_keys=False, default=str)

    @staticmethod
    def _event(record: logging.LogRecord) -> str:
        try:
            return scrub(record.getMessage())
        except Exception:  # a foreign record with bad %-args: keep the template
            return scrub(str(record.msg))


class EventLogger:
    """``log.info("jwks.refreshed", issuer=..., keys=3)`` writes one JSON line."""

    __slots__ = ("_log",)

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(
        self, level: int, event: str, fields: dict[str, Any], exc: bool | BaseException = False
    ) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, extra={"fields": fields}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at debug level with ``fields``."""
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at info level with ``fields``."""
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, *, exc: bool | BaseException = False, **fields: Any) -> None:
        """Log ``event`` at warning level; ``exc`` (True: the one being handled) adds it."""
        self._emit(logging.WARNING, event, fields, exc)

    def error(self, event: str, *, exc: bool | BaseException = False, **fields: Any) -> None:
        """Log ``event`` at error level; ``exc`` (True: the one being handled) adds its fields."""
        self._emit(logging.ERROR, event, fields, exc)


def get_logger(name: str) -> EventLogger:
    """A structured logger for ``name`` (use the module's ``__name__``)."""
    return EventLogger(name)


def _handler(logger: logging.Logger) -> logging.Handler | None:
    return next((h for h in logger.handlers if getattr(h, "_tollhouse", False)), None)


def configure_logging(level: str = "info") -> None:
    """Send JSON lines to stderr: tollhouse's at ``level``, everyone else's at warning or above.

    Idempotent. aiohttp, asyncio and grpc records (and any other library's, through the root
    logger) use the same one-line JSON format instead of Python's multi-line tracebacks.
    """
    ours = logging.getLogger("tollhouse")
    ours.setLevel(level.upper())
    handler = _handler(ours) or _handler(logging.getLogger())
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
        handler._tollhouse = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for logger in (ours, root):
        if _handler(logger) is None:
            logger.addHandler(handler)
    ours.propagate = False
    threshold = max(ours.level, logging.WARNING)
    root.setLevel(threshold)
    for name in _THIRD_PARTY:
        third = logging.getLogger(name)
        third.setLevel(threshold)
        third.propagate = True
