"""``python -m bench.run``: the side-by-side benchmark of issue 7 (``make bench ARGS=...``).

Runs the configurations one after another, each on a fresh stack (new Envoy, new ports): a peak
run with ``wrk -t1 -c32``, then fixed-rate latency runs at 50% of C's peak for B and C. Prints a
table and writes JSON (default ``bench/results/<UTC date>.json``) with ratios against B and C0
from the same run and the bars of issue 7.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from bench.measure import measure_peak, measure_rate
from bench.procs import BIN, BenchError
from bench.profile import profile_peak
from bench.report import bars, format_tables, ratios
from bench.scenarios import DEFAULT, SCENARIOS, Credentials, make_credentials, running

__all__ = ["main", "parse_args", "run"]

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds per load run")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured wrk run first")
    p.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated configurations (default {','.join(DEFAULT)};"
        f" also: {','.join(k for k in SCENARIOS if k not in DEFAULT)})",
    )
    (
        p.add_argument(
            "--latency",
            default="B,C0,C,C0-http,C-http",
            help="configurations given a fixed-rate run at 50%% of C's peak (the -http"
            " ones and B again at 50%% of C-http's) ('' for none)",
        ),
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="1 s runs, no warm-up: checks the harness, measures nothing",
    )
    p.add_argument("--uvloop", action="store_true", help="run tollhouse and C0 on uvloop")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON report path (default bench/results/<UTC date>.json)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a tollhouse config key (dotted path, YAML value); repeatable",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep configs and logs here")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="after each measured run of C0/C*, an extra wrk run under py-spy;"
        " collapsed stacks in DIR, summary in the report",
    )
    args = p.parse_args(argv)
    args.only = [x for x in args.only.split(",") if x]
    args.latency = [x for x in args.latency.split(",") if x]
    unknown = [x for x in args.only + args.latency if x not in SCENARIOS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {list(SCENARIOS)}")
    if args.smoke:
        args.duration_s, args.warmup_s = 1.0, 0.0
    return args


def _environment() -> dict[str, Any]:
    from google.protobuf.internal import api_implementation  # type: ignore[import-untyped, unused-ignore]

    envoy = (
        subprocess.run(
            [str(BIN / "envoy"), "--version"], capture_output=True, text=True, check=False
        )
        .stdout.strip()
        .split("version:")[-1]
        .strip()
    )
    wrk = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n")[0]
    return {
        "cpus": os.cpu_count(),
        "loadavg_before": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "protobuf_implementation": api_implementation.Type(),
        "envoy": envoy,
        "wrk": wrk.strip(),
    }


def _peak_phase(args: argparse.Namespace, creds: Credentials, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.only:
        sc = SCENARIOS[name]
        print(f"[bench] {name}: {sc.description} ...", file=sys.stderr, flush=True)
        try:
            with running(
                sc,
                creds,
                root,
                uvloop=args.uvloop,
                keep=args.workdir is not None,
                overrides=tuple(args.set),
            ) as st:
                results[name] = {
                    "description": sc.description,
                    **measure_peak(st, creds, args.duration_s, args.warmup_s),
                }
                if args.profile is not None and sc.server is not None:
                    out = args.profile.resolve() / f"profile-{name}.collapsed"
                    results[name]["profile"] = profile_peak(st, creds, args.duration_s, out)
        except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"[bench] {name} failed: {e}", file=sys.stderr, flush=True)
            results[name] = {"description": sc.description, "error": _short(e)}
    return results


# Fixed-rate groups: each at half the peak of its reference, B measured at both rates.
LATENCY_GROUPS = {"C": ("B", "C0", "C"), "C-http": ("B", "C0-http", "C-http")}


def _latency_phase(
    args: argparse.Namespace,
    creds: Credentials,
    root: Path,
    peaks: dict[str, Any],
    ref: str = "C",
) -> dict[str, Any]:
    members = [n for n in LATENCY_GROUPS[ref] if n in args.latency]
    ref_rps = peaks.get(ref, {}).get("load", {}).get("rps")
    if not ref_rps or not members:
        return {"skipped": f"needs a successful {ref} peak run" if members else "not requested"}
    rate = ref_rps / 2
    out: dict[str, Any] = {"rate_rps": round(rate, 1)}
    for name in members:
        sc = SCENARIOS[name]
        print(f"[bench] {name}: fixed rate {rate:.0f} req/s ...", file=sys.stderr, flush=True)
        try:
            with running(
                sc,
                creds,
                root / f"rate-{ref}",
                uvloop=args.uvloop,
                keep=args.workdir is not None,
                overrides=tuple(args.set),
            ) as st:
                out[name] = measure_rate(st, creds, rate, args.duration_s, args.warmup_s)
        except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"[bench] {name} rate run failed: {e}", file=sys.stderr, flush=True)
            out[name] = {"error": _short(e)}
    return out


def _short(e: BaseException) -> str:
    text = "".join(traceback.format_exception_only(e)).strip()
    return text[-2000:]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every requested configuration; return the report."""
    creds = make_credentials()
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="th-bench-") as tmp:
        root = args.workdir.resolve() if args.workdir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        env = _environment()
        peaks = _peak_phase(args, creds, root)
        latency = _latency_phase(args, creds, root, peaks, "C")
        latency_http = _latency_phase(args, creds, root, peaks, "C-http")
    report: dict[str, Any] = {
        "started_utc": started.isoformat(timespec="seconds"),
        "command": "python -m bench.run " + shlex.join(sys.argv[1:]),
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "smoke": args.smoke,
        "uvloop": args.uvloop,
        "tollhouse_overrides": args.set,
        "load": {
            "peak": "wrk -t1 -c32 (closed loop)",
            "latency": "h2load --h1 -c16 --rps (fixed rate, 50% of C's peak)",
        },
        "environment": env,
        "configs": peaks,
        "latency_at_half_c_peak": latency,
        "latency_at_half_c_http_peak": latency_http,
    }
    report["ratios"] = ratios(peaks)
    report["bars"] = bars(peaks, latency, latency_http)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point: run, print the tables, write the JSON report."""
    args = parse_args(argv)
    report = run(args)
    out = args.out or RESULTS / f"{dt.datetime.now(dt.UTC):%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(format_tables(report))
    print(f"\nreport: {out}")
    failed = [k for k, v in report["configs"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
