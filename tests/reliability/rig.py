"""The reliability rig: a stack under steady load, the bill run on its real meter, one verdict.

:func:`fault_stack` builds the demo stack (real Envoy, ``tollhouse serve`` with the metering
worker, SQLite meter or a Redis one) with a 1 s grace so UNCONFIRMED records land quickly;
:class:`Load` sends requests through Envoy from a few threads for two customers (bob with a JWT,
globex with an API key) and keeps every :class:`Outcome`; :func:`verdict` waits until the meter
holds every 200 and nothing is pending, runs ``tollhouse bill --preview`` for the current UTC
month and checks the invariant.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.integration.harness import (
    LimitedTollhouse,
    LocalStack,
    UsageRecord,
    build_stack,
    meter_file,
    redis_stream_records,
    sqlite_meter_records,
    upstream_saw,
    usage_ids_seen,
    wait_until,
)
from tests.reliability.invariant import Outcome, Verdict, check, invoice_requests
from tollhouse.demo.stack import find_binary

__all__ = [
    "BILL_ENV",
    "CUSTOMERS",
    "Load",
    "bill_command",
    "fault_stack",
    "judge",
    "meter_records",
    "on_redis",
    "quiesce",
    "run_bill",
    "settle",
    "verdict",
]

CUSTOMERS = ("bob", "globex")  # pro (JWT) and enterprise (API key): no quota stops the load


def fast_metering(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """1 s grace for unconfirmed records and a fast forwarder, so verdicts come quickly."""
    metering = {**config["metering"], "unconfirmed_after_s": 1, "flush_interval_ms": 50, **extra}
    return {**config, "metering": metering}


def on_redis(url: str, bob_quota: int = 400) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Meter (shared join) and quota counters on ``url``; pro fails closed, enterprise local.

    ``bob_quota``: pro's quota; leases halve as it is spent (200, 100, ...), so bob asks Redis
    again soon.
    """

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        plans = dict(config["plans"])
        plans["pro"] = {
            **plans["pro"],
            "quotas": {"requests": bob_quota},
            "on_counter_error": "fail_closed",
        }
        plans["enterprise"] = {
            **plans["enterprise"],
            "quotas": {"requests": 10**9},
            "on_counter_error": "local",
        }
        return {
            **config,
            "plans": plans,
            "counters": url,
            "metering": {**config["metering"], "meter": url},
        }

    return edit


class EnvTollhouse(LimitedTollhouse):
    """``tollhouse serve`` (and so its metering worker) started with extra environment."""

    env: Mapping[str, str] = {}

    def _spawn(self, args: list[str]) -> None:
        super()._spawn(["env", *(f"{k}={v}" for k, v in self.env.items()), *args])


@contextmanager
def fault_stack(
    workdir: Path,
    edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    *,
    transport: str = "grpc",
    serve_env: Mapping[str, str] | None = None,
) -> Iterator[LocalStack]:
    """A started stack with fast metering (plus ``edit``), stopped on exit.

    ``serve_env``: extra environment for ``tollhouse serve`` (e.g. libfaketime's).
    """

    def configure(config: dict[str, Any]) -> dict[str, Any]:
        config = fast_metering(config)
        return edit(config) if edit is not None else config

    stack = build_stack(workdir, configure, transport=transport)
    if serve_env:
        serve = EnvTollhouse(stack.tollhouse.workdir, stack.tollhouse.config)
        serve.env = dict(serve_env)
        stack.tollhouse = serve
    stack.start()
    # The demo upstream keeps its last 1000 requests; the invariant needs every one it served.
    stack.upstream.seen = deque(stack.upstream.seen, maxlen=None)
    try:
        yield stack
    finally:
        stack.stop()


class Load:
    """Requests through Envoy from background threads until stopped; keeps every Outcome.

    Each thread sends for one customer in turn (``customers``, by default bob and globex, then
    each of ``keys``: more customers, by API key, e.g. the entitlement store's). Connection
    errors and resets are outcomes too (status 0): while Envoy is down a client sees exactly that.
    """

    def __init__(
        self,
        stack: LocalStack,
        threads: int = 4,
        keys: Mapping[str, str] | None = None,
        customers: tuple[str, ...] = CUSTOMERS,
    ) -> None:
        self.stack = stack
        self._keys = dict(keys or {})
        customers = (*customers, *self._keys)
        self.case = uuid.uuid4().hex[:12]
        self.outcomes: list[Outcome] = []
        self._latency_s: list[float] = []  # one per outcome, same order
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(customers[i % len(customers)],), daemon=True)
            for i in range(threads)
        ]

    @property
    def threads(self) -> int:
        return len(self._threads)

    def _send(self, customer: str) -> Outcome:
        path = f"/v1/search?case={self.case}&c={customer}"
        try:
            if customer in self._keys:
                resp = self.stack.request(path, api_key=self._keys[customer])
            elif customer == "globex":
                resp = self.stack.request(path, api_key=self.stack.api_key)
            else:
                resp = self.stack.request(path, token=self._token)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, cut: no answer
            return Outcome(customer, 0, type(exc).__name__)
        if resp.status == 200:
            return Outcome(customer, 200, str(resp.json()["headers"]["x-tollhouse-usage-id"]))
        return Outcome(customer, resp.status, resp.problem_code())

    def send_once(self, customer: str, api_key: str) -> Outcome:
        """One request for ``customer`` by ``api_key``, in this load's traffic (kept, judged)."""
        self._keys.setdefault(customer, api_key)
        got = self._send(customer)
        with self._lock:
            self.outcomes.append(got)
            self._latency_s.append(0.0)
        return got

    def _run(self, customer: str) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            got = self._send(customer)
            took = time.perf_counter() - t0
            with self._lock:
                self.outcomes.append(got)
                self._latency_s.append(took)
            if got.status == 0:
                time.sleep(0.01)  # Envoy down: do not spin

    def __enter__(self) -> Load:
        self._token = self.stack.token("bob", lifetime_s=3600)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_more(self, n: int, what: str, timeout_s: float = 30.0) -> None:
        """Wait until ``n`` more outcomes than now have been recorded."""
        start = self.count()
        wait_until(self.count, lambda c: c >= start + n, timeout_s=timeout_s, what=what)

    def ok_after(self, n: int, what: str, timeout_s: float = 30.0) -> None:
        """Wait until ``n`` more 200s than now have been recorded (the stack is serving again)."""

        def oks() -> int:
            with self._lock:
                return sum(1 for o in self.outcomes if o.status == 200)

        start = oks()
        wait_until(oks, lambda c: c >= start + n, timeout_s=timeout_s, what=what)

    def latencies(self, since: int = 0) -> list[float]:
        """Seconds each request took (client side), from outcome number ``since`` on."""
        with self._lock:
            return self._latency_s[since:]

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


