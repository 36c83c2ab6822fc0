"""The invoice as one self-contained HTML page: inline CSS, inline SVG charts, no JS, no assets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any

__all__ = ["render_html"]

_CSS = """
*{box-sizing:border-box}body{margin:0;background:#f3f4f6;color:#1f2937;
font:15px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
.sheet{max-width:860px;margin:32px auto;background:#fff;border-radius:12px;padding:40px 48px;
box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.05)}
header{display:flex;justify-content:space-between;align-items:flex-start;gap:24px}
.brand{font-weight:700;font-size:20px;color:#0f766e;letter-spacing:.02em}
h1{margin:0 0 8px;font-size:28px;font-weight:600}h2{font-size:17px;margin:32px 0 12px}
dl{display:grid;grid-template-columns:auto auto;gap:2px 16px;margin:0;font-size:14px}
dt{color:#6b7280}dd{margin:0;text-align:right;font-variant-numeric:tabular-nums}
.due{margin:28px 0 8px;padding:20px 24px;background:#f0fdfa;border:1px solid #99f6e4;
border-radius:10px;display:flex;justify-content:space-between;align-items:baseline}
.due strong{font-size:30px;color:#0f766e;font-variant-numeric:tabular-nums}
table{width:100%;border-collapse:collapse;font-size:14px}
th{text-align:left;color:#6b7280;font-weight:500;border-bottom:2px solid #e5e7eb;padding:8px 6px}
td{padding:8px 6px;border-bottom:1px solid #f3f4f6;vertical-align:top}
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.tier td{color:#6b7280;font-size:13px;border-bottom:none;padding-top:0}
tr.tier td:first-child{padding-left:22px}
tr.sum td{font-weight:600;border-top:2px solid #e5e7eb;border-bottom:none}
tr.total td{font-size:17px;font-weight:700;color:#0f766e}
.note{color:#6b7280;font-size:12px}code{font-size:11px;color:#6b7280;word-break:break-all}
.chart{margin:8px 0 20px}.chart h3{font-size:14px;margin:0 0 4px;font-weight:600}
svg rect.bar{fill:#14b8a6}svg text{font-size:10px;fill:#6b7280}
footer{margin-top:36px;padding-top:16px;border-top:1px solid #e5e7eb}
"""


def _money(cur: str, amount: str) -> str:
    return f"{escape(cur)}&nbsp;{Decimal(amount):,}"


def _qty(n: int) -> str:
    return f"{n:,}"


def _days(doc: dict[str, Any]) -> list[str]:
    start = datetime.strptime(doc["period_start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    end = datetime.strptime(doc["period_end"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    n = max(1, -(-int((end - start).total_seconds()) // 86400))
    return [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(n)]


def _chart(meter: str, days: list[str], units: dict[str, int]) -> str:
    w, h, left, bottom = 760, 150, 48, 20
    top = max(units.values(), default=0) or 1
    slot = (w - left) / len(days)
    bars = []
    for i, day in enumerate(days):
        u = units.get(day, 0)
        bh = round((h - bottom - 10) * u / top, 1)
        x = round(left + i * slot + slot * 0.15, 1)
        bars.append(
            f'<rect class="bar" x="{x}" y="{round(h - bottom - bh, 1)}" '
            f'width="{round(slot * 0.7, 1)}" height="{bh}" rx="1.5">'
            f"<title>{day}: {_qty(u)}</title></rect>"
        )
        if i % 7 == 0:
            bars.append(f'<text x="{x}" y="{h - 5}">{day[5:]}</text>')
    axis = (
        f'<text x="0" y="14">{_qty(top)}</text><text x="0" y="{h - bottom}">0</text>'
        f'<line x1="{left}" y1="{h - bottom}" x2="{w}" y2="{h - bottom}" stroke="#e5e7eb"/>'
    )
    return (
        f'<div class="chart"><h3>{escape(meter)} per day</h3>'
        f'<svg viewBox="0 0 {w} {h}" width="100%" role="img" '
        f'aria-label="{escape(meter)} per day">{axis}{"".join(bars)}</svg></div>'
    )


def _charts(doc: dict[str, Any]) -> str:
    days = _days(doc)
    per: dict[str, dict[str, int]] = {}
    for d in doc["daily_usage"]:
        per.setdefault(d["meter"], {})[d["date"]] = int(d["units"])
    if not per:
        return '<p class="note">No usage in this period.</p>'
    return "".join(_chart(m, days, per[m]) for m in sorted(per))


def _charge_rows(doc: dict[str, Any]) -> list[str]:
    cur, rows = doc["currency"], []
    for b in doc["base_fees"]:
        what = f"{escape(b['plan'])} plan, base fee"
        if b["prorated"]:
            what += f' <span class="note">prorated {b["from"][:10]} to {b["to"][:10]}</span>'
        rows.append(
            f'<tr><td>{what}</td><td class="n"></td><td class="n">'
            f"{_money(cur, b['fee'])}</td>"
            f'<td class="n">{_money(cur, b["amount"])}</td></tr>'
        )
    for ln in doc["lines"]:
        inc = (
            f' <span class="note">{_qty(ln["included"])} included</span>' if ln["included"] else ""
        )
        unit = _money(cur, ln["unit_price"]) if ln["unit_price"] is not None else ""
        if ln.get("package_size"):
            unit += f" per {_qty(ln['package_size'])}"
        rows.append(
            f"<tr><td>{escape(ln['meter'])}{inc}<br><code>{_digest(ln['digest'])}</code>"
            f'</td><td class="n">{_qty(ln["quantity"])}</td><td class="n">{unit}</td>'
            f'<td class="n">{_money(cur, ln["amount"])}</td></tr>'
        )
        for t in ln["tiers"]:
            last = "+" if t["last_unit"] is None else f"&ndash;{_qty(t['last_unit'])}"
            fee = f" + {_money(cur, t['flat_fee'])}" if Decimal(t["flat_fee"]) else ""
            what = "all units at tier" if ln["model"] == "volume" else "units"
            rows.append(
                f'<tr class="tier"><td>{what} {_qty(t["first_unit"])}{last}</td>'
                f'<td class="n">{_qty(t["quantity"])}</td><td class="n">'
                f"{_money(cur, t['unit_price'])}{fee}</td>"
                f'<td class="n">{_money(cur, t["amount"])}</td></tr>'
            )
    return rows


def _digest(d: str) -> str:
    """Digests name their scheme (``blake2b-sum64:...``); the previous release's: SHA-256 hex."""
    return escape(d) if ":" in d else f"sha256 {d}"


def _total_rows(doc: dict[str, Any]) -> list[str]:
    cur = doc["currency"]
    rows = [
        f'<tr class="sum"><td colspan="3">Subtotal</td>'
        f'<td class="n">{_money(cur, doc["subtotal"])}</td></tr>'
    ]
    if Decimal(doc["minimum_topup"]):
        rows.append(
            f'<tr><td colspan="3">Minimum charge of {_money(cur, doc["minimum"])}</td>'
            f'<td class="n">{_money(cur, doc["minimum_topup"])}</td></tr>'
        )
    for a in doc["adjustments"]:
        rows.append(
            f'<tr><td colspan="2">Usage of {escape(a["period"])} not billed before: '
            f"{_qty(a['quantity'])} {escape(a['meter'])}<br>"
            f"<code>{_digest(a['digest'])}</code></td><td></td>"
            f'<td class="n">{_money(cur, a["amount"])}</td></tr>'
        )
    rows.append(
        f'<tr class="sum total"><td colspan="3">Total</td>'
        f'<td class="n">{_money(cur, doc["total"])}</td></tr>'
    )
    if "credits" in doc:
        rows.extend(_credit_rows(doc))
    return rows


def _credit_rows(doc: dict[str, Any]) -> list[str]:
    """Prepaid credits applied (one negative row per grant), then the amount due."""
    cur, rows = doc["currency"], []
    for g in doc["credits"]["applied"]:
        if Decimal(g["applied"]):
            rows.append(
                f'<tr><td colspan="3">Prepaid credit <code>{escape(g["grant"])}</code> '
                f'<span class="note">{escape(g["source"])}</span></td>'
                f'<td class="n">&minus;{_money(cur, g["applied"])}</td></tr>'
            )
    rows.append(
        f'<tr class="sum total"><td colspan="3">Amount due</td>'
        f'<td class="n">{_money(cur, doc["amount_due"])}</td></tr>'
    )
    return rows


def _credits_section(doc: dict[str, Any]) -> list[str]:
    """Each grant: available before, applied, remaining after; grants not applied and why."""
    if "credits" not in doc:
        return []
    cur, c = doc["currency"], doc["credits"]
    rows = [
        f'<tr><td><code>{escape(g["grant"])}</code> <span class="note">'
        f"{escape(g['source'])}{_scope(g)}{_expiry(g)}</span></td>"
        f'<td class="n">{_money(cur, g["available"])}</td>'
        f'<td class="n">{_money(cur, g["applied"])}</td>'
        f'<td class="n">{_money(cur, g["remaining"])}</td></tr>'
        for g in c["applied"]
    ]
    rows.append(
        f'<tr class="sum"><td>Total</td><td></td>'
        f'<td class="n">{_money(cur, c["applied_total"])}</td>'
        f'<td class="n">{_money(cur, c["remaining_total"])}</td></tr>'
    )
    notes = [
        f'<p class="note">Not applied: <code>{escape(g["grant"])}</code> '
        f"({escape(g['currency'])}&nbsp;{escape(g['amount'])}): {escape(g['reason'])}.</p>"
        for g in c["not_applied"]
    ]
    return [
        "<h2>Prepaid credits</h2><table><thead><tr><th>Grant</th>"
        '<th class="n">Available</th><th class="n">Applied</th>'
        '<th class="n">Remaining</th></tr></thead><tbody>',
        *rows,
        "</tbody></table>",
        *notes,
    ]


def _scope(g: dict[str, Any]) -> str:
    meters = g["scope"]["meters"]
    return f", for {escape(', '.join(meters))} only" if meters else ""


def _expiry(g: dict[str, Any]) -> str:
    return f", expires {escape(g['expires_at'][:10])}" if g["expires_at"] else ""


def render_html(doc: dict[str, Any]) -> str:
    """Return the invoice page (deterministic: no clock, no randomness)."""
    title = "Invoice" if doc["status"] == "issued" else "Preview (not an invoice)"
    meta = "".join(
        f"<dt>{k}</dt><dd>{escape(str(v))}</dd>"
        for k, v in (
            ("Number", doc["number"]),
            ("Issue date", doc["issue_date"]),
            ("Period", f"{doc['period_start'][:10]} to {_last_day(doc['period_end'])}"),
            ("Customer", doc["customer"]),
            ("Plan", doc["plan"]),
        )
    )
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            f"<title>{escape(title)} {escape(doc['number'])}</title><style>{_CSS}</style></head>",
            '<body><main class="sheet">',
            f'<header><div class="brand">tollhouse</div><div><h1>{escape(title)}</h1>'
            f"<dl>{meta}</dl></div></header>",
            _due(doc),
            '<h2>Charges</h2><table><thead><tr><th>Item</th><th class="n">Quantity</th>'
            '<th class="n">Unit price</th><th class="n">Amount</th></tr></thead><tbody>',
            *_charge_rows(doc),
            *_total_rows(doc),
            "</tbody></table>",
            *_credits_section(doc),
            "<h2>Usage over time</h2>",
            _charts(doc),
            '<footer><p class="note">Amounts are rounded per line to the currency\'s minor unit '
            "(half to even); the total is the sum of the rounded lines. Each usage line carries "
            "the SHA-256 of the sorted request ids behind it, so any charge can be traced to the "
            "requests that made it.</p></footer>",
            "</main></body></html>",
            "",
        ]
    )


def _due(doc: dict[str, Any]) -> str:
    """The headline: the total, or with prepaid credits the amount due after them."""
    what, amount = (
        ("Amount due", doc["amount_due"]) if "credits" in doc else ("Total", doc["total"])
    )
    return (
        f'<section class="due"><span>{what} for {escape(doc["period"])}</span>'
        f"<strong>{_money(doc['currency'], amount)}</strong></section>"
    )


def _last_day(period_end_iso: str) -> str:
    """The period's last day, for people: the end is exclusive (00:00 UTC of the next period)."""
    end = datetime.strptime(period_end_iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (end - timedelta(seconds=1)).strftime("%Y-%m-%d")
