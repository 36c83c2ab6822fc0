"""Benchmark the billing job on N synthetic usage records in a SQLite meter.

    .venv/bin/python bench/bench_billing.py --records 1000000 [--customers 100] [--keep DIR]

Generates the meter (not timed), then runs the billing job for 2026-11 in a fresh child process:
the consume step (meter -> ledger) and then ``run_billing`` (which finds nothing new to consume and
prices, issues and renders the invoices), each timed. Prints both times, records/s and that
process's peak RSS (resource.getrusage), so memory reflects the job alone. Default: 10 million.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 1000
JAN = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())

CONFIG = """
meters: {requests: {}, tokens: {from_response_header: x-tokens}}
plans:
  pro:
    price:
      currency: USD
      base_fee: "49.00"
      minimum: "49.00"
      meters:
        requests: {model: graduated, included: 100000,
                   tiers: [{up_to: 1000000, unit_price: "0.0004"}, {unit_price: "0.0002"}]}
        tokens: {model: package, package_size: 1000, package_price: "0.02"}
customers: {%s}
metering: {meter: "sqlite:///./meter.db"}
billing: {ledger: "sqlite:///./ledger.db", invoices_dir: invoices}
"""


def generate(d: Path, n: int, customers: int) -> None:
    from tollhouse.metering.schema import METER_SQLITE_DDL, UsageRecord

    names = [f"c{i:04d}" for i in range(customers)]
    (d / "tollhouse.yaml").write_text(CONFIG % ", ".join(f"{c}: {{plan: pro}}" for c in names))
    blob = UsageRecord(usage_id="x", customer="c", units={"requests": 1}).SerializeToString()
    conn = sqlite3.connect(d / "meter.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(METER_SQLITE_DDL)
    span = 30 * 86_400_000
    step = 200_000
    for lo in range(0, n, step):
        ids = range(lo, min(n, lo + step))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO usage (usage_id, customer, plan, feature, state, billable, admitted_at_ms,"
            " finalized_at_ms, record) VALUES (?, ?, 'pro', 'search', 'CONFIRMED', ?, ?, ?, ?)",
            (
                (
                    f"u{i:012d}",
                    names[i % customers],
                    int(i % 97 != 0),
                    NOV + (i * 7919) % span,
                    NOV + (i * 7919) % span + 5,
                    blob,
                )
                for i in ids
            ),
        )
        conn.executemany(
            "INSERT INTO usage_units (usage_id, meter, units) VALUES (?, ?, ?)",
            ((f"u{i:012d}", "requests", 1) for i in ids),
        )
        conn.executemany(
            "INSERT INTO usage_units (usage_id, meter, units) VALUES (?, ?, ?)",
            ((f"u{i:012d}", "tokens", 100 + i % 900) for i in ids if i % 2 == 0),
        )
        conn.execute("COMMIT")
    conn.close()


def run_job(d: Path) -> None:
    from tollhouse.billing.consume import consume_sqlite_meter
    from tollhouse.billing.job import run_billing
    from tollhouse.billing.ledger import open_ledger
    from tollhouse.config import load_config

    cfg = load_config(d / "tollhouse.yaml")
    t0 = time.perf_counter()
    ledger = open_ledger(cfg.billing.ledger)  # the job's own first step, timed on its own
    try:
        consumed = consume_sqlite_meter(ledger, cfg.metering.meter)
    finally:
        ledger.close()
    t1 = time.perf_counter()
    res = run_billing(
        cfg, period="2026-11", out_dir=d / "invoices", preview=False, clock=lambda: JAN
    )
    t2 = time.perf_counter()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert res.ok, res.problems
    assert res.consumed == 0, res.consumed  # everything was consumed above
    elapsed = t2 - t0
    print(
        f"records={consumed} invoices={len(res.invoices)} elapsed_s={elapsed:.1f} "
        f"consume_s={t1 - t0:.1f} invoice_s={t2 - t1:.1f} "
        f"records_per_s={consumed / elapsed:,.0f} peak_rss_mb={rss_mb:.0f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--customers", type=int, default=100)
    ap.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it")
    ap.add_argument("--run-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_only is not None:
        run_job(args.run_only)
        return 0
    d = args.keep or Path(tempfile.mkdtemp(prefix="th-bench-billing-"))
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    generate(d, args.records, args.customers)
    print(
        f"generated {args.records} records for {args.customers} customers in "
        f"{time.perf_counter() - t0:.1f}s at {d}"
    )
    return subprocess.call([sys.executable, __file__, "--run-only", str(d)])


if __name__ == "__main__":
    sys.exit(main())
