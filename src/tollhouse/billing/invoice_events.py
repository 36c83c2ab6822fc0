"""``invoice.issued`` events for the webhook outbox, offered once an invoice is in the ledger.

The billing job calls :func:`emit_invoice_events` after issuing, so the event never precedes
the durable invoice. The dedupe key is the invoice number: a re-run that meets an invoice issued
before (``already_issued``, e.g. ``--period``) offers it again and the outbox records it once,
which also recovers an event lost to a crash between issuing and emitting. An invoice with
prepaid credits also carries ``amount_due`` (total - credits applied).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter

from tollhouse.config import Config
from tollhouse.logs import get_logger
from tollhouse.store.backend import StoreUnavailable
from tollhouse.store.schema import SchemaError, open_store
from tollhouse.webhooks.outbox import Outbox

__all__ = ["INVOICE_EVENT_FAILURES", "emit_invoice_events"]

log = get_logger(__name__)
INVOICE_EVENT_FAILURES = Counter(
    "tollhouse_invoice_event_failures_total",
    "Billing runs whose invoice.issued events could not be recorded (offered again next run)",
)


async def _emit_all(
    url: str, invoices: Sequence[Any], clock: Callable[[], float], deadline_s: float
) -> int:
    backend = await open_store(url)
    try:
        box = Outbox(backend, clock=clock, emit_deadline_s=deadline_s)
        new = 0
        for inv in invoices:
            data = {
                "invoice": inv.number,
                "period": inv.period,
                "currency": inv.currency,
                "total": str(inv.total),
            }
            if getattr(inv, "amount_due", None) is not None:  # prepaid credits applied
                data["amount_due"] = str(inv.amount_due)
            new += await box.emit(
                "invoice.issued", inv.customer, f"invoice.issued:{inv.number}", data
            )
        return new
    finally:
        await backend.close()


def emit_invoice_events(cfg: Config, invoices: Sequence[Any], clock: Callable[[], float]) -> int:
    """Offer ``invoice.issued`` for each issued invoice; return how many were new.

    Needs ``store`` (else 0). A store that cannot record them is logged and counted, never
    raised: the invoices are issued and final either way.
    """
    issued = [i for i in invoices if i.status in ("issued", "already_issued")]
    if cfg.store is None or not issued:
        return 0
    try:
        return asyncio.run(
            _emit_all(cfg.store.url, issued, clock, cfg.webhooks.emit_deadline_ms / 1000)
        )
    except (StoreUnavailable, SchemaError, TimeoutError, OSError) as e:
        INVOICE_EVENT_FAILURES.inc()
        log.error("billing.invoice_events_failed", invoices=len(issued), error=str(e)[:300])
        return 0
