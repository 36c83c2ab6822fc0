"""Metering's on_voided hook: VOIDED records reach it (the quota gets their units back)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from tests.support.metering import metering_config
from tollhouse.metering import LogEntry, Metering
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.sinks import SqliteMeterSink


def _entry(usage_id: str, served: bool) -> LogEntry:
    return LogEntry(
        usage_id,
        response_code=200 if served else 503,
        request_bytes=10,
        response_bytes=20,
        duration_us=5,
        upstream_served=served,
        response_flags="" if served else "UF",
    )


async def test_voided_records_go_to_on_voided_confirmed_to_on_confirmed(tmp_path: Path) -> None:
    """One served and one unserved request: each hook sees exactly its own record.

    A hook that raises is counted (tollhouse_usage_hook_errors_total) and costs no other record.
    """
    m = Metering(
        metering_config(tmp_path), instance="i1", sink=SqliteMeterSink(tmp_path / "meter.db")
    )
    confirmed: list[UsageRecord] = []
    voided: list[UsageRecord] = []

    def on_voided(rec: UsageRecord) -> None:
        voided.append(rec)
        if rec.request_id == "boom":
            raise RuntimeError("a broken hook")

    m.on_confirmed, m.on_voided = confirmed.append, on_voided
    errors = REGISTRY.get_sample_value("tollhouse_usage_hook_errors_total") or 0.0
    await m.spool.open()
    recs = [
        m.build_reservation(
            customer="acme",
            plan="pro",
            feature="search",
            method="GET",
            path="/v1/search",
            request_id=rid,
            decision_id=rid,
        )
        for rid in ("ok", "boom", "void")
    ]
    for rec in recs:
        await m.reserve(rec)
    await m.ingest(
        [
            _entry(recs[0].usage_id, True),
            _entry(recs[1].usage_id, False),
            _entry(recs[2].usage_id, False),
        ]
    )
    await m.spool.counts()  # queued after the entries: they are applied when this returns
    await m.stop(deadline_s=1)
    assert [r.usage_id for r in confirmed] == [recs[0].usage_id]
    assert [r.usage_id for r in voided] == [recs[1].usage_id, recs[2].usage_id]
    assert {r.state for r in voided} == {UsageRecord.VOIDED}
    assert voided[1].customer == "acme"
    assert voided[1].feature == "search"
    assert voided[1].admitted_at_ms > 0
    assert REGISTRY.get_sample_value("tollhouse_usage_hook_errors_total") == errors + 1
