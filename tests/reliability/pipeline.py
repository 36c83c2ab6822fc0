"""The metering and billing pipeline in one process, for the stateful crash test (no tests here).

Real components, wired the way ``serve`` (``metering.process: inline``) and ``tollhouse bill``
wire them, on real files in a temporary folder: the fact log and local join
(:class:`~tollhouse.metering.spool.Spool`), the SQLite meter sink, and the billing job
(:func:`~tollhouse.billing.job.run_billing`: meter -> ledger -> invoices). The clock is
injected (:attr:`Pipeline.now`), so the grace period and period boundaries are steps.

A crash (:meth:`Pipeline.crash`) keeps exactly what a killed process leaves on disk and
nothing it held in memory: the join's pending, unsent and recently final records are dropped,
a meter connection is abandoned without a close (its WAL is not checkpointed), and optionally a
torn, never acknowledged write is left at the end of the active segment. Then everything is
opened again from disk, which replays the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tollhouse.billing.job import JobOptions, run_billing
from tollhouse.billing.periods import period_for_label
from tollhouse.config import Config, parse_config
from tollhouse.metering.factlog_format import segment_path, segments
from tollhouse.metering.join import Applied, void_entry
from tollhouse.metering.policy import Finalizer, LogEntry
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.service import reservation
from tollhouse.metering.sinks import SqliteMeterSink
from tollhouse.metering.spool import Spool

__all__ = ["CUSTOMERS", "GRACE_S", "PERIODS", "BillCrash", "MeterRow", "Pipeline", "period_of"]

T = TypeVar("T")

GRACE_S = 300
CUSTOMERS = ("acme", "beta")
PERIODS = ("2026-11", "2026-12")


class BillCrash(Exception):
    """Raised by the billing job's failure hook: the job dies at that point."""


@dataclass(frozen=True, slots=True)
class MeterRow:
    """One row of the SQLite meter, as the billing job reads it."""

    usage_id: str
    customer: str
    state: str
    billable: bool
    admitted_at_ms: int


def _config(root: Path) -> Config:
    price = {"currency": "USD", "meters": {"requests": {"model": "per_unit", "unit_price": "0.01"}}}
    return parse_config(
        {
            "meters": {"requests": {}},
            "features": {"search": {"rules": [{"methods": ["GET"], "path": "/v1/search*"}]}},
            "plans": {"pro": {"features": ["search"], "price": price}},
            "customers": {c: {"plan": "pro", "since": "2026-11-01"} for c in CUSTOMERS},
            "metering": {
                "spool": str(root / "spool"),
                "meter": f"sqlite:///{root}/meter.db",
                "unconfirmed_after_s": GRACE_S,
                "bill_unconfirmed": True,
                "bill_upstream_5xx": False,
            },
            "billing": {
                "ledger": f"sqlite:///{root}/ledger.db",
                "invoices_dir": str(root / "invoices"),
            },
        }
    )


def _crash_hook(point: str, nth: int) -> Callable[[str], None]:
    seen = 0

    def hook(at: str) -> None:
        nonlocal seen
        if at == point:
            seen += 1
            if seen >= nth:
                raise BillCrash(f"billing killed at {at} #{seen}")

    return hook


