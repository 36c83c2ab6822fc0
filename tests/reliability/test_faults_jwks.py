"""The JWKS URL slow, returning garbage, and flapping, under load through a real Envoy (issue 17).

The rig's serve refreshes the issuer's JWKS URL every second (cooldown 0.5 s, timeout 2 s). The
test swaps the stack's JWKS server for one whose answers it controls, on the same port, and runs
through three faults while bob (JWT, signed by the published key) and globex (API key) keep up
the load: answers slower than the timeout, garbage (cut-off JSON, HTML, a key set without a
usable key), and flapping (HTTP 500, a dropped connection and good answers in turn). Alongside,
forged tokens (the published kid, another key's signature) and tokens of a key that is not yet
published go through Envoy. Then the URL publishes that new key and its tokens pass.

Expected: bob keeps being decided from the last good key set (200s); a forged or unknown-key
token never gets a 200 (401, or 503 if tollhouse cannot decide); each failed load is counted
(``tollhouse_jwks_refreshes`` by result); the invariant holds. (Before any key set has loaded,
tokens get 503 ``keys_unavailable``: ``tests/unit/test_authn_jwks.py``; a serve in that state
is not ready, so the rig cannot put Envoy in front of it.)
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import LocalStack, build_stack, wait_until
from tests.reliability.invariant import Outcome
from tests.reliability.rig import CUSTOMERS, Load, fast_metering, verdict
from tollhouse.demo.httpd import JwksServer
from tollhouse.devkeys import generate_rsa, jwks

pytestmark = pytest.mark.e2e  # starts a real Envoy

THREADS = 4
SLOW_S = 3.0  # past serve's 2 s jwks_timeout_s
GARBAGE = (b'{"keys": [{"kty": "RSA", "n": "', b"<html>502 Bad Gateway</html>", b'{"keys": [{}]}')


class _FaultyHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        owner: FaultyJwks = self.server.owner  # type: ignore[attr-defined]
        mode = owner.next_answer()
        if mode == "slow" and owner.stopping.wait(SLOW_S):
            return
        if mode == "drop":
            self.close_connection = True
            return  # no response at all
        if mode == "error":
            self._send(500, b"internal error")
        elif mode.startswith("garbage"):
            self._send(200, GARBAGE[int(mode[-1])])
        else:
            self._send(200, json.dumps(owner.document).encode())

    def _send(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # a slow answer: serve gave up first
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return


class FaultyJwks(JwksServer):
    """A JWKS server whose answers follow ``mode``: ok, slow, garbage or flap."""

    def __init__(self, port: int, document: dict[str, Any]) -> None:
        super().__init__(port, document)
        self._handler = _FaultyHandler
        self.stopping = threading.Event()
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._cycle: Iterator[str] = itertools.repeat("ok")

    def set_mode(self, mode: str) -> None:
        cycles = {
            "ok": ("ok",),
            "slow": ("slow",),
            "garbage": ("garbage0", "garbage1", "garbage2"),
            "flap": ("error", "ok", "drop", "ok"),
        }
        with self._lock:
            self._cycle = itertools.cycle(cycles[mode])

    def next_answer(self) -> str:
        with self._lock:
            mode = next(self._cycle)
            self.answers[mode] += 1
            return mode

    def stop(self) -> None:
        self.stopping.set()
        super().stop()


class ProbeLoad(Load):
    """The rig's load, plus single requests with a given bearer token (kept and judged)."""

    def __enter__(self) -> ProbeLoad:
        super().__enter__()
        return self

    def send_token(self, token: str, label: str) -> Outcome:
        """One request with ``token``, its outcome kept as ``label``'s (bob's: billed to bob)."""
        path = f"/v1/search?case={self.case}&c={label}"
        try:
            resp = self.stack.request(path, token=token)
        except (OSError, http.client.HTTPException) as exc:
            got = Outcome(label, 0, type(exc).__name__)
        else:
            uid = str(resp.json()["headers"]["x-tollhouse-usage-id"]) if resp.status == 200 else ""
            got = Outcome(label, resp.status, uid or resp.problem_code())
        with self._lock:
            self.outcomes.append(got)
            self._latency_s.append(0.0)
        return got


