"""Small in-process HTTP servers for the demo and the integration tests, plus a plain HTTP client.

- :class:`EchoUpstream`: the "API" behind Envoy. It answers every request with a JSON echo of the
  method, path and headers it received, so a caller can see what Envoy forwarded (for example the
  ``x-tollhouse-customer`` header tollhouse set). ``?tokens=N`` makes it answer with
  ``x-usage-tokens: N`` (a response-header meter).
- :class:`JwksServer`: serves a JWKS document at ``/jwks.json`` that can be replaced at run time
  (key rotation).

Both run a ``ThreadingHTTPServer`` in a daemon thread on ``127.0.0.1``; they never touch asyncio.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["EchoUpstream", "HttpResponse", "JwksServer", "http_request"]


@dataclass(frozen=True)
class HttpResponse:
    """One HTTP answer: status, lower-cased headers (repeats joined by ``, ``) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Parse the body as JSON."""
        return json.loads(self.body.decode("utf-8"))

    def problem_code(self) -> str:
        """Return the ``code`` of a problem+json body, or ``""`` when the body is not one."""
        try:
            doc = self.json()
        except ValueError:
            return ""
        return str(doc.get("code", "")) if isinstance(doc, dict) else ""


def http_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout_s: float = 5.0,
    host: str = "127.0.0.1",
) -> HttpResponse:
    """Send one request exactly as given (the path is not normalised, redirects not followed)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return HttpResponse(resp.status, merged, data)
    finally:
        conn.close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False


class _Background:
    """A ThreadingHTTPServer on ``127.0.0.1:port`` served from a daemon thread."""

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.port = port
        self._handler = handler
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        server = _QuietServer(("127.0.0.1", self.port), self._handler)
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"httpd-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr line."""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _EchoHandler(_Handler):
    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():  # a repeated header shows as "a, b"
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_bytes": len(body),
        }
        owner: EchoUpstream = self.server.owner  # type: ignore[attr-defined]
        owner.seen.append(seen)
        out = {"content-type": "application/json"}
        tokens = parse_qs(urlsplit(self.path).query).get("tokens")
        if tokens and tokens[0].isdigit():
            out["x-usage-tokens"] = tokens[0]
        self._send(200, json.dumps(seen, sort_keys=True).encode(), out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo


class EchoUpstream(_Background):
    """The demo API: echoes each request as JSON and remembers the last 1000 it saw."""

    def __init__(self, port: int) -> None:
        super().__init__(port, _EchoHandler)
        self.seen: deque[dict[str, Any]] = deque(maxlen=1000)


class _JwksHandler(_Handler):
    def do_GET(self) -> None:
        owner: JwksServer = self.server.owner  # type: ignore[attr-defined]
        if urlsplit(self.path).path != "/jwks.json":
            self._send(404, b"not found", {"content-type": "text/plain"})
            return
        owner.fetches += 1
        body = json.dumps(owner.document).encode()
        self._send(200, body, {"content-type": "application/json", "cache-control": "no-store"})


class JwksServer(_Background):
    """Serves ``document`` at ``http://127.0.0.1:port/jwks.json``; replace it to rotate keys."""

    def __init__(self, port: int, document: dict[str, Any] | None = None) -> None:
        super().__init__(port, _JwksHandler)
        self.document: dict[str, Any] = document or {"keys": []}
        self.fetches = 0

    @property
    def url(self) -> str:
        """Where the JWKS document is served."""
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def set_document(self, document: dict[str, Any]) -> None:
        """Serve a new key set from the next fetch on."""
        self.document = document
