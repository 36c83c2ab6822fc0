"""Helpers for the billing tests (no tests here): meter data through the meter contract, configs."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tollhouse.config import Config, parse_config
from tollhouse.metering.schema import METER_SQLITE_DDL, UsageRecord

NOV_2026 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
DEC_2026 = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
JAN_2027 = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())

PLANS: dict[str, Any] = {
    "pro": {
        "quotas": {"requests": 5000},
        "price": {
            "currency": "USD",
            "base_fee": "49.00",
            "minimum": "49.00",
            "meters": {
                "requests": {
                    "model": "graduated",
                    "included": 1000,
                    "tiers": [
                        {"up_to": 10000, "unit_price": "0.01"},
                        {"unit_price": "0.005", "flat_fee": "1.00"},
                    ],
                },
                "tokens": {"model": "package", "package_size": 1000, "package_price": "0.50"},
            },
        },
    },
    "starter": {
        "price": {
            "currency": "USD",
            "minimum": "5.00",
            "meters": {"requests": {"model": "per_unit", "included": 100, "unit_price": "0.002"}},
        }
    },
    "bulk": {
        "price": {
            "currency": "EUR",
            "base_fee": "10.00",
            "meters": {
                "requests": {
                    "model": "volume",
                    "tiers": [
                        {"up_to": 500, "unit_price": "0.02"},
                        {"up_to": 5000, "unit_price": "0.015"},
                        {"unit_price": "0.01", "flat_fee": "2.50"},
                    ],
                }
            },
        }
    },
}


def make_config(
    tmp: Path,
    *,
    meter: str | None = None,
    ledger: str | None = None,
    customers: dict[str, Any] | None = None,
) -> Config:
    """Build a config: three priced plans, three customers, meter and ledger under ``tmp``.

    The default customers are subscribed since 2026-01-01 (``since:``), so November 2026 is a
    whole period for each, whatever its first request.
    """
    return parse_config(
        {
            "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
            "plans": PLANS,
            "customers": customers
            if customers is not None
            else {
                "acme": {"plan": "pro", "since": "2026-01-01"},
                "beta": {"plan": "starter", "since": "2026-01-01"},
                "gamma": {"plan": "bulk", "period_anchor": "2026-01-15", "since": "2026-01-01"},
            },
            "metering": {"meter": meter or f"sqlite:///{tmp}/meter.db"},
            "billing": {
                "ledger": ledger or f"sqlite:///{tmp}/ledger.db",
                "invoices_dir": str(tmp / "invoices"),
            },
        }
    )


def record(
    usage_id: str, customer: str, at_s: float, units: dict[str, int], billable: bool = True
) -> UsageRecord:
    """Build a final UsageRecord as the metering sinks write it."""
    return UsageRecord(
        usage_id=usage_id,
        customer=customer,
        plan="pro",
        feature="search",
        units=units,
        method="GET",
        path="/v1/search",
        admitted_at_ms=int(at_s * 1000),
        state=UsageRecord.CONFIRMED if billable else UsageRecord.VOIDED,
        billable=billable,
        finalized_at_ms=int(at_s * 1000) + 5,
        response_code=200 if billable else 503,
    )


def open_meter(path: Path) -> sqlite3.Connection:
    """Open (create) a SQLite meter with the contract's DDL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(METER_SQLITE_DDL)
    return conn


def write_meter(conn: sqlite3.Connection, records: list[UsageRecord]) -> None:
    """Insert records as the SQLite sink does: usage + usage_units in one transaction."""
    conn.execute("BEGIN")
    for r in records:
        conn.execute(
            "INSERT OR IGNORE INTO usage (usage_id, customer, plan, feature, state, billable,"
            " admitted_at_ms, finalized_at_ms, record) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                r.usage_id,
                r.customer,
                r.plan,
                r.feature,
                UsageRecord.State.Name(r.state),
                int(r.billable),
                r.admitted_at_ms,
                r.finalized_at_ms,
                r.SerializeToString(),
            ),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO usage_units (usage_id, meter, units) VALUES (?,?,?)",
            [(r.usage_id, m, u) for m, u in sorted(r.units.items())],
        )
    conn.execute("COMMIT")


def fixed_usage() -> list[UsageRecord]:
    """Return the golden usage set: deterministic, spread over November 2026, three customers."""
    out = []
    for i in range(2400):
        day = (i * 7 + i // 3) % 30
        at = NOV_2026 + day * 86400 + (i * 37) % 86400
        cust = ("acme", "beta", "gamma")[i % 3]
        units = {"requests": 1 + (i % 5 == 0) * 4}
        if cust == "acme":
            units["tokens"] = 100 + (i * 13) % 900
        out.append(record(f"u-{i:05d}", cust, at, units, billable=i % 41 != 0))
    return out