def meter_records(stack: LocalStack) -> list[UsageRecord]:
    """Every final record in the stack's meter (SQLite file or Redis stream)."""
    meter = str(stack.config["metering"]["meter"])
    if meter.startswith("redis://"):
        return redis_stream_records(meter)
    return sqlite_meter_records(meter_file(stack))


def _period() -> str:
    now = datetime.now(UTC)
    return f"{now.year:04d}-{now.month:02d}"


BILL_ENV = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}


def bill_command(
    stack: LocalStack,
    out: Path,
    *,
    prefix: tuple[str, ...] = (),
    period: str | None = None,
    preview: bool = True,
) -> list[str]:
    """The ``tollhouse bill`` command line :func:`run_bill` runs (run it with ``BILL_ENV``)."""
    cmd = [
        *prefix,
        str(find_binary("tollhouse")),
        "bill",
        "--config",
        str(stack.tollhouse.config_path),
        "--period",
        period or _period(),
        "--out",
        str(out),
    ]
    return [*cmd, "--preview"] if preview else cmd


def run_bill(
    stack: LocalStack,
    out: Path,
    *,
    prefix: tuple[str, ...] = (),
    period: str | None = None,
    preview: bool = True,
) -> list[dict[str, Any]]:
    """``tollhouse bill`` on the stack's config (the real meter and ledger); the invoices."""
    done = subprocess.run(
        bill_command(stack, out, prefix=prefix, period=period, preview=preview),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=BILL_ENV,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _metered_ids(stack: LocalStack) -> set[str]:
    return {r.usage_id for r in meter_records(stack)}


def settle(stack: LocalStack, load: Load, timeout_s: float = 30.0) -> None:
    """Wait until every id the upstream served for this load is in the meter (or timeout).

    Served ids are a superset of the client 200s; ids reserved but never served (the
    ``answer_lost`` window) land after the grace as UNCONFIRMED, so wait a little past it too.
    """
    served = set(usage_ids_seen(stack.upstream, load.case))
    wait_until(
        lambda: _metered_ids(stack),
        lambda got: served <= got,
        timeout_s=timeout_s,
        what=f"{len(served)} served usage ids in the meter",
    )
    quiesce(stack, timeout_s)


def quiesce(stack: LocalStack, timeout_s: float = 30.0) -> None:
    """Wait until the meter stops growing (a little past the grace), whatever it holds."""
    grace = float(stack.config["metering"]["unconfirmed_after_s"])
    stable: list[int] = []

    def settled() -> bool:  # the meter stops growing once the grace has passed
        stable.append(len(_metered_ids(stack)))
        return len(stable) > 3 and stable[-1] == stable[-4]

    time.sleep(0)  # let the sweep run
    wait_until(
        settled,
        bool,
        timeout_s=timeout_s,
        interval_s=max(0.5, grace),
        what="the meter stops growing",
    )


def verdict(stack: LocalStack, load: Load, out: Path) -> Verdict:
    """Settle, bill the current month, and check the invariant for this load's traffic."""
    settle(stack, load)
    records = meter_records(stack)  # before the bill: it trims a Redis meter stream it consumed
    invoices = run_bill(stack, out)
    served = usage_ids_seen(stack.upstream, load.case)
    assert len(upstream_saw(stack.upstream, load.case)) == len(served)
    return check(load.snapshot(), served, records, invoice_requests(invoices))


def judge(stack: LocalStack, load: Load, out: Path) -> Verdict:
    """Bill and check now, without waiting for every served id: for a test measuring a loss."""
    quiesce(stack)
    records = meter_records(stack)
    invoices = run_bill(stack, out)
    served = usage_ids_seen(stack.upstream, load.case)
    return check(load.snapshot(), served, records, invoice_requests(invoices))
