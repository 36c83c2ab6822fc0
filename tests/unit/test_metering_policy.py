"""Billing policy at finalisation, and the grace-period sweep driven by an injected clock."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from tests.support.metering import metering_config
from tollhouse.metering import LogEntry, Metering
from tollhouse.metering.policy import Finalizer, header_units
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.sinks import SqliteMeterSink


def _reserved(feature: str = "llm") -> UsageRecord:
    return UsageRecord(
        usage_id="u1",
        customer="acme",
        plan="pro",
        feature=feature,
        admitted_at_ms=1000,
        state=UsageRecord.RESERVED,
        units={"requests": 1},
    )


def _served(code: int = 200, tokens: str | None = "42") -> LogEntry:
    headers = {} if tokens is None else {"x-usage-tokens": tokens}
    return LogEntry(
        "u1",
        response_code=code,
        request_bytes=300,
        response_bytes=5000,
        duration_us=1200,
        upstream_served=True,
        response_headers=headers,
    )


def test_confirmed_counts_every_meter_source() -> None:
    """A served 200 bills requests=1, request/response bytes and the header's number."""
    out = Finalizer(metering_config()).confirm(_reserved(), _served(), now_ms=2000)
    assert out.state == UsageRecord.CONFIRMED
    assert out.billable
    assert dict(out.units) == {"requests": 1, "egress": 5000, "ingress": 300, "tokens": 42}
    assert (out.response_code, out.duration_us, out.finalized_at_ms) == (200, 1200, 2000)


def test_upstream_5xx_is_decided_per_meter() -> None:
    """On a 5xx only meters with bill_upstream_5xx (here tokens) keep units; the global is False."""
    out = Finalizer(metering_config()).confirm(_reserved(), _served(503, "7"), now_ms=2000)
    assert out.state == UsageRecord.CONFIRMED
    assert dict(out.units) == {"tokens": 7}
    assert out.billable


def test_upstream_5xx_global_policy_bills_all_meters() -> None:
    """With metering.bill_upstream_5xx true, a 5xx bills every meter."""
    fin = Finalizer(metering_config(bill_upstream_5xx=True))
    out = fin.confirm(_reserved("search"), _served(500), 1)
    assert dict(out.units) == {"requests": 1}
    assert out.billable


def test_5xx_on_request_only_feature_is_not_billable() -> None:
    """A 5xx on a feature metered by requests alone bills nothing by default."""
    out = Finalizer(metering_config()).confirm(_reserved("search"), _served(502), 1)
    assert dict(out.units) == {}
    assert not out.billable


def test_void_is_never_billable() -> None:
    """An entry the upstream did not serve voids the record with no units."""
    entry = LogEntry(
        "u1", response_code=403, upstream_served=False, response_flags="unauthorized_details"
    )
    out = Finalizer(metering_config()).confirm(_reserved(), entry, 5)
    assert out.state == UsageRecord.VOIDED
    assert not out.billable
    assert dict(out.units) == {}


def test_garbage_or_missing_header_gives_zero_units_and_is_counted() -> None:
    """A missing or non-numeric meter header is 0 units and increments the error metric."""

    def errors() -> float:
        v = REGISTRY.get_sample_value(
            "tollhouse_usage_header_unit_errors_total", {"meter": "tokens"}
        )
        return v or 0.0

    before = errors()
    fin = Finalizer(metering_config())
    a = fin.confirm(_reserved(), _served(tokens="12abc"), 1)
    b = fin.confirm(_reserved(), _served(tokens=None), 1)
    assert a.units["tokens"] == 0
    assert b.units["tokens"] == 0
    assert errors() - before == 2
    assert header_units(" 15 ") == 15
    assert header_units("-3") is None
    assert header_units("99999999999999999999") is None


def test_unconfirmed_policy_bills_request_meters_only() -> None:
    """UNCONFIRMED bills request-counted meters when bill_unconfirmed, nothing otherwise."""
    billed = Finalizer(metering_config()).expire(_reserved(), 9)
    assert billed.state == UsageRecord.UNCONFIRMED
    assert dict(billed.units) == {"requests": 1}
    assert billed.billable
    voided = Finalizer(metering_config(bill_unconfirmed=False)).expire(_reserved(), 9)
    assert voided.state == UsageRecord.UNCONFIRMED
    assert dict(voided.units) == {}
    assert not voided.billable


async def test_grace_period_expires_with_injected_clock(tmp_path: Path) -> None:
    """A reservation with no log entry turns UNCONFIRMED only once the clock passes the grace."""
    now = [1_800_000_000.0]
    cfg = metering_config(tmp_path, unconfirmed_after_s=60)
    m = Metering(
        cfg, clock=lambda: now[0], instance="i1", sink=SqliteMeterSink(tmp_path / "meter.db")
    )
    await m.spool.open()
    rec = m.build_reservation(
        customer="acme",
        plan="pro",
        feature="search",
        method="GET",
        path="/v1/search",
        request_id="r1",
        decision_id="d1",
    )
    await m.reserve(rec)
    now[0] += 59
    await m.tick()
    still = await m.spool.get(rec.usage_id)
    now[0] += 2
    await m.tick()
    done = await m.spool.get(rec.usage_id)
    await m.stop(deadline_s=1)
    assert still is not None
    assert still.state == UsageRecord.RESERVED
    assert done is not None
    assert done.state == UsageRecord.UNCONFIRMED
    assert done.billable
    assert dict(done.units) == {"requests": 1}
    assert rec.admitted_at_ms == 1_800_000_000_000
    assert rec.instance == "i1"


async def test_on_confirmed_hook_sees_final_units(tmp_path: Path) -> None:
    """The on_confirmed hook gets the CONFIRMED record with byte and header units."""
    cfg = metering_config(tmp_path)
    m = Metering(cfg, instance="i1", sink=SqliteMeterSink(tmp_path / "meter.db"))
    seen: list[UsageRecord] = []
    m.on_confirmed = seen.append
    await m.spool.open()
    rec = m.build_reservation(
        customer="acme",
        plan="pro",
        feature="llm",
        method="POST",
        path="/v1/llm",
        request_id="r",
        decision_id="d",
    )
    await m.reserve(rec)
    entry = _served()
    await m.ingest(
        [
            LogEntry(
                rec.usage_id,
                **{
                    k: getattr(entry, k)
                    for k in (
                        "response_code",
                        "request_bytes",
                        "response_bytes",
                        "upstream_served",
                        "response_headers",
                    )
                },
            )
        ]
    )
    await m.spool.counts()  # queued after the entries: they are applied when this returns
    await m.stop(deadline_s=1)
    assert [r.usage_id for r in seen] == [rec.usage_id]
    assert dict(seen[0].units) == {"requests": 1, "egress": 5000, "ingress": 300, "tokens": 42}
