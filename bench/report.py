"""Ratios, the bars (issues 7, 11 and 12), and the printed tables of a ``bench.run`` report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["bars", "format_tables", "ratios"]


def _rps(configs: dict[str, Any], name: str) -> float | None:
    value = configs.get(name, {}).get("load", {}).get("rps")
    return float(value) if value else None


def ratios(configs: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``rps(X) / rps(B)`` and ``rps(X) / rps(C0)`` for every configuration X of the run."""
    out: dict[str, dict[str, float | None]] = {}
    for name in configs:
        mine = _rps(configs, name)
        row: dict[str, float | None] = {}
        for base in ("B", "C0"):
            other = _rps(configs, base)
            row[f"vs_{base}"] = round(mine / other, 3) if mine and other else None
        out[name] = row
    return out


def _bar(value: float | None, op: str, limit: float) -> dict[str, Any]:
    met = None
    if value is not None:
        met = value >= limit if op == ">=" else value <= limit
    return {"value": value, "bar": f"{op} {limit:g}", "met": met}


def _cpu(configs: dict[str, Any], name: str) -> float | None:
    value = configs.get(name, {}).get("server_cpu_us_per_req")
    return float(value) if value else None


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def _p99(latency: dict[str, Any], name: str) -> float | None:
    value = latency.get(name, {}).get("load", {}).get("p99_ms")
    return float(value) if value else None


def _metering_cpu(configs: dict[str, Any], with_meter: str, without: str) -> float | None:
    a, b = _cpu(configs, with_meter), _cpu(configs, without)
    return round(a - b, 1) if a is not None and b is not None else None


def bars(
    configs: dict[str, Any], latency: dict[str, Any], latency_http: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The bars, each with its value, the bar, and met (``None``: not measured)."""
    latency_http = latency_http or {}
    c, c0, b = _rps(configs, "C"), _rps(configs, "C0"), _rps(configs, "B")
    redis = (configs.get("C-redis", {}).get("redis") or {}).get("ops_per_check")
    als = configs.get("C", {}).get("access_log") or {}
    dropped = als.get("logs_dropped")
    metering = _metering_cpu(configs, "C", "C-nometer")
    return {
        "rps_C_over_C0": _bar(_ratio(c, c0), ">=", 0.75),
        "rps_C_over_B": _bar(_ratio(c, b), ">=", 0.30),
        "metering_cpu_over_C0_cpu": _bar(_ratio(metering, _cpu(configs, "C0")), "<=", 0.15),
        "redis_ops_per_check_C_redis": _bar(redis, "<=", 0.01),
        "p99_at_half_load_C_over_B": _bar(
            _ratio(_p99(latency, "C"), _p99(latency, "B"), 2), "<=", 2.0
        ),
        "logs_dropped_at_C_peak": _bar(dropped if als else None, "<=", 0),
        "rps_C_http_over_B": _bar(_ratio(_rps(configs, "C-http"), b), ">=", 0.4),
        "cpu_C_http_over_C0_http": _bar(
            _ratio(_cpu(configs, "C-http"), _cpu(configs, "C0-http"), 2), "<=", 4.0
        ),
        "p99_at_half_load_C_http_over_B": _bar(
            _ratio(_p99(latency_http, "C-http"), _p99(latency_http, "B"), 2), "<=", 2.0
        ),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_PEAK_HEAD = (
    "config",
    "req/s",
    "p50 ms",
    "p99 ms",
    "srv CPU us/req",
    "envoy CPU us/req",
    "non-2xx",
    "authz ok/denied/error",
    "ALS written/dropped",
    "redis ops/check (counters / meter)",
    "x B",
    "x C0",
)


def _redis_cell(redis: dict[str, Any] | None) -> str:
    if not redis:
        return "-"
    meter = redis.get("meter_ops_per_check", redis.get("meter_xadd_per_check"))
    return f"{_fmt(redis['ops_per_check'], 4)} / {_fmt(meter, 2)}"


def _peak_row(name: str, r: dict[str, Any], rat: dict[str, Any]) -> tuple[str, ...]:
    if "error" in r:
        return (name, "error", *("-" for _ in _PEAK_HEAD[2:]))
    load, ext, als = r["load"], r["ext_authz"], r.get("access_log")
    authz = f"{ext['ok']}/{ext['denied']}/{ext['error']}" if any(ext.values()) else "-"
    return (
        name,
        _fmt(load["rps"], 0),
        _fmt(load["p50_ms"], 2),
        _fmt(load["p99_ms"], 2),
        _fmt(r["server_cpu_us_per_req"]),
        _fmt(r["envoy_cpu_us_per_req"]),
        str(load["non_2xx"] + load["socket_errors"]),
        authz,
        f"{als['logs_written']}/{als['logs_dropped']}" if als else "-",
        _redis_cell(r.get("redis")),
        _fmt(rat.get("vs_B"), 2),
        _fmt(rat.get("vs_C0"), 2),
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def format_tables(report: dict[str, Any]) -> str:
    """Markdown tables: peak runs, fixed-rate latency runs, bars."""
    configs, rat = report["configs"], report["ratios"]
    parts = [
        f"peak: {report['load']['peak']}, {report['duration_s']:g} s per configuration",
        _table(_PEAK_HEAD, [_peak_row(n, r, rat.get(n, {})) for n, r in configs.items()]),
    ]
    for key, ref in (("latency_at_half_c_peak", "C"), ("latency_at_half_c_http_peak", "C-http")):
        lat = report.get(key) or {}
        if "rate_rps" in lat:
            parts += [
                f"\nlatency at 50% of {ref}'s peak: {report['load']['latency']}",
                _latency_table(lat),
            ]
    brow = [
        (
            k,
            _fmt(v["value"], 3),
            v["bar"],
            {True: "met", False: "NOT met", None: "not measured"}[v["met"]],
        )
        for k, v in report["bars"].items()
    ]
    parts += ["\nbars (issues 7, 11, 12)", _table(("bar", "value", "needs", "result"), brow)]
    return "\n".join(parts)


_LATENCY_HEAD = (
    "config",
    "target req/s",
    "achieved req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "non-2xx",
    "srv CPU us/req",
)


def _latency_table(lat: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = []
    for name, r in lat.items():
        if name == "rate_rps":
            continue
        if "error" in r:
            rows.append((name, "error", *("-" for _ in _LATENCY_HEAD[2:])))
            continue
        ld = r["load"]
        rows.append(
            (
                name,
                _fmt(ld["target_rps"], 0),
                _fmt(ld["rps"], 0),
                _fmt(ld["p50_ms"], 2),
                _fmt(ld["p90_ms"], 2),
                _fmt(ld["p99_ms"], 2),
                _fmt(ld["max_ms"], 2),
                str(ld["non_2xx"] + ld["socket_errors"]),
                _fmt(r["server_cpu_us_per_req"]),
            )
        )
    return _table(_LATENCY_HEAD, rows)
