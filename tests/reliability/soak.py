"""``make soak``: steady load through Envoy with periodic faults; memory, fds, latency, invariant.

Not part of CI (it runs for minutes). Every interval it records, for ``tollhouse serve`` and its
metering worker, RSS and open fds, and the latency percentiles of the interval's requests; every
other interval it SIGKILLs the metering worker (serve starts another). At the end it bills the
month and checks the invariant (:mod:`tests.reliability.invariant`), and fails when memory or fds
grew by more than the stated slope between the second interval and the last.

    python -m tests.reliability.soak --minutes 30 [--interval-s 60] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.harness import worker_pid
from tests.reliability.rig import Load, fault_stack, verdict

RSS_SLOPE_MIB_PER_MIN = 2.0  # allowed growth of serve + worker RSS after warm-up
FD_GROWTH = 16  # allowed growth of serve + worker open fds after warm-up


def _proc(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_kib": rss_kb, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    xs = sorted(latencies)
    pick = lambda q: round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)  # noqa: E731
    return {"p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99), "n": len(xs)}


def _sample(stack: Any, load: Load, since: int, kill: bool) -> dict[str, Any]:
    serve = stack.tollhouse.proc.pid
    worker = worker_pid(stack)
    row: dict[str, Any] = {
        "t_s": round(time.monotonic(), 1),
        "serve": _proc(serve),
        "worker": _proc(worker),
    }
    outs = load.snapshot()[since:]
    row["requests"] = len(outs)
    row["non_200"] = sum(1 for o in outs if o.status != 200)
    row["latency"] = _percentiles(load.latencies(since))
    if kill:
        os.kill(worker, signal.SIGKILL)
        row["fault"] = "SIGKILL metering worker"
    return row


def _growth(rows: list[dict[str, Any]], minutes: float) -> dict[str, float]:
    first, last = rows[1], rows[-1]
    total = lambda r, k: r["serve"][k] + r["worker"][k]  # noqa: E731
    return {
        "rss_mib_per_min": (total(last, "rss_kib") - total(first, "rss_kib"))
        / 1024
        / max(minutes, 1e-9),
        "fds": total(last, "fds") - total(first, "fds"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print one JSON line per interval and a verdict; exit 1 on a failure."""
    p = argparse.ArgumentParser(prog="python -m tests.reliability.soak")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval-s", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="tollhouse-soak-") as tmp,
        fault_stack(Path(tmp) / "stack") as stack,
    ):
        with Load(stack, 4) as load:
            end = time.monotonic() + args.minutes * 60
            i = 0
            while time.monotonic() < end:
                since = load.count()
                time.sleep(args.interval_s)
                rows.append(_sample(stack, load, since, kill=i % 2 == 1))
                print(json.dumps(rows[-1]), flush=True)
                i += 1
        v = verdict(stack, load, Path(tmp) / "bill")
    growth = _growth(rows, (rows[-1]["t_s"] - rows[1]["t_s"]) / 60) if len(rows) > 2 else {}
    report = {"intervals": rows, "growth": growth, "verdict": v.summary(), "exact": v.exact}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"growth": growth, "verdict": v.summary()}))
    ok = (
        not v.violations
        and v.window("answer_lost") == 0
        and (
            not growth
            or (growth["rss_mib_per_min"] <= RSS_SLOPE_MIB_PER_MIN and growth["fds"] <= FD_GROWTH)
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
