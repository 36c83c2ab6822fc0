"""Ratios, the bars of issue 7, and the printed tables of a ``bench.run`` report."""

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


def bars(configs: dict[str, Any], latency: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 7's bars, each with its value, the bar, and met (``None``: not measured)."""
    c, c0, b = _rps(configs, "C"), _rps(configs, "C0"), _rps(configs, "B")
    redis = (configs.get("C-redis", {}).get("redis") or {}).get("ops_per_check")
    p99_c = latency.get("C", {}).get("load", {}).get("p99_ms")
    p99_b = latency.get("B", {}).get("load", {}).get("p99_ms")
    als = configs.get("C", {}).get("access_log") or {}
    dropped = als.get("logs_dropped")
    return {
        "rps_C_over_C0": _bar(round(c / c0, 3) if c and c0 else None, ">=", 0.9),
        "rps_C_over_B": _bar(round(c / b, 3) if c and b else None, ">=", 0.30),
        "redis_ops_per_check_C_redis": _bar(redis, "<=", 0.01),
        "p99_at_half_load_C_over_B": _bar(
            round(p99_c / p99_b, 2) if p99_c and p99_b else None, "<=", 2.0),
        "logs_dropped_at_C_peak": _bar(dropped if als else None, "<=", 0),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_PEAK_HEAD = ("config", "req/s", "p50 ms", "p99 ms", "srv CPU us/req", "envoy CPU us/req",
              "non-2xx", "authz ok/denied/error", "ALS written/dropped",
              "redis ops/check (counters / meter XADD)",
              "x B", "x C0")


def _redis_cell(redis: dict[str, Any] | None) -> str:
    if not redis:
        return "-"
    return f"{_fmt(redis['ops_per_check'], 4)} / {_fmt(redis['meter_xadd_per_check'], 2)}"


def _peak_row(name: str, r: dict[str, Any], rat: dict[str, Any]) -> tuple[str, ...]:
    if "error" in r:
        return (name, "error", *("-" for _ in _PEAK_HEAD[2:]))
    load, ext, als = r["load"], r["ext_authz"], r.get("access_log")
    authz = f"{ext['ok']}/{ext['denied']}/{ext['error']}" if any(ext.values()) else "-"
    return (
        name, _fmt(load["rps"], 0), _fmt(load["p50_ms"], 2), _fmt(load["p99_ms"], 2),
        _fmt(r["server_cpu_us_per_req"]), _fmt(r["envoy_cpu_us_per_req"]),
        str(load["non_2xx"] + load["socket_errors"]), authz,
        f"{als['logs_written']}/{als['logs_dropped']}" if als else "-",
        _redis_cell(r.get("redis")),
        _fmt(rat.get("vs_B"), 2), _fmt(rat.get("vs_C0"), 2),
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


def format_tables(report: dict[str, Any]) -> str:
    """Markdown tables: peak runs, fixed-rate latency runs, bars."""
    configs, rat = report["configs"], report["ratios"]
    parts = [f"peak: {report['load']['peak']}, {report['duration_s']:g} s per configuration",
             _table(_PEAK_HEAD, [_peak_row(n, r, rat.get(n, {})) for n, r in configs.items()])]
    lat = report["latency_at_half_c_peak"]
    if "rate_rps" in lat:
        head = ("config", "target req/s", "achieved req/s", "p50 ms", "p90 ms", "p99 ms",
                "max ms", "non-2xx", "srv CPU us/req")
        rows: list[tuple[str, ...]] = []
        for name, r in lat.items():
            if name == "rate_rps":
                continue
            if "error" in r:
                rows.append((name, "error", *("-" for _ in head[2:])))
                continue
            ld = r["load"]
            rows.append((name, _fmt(ld["target_rps"], 0), _fmt(ld["rps"], 0),
                         _fmt(ld["p50_ms"], 2), _fmt(ld["p90_ms"], 2), _fmt(ld["p99_ms"], 2),
                         _fmt(ld["max_ms"], 2), str(ld["non_2xx"] + ld["socket_errors"]),
                         _fmt(r["server_cpu_us_per_req"])))
        parts += [f"\nlatency: {report['load']['latency']}", _table(head, rows)]
    brow = [(k, _fmt(v["value"], 3), v["bar"],
             {True: "met", False: "NOT met", None: "not measured"}[v["met"]])
            for k, v in report["bars"].items()]
    parts += ["\nbars (issue 7)", _table(("bar", "value", "needs", "result"), brow)]
    return "\n".join(parts)
