"""``tollhouse trace``: issued invoice lines traced back to their requests, digests recomputed.

The usage goes through the real billing job (SQLite meter -> SQLite or PostgreSQL ledger).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis

from tests.servers import PostgresServer, RedisServer
from tests.support.billing import (
    DEC_2026,
    JAN_2027,
    NOV_2026,
    make_config,
    open_meter,
    record,
    write_meter,
)
from tests.support.transparency import bill, traced_usage, write_config
from tollhouse.billing.digest import digest
from tollhouse.billing.job import JobOptions, run_billing
from tollhouse.billing.ledger import open_ledger
from tollhouse.billing.trace import TraceError, trace_invoice
from tollhouse.cli import main
from tollhouse.metering.schema import FIELD_RECORD, FIELD_USAGE_ID


def _nov_ids(usage: list, customer: str, meter: str) -> list[tuple[str, str, str, int]]:  # type: ignore[type-arg]
    return sorted(
        (r.usage_id, r.decision_id, r.request_id, r.units[meter])
        for r in usage
        if r.customer == customer
        and r.billable
        and meter in r.units
        and NOV_2026 * 1000 <= r.admitted_at_ms < DEC_2026 * 1000
    )


def test_every_line_is_the_sum_of_its_requests(ledger_url: str, tmp_path: Path) -> None:
    """Each issued line's records, decision and request ids and digest are exactly its usage."""
    _, cfg = write_config(tmp_path, ledger=ledger_url)
    usage = traced_usage()
    write_meter(open_meter(tmp_path / "meter.db"), usage)
    res = bill(cfg, "2026-11", JAN_2027)
    ledger = open_ledger(ledger_url)
    try:
        for inv in res.invoices:
            doc = json.loads(ledger.get_invoice(inv.customer, "2026-11") or "")
            lines = trace_invoice(ledger, inv.number)
            assert all(t.ok for t in lines)
            regular = [t for t in lines if t.kind == "line"]
            assert [t.meter for t in regular] == [ln["meter"] for ln in doc["lines"]]
            assert len(lines) == len(doc["lines"]) + len(doc["adjustments"])
            for t, ln in zip(regular, doc["lines"], strict=True):
                assert t.ok, t
                assert (t.found_digest, t.found_units, t.found_records) == (
                    ln["digest"],
                    ln["quantity"],
                    ln["records"],
                )
        acme = {t.meter: t for t in trace_invoice(ledger, "TH-2026-11-acme")}
        gamma = trace_invoice(ledger, "TH-2026-11-gamma")  # anchored on the 15th
    finally:
        ledger.close()
    for meter in ("requests", "tokens"):
        got = sorted((r.usage_id, r.decision_id, r.request_id, r.units) for r in acme[meter].rows)
        assert got == _nov_ids(usage, "acme", meter)
        assert {r.state for r in acme[meter].rows} == {"CONFIRMED"}
    # gamma's usage of Nov 1-14 precedes its first period: an adjustment of a never-invoiced
    # period, whose bounds come from the anchor
    assert [(t.kind, t.period, t.ok) for t in gamma] == [
        ("line", "2026-11", True),
        ("adjustment", "2026-10", True),
    ]
    assert gamma[1].found_records > 0


def test_adjustment_lines_trace_to_the_late_records(ledger_url: str, tmp_path: Path) -> None:
    """Late November usage on the December invoice traces to exactly the late records."""
    _, cfg = write_config(tmp_path, ledger=ledger_url)
    meter = open_meter(tmp_path / "meter.db")
    write_meter(meter, traced_usage())
    bill(cfg, "2026-11", DEC_2026 + 16 * 86400)
    late = [
        record(f"late-{i}", "acme", NOV_2026 + 3600 * (i + 1), {"requests": 7 + i})
        for i in range(5)
    ]
    for i, r in enumerate(late):
        r.decision_id = f"late-dec-{i}"
    write_meter(meter, [*late, record("dec-1", "acme", DEC_2026 + 60, {"requests": 3})])
    bill(cfg, "2026-12", JAN_2027 + 16 * 86400)
    ledger = open_ledger(ledger_url)
    try:
        lines = trace_invoice(ledger, "TH-2026-12-acme")
        adj = [t for t in lines if t.kind == "adjustment"]
        one = trace_invoice(ledger, "TH-2026-12-acme", line=str(adj[0].index))
    finally:
        ledger.close()
    assert all(t.ok for t in lines)
    assert [(t.period, t.meter, t.quantity) for t in adj] == [("2026-11", "requests", 45)]
    assert [r.decision_id for r in adj[0].rows] == [r.decision_id for r in late]
    assert adj[0].found_digest == digest(r.usage_id for r in late)
    assert one == adj


