"""Usage alerts as signed webhooks end to end (issue 15): requests through real Envoy.

A customer's quota crossing 80% and 100% produces exactly one webhook each, signed, even though
the receiver is down while it happens; re-evaluating while usage sits at 80% adds nothing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.integration.harness import LocalStack, build_stack, http_request, wait_until
from tests.servers import free_port
from tollhouse.store import migrate

pytestmark = pytest.mark.e2e  # starts a real Envoy

Q = 10


class Sink:
    """A real HTTP receiver (stdlib, its own thread); ``seen`` holds (headers, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[tuple[dict[str, str], str]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                sink.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[LocalStack, str]]:
    """One replica with a SQLite store, fast webhook retries and 80% / 100% quota alerts."""
    token = secrets.token_urlsafe(24)
    (tmp_path / "admin.token").write_text(token + "\n")
    url = f"sqlite://{tmp_path}/store.db"
    asyncio.run(migrate(url))

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        plans = {**config["plans"], "q10": {"features": ["search"], "quotas": {"requests": Q}}}
        return {
            **config,
            "plans": plans,
            "customers": {**config["customers"], "carol": {"plan": "q10"}},
            "store": {"url": url, "poll_interval_ms": 200},
            "admin": {"token_file": str(tmp_path / "admin.token")},
            "webhooks": {
                "poll_interval_ms": 100,
                "backoff_initial_s": 0.2,
                "backoff_max_s": 0.5,
                "request_timeout_ms": 2000,
                "lease_s": 5,
            },
            "alerts": {
                "interval_ms": 100,
                "plans": {
                    "q10": {
                        "quota": [
                            {"meter": "requests", "percent": 80},
                            {"meter": "requests", "percent": 100},
                        ]
                    }
                },
            },
        }

    s = build_stack(tmp_path / "stack", edit).start()
    try:
        yield s, token
    finally:
        s.stop()


def _admin(
    s: LocalStack, token: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    resp = http_request(
        s.ports.tollhouse_admin,
        "/admin" + path,
        method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        body=None if body is None else json.dumps(body).encode(),
    )
    assert 200 <= resp.status < 300, (path, resp.status, resp.body[:300])
    doc: dict[str, Any] = resp.json()
    return doc


def _rounds(s: LocalStack) -> float:
    for line in s.tollhouse.metrics().splitlines():
        if line.startswith('tollhouse_alert_rounds_total{result="ok"} '):
            return float(line.split()[-1])
    return 0.0


def test_quota_80_and_100_percent_arrive_once_each_signed_after_an_outage(
    stack: tuple[LocalStack, str],
) -> None:
    """80% and 100% of carol's quota: one signed webhook each, delivered after the outage."""
    s, token = stack
    port = free_port()  # nothing listens yet: the receiver is down
    ep = _admin(
        s,
        token,
        "POST",
        "/webhooks",
        {"url": f"http://127.0.0.1:{port}/hook", "events": ["quota.threshold_reached"]},
    )
    jwt = s.token("carol")
    assert [s.request("/v1/search", token=jwt).status for _ in range(8)] == [200] * 8

    def deliveries() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = _admin(s, token, "GET", f"/webhooks/{ep['id']}/deliveries")[
            "items"
        ]
        return items

    wait_until(
        deliveries,
        lambda d: len(d) == 1 and d[0]["attempts"] >= 1,
        timeout_s=15,
        what="the 80% event, attempted while the receiver is down",
    )
    start = _rounds(s)
    wait_until(
        lambda: _rounds(s),
        lambda n: n >= start + 5,
        timeout_s=15,
        what="five more evaluations at 80%",
    )
    assert len(deliveries()) == 1  # sitting at 80% fired once
    statuses = [s.request("/v1/search", token=jwt).status for _ in range(Q - 8 + 3)]
    assert statuses == [200] * (Q - 8) + [429] * 3
    wait_until(deliveries, lambda d: len(d) == 2, timeout_s=15, what="the 100% event")
    sink = Sink(port)
    try:
        wait_until(
            deliveries,
            lambda d: all(x["state"] == "delivered" for x in d),
            timeout_s=20,
            what="both delivered after the outage",
        )
    finally:
        sink.stop()
    hook = Webhook(ep["secret"])
    payloads = [hook.verify(body, headers) for headers, body in sink.seen]
    assert sorted(p["data"]["threshold"]["percent"] for p in payloads) == [80, 100]
    assert {p["customer"] for p in payloads} == {"carol"}
    assert len({h["webhook-id"] for h, _ in sink.seen}) == 2
    assert len(sink.seen) == 2  # exactly one webhook each
