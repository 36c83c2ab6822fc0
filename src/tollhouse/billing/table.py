"""The invoice table printed by ``tollhouse bill`` and by the demo: aligned plain-text columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["format_invoices", "format_shadows"]

_HEADER = ("invoice", "customer", "total", "status", "HTML invoice")


def format_invoices(invoices: Iterable[Any]) -> str:
    """Render invoice summaries as a table: columns padded, totals right-aligned, HTML path last.

    Each summary needs ``number``, ``customer``, ``currency``, ``total``, ``status``, ``files``.
    """
    rows = [_HEADER]
    for inv in invoices:
        html = next((str(f) for f in inv.files if f.suffix == ".html"), "-")
        rows.append((str(inv.number), str(inv.customer), f"{inv.currency} {inv.total}",
                     str(inv.status), html))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i == 2 and n else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row[:4], widths, strict=True))]
        lines.append("  ".join([*cells, row[4]]))
        if n == 0:
            lines.append("  ".join(["-" * w for w in widths] + ["-" * len(_HEADER[4])]))
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
        out.append(f"SHADOW {inv.number}  {inv.customer}  under {s.candidate_plan}: "
                   f"{s.candidate_currency} {s.candidate_total} (invoice {inv.currency} "
                   f"{inv.total}, difference {diff}); not billed\n")
    return out
