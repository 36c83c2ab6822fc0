"""Smoke runs of the benchmark harness (issue 7) and the in-process Check micro-benchmark.

They assert only that a report with the expected keys and non-zero requests is produced: never a
speed. The ratios, the bars and the load arithmetic are tested on fixed inputs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import percentile
from bench.profile import summarize
from bench.render import apply_override
from bench.report import bars, format_tables, ratios

REPO = Path(__file__).resolve().parents[2]


def _peak(rps: float, **extra: object) -> dict[str, object]:
    return {"load": {"rps": rps, "requests": int(rps)}, **extra}


def test_ratios_are_against_b_and_c0_of_the_same_run() -> None:
    """Every configuration gets rps(X)/rps(B) and rps(X)/rps(C0); a failed base gives None."""
    configs = {
        "B": _peak(20000.0),
        "C0": _peak(5000.0),
        "C": _peak(4500.0),
        "C-miss": {"error": "boom"},
    }
    r = ratios(configs)
    assert r["C"] == {"vs_B": 0.225, "vs_C0": 0.9}
    assert r["B"]["vs_B"] == 1.0
    assert r["C-miss"] == {"vs_B": None, "vs_C0": None}


def test_bars_report_value_and_whether_met() -> None:
    """Each bar of issue 7 carries its value, the bar, and met True/False/None."""
    configs = {
        "B": _peak(20000.0),
        "C0": _peak(5000.0),
        "C": _peak(4000.0, access_log={"logs_written": 10, "logs_dropped": 0}),
        "C-redis": _peak(3000.0, redis={"ops_per_check": 0.002}),
    }
    latency = {"rate_rps": 2000.0, "B": {"load": {"p99_ms": 2.0}}, "C": {"load": {"p99_ms": 5.0}}}
    b = bars(configs, latency)
    assert b["rps_C_over_C0"] == {"value": 0.8, "bar": ">= 0.75", "met": True}
    assert b["rps_C_over_B"]["met"] is False
    assert b["redis_ops_per_check_C_redis"]["met"] is True
    assert b["p99_at_half_load_C_over_B"] == {"value": 2.5, "bar": "<= 2", "met": False}
    assert b["logs_dropped_at_C_peak"]["met"] is True
    assert bars({}, {})["rps_C_over_C0"]["met"] is None


def test_http_and_metering_bars_come_from_the_same_run() -> None:
    """C-http/B, C-http CPU over C0-http's, its p99 over B's, and metering CPU over C0's."""
    configs = {
        "B": _peak(20000.0),
        "C0": _peak(5000.0, server_cpu_us_per_req=200.0),
        "C": _peak(2000.0, server_cpu_us_per_req=400.0),
        "C-nometer": _peak(3000.0, server_cpu_us_per_req=250.0),
        "C0-http": _peak(14000.0, server_cpu_us_per_req=14.0),
        "C-http": _peak(9000.0, server_cpu_us_per_req=70.0),
    }
    latency_http = {
        "rate_rps": 4500.0,
        "B": {"load": {"p99_ms": 2.0}},
        "C-http": {"load": {"p99_ms": 3.0}},
    }
    b = bars(configs, {}, latency_http)
    assert b["rps_C_http_over_B"] == {"value": 0.45, "bar": ">= 0.4", "met": True}
    assert b["cpu_C_http_over_C0_http"] == {"value": 5.0, "bar": "<= 4", "met": False}
    assert b["p99_at_half_load_C_http_over_B"] == {"value": 1.5, "bar": "<= 2", "met": True}
    assert b["metering_cpu_over_C0_cpu"] == {"value": 0.75, "bar": "<= 0.15", "met": False}


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; an empty list gives 0."""
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0


def test_apply_override_sets_nested_yaml_values() -> None:
    """`--set a.b=<yaml>` creates mappings on the way and parses the value as YAML."""
    cfg: dict[str, object] = {"metering": {"spool": "/x"}}
    apply_override(cfg, "metering.group_commit_ms=0")
    apply_override(cfg, "auth.token_cache_size=10")
    assert cfg == {
        "metering": {"spool": "/x", "group_commit_ms": 0},
        "auth": {"token_cache_size": 10},
    }
    with pytest.raises(ValueError, match=r"dotted\.key=value"):
        apply_override(cfg, "no-equals-sign")


def test_profile_summary_counts_self_inclusive_and_us_per_request() -> None:
    """Collapsed stacks become self/inclusive shares and µs per request at the sampling rate."""
    collapsed = (
        "main (app.py:1);Check (tollhouse/envoy/authz.py:40) 30\n"
        "main (app.py:1);_allow (tollhouse/envoy/codec.py:56) 10\n"
    )
    s = summarize(collapsed, requests=100, rate_hz=100)
    assert s["samples"] == 40
    assert s["self"][0] == ["Check (tollhouse/envoy/authz.py:40)", 75.0, 3000.0]
    assert ["main (app.py:1)", 100.0, 4000.0] in s["inclusive"]
    assert s["self_by_package"][0][0] == "tollhouse.envoy"
    assert s["gil_us_per_req"] == 4000.0


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.e2e  # starts a real Envoy
def test_bench_run_smoke_produces_a_report(tmp_path: Path) -> None:
    """`bench.run --smoke` on A, C0, C and the -http pair writes requests, stats, ratios, bars."""
    assert shutil.which("wrk"), "wrk is missing: `make test` installs it (Debian wrk)"
    assert shutil.which("h2load"), "h2load is missing: `make test` installs nghttp2-client"
    out = tmp_path / "report.json"
    proc = _run(
        [
            "-m",
            "bench.run",
            "--smoke",
            "--only",
            "A,C0,C,C0-http,C-http",
            "--latency",
            "C,C-http",
            "--out",
            str(out),
        ],
        240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"configs", "ratios", "bars", "latency_at_half_c_peak", "environment"}
    for name in ("A", "C0", "C", "C0-http", "C-http"):
        cfg = report["configs"][name]
        assert cfg["load"]["requests"] > 0, name
        assert cfg["sanity"]["with_token"] == 200, name
    for name in ("C", "C-http"):
        assert report["configs"][name]["sanity"]["without_token"] == 401
    for name in ("C0", "C", "C0-http", "C-http"):
        assert report["configs"][name]["ext_authz"]["ok"] > 0, name
        assert report["configs"][name]["server_cpu_us_per_req"] > 0, name
        assert report["configs"][name]["access_log"]["logs_written"] > 0, name
    assert report["ratios"]["C"]["vs_C0"] is not None
    assert report["latency_at_half_c_peak"]["C"]["load"]["requests"] > 0
    assert report["latency_at_half_c_http_peak"]["C-http"]["load"]["requests"] > 0
    assert {"rps_C_over_C0", "rps_C_http_over_B", "cpu_C_http_over_C0_http"} <= set(report["bars"])
    assert "| C0-http " in format_tables(report)


@pytest.mark.e2e  # starts a real Envoy
def test_bench_check_smoke_produces_a_report(tmp_path: Path) -> None:
    """`bench.bench_check` with tiny counts reports µs per Check for each variant asked."""
    out = tmp_path / "check.json"
    variants = ["jwt_cache_hit", "jwt_cache_miss", "api_key", "jwt_hit_all"]
    proc = _run(
        [
            "-m",
            "bench.bench_check",
            "--iterations",
            "40",
            "--repeats",
            "1",
            "--only",
            ",".join(variants),
            "--out",
            str(out),
        ],
        120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["results"]] == variants
    for r in report["results"]:
        assert r["sequential_us"]["best"] > 0
        assert r["concurrent32_us"]["median"] > 0
    assert report["protobuf_implementation"] in {"upb", "cpp", "python"}
