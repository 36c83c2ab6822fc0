"""A customer's issued invoices, read from the ledger for the customer listener.

Every query is keyed by the authenticated customer as well as the number, so another customer's
invoice is indistinguishable from one that does not exist. A SQLite ledger that no billing run
has created yet holds no invoice (nothing is created from this read path).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tollhouse.billing.ledger import Ledger, open_ledger
from tollhouse.billing.usage import InvoiceLink
from tollhouse.config import sqlite_path

__all__ = ["invoice_document", "list_invoices"]


def _open(url: str) -> Ledger | None:
    if url.startswith("sqlite:///") and not sqlite_path(url).exists():
        return None
    return open_ledger(url, connect_timeout_s=3.0)


def list_invoices(ledger_url: str, customer: str, *, limit: int = 24) -> tuple[InvoiceLink, ...]:
    """The customer's latest issued invoices, newest first (blocking)."""
    ledger = _open(ledger_url)
    if ledger is None:
        return ()
    try:
        rows = ledger.exec(
            "SELECT document FROM invoices WHERE customer = ? ORDER BY period DESC LIMIT ?",
            (customer, limit),
        )
        docs = [json.loads(str(doc)) for (doc,) in rows]
    finally:
        ledger.close()
    return tuple(
        InvoiceLink(
            str(d["number"]),
            str(d["period"]),
            str(d["issue_date"]),
            str(d["currency"]),
            Decimal(str(d["total"])),
            None if "amount_due" not in d else Decimal(str(d["amount_due"])),
        )
        for d in docs
    )


def invoice_document(ledger_url: str, customer: str, number: str) -> dict[str, Any] | None:
    """The issued document of ``number`` if it is ``customer``'s, else ``None`` (blocking)."""
    ledger = _open(ledger_url)
    if ledger is None:
        return None
    try:
        row = ledger.one(
            "SELECT document FROM invoices WHERE number = ? AND customer = ?", (number, customer)
        )
    finally:
        ledger.close()
    if row is None:
        return None
    doc: dict[str, Any] = json.loads(str(row[0]))
    return doc
