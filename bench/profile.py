"""Where the auth server's time goes: py-spy attached during an extra (unmeasured) wrk run.

py-spy samples only threads holding the GIL (``--gil``): Python work, including C extensions
that keep the GIL (upb, cryptography), not waits. It writes collapsed stacks (``-f raw``:
``frame;frame;...;leaf count``); :func:`summarize` turns them into µs of GIL time per request, per
function (self and inclusive) and per package.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load import run_wrk
from bench.procs import BIN, BenchError
from bench.scenarios import Credentials, Stack

__all__ = ["RATE_HZ", "profile_peak", "summarize"]

RATE_HZ = 250
# ``--gil`` by default; ``TH_PROFILE_NATIVE=1`` samples every busy thread with native frames.
PY_SPY_MODE = ("--native",) if os.environ.get("TH_PROFILE_NATIVE") else ("--gil",)


def _package(frame: str) -> str:
    """``Check (tollhouse/envoy/authz.py:40)`` -> ``tollhouse.envoy``; ``<module>`` frames too."""
    start = frame.rfind("(")
    where = frame[start + 1 :].split(":")[0] if start >= 0 else frame
    parts = where.removesuffix(".py").split("/")
    if parts[0].startswith("<") or len(parts) == 1:
        return parts[0] or "?"
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def summarize(collapsed: str, requests: int = 0, rate_hz: int = 0, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares (%) per function and per package; with ``requests`` and the
    sampling rate, also µs of GIL time per request."""
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    pkg_n: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        self_n[frames[-1]] += n
        pkg_n[_package(frames[-1])] += n
        for frame in set(frames):
            incl_n[frame] += n

    us_per_sample = 1e6 / rate_hz / requests if requests and rate_hz else 0.0

    def rows(c: Counter[str]) -> list[list[Any]]:
        if not total:
            return []
        return [
            [k, round(100 * v / total, 1), round(v * us_per_sample, 1)]
            for k, v in c.most_common(top)
        ]

    return {
        "samples": total,
        "columns": ["frame", "pct", "us_per_req"],
        "gil_us_per_req": round(total * us_per_sample, 1),
        "self": rows(self_n),
        "inclusive": rows(incl_n),
        "self_by_package": rows(pkg_n),
    }


def profile_peak(stack: Stack, creds: Credentials, duration_s: float, out: Path) -> dict[str, Any]:
    """Run wrk for ``duration_s`` with py-spy recording the auth server; return the summary."""
    if stack.server is None:
        raise BenchError("nothing to profile: the configuration has no auth server")
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(stack.server.pid),
            "-f",
            "raw",
            "-F",
            *PY_SPY_MODE,
            "-r",
            str(RATE_HZ),
            "-d",
            str(max(1, round(duration_s))),
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    load = run_wrk(stack.url, creds.headers, duration_s, stack.workdir)
    try:
        _, err = spy.communicate(timeout=duration_s + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
        raise BenchError("py-spy did not finish") from None
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
    return {
        "collapsed_stacks": str(out),
        "requests": load.requests,
        "rps": load.rps,
        **summarize(out.read_text(), load.requests, RATE_HZ),
    }
