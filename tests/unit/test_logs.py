"""Structured logs: an exception is fields of one JSON line, and no credential reaches it."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import jwt as pyjwt
import pytest
from aiohttp.http_exceptions import LineTooLong

from tollhouse.logs import _JsonFormatter, get_logger, scrub

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2lnbmF0dXJlLXNlY3JldA"
API_KEY = "th_Jx8sEcReTkEyvAlUe0123"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """What the ``tollhouse.test_logs`` logger writes, through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JsonFormatter())
    logger = logging.getLogger("tollhouse.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)


def _fail_deep(message: str) -> None:
    raise RuntimeError(message)


def _log_error(message: str, event: str = "test.failed") -> None:
    log = get_logger("tollhouse.test_logs")
    try:
        try:
            _fail_deep(message)
        except RuntimeError as e:
            raise ValueError("while handling") from e
    except ValueError:
        log.error(event, exc=True, customer="acme")


def test_exception_is_type_message_and_traceback_in_one_line(out: io.StringIO) -> None:
    """``exc=True`` gives error_type, error_message and a traceback (with the cause) in one line."""
    _log_error("disk full on /var/spool")
    text = out.getvalue()
    assert text.count("\n") == 1
    doc = json.loads(text)
    assert doc["event"] == "test.failed"
    assert doc["customer"] == "acme"
    assert doc["error_type"] == "ValueError"
    assert doc["error_message"] == "while handling"
    assert "_fail_deep" in doc["traceback"]
    assert "RuntimeError: disk full on /var/spool" in doc["traceback"]
    assert doc["traceback"].index("RuntimeError") < doc["traceback"].index("ValueError")


def test_credentials_in_messages_and_fields_are_cut_out(out: io.StringIO) -> None:
    """A JWT, a Bearer value or an API key in a message, a traceback or a field is redacted."""
    log = get_logger("tollhouse.test_logs")
    _log_error(f"bad token {JWT} and key {API_KEY}", event=f"event Bearer {JWT[:20]}")
    log.warning(
        "test.field",
        path=f"/x?access_token={JWT}",
        note=f"prefix {JWT[:12]}",
        header="Authorization: Basic dXNlcjpwYXNzd29yZA==",
    )
    text = out.getvalue()
    assert text.count("\n") == 2
    for secret in (JWT, JWT[:12], API_KEY, "dXNlcjpwYXNzd29yZA==", JWT.split(".")[-1]):
        assert secret not in text, secret
    assert (
        "RuntimeError: bad token [redacted] and key [redacted]"
        in json.loads(text.splitlines()[0])["traceback"]
    )


def test_library_messages_that_quote_input_are_withheld(out: io.StringIO) -> None:
    """PyJWT's and aiohttp's parser exceptions quote the raw request: their message is withheld."""
    log = get_logger("tollhouse.test_logs")
    for exc in (
        pyjwt.DecodeError("Invalid payload: zzSECRETzz"),
        LineTooLong(b"Authorization: Bearer zzSECRETzz", 8190),
    ):
        try:
            raise exc
        except Exception:
            log.error("test.lib", exc=True)
    text = out.getvalue()
    assert "zzSECRETzz" not in text
    types = [json.loads(line)["error_type"] for line in text.splitlines()]
    assert types == ["DecodeError", "LineTooLong"]


def test_scrub_keeps_ordinary_text() -> None:
    """Ordinary words, ids and paths are left alone; only credential shapes are replaced."""
    assert scrub("customer acme on /v1/search: key_3f9c revoked") == (
        "customer acme on /v1/search: key_3f9c revoked"
    )
    assert scrub(f"Bearer {JWT}") == "Bearer [redacted]"


def test_aiohttp_asyncio_and_grpc_records_are_json_lines() -> None:
    """After configure_logging, other libraries' records (tracebacks too) are one JSON line each.

    A real process: asyncio's own handler of an exception in a callback, aiohttp's server logger
    and grpc's logger; stderr must hold JSON objects only.
    """
    script = textwrap.dedent("""
        import asyncio, logging
        from tollhouse.logs import configure_logging
        configure_logging("info")
        def boom():
            raise KeyError("callback failed")
        async def main():
            asyncio.get_running_loop().call_soon(boom)
            await asyncio.sleep(0.01)
        asyncio.run(main())
        try:
            raise OSError("handler failed")
        except OSError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
            logging.getLogger("grpc._server").exception("Exception calling application")
        logging.getLogger("aiohttp.access").info("not shown: below warning")
        logging.getLogger("some.library").warning("third party %s", "warning")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stderr.splitlines()]
    by_logger = {d["logger"]: d for d in docs}
    assert set(by_logger) == {"asyncio", "aiohttp.server", "grpc._server", "some.library"}
    assert by_logger["asyncio"]["error_type"] == "KeyError"
    assert "boom" in by_logger["asyncio"]["traceback"]
    assert by_logger["aiohttp.server"]["error_message"] == "handler failed"
    assert by_logger["grpc._server"]["error_type"] == "OSError"
    assert by_logger["some.library"]["event"] == "third party warning"
