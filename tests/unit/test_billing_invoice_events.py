"""`tollhouse bill` records invoice.issued in the webhook outbox once the invoice is issued."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

from tests.support import Clock
from tests.support.billing import JAN_2027, NOV_2026, open_meter, record, write_meter
from tests.support.billing_store import bill, config, in_store, invoice_events
from tollhouse.billing.invoice_events import INVOICE_EVENT_FAILURES
from tollhouse.store import StoreService, migrate
from tollhouse.webhooks import Outbox


def test_bill_emits_invoice_issued_once_per_invoice(tmp_path: Path) -> None:
    """Issuing November emits one invoice.issued per invoice; a re-run records nothing new."""
    url = f"sqlite://{tmp_path}/store.db"
    asyncio.run(migrate(url))
    clock = Clock(NOV_2026 + 60)

    async def setup(s: StoreService) -> None:
        await s.create_customer(
            actor="t", name="Echo", plan="starter", customer_id="echo", anchor=date(2026, 11, 1)
        )
        await Outbox(s.backend, clock=clock).create_endpoint(
            actor="t", url="https://hooks.test/", events=["invoice.issued"]
        )

    in_store(url, clock, setup)
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"e{i}", "echo", NOV_2026 + 7200 + i, {"requests": 7}) for i in range(10)],
    )
    cfg = config(tmp_path, url)
    docs = bill(cfg, tmp_path, "2026-11", JAN_2027)
    bill(cfg, tmp_path, "2026-11", JAN_2027)  # already issued: offered again, recorded once
    events = invoice_events(url)
    assert len(events) == 1
    payload = events[0]["payload"]
    assert isinstance(payload, dict)
    assert payload["type"] == "invoice.issued"
    assert payload["customer"] == "echo"
    assert payload["data"] == {
        "invoice": docs["echo"]["number"],
        "period": "2026-11",
        "currency": docs["echo"]["currency"],
        "total": docs["echo"]["total"],
    }


def test_an_unmigrated_store_is_counted_not_raised(tmp_path: Path) -> None:
    """If the outbox cannot record the events, the invoices stand; the failure is counted."""
    from tollhouse.billing.invoice_events import emit_invoice_events
    from tollhouse.billing.job import InvoiceSummary
    from tollhouse.config import parse_config

    cfg = parse_config({"store": {"url": f"sqlite://{tmp_path}/never-migrated.db"}})
    before = INVOICE_EVENT_FAILURES._value.get()
    inv = InvoiceSummary(
        "INV-1", "echo", "2026-11", "USD", __import__("decimal").Decimal("1"), "issued", ()
    )
    assert emit_invoice_events(cfg, [inv], Clock()) == 0
    assert INVOICE_EVENT_FAILURES._value.get() == before + 1