def test_a_line_that_is_not_its_records_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger row gone from under an issued line: trace shows the mismatch and exits 1."""
    path, cfg = write_config(tmp_path)
    usage = traced_usage()
    write_meter(open_meter(tmp_path / "meter.db"), usage)
    bill(cfg, "2026-11", JAN_2027)
    assert main(["trace", "--config", str(path), "TH-2026-11-beta", "--verify"]) == 0
    assert "requests): invoice" in capsys.readouterr().out
    gone = _nov_ids(usage, "beta", "requests")[3][0]
    ledger = open_ledger(cfg.billing.ledger)
    try:
        ledger.exec("DELETE FROM ledger_ids WHERE usage_id = ?", (gone,))
    finally:
        ledger.close()
    assert main(["trace", "--config", str(path), "TH-2026-11-beta", "--verify", "--json"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is False
    line = doc["lines"][0]
    assert line["recomputed"]["records"] == line["invoice"]["records"] - 1
    assert line["recomputed"]["digest"] != line["invoice"]["digest"]
    assert "do not match their records" in err


def test_cli_lists_a_lines_requests_and_refuses_unknown_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``trace INVOICE METER`` prints each request; an unknown invoice or line exits 2."""
    path, cfg = write_config(tmp_path)
    usage = traced_usage()
    write_meter(open_meter(tmp_path / "meter.db"), usage)
    bill(cfg, "2026-11", JAN_2027)
    assert main(["trace", "--config", str(path), "TH-2026-11-acme", "tokens"]) == 0
    out = capsys.readouterr().out
    expected = _nov_ids(usage, "acme", "tokens")
    assert out.count("\tCONFIRMED\t") == len(expected)
    first = expected[0]
    assert f"  {first[0]}\t{first[1]}\t" in out
    assert f"\t{first[2]}\tCONFIRMED\t{first[3]}" in out
    assert main(["trace", "--config", str(path), "TH-2026-11-nobody"]) == 2
    assert "no issued invoice" in capsys.readouterr().err
    assert main(["trace", "--config", str(path), "TH-2026-11-acme", "9"]) == 2
    assert "has no line '9'" in capsys.readouterr().err
    ledger = open_ledger(cfg.billing.ledger)
    try:
        with pytest.raises(TraceError):
            trace_invoice(ledger, "TH-2026-11-acme", line="egress")
    finally:
        ledger.close()


def test_distributed_mode_traces_after_the_stream_is_trimmed(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Redis meter + PostgreSQL ledger: once billing trimmed the stream, trace still proves it."""
    base = f"test:{uuid.uuid4().hex[:10]}"
    keys = (f"{base}:usage", f"{base}:dead")
    r = redis.Redis.from_url(redis_server.url)
    usage = traced_usage()
    for rec in usage:
        r.xadd(keys[0], {FIELD_USAGE_ID: rec.usage_id, FIELD_RECORD: rec.SerializeToString()})
    pg_url = postgres_server.fresh_database_url("tr_")
    cfg = make_config(tmp_path, meter=redis_server.url, ledger=pg_url)
    res = run_billing(
        cfg,
        period="2026-11",
        out_dir=None,
        preview=False,
        clock=lambda: JAN_2027,
        options=JobOptions(
            stream_key=keys[0],
            dead_key=keys[1],
            consumer="c1",
            claim_idle_ms=0,
            redis_timeout_s=5.0,
        ),
    )
    assert res.ok, res.problems
    assert r.xlen(keys[0]) == 0  # acknowledged by the only group: trimmed
    ledger = open_ledger(pg_url)
    try:
        lines = trace_invoice(ledger, "TH-2026-11-acme")
    finally:
        ledger.close()
    assert lines
    assert all(t.ok for t in lines)
    tokens = next(t for t in lines if t.meter == "tokens")
    assert sorted((x.usage_id, x.decision_id, x.request_id, x.units) for x in tokens.rows) == (
        _nov_ids(usage, "acme", "tokens")
    )
