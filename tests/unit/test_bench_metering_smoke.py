"""Smoke run of the in-process metering benchmark: it produces a report, nothing is timed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.bench_metering import run


def test_bench_metering_reports_every_phase(tmp_path: Path) -> None:
    """A small run reserves, confirms and forwards every record and reports CPU per phase."""
    result = asyncio.run(run(200, 16, 50, tmp_path))
    assert result["records"] == 200
    assert result["reservations_per_s"] > 0
    assert {"cpu_us_per_reservation", "cpu_us_per_entry", "cpu_us_per_request"} <= set(result)
