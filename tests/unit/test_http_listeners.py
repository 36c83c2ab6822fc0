"""The admin and usage listeners of a real `tollhouse serve`: errors never echo nor log secrets.

One `tollhouse serve` process (admin API on a SQLite store, usage listener) per module, its
stderr in a file. Requests are written byte for byte on a socket, so oversized and malformed
ones reach aiohttp's parser exactly as a client sent them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.servers import free_port, wait_port
from tollhouse import devkeys
from tollhouse.store import migrate

pytestmark = pytest.mark.component  # runs `tollhouse serve` as a process

ADMIN_TOKEN = "adm-Zq81-listener-token-0123456789abcdef"
JWT_PREFIX = "eyJhbGciOiJSUzI1NiIsImtpZCI6InNlY3JldC1wcmVmaXgi"


@dataclass
class Serve:
    """A running `tollhouse serve` and where its stderr goes."""

    proc: subprocess.Popen[bytes]
    admin: int
    usage: int
    log: Path

    def lines(self) -> list[dict[str, object]]:
        """Every stderr line so far, each parsed as a JSON object (fails on any other line)."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_events(self, event: str, count: int) -> list[dict[str, object]]:
        """Wait (bounded) until ``count`` lines of ``event`` were written; return them."""
        deadline = time.monotonic() + 10
        while True:
            found = [d for d in self.lines() if d.get("event") == event]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """`tollhouse serve` with admin_listen (store + admin token) and usage_listen."""
    d = tmp_path_factory.mktemp("serve")
    (d / "jwks.json").write_text(json.dumps(devkeys.jwks(devkeys.generate_ec("k1"))))
    (d / "admin-token").write_text(ADMIN_TOKEN + "\n")
    admin, usage = free_port(), free_port()
    doc = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{admin}",
        "usage_listen": f"127.0.0.1:{usage}",
        "auth": {
            "jwt": [
                {"issuer": "https://issuer.example", "audiences": ["api"], "jwks_file": "jwks.json"}
            ]
        },
        "features": {"usage": {"rules": [{"methods": ["GET"], "path": "/v1/usage"}], "meters": []}},
        "plans": {"free": {"features": ["usage"]}},
        "metering": {"spool": "spool", "meter": "sqlite:///./meter.db"},
        "store": {"url": "sqlite:///./store.db"},
        "admin": {"token_file": "admin-token"},
        "shutdown_grace_s": 1,
    }
    (d / "tollhouse.yaml").write_text(yaml.safe_dump(doc))
    asyncio.run(migrate(f"sqlite:///{d}/store.db"))
    log = d / "stderr.log"
    exe = Path(sys.executable).parent / "tollhouse"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(d / "tollhouse.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=d,
        )
    try:
        wait_port(admin, 30)
        wait_port(usage, 30)
        yield Serve(proc, admin, usage, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _send(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Write ``raw`` on a new connection; return status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def _get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: tollhouse", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _problem(headers: dict[str, str], body: bytes) -> dict[str, object]:
    assert headers["content-type"].startswith("application/problem+json")
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


SECRETS = {
    "admin token": "Bearer " + ADMIN_TOKEN + "x" * 9000,
    "jwt": "Bearer " + JWT_PREFIX + "." + "A" * 9000,
}


@pytest.mark.parametrize("listener", ["admin", "usage"])
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_oversized_authorization_is_431_never_echoed_nor_logged(
    serve: Serve, listener: str, secret: str
) -> None:
    """An Authorization header over 8 KiB: 431 problem+json, no secret in the body or the log.

    Neither the admin token nor the JWT prefix is echoed or logged; the log line says what
    happened (status and exception type).
    """
    port = serve.admin if listener == "admin" else serve.usage
    path = "/admin/customers" if listener == "admin" else "/v1/usage"
    before = len(serve.wait_events("http.bad_request", 0))
    status, headers, body = _send(port, _get(path, "Authorization: " + SECRETS[secret]))
    assert status == 431
    assert _problem(headers, body)["code"] == "headers_too_large"
    logged = serve.wait_events("http.bad_request", before + 1)
    assert logged[-1]["status"] == 431
    assert logged[-1]["error_type"] == "LineTooLong"
    text = serve.log.read_text()
    for value in (ADMIN_TOKEN, ADMIN_TOKEN[:12], JWT_PREFIX[:16], "AAAAAAAAAAAA"):
        assert value.encode() not in body
        assert value not in text


def test_malformed_header_and_too_many_headers_answer_without_echo(serve: Serve) -> None:
    """A control byte in the Authorization header: 400; 200 headers: 431; neither echoes input."""
    bad = _get("/admin/customers", f"Authorization: Bearer {JWT_PREFIX}\x01tail")
    status, headers, body = _send(serve.admin, bad)
    assert status == 400
    assert _problem(headers, body)["code"] == "bad_request"
    assert JWT_PREFIX[:16].encode() not in body
    many = _get("/v1/usage", *(f"x-h{i}: {ADMIN_TOKEN}" for i in range(200)))
    status, headers, body = _send(serve.usage, many)
    assert status == 431
    assert ADMIN_TOKEN.encode() not in body
    serve.wait_events("http.bad_request", 2)
    text = serve.log.read_text()
    assert JWT_PREFIX[:16] not in text
    assert ADMIN_TOKEN not in text


def test_unknown_paths_and_large_bodies_are_problem_json(serve: Serve) -> None:
    """Outside the routes, on either listener, and an admin body over 64 KiB: problem+json."""
    for port, path in ((serve.admin, "/nowhere"), (serve.usage, "/v1/nothing")):
        status, headers, body = _send(port, _get(path))
        assert (status, _problem(headers, body)["code"]) == (404, "not_found")
    payload = b'{"name": "' + b"a" * 70000 + b'", "plan": "free"}'
    raw = (
        f"POST /admin/customers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    status, headers, body = _send(serve.admin, raw)
    assert (status, _problem(headers, body)["code"]) == (413, "body_too_large")


def test_stderr_is_one_json_object_per_line(serve: Serve) -> None:
    """Whatever the listeners were sent, every stderr line of serve is a JSON object."""
    _send(serve.admin, _get("/admin/customers", "Authorization: Bearer " + "B" * 9000))
    serve.wait_events("http.bad_request", 1)
    docs = serve.lines()
    assert docs
    assert all({"ts", "level", "logger", "event"} <= set(d) for d in docs)
