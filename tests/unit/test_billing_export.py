"""``tollhouse export stripe`` and ``export usage`` on usage billed by the real billing job.

Stripe itself is never reached: ``--push`` talks to a local HTTP server standing in for its API.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.billing import JAN_2027, NOV_2026, open_meter, write_meter
from tests.support.transparency import bill, traced_usage, write_config
from tollhouse.billing.export_stripe import build_events
from tollhouse.billing.export_usage import period_records
from tollhouse.billing.ledger import open_ledger
from tollhouse.billing.stripe_push import push_events
from tollhouse.billing.transparency_cli import subscriptions
from tollhouse.cli import main
from tollhouse.config import Config

STRIPE = {
    "meters": {"requests": "api_requests", "tokens": "llm_tokens"},
    "customers": {"acme": "cus_acme", "beta": "cus_beta"},
}
API_KEY = "sk_test_" + "k3y" * 8


def _billed(tmp: Path, **stripe: Any) -> tuple[Path, Config, dict[str, Any]]:
    """November billed; return the config file, the config and the issued invoices by customer."""
    path, cfg = write_config(tmp, stripe={**STRIPE, **stripe})
    write_meter(open_meter(tmp / "meter.db"), traced_usage())
    bill(cfg, "2026-11", JAN_2027)
    ledger = open_ledger(cfg.billing.ledger)
    try:
        docs = {
            c: json.loads(ledger.get_invoice(c, "2026-11") or "") for c in ("acme", "beta", "gamma")
        }
    finally:
        ledger.close()
    return path, cfg, docs


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_event_per_billable_record_and_meter_summing_to_the_invoice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events = invoice lines (count, sum), unique ids; unmapped customers refused (exit 1)."""
    path, _, docs = _billed(tmp_path)
    out, refused = tmp_path / "events.jsonl", tmp_path / "refused.jsonl"
    code = main(
        [
            "export",
            "stripe",
            "--config",
            str(path),
            "--period",
            "2026-11",
            "--out",
            str(out),
            "--refused",
            str(refused),
            "--now",
            "2026-12-02T00:00:00",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    events = _jsonl(out)
    assert len({e["identifier"] for e in events}) == len(events)
    names = {"requests": "api_requests", "tokens": "llm_tokens"}
    for cust, stripe_id in (("acme", "cus_acme"), ("beta", "cus_beta")):
        mine = [e for e in events if e["payload"]["stripe_customer_id"] == stripe_id]
        for line in docs[cust]["lines"]:
            evs = [e for e in mine if e["event_name"] == names[line["meter"]]]
            assert len(evs) == line["records"]
            assert sum(int(e["payload"]["value"]) for e in evs) == line["quantity"]
    acme = [e["identifier"] for e in events if e["payload"]["stripe_customer_id"] == "cus_acme"]
    assert all(i.endswith((":requests", ":tokens")) for i in acme)  # two meters per record
    beta = [e for e in events if e["payload"]["stripe_customer_id"] == "cus_beta"]
    assert all(e["identifier"].startswith("u-") and ":" not in e["identifier"] for e in beta)
    gone = _jsonl(refused)
    gamma_records = docs["gamma"]["lines"][0]["records"]  # its own period (not adjustments)
    assert {r["customer"] for r in gone} == {"gamma"}
    assert len(gone) == gamma_records
    assert f"refused {gamma_records} event(s): the customer has no Stripe customer id" in err


def test_events_outside_stripes_window_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Older than 35 days or more than 5 minutes ahead of now: refused with the reason."""
    path, cfg, _ = _billed(tmp_path)
    ledger = open_ledger(cfg.billing.ledger)
    try:
        recs = list(
            period_records(
                ledger, subscriptions(cfg), "2026-11", customer="beta", billable_only=True
            )
        )
    finally:
        ledger.close()
    for now, reason, bad in (
        (
            datetime(2026, 12, 10, tzinfo=UTC),
            "older than Stripe's 35-day window",
            lambda ms: ms < int(datetime(2026, 11, 5, tzinfo=UTC).timestamp() * 1000),
        ),
        (
            datetime(2026, 11, 20, tzinfo=UTC),
            "more than 5 minutes ahead",
            lambda ms: ms > int(datetime(2026, 11, 20, 0, 5, tzinfo=UTC).timestamp() * 1000),
        ),
    ):
        ev = build_events(
            recs,
            meters=STRIPE["meters"],
            customers=STRIPE["customers"],
            now_ms=int(now.timestamp() * 1000),
        )
        late = sorted(r.usage_id for r in recs if bad(r.admitted_at_ms))
        assert late
        assert sorted(r.identifier for r in ev.refused) == late
        assert all(reason in r.reason for r in ev.refused)
        assert len(ev.events) + len(ev.refused) == len(recs)
    code = main(
        [
            "export",
            "stripe",
            "--config",
            str(path),
            "--period",
            "2026-11",
            "--customer",
            "beta",
            "--now",
            "2026-12-10T00:00:00",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "older than Stripe's 35-day window" in err
    assert len(out.splitlines()) == len(recs) - sum(
        1
        for r in recs
        if r.admitted_at_ms < int(datetime(2026, 11, 5, tzinfo=UTC).timestamp() * 1000)
    )


def test_daily_aggregates_are_deterministic_and_sum_to_the_invoice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aggregate day``: one event per customer x meter x day, same identifiers every run."""
    path, _, docs = _billed(tmp_path)
    runs = []
    for n in (1, 2):
        out = tmp_path / f"agg{n}.jsonl"
        assert (
            main(
                [
                    "export",
                    "stripe",
                    "--config",
                    str(path),
                    "--period",
                    "2026-11",
                    "--customer",
                    "acme",
                    "--aggregate",
                    "day",
                    "--out",
                    str(out),
                    "--now",
                    "2026-12-02T00:00:00",
                ]
            )
            == 0
        )
        runs.append(out.read_bytes())
    capsys.readouterr()
    assert runs[0] == runs[1]
    events = _jsonl(tmp_path / "agg1.jsonl")
    keys = [(e["event_name"], e["timestamp"][:10]) for e in events]
    assert len(set(keys)) == len(keys)
    assert len({e["identifier"] for e in events}) == len(events)
    assert all(e["timestamp"].endswith("T00:00:00.000Z") for e in events)
    for line in docs["acme"]["lines"]:
        name = STRIPE["meters"][line["meter"]]
        assert (
            sum(int(e["payload"]["value"]) for e in events if e["event_name"] == name)
            == (line["quantity"])
        )
    days = {d["date"] for d in docs["acme"]["daily_usage"]}
    assert {k[1] for k in keys} == days


class FakeStripe:
    """A local HTTP server standing in for Stripe's API: sessions and the meter event stream."""

    def __init__(self, stream_statuses: list[int]) -> None:
        self.statuses = list(stream_statuses)  # consumed one per stream request; then 200
        self.requests: list[tuple[str, dict[str, str], dict[str, Any], int]] = []
        self.sessions = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                status, out = fake.answer(self.path, body)
                fake.requests.append((self.path, dict(self.headers), body, status))
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/v2/billing/meter_event_session":
            self.sessions += 1
            return 200, {
                "object": "v2.billing.meter_event_session",
                "id": f"mes_{self.sessions}",
                "authentication_token": f"mest_tok{self.sessions}",
                "created": "2026-12-02T00:00:00.000Z",
                "expires_at": "2026-12-02T00:15:00.000Z",
                "livemode": False,
            }
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            return 200, {}
        kind = {401: "invalid_request_error", 400: "invalid_request_error"}.get(status, "api_error")
        return status, {
            "error": {"type": kind, "code": f"http_{status}", "message": f"status {status}"}
        }

    def stream(self) -> list[tuple[dict[str, str], dict[str, Any], int]]:
        return [(h, b, s) for p, h, b, s in self.requests if p.endswith("meter_event_stream")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    """A FakeStripe whose first stream request fails with 500 and second with 401."""
    f = FakeStripe([500, 401])
    yield f
    f.close()


def test_push_batches_retries_with_the_same_identifiers(
    tmp_path: Path, fake_stripe: FakeStripe, capsys: pytest.CaptureFixture[str]
) -> None:
    """--push: <= 100 events a request, a failed batch re-sent unchanged, each accepted once.

    The key opens a session whose token authenticates the stream; a 401 renews the session.
    """
    key_file = tmp_path / "stripe-key"
    key_file.write_text(API_KEY + "\n")
    path, _, _ = _billed(
        tmp_path,
        api_key_file=str(key_file),
        api_base=fake_stripe.base,
        meter_events_base=fake_stripe.base,
    )
    exported = tmp_path / "events.jsonl"
    assert (
        main(
            [
                "export",
                "stripe",
                "--config",
                str(path),
                "--period",
                "2026-11",
                "--customer",
                "acme",
                "--out",
                str(exported),
                "--push",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert API_KEY not in captured.err + captured.out
    sessions = [h for p, h, _, _ in fake_stripe.requests if p.endswith("meter_event_session")]
    assert [h["Authorization"] for h in sessions] == [f"Bearer {API_KEY}"] * 2
    stream = fake_stripe.stream()
    assert [s for _, _, s in stream[:3]] == [500, 401, 200]
    assert [h["Authorization"] for h, _, _ in stream] == (
        ["Bearer mest_tok1"] * 2 + ["Bearer mest_tok2"] * (len(stream) - 2)
    )
    assert stream[0][1] == stream[1][1] == stream[2][1]  # the same batch, the same identifiers
    assert len({h["Idempotency-Key"] for h, _, _ in stream[:3]}) == 1
    assert all(len(b["events"]) <= 100 for _, b, _ in stream)
    accepted = [e for _, b, s in stream if s == 200 for e in b["events"]]
    assert accepted == _jsonl(exported)
    assert len({e["identifier"] for e in accepted}) == len(accepted) > 100
    assert f"pushed {len(accepted)} of {len(accepted)} event(s)" in captured.err


def test_a_refused_batch_stops_the_push(tmp_path: Path) -> None:
    """A 400 is not retried: the push stops there and says how far it got."""
    _, cfg, _ = _billed(tmp_path)
    ledger = open_ledger(cfg.billing.ledger)
    try:
        recs = list(period_records(ledger, subscriptions(cfg), "2026-11", billable_only=True))
    finally:
        ledger.close()
    ev = build_events(
        recs,
        meters=STRIPE["meters"],
        customers=STRIPE["customers"],
        now_ms=int(datetime(2026, 12, 2, tzinfo=UTC).timestamp() * 1000),
    )
    fake = FakeStripe([200, 400])
    slept: list[float] = []
    try:
        res = push_events(
            ev.events,
            api_key=API_KEY,
            api_base=fake.base,
            meter_events_base=fake.base,
            sleep=slept.append,
        )
    finally:
        fake.close()
    assert (res.sent, res.batches, res.ok) == (100, 1, False)
    assert res.error is not None
    assert "refused the batch" in res.error
    assert [s for _, _, s in fake.stream()] == [200, 400]
    assert slept == []


def test_usage_export_formats_carry_every_final_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonl, csv and CloudEvents: one row per final record (billable or not), id = usage id."""
    path, _, docs = _billed(tmp_path)
    usage = {r.usage_id: r for r in traced_usage() if r.customer == "acme"}
    outs = {}
    for fmt in ("jsonl", "csv", "cloudevents"):
        out = tmp_path / f"usage.{fmt}"
        assert (
            main(
                [
                    "export",
                    "usage",
                    "--config",
                    str(path),
                    "--period",
                    "2026-11",
                    "--customer",
                    "acme",
                    "--format",
                    fmt,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        outs[fmt] = out.read_text()
    capsys.readouterr()
    rows = [json.loads(line) for line in outs["jsonl"].splitlines()]
    assert sorted(r["usage_id"] for r in rows) == sorted(usage)
    one = next(r for r in rows if r["usage_id"] == "u-00000")
    assert (one["decision_id"], one["request_id"], one["state"], one["units"]) == (
        "dec-00000",
        usage["u-00000"].request_id,
        "VOIDED",
        dict(usage["u-00000"].units),
    )
    events = [json.loads(line) for line in outs["cloudevents"].splitlines()]
    assert [e["id"] for e in events] == [r["usage_id"] for r in rows]
    assert {(e["specversion"], e["type"], e["subject"], e["source"]) for e in events} == {
        ("1.0", "tollhouse.usage", "acme", "tollhouse/pod-a")
    }
    assert events[0]["time"] == rows[0]["admitted_at"]
    table = list(csv.DictReader(io.StringIO(outs["csv"])))
    assert len(table) == len(rows)
    tokens = next(ln for ln in docs["acme"]["lines"] if ln["meter"] == "tokens")
    assert (
        sum(int(r["units_tokens"]) for r in table if r["billable"] == "True")
        == (tokens["quantity"])
    )
    assert Counter(r["state"] for r in table) == Counter(r["state"] for r in rows)
    assert all(usage[r["usage_id"]].admitted_at_ms >= NOV_2026 * 1000 for r in table)


def test_the_stores_stripe_customer_id_wins_over_the_configs(tmp_path: Path) -> None:
    """The store field maps a customer over export.stripe.customers; others keep the config's."""
    import asyncio

    from tests.support.store import Clock
    from tollhouse.billing.transparency_cli import stripe_customers
    from tollhouse.store import StoreService, migrate, open_store

    url = f"sqlite:///{tmp_path}/store.db"

    async def setup() -> None:
        await migrate(url)
        svc = StoreService(await open_store(url), clock=Clock())
        try:
            for cid in ("acme", "delta"):
                await svc.create_customer(actor="test", name=cid, plan="pro", customer_id=cid)
            await svc.update_customer("acme", actor="test", stripe_customer_id="cus_store")
        finally:
            await svc.backend.close()

    asyncio.run(setup())
    _, cfg = write_config(tmp_path, store=url, stripe=STRIPE)
    assert stripe_customers(cfg) == {"acme": "cus_store", "beta": "cus_beta"}