class Pipeline:
    """Spool -> join -> SQLite meter -> ledger -> invoice, on real files, clock injected."""

    def __init__(self, now_s: float) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="th-stateful-"))
        self.cfg = _config(self.root)
        self.fin = Finalizer(self.cfg)
        self.now = now_s
        self.loop = asyncio.new_event_loop()
        self._abandoned: list[SqliteMeterSink] = []
        self._bills = 0
        self.spool: Any
        self.spool, self.sink = self._open()

    # ---- plumbing ---------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one step on the pipeline's event loop."""
        return self.loop.run_until_complete(coro)

    def _ignore(self, _: Applied) -> None:
        return None

    def _open(self) -> tuple[Any, SqliteMeterSink]:
        spool = Spool(
            self.root / "spool",
            finalizer=lambda: self.fin,
            on_applied=self._ignore,
            clock=lambda: self.now,
            instance="stateful",
        )
        self.run(spool.open())
        return spool, SqliteMeterSink(self.root / "meter.db")

    @property
    def now_ms(self) -> int:
        """The injected clock in milliseconds."""
        return int(self.now * 1000)

    # ---- the metering steps -----------------------------------------------------------------

    def reserve(self, customer: str, request_id: str) -> UsageRecord:
        """The Check admits one request: its reserved fact is durable when this returns."""
        rec = self._reservation(customer, request_id)
        self.run(self.spool.reserve(rec))
        return rec

    def _reservation(self, customer: str, request_id: str) -> UsageRecord:
        return reservation(
            self.fin.request_units("search"),
            self.now,
            "stateful",
            customer=customer,
            plan="pro",
            feature="search",
            method="GET",
            path="/v1/search",
            request_id=request_id,
            decision_id=f"d-{request_id}",
            degraded=False,
        )

    def access_log(self, entry: LogEntry) -> None:
        """One access-log entry arrives; its served fact is durable when this returns."""
        fut = self.spool.served([entry], self.now_ms)
        if fut is not None:
            self.run(_wait(fut))

    def served(self, usage_id: str, request_id: str, status: int, upstream: bool) -> None:
        """Envoy logs the request: served by the upstream with ``status``, or a local reply."""
        self.access_log(
            LogEntry(
                usage_id=usage_id,
                response_code=status,
                request_id=request_id,
                upstream_served=upstream,
                response_flags="" if upstream else "UAEX",
            )
        )

    def void(self, usage_id: str, request_id: str) -> None:
        """The Check gave up after writing the reservation (deadline): a void fact."""
        self.access_log(void_entry(usage_id, request_id, "check_cancelled"))

    def void_by_request(self, request_id: str) -> None:
        """An entry without tollhouse metadata for this request id (Envoy used no OK)."""
        self.access_log(
            LogEntry(usage_id=None, response_code=503, request_id=request_id, response_flags="UAEX")
        )

    def sweep(self) -> list[UsageRecord]:
        """The grace-period sweep of the forwarder's tick: overdue reservations UNCONFIRMED."""

        async def go() -> list[UsageRecord]:
            await self.spool.barrier()
            cutoff = self.now_ms - GRACE_S * 1000
            records, _ = await self.spool.expire(cutoff, self.now_ms, self.fin)
            return records

        return self.run(go())

    def forward(self, *, crash_before_ack: bool = False, batch: int = 7) -> int:
        """Send one batch of final records to the meter; ack it unless the process dies first."""
        self.run(self.spool.barrier())  # as the forwarder's tick: every durable fact applied
        records = self.spool.join.unsent(batch)
        if not records:
            return 0
        self.run(self.sink.send(records))
        if crash_before_ack:
            self.crash(torn=False)
        else:
            self.spool.join.acknowledged([r.usage_id for r in records])
        return len(records)

    def drain(self) -> None:
        """Forward until the meter has every final record."""
        while self.forward(batch=50):
            pass

    def crash(self, *, torn: bool) -> None:
        """Kill the process between two steps and start it again from what is on disk."""
        self._stop_abruptly()
        self._abandoned.append(self.sink)  # no close: the meter's WAL stays as a kill leaves it
        if torn:
            seqs = segments(self.root / "spool")
            with segment_path(self.root / "spool", seqs[-1]).open("ab") as f:
                f.write(b"\x20\x00\x00\x00" + os.urandom(11))  # a record header cut short
        self.spool, self.sink = self._open()

    def _stop_abruptly(self) -> None:
        self.run(self.spool.log.barrier())  # segment deletions already requested happen first
        # Nothing is queued: every step awaited its write. Closing the log now writes nothing,
        # it only stops the writer thread, so the disk is what a SIGKILL would leave.
        self.run(self.spool.log.close())

    # ---- billing ----------------------------------------------------------------------------

    def bill(self, crash_at: tuple[str, int] | None = None) -> dict[tuple[str, str], Any]:
        """``tollhouse bill``: issue every ended period, then preview both periods.

        Returns the invoice documents by (customer, period). With ``crash_at`` the job dies at
        that failure point (``before_commit``/``after_commit`` of the n-th ledger batch) and
        raises :class:`BillCrash` (only if it got that far).
        """
        self._bills += 1
        out = self.root / f"invoices-{self._bills}"
        opts = (
            JobOptions(batch=5)
            if crash_at is None
            else JobOptions(batch=5, hook=_crash_hook(*crash_at))
        )
        clock = self._clock_now
        results = [
            run_billing(
                self.cfg, period=None, out_dir=out, preview=False, clock=clock, options=opts
            )
        ]
        docs = _documents(out)
        for label in PERIODS:
            if any(p == label for _, p in docs):
                continue  # issued: its document is final
            results.append(
                run_billing(
                    self.cfg, period=label, out_dir=out, preview=True, clock=clock, options=opts
                )
            )
        problems = [p for r in results for p in r.problems]
        assert not problems, problems
        return _documents(out)

    def _clock_now(self) -> float:
        return self.now

    def issued(self) -> dict[tuple[str, str], Any]:
        """Invoices the ledger holds as issued, by (customer, period)."""
        path = self.root / "ledger.db"
        if not path.exists():
            return {}
        with _ro(path) as conn:
            rows = conn.execute("SELECT customer, period, document FROM invoices").fetchall()
        return {(str(c), str(p)): json.loads(d) for c, p, d in rows}

    # ---- reading back -----------------------------------------------------------------------

    def meter(self) -> list[MeterRow]:
        """Every row of the SQLite meter (read-only, as the billing job opens it)."""
        path = self.root / "meter.db"
        if not path.exists():
            return []
        with _ro(path) as conn:
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'usage'")
            if tables.fetchone()[0] == 0:
                return []
            rows = conn.execute(
                "SELECT usage_id, customer, state, billable, admitted_at_ms FROM usage ORDER BY id"
            ).fetchall()
        return [MeterRow(str(u), str(c), str(s), bool(b), int(a)) for u, c, s, b, a in rows]

    def close(self) -> None:
        """Stop everything and delete the folder."""
        try:
            if not self.spool.closed:
                self.run(self.spool.close())
            for sink in [*self._abandoned, self.sink]:
                self.run(sink.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.root, ignore_errors=True)


async def _wait(fut: asyncio.Future[None]) -> None:
    await fut


def _ro(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10))


def _documents(folder: Path) -> dict[tuple[str, str], Any]:
    docs: dict[tuple[str, str], Any] = {}
    for f in sorted(folder.glob("TH-*.json")) if folder.exists() else []:
        doc = json.loads(f.read_text())
        docs[(str(doc["customer"]), str(doc["period"]))] = doc
    return docs


def period_of(admitted_ms: int) -> str | None:
    """The label of the calendar period (UTC) among :data:`PERIODS` holding ``admitted_ms``."""
    for label in PERIODS:
        p = period_for_label(label, None)
        if p.start_ms <= admitted_ms < p.end_ms:
            return label
    return None
