"""Metering's in-process cost: reservations + access-log entries through the real objects.

``python -m bench.bench_metering [--records N] [--concurrency C] [--batch B] [--out F]``

A real :class:`tollhouse.metering.Metering` (local spool in a temp dir, SQLite meter) in one
process: C concurrent Checks' worth of ``build_reservation`` + ``reserve`` at a time until N are
durable, then N access-log entries (already decoded :class:`LogEntry` values, B per
``ingest`` call, as the servicer hands them over) confirm them, then the forwarder delivers
every final record to the meter. No gRPC and no Envoy: this is the metering work the Checks'
process pays per request, apart from decoding (``bench.bench_als`` covers that).

Reported: reservations/s (wall, reserve phase), CPU microseconds of the whole process (every
thread) per reservation, per entry (ingest + finalise + forward), and per request (both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tollhouse.config import parse_config
from tollhouse.metering import LogEntry, Metering

__all__ = ["main", "run"]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _reserve_all(m: Metering, n: int, concurrency: int) -> list[str]:
    ids: list[str] = []

    async def one(i: int) -> None:
        rec = m.build_reservation(
            customer=f"c{i % 50}",
            plan="pro",
            feature="search",
            method="GET",
            path="/v1/search",
            request_id=f"r{i}",
            decision_id=f"d{i}",
        )
        await m.reserve(rec)
        ids.append(rec.usage_id)

    for i in range(0, n, concurrency):
        await asyncio.gather(*(one(j) for j in range(i, min(n, i + concurrency))))
    return ids


async def _until(m: Metering, key: str, value: int, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await m.spool.counts())[key] != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} never reached {value}")
        await asyncio.sleep(0.02)


async def run(records: int, concurrency: int, batch: int, workdir: Path) -> dict[str, Any]:
    """Reserve, confirm and forward ``records`` usage records; return the figures."""
    cfg = parse_config(
        {
            "meters": {"requests": {}, "egress": {"from": "response_bytes"}},
            "features": {
                "search": {"rules": [{"path": "/v1/search"}], "meters": ["requests", "egress"]}
            },
            "metering": {
                "spool": str(workdir / "spool"),
                "meter": f"sqlite:///{workdir}/meter.db",
                "unconfirmed_after_s": 3600,
                "flush_interval_ms": 50,
                "batch_size": 1000,
            },
        }
    )
    m = Metering(cfg, instance="bench")
    await m.start()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    ids = await _reserve_all(m, records, concurrency)
    cpu1, t1 = _cpu_s(), time.perf_counter()
    for i in range(0, records, batch):
        await m.ingest(
            [
                LogEntry(
                    u,
                    response_code=200,
                    request_bytes=180,
                    response_bytes=2168,
                    duration_us=900,
                    upstream_served=True,
                    request_id=f"r{i}",
                )
                for u in ids[i : i + batch]
            ]
        )
        await asyncio.sleep(0)
    await _until(m, "RESERVED", 0)
    await _until(m, "unsent", 0)
    cpu2, t2 = _cpu_s(), time.perf_counter()
    await m.stop(deadline_s=5)
    res_cpu, ent_cpu = cpu1 - cpu0, cpu2 - cpu1
    return {
        "records": records,
        "concurrency": concurrency,
        "batch": batch,
        "reservations_per_s": round(records / (t1 - t0)),
        "cpu_us_per_reservation": round(res_cpu / records * 1e6, 1),
        "cpu_us_per_entry": round(ent_cpu / records * 1e6, 1),
        "cpu_us_per_request": round((res_cpu + ent_cpu) / records * 1e6, 1),
        "confirm_and_forward_wall_s": round(t2 - t1, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-metering-") as d:
        result = asyncio.run(run(args.records, args.concurrency, args.batch, Path(d)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
