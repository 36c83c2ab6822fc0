"""The invoice table printed by ``tollhouse bill`` and by the demo: aligned plain-text columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["format_invoices", "format_shadows"]

_HEADER = ("invoice", "customer", "total", "status", "HTML invoice")


def format_invoices(invoices: Iterable[Any]) -> str:
    """Render invoice summaries as a table: columns padded, amounts right-aligned, HTML path last.

    Each summary needs ``number``, ``customer``, ``currency``, ``total``, ``status``, ``files``;
    when any has an ``amount_due`` (prepaid credits applied), a ``due`` column follows ``total``
    (``-`` for invoices without credits).
    """
    invoices = list(invoices)
    dues = [getattr(inv, "amount_due", None) for inv in invoices]
    with_due = any(d is not None for d in dues)
    header = (*_HEADER[:3], "due", *_HEADER[3:]) if with_due else _HEADER
    money = {2, 3} if with_due else {2}
    rows: list[tuple[str, ...]] = [header]
    for inv, due in zip(invoices, dues, strict=True):
        html = next((str(f) for f in inv.files if f.suffix == ".html"), "-")
        cells = [str(inv.number), str(inv.customer), f"{inv.currency} {inv.total}"]
        if with_due:
            cells.append("-" if due is None else f"{inv.currency} {due}")
        rows.append((*cells, str(inv.status), html))
    n = len(header) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in money and k else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:n], widths, strict=True))
        ]
        lines.append("  ".join([*cells, row[n]]))
        if k == 0:
            lines.append("  ".join(["-" * w for w in widths] + ["-" * len(header[n])]))
    return "\n".join(lines)


def format_shadows(invoices: Iterable[Any]) -> list[str]:
    """One ``SHADOW`` line per preview whose plan has a ``shadow_price:`` (each ends in a newline).

    The shadow total is the invoice priced with the shadow plan's prices (what ``tollhouse
    simulate --plan <shadow>`` prints); it is never billed.
    """
    out = []
    for inv in invoices:
        s = getattr(inv, "shadow", None)
        if s is None:
            continue
        if not hasattr(s, "candidate_total"):  # an InvoiceProblem: say why, never skip it
            out.append(f"SHADOW {inv.number}  {inv.customer}: cannot be priced: {s.message}\n")
            continue
        diff = "n/a (other currency)" if s.difference is None else f"{s.difference:+}"
        out.append(
            f"SHADOW {inv.number}  {inv.customer}  under {s.candidate_plan}: "
            f"{s.candidate_currency} {s.candidate_total} (invoice {inv.currency} "
            f"{inv.total}, difference {diff}); not billed\n"
        )
    return out
