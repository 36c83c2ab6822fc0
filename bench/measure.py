"""One measured load run against a running :class:`~bench.scenarios.Stack`.

Around the load: CPU seconds of the auth server and of Envoy (``/proc/<pid>/stat``), Envoy's stats
(ext_authz, jwt_authn, gRPC access log, downstream status classes) and Redis ``INFO commandstats``;
the report holds the differences.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.load import LoadResult, run_rate, run_wrk
from bench.procs import (
    BenchError,
    cpu_seconds,
    envoy_stats,
    http_get,
    redis_command_calls,
    tree_cpu_seconds,
)
from bench.render import STAT_PREFIX
from bench.scenarios import Credentials, Stack

__all__ = ["Snapshot", "measure_peak", "measure_rate"]

_STAT_PREFIXES = (
    f"http.{STAT_PREFIX}.ext_authz.",
    f"http.{STAT_PREFIX}.jwt_authn.",
    f"http.{STAT_PREFIX}.downstream_rq_",
    "access_logs.",
    "cluster.authz.upstream_rq_total",
    "cluster.authz.upstream_cx_total",
    "cluster.authz_http.upstream_rq_total",
    "cluster.authz_http.upstream_cx_total",
)
# The meter's stream writes and connection set-up are not counter operations of the Check path.
_NOT_COUNTER_OPS = frozenset({"xadd", "hello", "client|setinfo", "script|load", "ping"})
_ALS_FLUSH_WAIT_S = 1.0  # the access logger flushes every 0.1 s; allow the sidecar to drain


@dataclass(frozen=True)
class Snapshot:
    """Counters at one instant."""

    server_cpu_s: float  # the server and every process it started (the metering worker)
    worker_cpu_s: float  # the processes it started alone
    envoy_cpu_s: float
    stats: dict[str, int]
    redis: dict[str, int]
    meter_redis: dict[str, int]
    checks: dict[str, int]


def tollhouse_checks(admin_port: int) -> dict[str, int]:
    """``tollhouse_checks_total`` from the sidecar's /metrics, as ``{"result/code": n}``."""
    status, body = http_get(f"http://127.0.0.1:{admin_port}/metrics", 5.0)
    if status != 200:
        raise BenchError(f"tollhouse /metrics answered {status}")
    out: dict[str, int] = {}
    for line in body.splitlines():
        if line.startswith("tollhouse_checks_total{"):
            labels, _, value = line.rpartition(" ")
            pairs = dict(p.split("=", 1) for p in labels[labels.index("{") + 1 : -1].split(","))
            key = f"{pairs.get('result', '').strip(chr(34))}/{pairs.get('code', '').strip(chr(34))}"
            out[key] = int(float(value))
    return out


def snapshot(stack: Stack) -> Snapshot:
    """Read every counter the report needs."""
    stats = {
        k: v
        for k, v in envoy_stats(stack.envoy_ports.admin).items()
        if k.startswith(_STAT_PREFIXES)
    }
    assert stack.envoy is not None
    own, children = tree_cpu_seconds(stack.server.pid) if stack.server is not None else (0.0, 0.0)
    return Snapshot(
        server_cpu_s=own + children,
        worker_cpu_s=children,
        envoy_cpu_s=cpu_seconds(stack.envoy.pid),
        stats=stats,
        redis=redis_command_calls(stack.redis.port) if stack.redis is not None else {},
        meter_redis=redis_command_calls(stack.meter_redis.port)
        if stack.meter_redis is not None
        else {},
        checks=tollhouse_checks(stack.tollhouse_admin)
        if stack.scenario.server == "tollhouse"
        else {},
    )


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def _pick(stats: dict[str, int], suffix: str) -> int:
    """Sum of the stats whose name ends with ``suffix`` (stat names carry logger prefixes)."""
    return sum(v for k, v in stats.items() if k.endswith(suffix))


