"""The HTTP ext_authz listener in process, spoken to over real sockets with raw bytes.

Bad input (smuggling shapes, oversized or too many headers, slow clients, non-ASCII bytes) must
never be answered 200; keep-alive and pipelining answer every request, in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import yaml
from prometheus_client import REGISTRY

from tests.servers import free_port
from tollhouse import devkeys
from tollhouse.app import App
from tollhouse.config import load_config

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server

ISS = "https://issuer.example"


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "authz_http_listen": f"127.0.0.1:{free_port()}",
        "auth": {
            "jwt": [{"issuer": ISS, "audiences": ["api"], "jwks_file": str(tmp_path / "jwks.json")}]
        },
        "features": {
            "search": [{"methods": ["GET", "HEAD"], "path": "/v1/search"}],
            "export": [{"methods": ["GET"], "path": "/v1/export"}],
        },
        "plans": {"free": {"features": ["search"]}},
        "customers": {"acme": {"plan": "free"}},
        "metering": {"spool": str(tmp_path / "spool"), "meter": f"sqlite:///{tmp_path}/meter.db"},
        "shutdown_grace_s": 2,
        **extra,
    }


async def _start(tmp_path: Path, **extra: Any) -> tuple[App, devkeys.DevKey]:
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, **extra)))
    app = App(path, load_config(path))
    await app.start()
    return app, key


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[App, str]]:
    app, key = await _start(
        tmp_path,
        authz_http={
            "header_timeout_s": 0.5,
            "idle_timeout_s": 1.0,
            "max_headers": 20,
            "max_header_bytes": 4096,
        },
    )
    yield app, devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    await app.stop()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class _Collector:
    """httptools.HttpResponseParser callbacks: every response on a connection, in order."""

    responses: list[Response] = field(default_factory=list)
    parser: Any = None
    _status: int = 0
    _headers: dict[str, str] = field(default_factory=dict)
    _body: bytes = b""

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.responses.append(Response(self._status, self._headers, self._body))
        self._headers, self._body = {}, b""


async def _exchange(
    app: App, data: bytes, *, head: bool = False, timeout_s: float = 3.0
) -> tuple[list[Response], bool]:
    """Send raw bytes, read until the server closes (or ``timeout_s``); the answers, closed."""
    assert app.cfg.authz_http_listen is not None
    host, port = app.cfg.authz_http_listen.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    closed = False
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                if head:  # a HEAD answer has no body: stop at the end of its headers
                    collector.responses.append(Response(int(chunk.split(b" ")[1]), {}, chunk))
                    break
                parser.feed_data(chunk)
    except TimeoutError:
        pass
    finally:
        writer.close()
    return collector.responses, closed


def _get(path: str, token: str | None = None, extra: bytes = b"", close: bool = False) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"host: api.example"]
    if token is not None:
        lines.append(f"authorization: Bearer {token}".encode())
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


async def test_allow_carries_identity_metadata_and_usage_id(running: tuple[App, str]) -> None:
    """An allowed request: 200, the identity headers, the decision id and a usage id."""
    app, token = running
    [resp], _ = await _exchange(app, _get("/v1/search?q=1", token, close=True))
    assert resp.status == 200
    assert resp.headers["x-tollhouse-customer"] == "acme"
    assert resp.headers["x-tollhouse-plan"] == "free"
    assert resp.headers["x-tollhouse-feature"] == "search"
    assert len(resp.headers["x-tollhouse-usage-id"]) == 32
    assert resp.headers["x-tollhouse-decision-id"]
    assert resp.headers["content-length"] == "0"
    assert "x-envoy-auth-headers-to-remove" not in resp.headers


async def test_deny_is_problem_json_with_www_authenticate(running: tuple[App, str]) -> None:
    """No credential: 401 with a problem+json body and WWW-Authenticate, as over gRPC."""
    app, _ = running
    [resp], _ = await _exchange(app, _get("/v1/search", close=True))
    assert resp.status == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["www-authenticate"].startswith("Bearer realm=")
    assert json.loads(resp.body)["code"] == "missing_credentials"


async def test_keep_alive_and_pipelining_answer_in_order(running: tuple[App, str]) -> None:
    """Three pipelined requests in one write: three answers, in request order, one connection."""
    app, token = running
    data = (
        _get("/v1/search", token)
        + _get("/v1/export", token)
        + _get("/v1/search", token, close=True)
    )
    responses, closed = await _exchange(app, data)
    assert [r.status for r in responses] == [200, 403, 200]
    assert json.loads(responses[1].body)["code"] == "not_entitled"
    assert closed  # the last one asked for connection: close


async def test_head_deny_has_no_body_bytes(running: tuple[App, str]) -> None:
    """A HEAD request is denied with headers only, so the connection stays in sync."""
    app, _ = running
    data = b"HEAD /v1/search HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    [resp], _ = await _exchange(app, data, head=True)
    assert resp.status == 401
    assert resp.body.endswith(b"\r\n\r\n")  # nothing after the header block


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (
            "content-length with transfer-encoding",
            b"GET /v1/search HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two content-lengths",
            b"GET /v1/search HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\ncontent-length: 5\r\n\r\n",
        ),
        ("non-ASCII header name", b"GET /v1/search HTTP/1.1\r\nhost: a\r\nx-\xff: 1\r\n\r\n"),
        ("non-ASCII path", b"GET /v1/s\xc3\xa9arch HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("absolute-form target", b"GET http://evil/v1/search HTTP/1.1\r\nhost: a\r\n\r\n"),
        (
            "upgrade",
            b"GET /v1/search HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\n"
            b"upgrade: websocket\r\n\r\n",
        ),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n"),
    ],
)
async def test_malformed_requests_are_400_and_close(
    running: tuple[App, str], name: str, raw: bytes
) -> None:
    """Smuggling shapes and bytes Envoy never sends: a 4xx, then the connection closes."""
    app, token = running
    auth = f"authorization: Bearer {token}\r\n".encode()
    raw = raw.replace(b"host: a\r\n", b"host: a\r\n" + auth, 1)
    responses, closed = await _exchange(app, raw + _get("/v1/search", token))
    assert closed, name
    assert responses, name
    assert all(r.status >= 400 for r in responses), name
    assert responses[0].status == 400, name


async def test_oversized_and_too_many_headers_are_431(running: tuple[App, str]) -> None:
    """Headers past max_header_bytes or max_headers: 431, never 200, connection closed."""
    app, token = running
    big = _get("/v1/search", token, extra=b"x-big: " + b"a" * 5000 + b"\r\n")
    many = _get("/v1/search", token, extra=b"".join(b"x-h%d: 1\r\n" % i for i in range(30)))
    for data in (big, many):
        responses, closed = await _exchange(app, data)
        assert [r.status for r in responses] == [431]
        assert closed


async def test_slow_headers_time_out_without_an_allow(running: tuple[App, str]) -> None:
    """A client that never finishes its headers is cut off after header_timeout_s (408)."""
    app, token = running
    partial = _get("/v1/search", token)[:-2]  # no final CRLF: the headers never end
    responses, closed = await _exchange(app, partial, timeout_s=3.0)
    assert closed
    assert [r.status for r in responses] == [408]


async def test_idle_connection_is_closed(running: tuple[App, str]) -> None:
    """A keep-alive connection with nothing to do is closed after idle_timeout_s."""
    app, token = running
    responses, closed = await _exchange(app, _get("/v1/search", token), timeout_s=4.0)
    assert [r.status for r in responses] == [200]
    assert closed


async def test_non_ascii_credentials_are_401(running: tuple[App, str]) -> None:
    """A token with bytes above 0x7f never verifies: 401, never 200."""
    app, token = running
    data = _get(
        "/v1/search",
        close=True,
        extra=b"authorization: Bearer " + token.encode()[:-4] + b"\xff\xfe\xfd\xfc\r\n",
    )
    [resp], _ = await _exchange(app, data)
    assert resp.status == 401


async def test_path_prefix_is_stripped_and_enforced(tmp_path: Path) -> None:
    """With path_prefix, /authz/v1/search is checked as /v1/search; a path outside it is 400."""
    app, key = await _start(tmp_path, authz_http={"path_prefix": "/authz"})
    try:
        token = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
        [ok], _ = await _exchange(app, _get("/authz/v1/search", token, close=True))
        [bad], _ = await _exchange(app, _get("/v1/search", token, close=True))
    finally:
        await app.stop()
    assert ok.status == 200
    assert ok.headers["x-tollhouse-feature"] == "search"
    assert bad.status == 400


async def test_connections_past_the_limit_are_refused(tmp_path: Path) -> None:
    """max_connections: 2 open connections are served, a third is closed at once."""
    app, key = await _start(tmp_path, authz_http={"max_connections": 2})
    try:
        assert app.cfg.authz_http_listen is not None
        host, port = app.cfg.authz_http_listen.rsplit(":", 1)
        before = REGISTRY.get_sample_value("tollhouse_authz_http_connections") or 0.0
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        deadline = asyncio.get_running_loop().time() + 5
        while (REGISTRY.get_sample_value("tollhouse_authz_http_connections") or 0.0) < before + 2:
            assert asyncio.get_running_loop().time() < deadline, "the 2 connections never taken"
            await asyncio.sleep(0.01)
        token = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
        responses, closed = await _exchange(app, _get("/v1/search", token))
        for _, w in held:
            w.close()
    finally:
        await app.stop()
    assert closed
    assert responses == []


async def test_header_injection_through_a_customer_id_is_401(tmp_path: Path) -> None:
    """A subject with CR LF (default_plan admits any subject) is never written as a header.

    The token is refused (401 invalid_token: a customer claim has no control character) before
    any identity header is built; the transport's own unsafe-header guard stays behind it.
    """
    app, key = await _start(tmp_path, default_plan="free")
    try:
        token = devkeys.make_token(key, issuer=ISS, audience="api", subject="x\r\nx-evil: 1")
        [resp], _ = await _exchange(app, _get("/v1/search", token, close=True))
    finally:
        await app.stop()
    assert resp.status == 401
    assert "x-evil" not in resp.headers
    assert json.loads(resp.body)["code"] == "invalid_token"
