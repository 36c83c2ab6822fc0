"""Load generators: ``wrk`` for peak throughput, ``h2load --h1 --rps`` for fixed-rate latency.

wrk's figures come from a Lua ``done`` hook that prints one JSON line (no parsing of its table).
h2load reports no percentiles, so its ``--log-file`` (one line per request: start time, status,
microseconds to the end of the response) is read back and the percentiles computed here.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LoadResult", "percentile", "run_rate", "run_wrk"]

_WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load run. ``non_2xx`` is wrk's ``errors.status`` (status >= 400) or h2load's non-2xx."""

    tool: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    target_rps: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (make bench-deps installs it)")
    return found


def run_wrk(
    url: str,
    headers: dict[str, str],
    duration_s: float,
    workdir: Path,
    connections: int = 32,
    threads: int = 1,
) -> LoadResult:
    """``wrk -t1 -c32 -d<duration>`` with ``headers``; closed loop, for peak requests/s."""
    script = workdir / "report.lua"
    script.write_text(_WRK_LUA)
    args = [
        _binary("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
    ]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True, timeout=duration_s + 60
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report: {out.stdout[-500:]} {out.stderr[-500:]}")
    d = json.loads(line.removeprefix("WRKJSON "))
    secs = d["duration_us"] / 1e6
    return LoadResult(
        tool="wrk",
        requests=d["requests"],
        duration_s=round(secs, 3),
        rps=round(d["requests"] / secs, 1) if secs else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        max_ms=d["max_us"] / 1000,
        non_2xx=d["status_errors"],
        socket_errors=d["connect"] + d["read"] + d["write"] + d["timeout"],
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run_rate(
    url: str,
    headers: dict[str, str],
    rate: float,
    duration_s: float,
    workdir: Path,
    clients: int = 16,
) -> LoadResult:
    """Open-ish loop at ``rate`` req/s in total: ``h2load --h1 -c<clients> --rps rate/clients``."""
    log = workdir / "h2load.tsv"
    log.unlink(missing_ok=True)
    args = [
        _binary("h2load"),
        "--h1",
        f"-c{clients}",
        f"-D{max(1, round(duration_s))}",
        f"--rps={max(0.01, rate / clients):.2f}",
        f"--log-file={log}",
    ]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    if out.returncode != 0 or not log.exists():
        raise RuntimeError(
            f"h2load failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}"
        )
    starts, lat_ms, bad = [], [], 0
    for row in log.read_text().splitlines():
        parts = row.split("\t")
        if len(parts) < 3:
            continue
        starts.append(int(parts[0]))
        status = int(parts[1])
        bad += not 200 <= status < 300
        lat_ms.append(int(parts[2]) / 1000)
    lat_ms.sort()
    secs = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else float(duration_s)
    failed = _h2load_failed(out.stdout)
    return LoadResult(
        tool="h2load --h1 --rps",
        requests=len(lat_ms),
        duration_s=round(secs, 3),
        rps=round(len(lat_ms) / secs, 1) if secs else 0.0,
        p50_ms=percentile(lat_ms, 50),
        p90_ms=percentile(lat_ms, 90),
        p99_ms=percentile(lat_ms, 99),
        max_ms=lat_ms[-1] if lat_ms else 0.0,
        non_2xx=bad,
        socket_errors=failed,
        target_rps=round(rate, 1),
    )


def _h2load_failed(stdout: str) -> int:
    """The ``failed`` count of h2load's ``requests:`` summary line."""
    for line in stdout.splitlines():
        if line.startswith("requests:"):
            for part in line.split(","):
                words = part.split()
                if len(words) == 2 and words[1] == "failed":
                    return int(words[0])
    return 0