def _redis_report(ops: dict[str, int], checks: int) -> dict[str, Any]:
    """Counter/lease commands per Check (the bar), and the meter's XADDs (one per record)."""
    xadd = ops.get("xadd", 0)
    counters = sum(v for k, v in ops.items() if k not in _NOT_COUNTER_OPS)

    def per(n: int) -> float | None:
        return round(n / checks, 5) if checks else None

    return {
        "checks": checks,
        "counter_ops": counters,
        "meter_xadd": xadd,
        "ops_per_check": per(counters),
        "meter_xadd_per_check": per(xadd),
        "all_ops_per_check": per(sum(ops.values())),
        "by_command": ops,
    }


def _report(stack: Stack, load: LoadResult, before: Snapshot, after: Snapshot) -> dict[str, Any]:
    stats = _delta(after.stats, before.stats)
    per_req = 1e6 / load.requests if load.requests else 0.0
    ext = f"http.{STAT_PREFIX}.ext_authz."
    checks = sum(stats.get(ext + k, 0) for k in ("ok", "denied", "error"))
    report: dict[str, Any] = {
        "load": load.to_dict(),
        "server_cpu_us_per_req": round((after.server_cpu_s - before.server_cpu_s) * per_req, 1)
        if stack.server is not None
        else None,
        "worker_cpu_us_per_req": round((after.worker_cpu_s - before.worker_cpu_s) * per_req, 1)
        if stack.server is not None
        else None,
        "envoy_cpu_us_per_req": round((after.envoy_cpu_s - before.envoy_cpu_s) * per_req, 1),
        "ext_authz": {k: stats.get(ext + k, 0) for k in ("ok", "denied", "error")},
        "access_log": {
            "logs_written": _pick(stats, ".logs_written"),
            "logs_dropped": _pick(stats, ".logs_dropped"),
        }
        if stack.scenario.access_log
        else None,
        "envoy_stats": stats,
    }
    if stack.scenario.server == "tollhouse":
        report["tollhouse_checks"] = _delta(after.checks, before.checks)
    if stack.redis is not None:
        report["redis"] = _redis_report(_delta(after.redis, before.redis), checks)
    if stack.meter_redis is not None:
        ops = _delta(after.meter_redis, before.meter_redis)
        report["redis"]["meter_ops_per_check"] = (
            round(sum(ops.values()) / checks, 3) if checks else None
        )
        report["redis"]["meter_by_command"] = ops
    return report


def sanity(stack: Stack, creds: Credentials) -> dict[str, int]:
    """One request with the token must pass; without it, B and tollhouse must refuse (401)."""
    with_token = http_get(stack.url, headers=creds.headers)[0]
    without = http_get(stack.url)[0]
    sc = stack.scenario
    expect_without = 401 if sc.auth == "jwt_authn" or sc.server == "tollhouse" else 200
    if with_token != 200 or without != expect_without:
        raise BenchError(
            f"{sc.name}: with token {with_token} (want 200), without"
            f" {without} (want {expect_without})"
        )
    return {"with_token": with_token, "without_token": without}


def measure_peak(
    stack: Stack, creds: Credentials, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    """Warm up, then ``wrk -t1 -c32`` for ``duration_s``, with counters around it."""
    checked = sanity(stack, creds)
    if warmup_s > 0:
        run_wrk(stack.url, creds.headers, warmup_s, stack.workdir)
        time.sleep(_ALS_FLUSH_WAIT_S)
    before = snapshot(stack)
    load = run_wrk(stack.url, creds.headers, duration_s, stack.workdir)
    time.sleep(_ALS_FLUSH_WAIT_S)
    after = snapshot(stack)
    return {"sanity": checked, **_report(stack, load, before, after)}


def measure_rate(
    stack: Stack, creds: Credentials, rate: float, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    """Fixed ``rate`` req/s with h2load over HTTP/1.1, for latency at a known load."""
    if warmup_s > 0:
        run_wrk(stack.url, creds.headers, warmup_s, stack.workdir)
        time.sleep(_ALS_FLUSH_WAIT_S)
    before = snapshot(stack)
    load = run_rate(stack.url, creds.headers, rate, duration_s, stack.workdir)
    time.sleep(_ALS_FLUSH_WAIT_S)
    after = snapshot(stack)
    return _report(stack, load, before, after)
