"""Benchmark: load 1M customers + 2M API keys from a SQLite store into a Directory.

    .venv/bin/python bench/bench_directory.py [--customers 1000000] [--keys-per-customer 2]
        [--db /tmp/th-bench-store.db]

Builds the store once (bulk SQL into the migrated schema; reused when the file exists), then, in a
fresh process, measures: full-load time, RSS before and after, and the Check-path lookups
(``customer()`` and ``api_key_customer()``) per call.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = 1_764_000_000.0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def key_hash(i: int) -> str:
    return hashlib.sha256(f"th_bench_{i}".encode()).hexdigest()


def build(db: Path, customers: int, per: int) -> None:
    from tollhouse.store import migrate

    asyncio.run(migrate(f"sqlite://{db}"))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    plans = ["free", "starter", "pro", "business", "enterprise"]
    started = time.perf_counter()
    with conn:
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, '', '{}', ?)",
            ((f"cus_{i:08d}", f"Customer {i}", T0) for i in range(customers)),
        )
        conn.executemany(
            "INSERT INTO subscriptions VALUES (?, ?, ?, ?)",
            (
                (
                    f"cus_{i:08d}",
                    f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}",
                    "suspended" if i % 50 == 0 else "active",
                    T0,
                )
                for i in range(customers)
            ),
        )
        conn.executemany(
            "INSERT INTO plan_changes (customer, plan, effective_from, created_at)"
            " VALUES (?, ?, ?, ?)",
            ((f"cus_{i:08d}", plans[i % 5], T0, T0) for i in range(customers)),
        )
        conn.executemany(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
            (
                (f"key_{i:09d}", f"cus_{i // per:08d}", key_hash(i), "th_bench_", T0)
                for i in range(customers * per)
            ),
        )
        conn.execute(
            "INSERT INTO changes (entity, entity_id, at) VALUES ('bulk', 'bench', ?)", (T0,)
        )
    conn.close()
    print(
        f"built {customers} customers, {customers * per} keys in "
        f"{time.perf_counter() - started:.1f}s ({db.stat().st_size / 2**20:.0f} MiB)",
        file=sys.stderr,
    )


async def load(db: Path, customers: int, per: int) -> dict[str, object]:
    from tollhouse.store import Directory

    before = rss_mib()
    d = Directory(f"sqlite://{db}", clock=lambda: T0 + 1)
    started = time.perf_counter()
    await d.start()
    load_s = time.perf_counter() - started
    after = rss_mib()
    rng = random.Random(7)
    ids = [f"cus_{rng.randrange(customers):08d}" for _ in range(200_000)]
    hashes = [key_hash(rng.randrange(customers * per)) for _ in range(200_000)]
    t = time.perf_counter()
    found = sum(1 for c in ids if d.customer(c) is not None)
    customer_ns = (time.perf_counter() - t) / len(ids) * 1e9
    t = time.perf_counter()
    keys = sum(1 for h in hashes if d.api_key_customer(h) is not None)
    key_ns = (time.perf_counter() - t) / len(hashes) * 1e9
    detail = d.status_detail()
    await d.stop()
    if found != len(ids) or keys != len(hashes):
        raise RuntimeError(f"lookups missed: {found}/{len(ids)} customers, {keys} keys")
    return {
        "customers": detail["customers"],
        "api_keys": detail["api_keys"],
        "load_s": round(load_s, 2),
        "rss_before_mib": round(before),
        "rss_after_mib": round(after),
        "rss_delta_mib": round(after - before),
        "customer_lookup_ns": round(customer_ns),
        "api_key_lookup_ns": round(key_ns),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--keys-per-customer", type=int, default=2)
    ap.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "th-bench-store.db")
    ap.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.load_only:
        print(json.dumps(asyncio.run(load(a.db, a.customers, a.keys_per_customer))))
        return 0
    if not a.db.exists():
        build(a.db, a.customers, a.keys_per_customer)
    return subprocess.call(
        [
            sys.executable,
            __file__,
            "--load-only",
            "--db",
            str(a.db),
            "--customers",
            str(a.customers),
            "--keys-per-customer",
            str(a.keys_per_customer),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
