"""Faults of the backends under load through a real Envoy: Redis and PostgreSQL (issue 17).

Same rig and invariant as ``test_faults.py``: steady load for bob (JWT, plan pro) and globex (API
key, plan enterprise), one fault, recovery, ``tollhouse bill --preview`` on the real meter, and
:func:`tests.reliability.rig.verdict`. With Redis as the meter (shared join) and as the quota
counters, pro is ``on_counter_error: fail_closed`` (503 ``counters_unavailable`` once its lease is
spent) and enterprise ``local`` (degraded admissions, still reserved and billed).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.harness import (
    HttpResponse,
    LocalStack,
    http_request,
    wait_until,
)
from tests.reliability.invariant import Outcome
from tests.reliability.rig import (
    BILL_ENV,
    Load,
    bill_command,
    fault_stack,
    on_redis,
    run_bill,
    settle,
    verdict,
)
from tests.servers import PostgresServer, RedisServer
from tollhouse.demo.stack import find_binary

pytestmark = pytest.mark.e2e  # starts a real Envoy

THREADS = 4
BOB_QUOTA = 400  # leases halve as it is spent (200, 100, ...): bob asks Redis again soon


def _since(load: Load, start: int) -> list[Outcome]:
    return load.snapshot()[start:]


def _refused_closed(load: Load, start: int) -> int:
    """The 503 counters_unavailable since outcome ``start`` (fail_closed doing its job)."""
    return sum(
        1
        for o in _since(load, start)
        if o.customer == "bob" and (o.status, o.tag) == (503, "counters_unavailable")
    )


def _outage(load: Load, what: str) -> int:
    """Wait (under the outage) until fail_closed has refused bob; the outcome index it began."""
    start = load.count()
    wait_until(
        lambda: _refused_closed(load, start),
        lambda n: n >= 5,
        timeout_s=30,
        what=f"bob refused counters_unavailable while {what}",
    )
    return start


def _assert_outage_answers(load: Load, start: int, end: int) -> None:
    """During the outage: bob 200 (leased) or 503; globex kept getting degraded 200s."""
    during = load.snapshot()[start:end]
    bob = {(o.status, o.tag if o.status != 200 else "") for o in during if o.customer == "bob"}
    assert bob <= {(200, ""), (503, "counters_unavailable")}, bob
    globex = [o.status for o in during if o.customer == "globex"]
    assert globex.count(200) >= 5, globex
    assert set(globex) <= {200}, globex


def test_redis_paused_fails_closed_or_degrades_and_bills_every_200_once(tmp_path: Path) -> None:
    """Redis (meter and counters) SIGSTOPped mid-load, then resumed: exact after recovery.

    While paused: pro (fail_closed) gets 503 counters_unavailable once its lease is spent,
    enterprise (local) keeps getting degraded 200s; reservations stay in the spool. Resumed:
    every 200 is billed once, nothing else is.
    """
    redis_srv = RedisServer(tmp_path / "redis").start()
    try:
        with fault_stack(tmp_path / "stack", on_redis(redis_srv.url, BOB_QUOTA)) as stack:
            with Load(stack, THREADS) as load:
                load.ok_after(40, "200s before the pause")
                redis_srv.pause()
                try:
                    start = _outage(load, "Redis is paused")
                finally:
                    redis_srv.resume()
                end = load.count()
                load.ok_after(40, "200s after Redis resumed")
            v = verdict(stack, load, tmp_path / "bill")
    finally:
        redis_srv.stop()
    print(v.summary(), f"outage outcomes={end - start}")
    _assert_outage_answers(load, start, end)
    v.assert_exact()


# --- PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def _own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own (the session's must not be restarted)."""
    d = Path(tempfile.mkdtemp(prefix="th-relpg-"))
    os.chmod(d, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    server = PostgresServer(d).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class _Admin:
    """The admin API of the stack's tollhouse; ``changes`` made in a loop by :meth:`churn`."""

    stack: LocalStack
    token: str
    statuses: list[int]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> HttpResponse:
        return http_request(
            self.stack.ports.tollhouse_admin,
            "/admin" + path,
            method=method,
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
            body=None if body is None else json.dumps(body).encode(),
        )

    def new_customer(self) -> tuple[str, str] | None:
        """Create a pro customer and a key for it; None when the admin API refuses."""
        cid = "c" + uuid.uuid4().hex[:10]
        made = self.call("POST", "/customers", {"id": cid, "name": cid, "plan": "pro"})
        self.statuses.append(made.status)
        if made.status != 201:
            return None
        issued = self.call("POST", f"/customers/{cid}/keys")
        self.statuses.append(issued.status)
        return (cid, str(issued.json()["key"])) if issued.status == 201 else None

    @contextmanager
    def churn(self) -> Iterator[None]:
        """Store changes (new customers and keys) in a loop while the block runs."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(0.1):
                self.new_customer()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(15)


def _store_stack(tmp: Path, url: str) -> tuple[Callable[[dict[str, Any]], dict[str, Any]], str]:
    """Migrate ``url``; the config edit putting the store and the admin API on it; the token."""
    migrated = subprocess.run(
        [str(find_binary("tollhouse")), "store", "migrate", "--store-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=BILL_ENV,
    )
    assert migrated.returncode == 0, migrated.stderr[-1000:]
    token = secrets.token_urlsafe(24)
    (tmp / "admin.token").write_text(token + "\n", encoding="utf-8")

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        return {
            **config,
            "store": {"url": url, "poll_interval_ms": 200},
            "admin": {"token_file": str(tmp / "admin.token")},
        }

    return edit, token


def test_postgres_restart_during_store_changes_checks_answer_from_the_snapshot(
    tmp_path: Path,
) -> None:
    """The store's PostgreSQL stopped and started while admin changes run in a loop, under load.

    While it is down every Check still answers from the last snapshot (a store customer's key
    included: 200s, each reserved and billed), the admin API refuses changes with 503; after
    it is back, a customer and key created then pass through Envoy. Exact.
    """
    with _own_postgres() as pg:
        edit, token = _store_stack(tmp_path, pg.fresh_database_url())
        with fault_stack(tmp_path / "stack", edit) as stack:
            admin = _Admin(stack, token, [])
            made = admin.new_customer()
            assert made is not None, admin.statuses
            with Load(stack, THREADS, keys={made[0]: made[1]}) as load, admin.churn():
                load.ok_after(60, "200s before PostgreSQL stops")
                pg.stop()
                start, refused = load.count(), len(admin.statuses)
                wait_until(
                    lambda: admin.statuses[refused:],
                    lambda s: 503 in s,
                    timeout_s=15,
                    what="the admin API refusing a change while PostgreSQL is down",
                )
                load.wait_more(60, "requests while PostgreSQL is down")
                end = load.count()
                pg.start()
                later = wait_until(
                    admin.new_customer,
                    bool,
                    timeout_s=30,
                    interval_s=0.2,
                    what="a change accepted after PostgreSQL is back",
                )
                assert later is not None
                wait_until(
                    lambda: load.send_once(*later).status,
                    lambda s: s == 200,
                    timeout_s=10,
                    what="a key created after the restart through Envoy",
                )
                load.ok_after(40, "200s after PostgreSQL is back")
            v = verdict(stack, load, tmp_path / "bill")
    during = load.snapshot()[start:end]
    print(
        v.summary(),
        f"during the outage: {len(during)} requests",
        f"admin statuses: {sorted(set(admin.statuses))}",
    )
    assert {o.status for o in during} == {200}, {(o.status, o.tag) for o in during}
    assert set(admin.statuses) <= {201, 503}, admin.statuses
    v.assert_exact()
    assert v.visible[made[0]] > 0, v.summary()


@contextmanager
def _table_locked(url: str, table: str) -> Iterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on ``table`` (a billing run touching it waits inside)."""
    conn = psycopg.connect(url, autocommit=False)
    try:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        with suppress(psycopg.Error):
            conn.close()


def _lock_waiters(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
            "'Lock' AND datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_postgres_restart_during_billing_then_bill_again_is_exact(tmp_path: Path) -> None:
    """The ledger's PostgreSQL restarted while ``tollhouse bill`` is inside its transaction.

    The interrupted run fails loudly (exit 3, one line naming the ledger and PostgreSQL's
    error) and commits nothing half-way; the next run bills every 200 exactly once (the
    ledger dedupes by usage id and moves its meter cursor in the same transaction as the rows).
    """
    with _own_postgres() as pg:
        ledger = pg.fresh_database_url()

        def edit(config: dict[str, Any]) -> dict[str, Any]:
            return {**config, "billing": {**config["billing"], "ledger": ledger}}

        with fault_stack(tmp_path / "stack", edit) as stack:
            with Load(stack, THREADS) as load:
                load.ok_after(60, "200s before the first bill")
                run_bill(stack, tmp_path / "bill-1")  # the ledger exists, holds the first ones
                load.ok_after(60, "200s after the first bill")
            settle(stack, load)
            with _table_locked(ledger, "ledger_ids"):
                proc = subprocess.Popen(
                    bill_command(stack, tmp_path / "bill-2"),
                    env=BILL_ENV,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                wait_until(
                    lambda: _lock_waiters(ledger),
                    lambda n: n >= 1,
                    timeout_s=30,
                    what="the billing run waiting inside its transaction",
                )
                pg.stop()
            pg.start()
            _, err = proc.communicate(timeout=60)
            v = verdict(stack, load, tmp_path / "bill-3")
    print(v.summary(), f"interrupted run: exit {proc.returncode}: {err.strip()[-300:]}")
    assert proc.returncode == 3, err  # a data error, not "a customer had a problem" (1)
    assert err.startswith("tollhouse bill: cannot read postgresql://"), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    v.assert_exact()
