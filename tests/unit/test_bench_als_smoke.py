"""Smoke run of the access-log ingestion benchmark: it produces a report, nothing is timed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.bench_als import run


def test_bench_als_confirms_every_reservation(tmp_path: Path) -> None:
    """A small run confirms every reserved record and reports a rate."""
    result = asyncio.run(run(300, 50, tmp_path))
    assert result["still_reserved"] == 0
    assert result["entries"] == 300
    assert result["entries_per_s"] > 0
    assert set(result) >= {"wall_s", "cpu_us_per_entry", "batch"}