def _refreshes(stack: LocalStack, result: str) -> float:
    total = 0.0
    for line in stack.tollhouse.metrics().splitlines():
        if line.startswith("tollhouse_jwks_refreshes_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _failing(load: ProbeLoad, result: str, n: int, forged: str) -> None:
    """Send forged tokens until serve has counted ``n`` more failed JWKS loads of ``result``."""
    stack = load.stack
    before = _refreshes(stack, result)

    def probe() -> float:
        load.send_token(forged, "forged")
        return _refreshes(stack, result)

    wait_until(
        probe,
        lambda got: got >= before + n,
        timeout_s=20,
        interval_s=0.05,
        what=f"{n} more JWKS loads failing ({result})",
    )


@contextmanager
def _stack(workdir: Path) -> Iterator[tuple[LocalStack, FaultyJwks]]:
    """The rig's stack (fast metering) with a FaultyJwks as its JWKS URL; stopped on exit."""
    stack = build_stack(workdir, fast_metering)
    server = FaultyJwks(stack.jwks.port, stack.jwks.document)
    stack.jwks = server
    stack.start()
    stack.upstream.seen = deque(stack.upstream.seen, maxlen=None)  # the verdict needs them all
    try:
        yield stack, server
    finally:
        stack.stop()


def test_jwks_slow_garbage_flapping_keeps_the_last_good_keys(tmp_path: Path) -> None:
    """JWKS URL slow, garbage, flapping under load: last good keys decide, never a forged 200.

    Through each fault bob's valid tokens keep getting 200s; forged tokens (published kid,
    wrong signature) and tokens of an unpublished key get 401 or 503, never 200; each failed
    load is counted by result. Once the URL publishes the new key, its tokens pass. Exact.
    """
    new_key = generate_rsa()
    with _stack(tmp_path / "stack") as (stack, server):
        forged = stack.token("bob", key=generate_rsa(kid=stack.key.kid))
        unknown = stack.token("bob", key=new_key)
        with ProbeLoad(stack, THREADS) as load:
            load.ok_after(30, "200s before the JWKS URL fails")
            start = load.count()
            for mode, result, n in (
                ("slow", "timeout", 2),
                ("garbage", "invalid", 3),
                ("flap", "error", 2),
            ):
                server.set_mode(mode)
                _failing(load, result, n, forged)
                load.send_token(unknown, "unpublished")
                load.ok_after(10, f"200s while the JWKS URL is {mode}")
            end = load.count()
            server.document = jwks(stack.key, new_key)
            server.set_mode("ok")
            wait_until(
                lambda: load.send_token(unknown, "bob").status,
                lambda s: s == 200,
                timeout_s=20,
                what="a token of the newly published key passing",
            )
            load.ok_after(20, "200s after the JWKS URL recovered")
        v = verdict(stack, load, tmp_path / "bill")
        logged = stack.tollhouse.log_path.read_text(encoding="utf-8", errors="replace")
    during = load.snapshot()[start:end]
    bob = Counter(o.status for o in during if o.customer == "bob")
    probes = Counter((o.customer, o.status, o.tag) for o in during if o.customer not in CUSTOMERS)
    print(v.summary(), f"during: bob {dict(bob)}; probes {dict(probes)};", dict(server.answers))
    assert {status for _, status, _ in probes} <= {401, 503}, probes
    assert {c for c, _, _ in probes} == {"forged", "unpublished"}, probes
    assert set(bob) == {200}, bob
    assert all(
        server.answers[a] > 0 for a in ("slow", "garbage0", "garbage1", "garbage2", "error", "drop")
    ), server.answers
    assert forged not in logged  # tokens are never logged
    assert unknown not in logged
    v.assert_exact()
