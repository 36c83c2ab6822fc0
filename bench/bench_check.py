"""In-process micro-benchmark of the Check path (issue 2's bar): µs per Check, no Envoy, no network.

``python -m bench.bench_check [--iterations N] [--repeats R] [--only a,b] [--uvloop] [--out F]``

Each variant builds the real :class:`tollhouse.app.App` from a config file (the same config shape as
the C configuration of ``bench.run``), starts its components (keys, limiter, metering) but no
servers, and awaits ``app.authz.Check(request, None)`` with one prebuilt ``CheckRequest``:
sequentially (µs per Check = latency of one Check on an idle loop) and with 32 Checks in flight
(µs per Check = throughput cost, as when Envoy multiplexes requests on one HTTP/2 connection).
Best and median of ``--repeats`` timed runs are reported, after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2 as ea

from bench.render import PATH, tollhouse_config
from bench.scenarios import Credentials, make_credentials
from tollhouse.app import App
from tollhouse.config import load_config
from tollhouse.logs import configure_logging

__all__ = ["VARIANTS", "Variant", "check_request", "main", "run_variant"]

CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class Variant:
    """One row: which credential, token cache on/off, quotas on/off, spool on/off."""

    name: str
    credential: str  # jwt | api_key
    token_cache_size: int = 100_000
    quotas: bool = False
    spool: bool = False


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("jwt_cache_hit", "jwt"),
        Variant("jwt_cache_miss", "jwt", token_cache_size=0),
        Variant("api_key", "api_key"),
        Variant("jwt_hit_quotas", "jwt", quotas=True),
        Variant("jwt_hit_spool", "jwt", spool=True),
        Variant("jwt_hit_all", "jwt", quotas=True, spool=True),
        Variant("jwt_miss_all", "jwt", token_cache_size=0, quotas=True, spool=True),
    )
}


def check_request(headers: dict[str, str]) -> ea.CheckRequest:
    """The CheckRequest Envoy sends for ``GET /v1/search?q=bench`` with trimmed headers."""
    req = ea.CheckRequest()
    http = req.attributes.request.http
    http.id = "4f1c1e52-3d7e-4c49-9f0e-5a1b2c3d4e5f"
    http.method = "GET"
    http.path = PATH
    http.host = "127.0.0.1:8080"
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.headers.update(
        {
            ":authority": "127.0.0.1:8080",
            ":method": "GET",
            ":path": PATH,
            "x-request-id": http.id,
            **headers,
        }
    )
    return req


def _write_config(
    v: Variant, creds: Credentials, workdir: Path, overrides: tuple[str, ...]
) -> Path:
    (workdir / "jwks.json").write_text(json.dumps(creds.jwks()))
    text = tollhouse_config(
        grpc_port=1,
        admin_port=2,
        workdir=str(workdir),
        api_key_sha256=hashlib.sha256(creds.api_key.encode()).hexdigest(),
        token_cache_size=v.token_cache_size,
        quotas=v.quotas,
        spool=v.spool,
        overrides=overrides,
    )
    path = workdir / "tollhouse.yaml"
    path.write_text(text)
    return path


async def _start(app: App) -> None:
    """The components App.start starts, without the gRPC and HTTP servers."""
    await app.authn.start()
    if app.limiter is not None:
        await app.limiter.start()
    if app.metering is not None:
        await app.metering.start()


async def _time_sequential(app: App, req: ea.CheckRequest, n: int) -> float:
    check = app.authz.Check
    start = time.perf_counter()
    for _ in range(n):
        await check(req, None)
    return (time.perf_counter() - start) / n * 1e6


async def _time_concurrent(app: App, req: ea.CheckRequest, n: int) -> float:
    check = app.authz.Check
    rounds = max(1, n // CONCURRENCY)
    start = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(check(req, None) for _ in range(CONCURRENCY)))
    return (time.perf_counter() - start) / (rounds * CONCURRENCY) * 1e6


def _summary(samples: list[float]) -> dict[str, float]:
    return {"best": round(min(samples), 1), "median": round(statistics.median(samples), 1)}


async def run_variant(
    v: Variant,
    creds: Credentials,
    iterations: int,
    repeats: int,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Build the App for ``v``, check one request passes, then time it."""
    headers = creds.headers if v.credential == "jwt" else {"x-api-key": creds.api_key}
    req = check_request(headers)
    with tempfile.TemporaryDirectory(prefix="th-bench-check-") as tmp:
        path = _write_config(v, creds, Path(tmp), overrides)
        app = App(path, load_config(path))
        await _start(app)
        try:
            first = await app.authz.Check(req, None)
            if first.status.code != 0:
                raise RuntimeError(f"{v.name}: Check answered {first.status} not OK")
            await _time_sequential(app, req, max(1, iterations // 10))  # warm-up
            seq = [await _time_sequential(app, req, iterations) for _ in range(repeats)]
            conc = [await _time_concurrent(app, req, iterations) for _ in range(repeats)]
        finally:
            await app.stop()
    return {
        "variant": v.name,
        "credential": v.credential,
        "token_cache": v.token_cache_size > 0,
        "quotas": v.quotas,
        "spool": v.spool,
        "sequential_us": _summary(seq),
        f"concurrent{CONCURRENCY}_us": _summary(conc),
    }


async def _run_all(args: argparse.Namespace) -> dict[str, Any]:
    from google.protobuf.internal import api_implementation  # type: ignore[import-untyped, unused-ignore]

    creds = make_credentials()
    results = [
        await run_variant(VARIANTS[n], creds, args.iterations, args.repeats, tuple(args.set))
        for n in args.only
    ]
    return {
        "tollhouse_overrides": args.set,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "concurrency": CONCURRENCY,
        "event_loop": type(asyncio.get_running_loop()).__module__,
        "protobuf_implementation": api_implementation.Type(),
        "python": sys.version.split()[0],
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """A markdown table of best/median µs per Check."""
    conc = f"concurrent{CONCURRENCY}_us"
    lines = [
        f"| variant | µs/Check sequential (best / median) | µs/Check, {CONCURRENCY} in flight"
        " (best / median) |",
        "| --- | --- | --- |",
    ]
    for r in report["results"]:
        s, c = r["sequential_us"], r[conc]
        lines.append(
            f"| {r['variant']} | {s['best']} / {s['median']} | {c['best']} / {c['median']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--iterations", type=int, default=5000, help="Checks per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant and mode")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a tollhouse config key (dotted path, YAML value); repeatable",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    args.only = [x for x in args.only.split(",") if x]
    unknown = [x for x in args.only if x not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the table and the JSON report."""
    args = parse_args(argv)
    configure_logging("warning")
    if args.uvloop:
        import uvloop

        uvloop.install()
    report = asyncio.run(_run_all(args))
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(format_table(report))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
