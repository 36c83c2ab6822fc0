"""The customer usage page: :class:`UsageReport` rendered as one self-contained HTML document.

The same report as the JSON of ``GET /v1/usage``. Inline CSS (allowed by its hash in the
Content-Security-Policy, :func:`content_security_policy`), inline SVG charts, no script, no font,
no image, nothing fetched: the page works offline and under ``default-src 'none'``. Every value
from the report is escaped (customer ids and meter names are user input).
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape

from tollhouse.billing.usage import InvoiceLink, MeterUsage, PlanPricing, UsageReport

__all__ = ["content_security_policy", "render_usage_page"]

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f1f5f9;color:#0f172a;
font:15px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:960px;margin:0 auto;padding:32px 20px 48px}
header{display:flex;justify-content:space-between;align-items:flex-end;gap:16px;
flex-wrap:wrap;margin-bottom:24px}
.brand{font-weight:700;color:#0f766e;letter-spacing:.03em;font-size:14px;text-transform:uppercase}
h1{margin:4px 0 0;font-size:26px;font-weight:650}
h2{font-size:17px;margin:36px 0 12px}
.sub{color:#64748b;font-size:14px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:14px}
.card{background:#fff;border-radius:12px;padding:18px 20px;
box-shadow:0 1px 2px rgba(15,23,42,.06),0 4px 16px rgba(15,23,42,.04)}
.card .label{color:#64748b;font-size:13px}
.card .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.card .hint{color:#64748b;font-size:12px;margin-top:4px}
.card.main{background:#0f766e;color:#fff}.card.main .label,.card.main .hint{color:#ccfbf1}
.card.shadow{background:#fffbeb;border:1px dashed #f59e0b;box-shadow:none}
.card.shadow .label{color:#92400e}
.meter{background:#fff;border-radius:12px;padding:20px 22px;margin-bottom:14px;
box-shadow:0 1px 2px rgba(15,23,42,.06)}
.meter h3{margin:0 0 10px;font-size:16px;display:flex;justify-content:space-between;gap:12px}
.meter h3 .amount{font-variant-numeric:tabular-nums;color:#0f766e}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:6px 18px;
margin:0 0 12px}
.stats dt{color:#64748b;font-size:12px}.stats dd{margin:0;font-weight:600;
font-variant-numeric:tabular-nums}
.gauge{height:8px;background:#e2e8f0;border-radius:4px;overflow:hidden;margin:4px 0 14px}
.gauge svg{display:block}
svg .bar{fill:#14b8a6}svg .bar.today{fill:#0f766e}svg .slot{fill:#f1f5f9}
svg .fill{fill:#14b8a6}svg .fill.full{fill:#dc2626}
svg text{font-size:10px;fill:#64748b}svg .grid{stroke:#e2e8f0}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:12px;overflow:hidden;
font-size:14px;box-shadow:0 1px 2px rgba(15,23,42,.06)}
th{text-align:left;color:#64748b;font-weight:500;padding:10px 14px;background:#f8fafc}
td{padding:10px 14px;border-top:1px solid #f1f5f9}
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
a{color:#0f766e;text-decoration:none;font-weight:500}a:hover{text-decoration:underline}
.links a{margin-left:10px}
.empty{color:#64748b;background:#fff;border-radius:12px;padding:18px 20px}
footer{margin-top:36px;color:#64748b;font-size:12px}
"""
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


def content_security_policy(html: str) -> str:
    """A strict CSP for ``html``: nothing may load; its inline ``<style>`` blocks by hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"
        for css in _STYLE.findall(html)
    )
    return (
        f"default-src 'none'; style-src {hashes or chr(39) + 'none' + chr(39)}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _money(cur: str, amount: Decimal) -> str:
    return f"{escape(cur)}&nbsp;{amount:,}"


def _qty(n: int) -> str:
    return f"{n:,}"


def _date(ts_s: int) -> str:
    return datetime.fromtimestamp(ts_s, UTC).strftime("%Y-%m-%d")


def _card(label: str, value: str, hint: str = "", cls: str = "", field: str = "") -> str:
    attr = f' data-field="{field}"' if field else ""
    hint_html = f'<div class="hint">{hint}</div>' if hint else ""
    return (
        f'<div class="card {cls}"><div class="label">{label}</div>'
        f'<div class="value"{attr}>{value}</div>{hint_html}</div>'
    )


def _shadow_card(s: PlanPricing) -> str:
    hint = (
        f"projected {_money(s.currency, s.projected_total)}. Shadow price for comparison "
        "only: you are not billed this."
    )
    return _card(
        f"Under the {escape(s.plan)} plan so far",
        _money(s.currency, s.charges_so_far),
        hint,
        "shadow",
        "shadow-charges",
    )


def _cards(r: UsageReport) -> str:
    cards = [
        _card(
            "Charges so far",
            _money(r.currency, r.charges_so_far),
            f"base fee {_money(r.currency, r.base_fee)} plus usage",
            "main",
            "charges-so-far",
        ),
        _card(
            "Projected for the period",
            _money(r.currency, r.projected_total),
            "at your current daily rate"
            + (f", minimum {_money(r.currency, r.minimum)}" if r.minimum else ""),
            field="projected-total",
        ),
    ]
    if r.credit_balance is not None:
        cards.append(
            _card(
                "Credit remaining",
                _money(r.currency, r.credit_balance),
                "prepaid, used before anything is charged",
                field="credit-balance",
            )
        )
    if r.shadow is not None:
        cards.append(_shadow_card(r.shadow))
    return f'<section class="cards">{"".join(cards)}</section>'


def _gauge(m: MeterUsage) -> str:
    if not m.quota:
        return ""
    share = min(1.0, m.used / m.quota)
    full = " full" if m.used >= m.quota else ""
    return (
        f'<div class="gauge"><svg viewBox="0 0 1000 8" width="100%" height="8" '
        f'preserveAspectRatio="none" role="img" aria-label="{round(share * 100)}% of quota">'
        f'<rect class="fill{full}" x="0" y="0" width="{round(share * 1000)}" height="8"/>'
        "</svg></div>"
    )


def _period_days(r: UsageReport) -> list[str]:
    start = datetime.fromtimestamp(r.period_start_s, UTC)
    n = max(1, -(-(r.period_end_s - r.period_start_s) // 86400))
    return [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(n)]


def _chart(meter: str, days: list[str], units: dict[str, int], today: str) -> str:
    w, h, left, bottom = 900, 140, 44, 18
    top = max(units.values(), default=0) or 1
    slot = (w - left) / len(days)
    parts = [
        f'<text x="0" y="12">{_qty(top)}</text><text x="0" y="{h - bottom}">0</text>',
        f'<line class="grid" x1="{left}" y1="{h - bottom}" x2="{w}" y2="{h - bottom}"/>',
    ]
    for i, day in enumerate(days):
        u = units.get(day, 0)
        x, bw = round(left + i * slot + slot * 0.15, 1), round(slot * 0.7, 1)
        bh = round((h - bottom - 8) * u / top, 1)
        cls = "bar today" if day == today else "bar"
        if day > today:
            parts.append(
                f'<rect class="slot" x="{x}" y="{h - bottom - 2}" width="{bw}" height="2"/>'
            )
        else:
            parts.append(
                f'<rect class="{cls}" data-day="{day}" data-units="{u}" x="{x}" '
                f'y="{round(h - bottom - bh, 1)}" width="{bw}" height="{bh}" rx="2">'
                f"<title>{day}: {_qty(u)} {escape(meter)}</title></rect>"
            )
        if i % 7 == 0:
            parts.append(f'<text x="{x}" y="{h - 4}">{day[5:]}</text>')
    return (
        f'<svg viewBox="0 0 {w} {h}" width="100%" role="img" '
        f'aria-label="{escape(meter)} per day">{"".join(parts)}</svg>'
    )


def _meter(r: UsageReport, m: MeterUsage, days: list[str], today: str) -> str:
    units = {d.date: d.units for d in r.daily if d.meter == m.meter}
    stats = [("Used", _qty(m.used), "used")]
    if m.quota is not None:
        stats += [
            ("Quota", _qty(m.quota), "quota"),
            ("Remaining", _qty(m.remaining or 0), "remaining"),
        ]
    if m.included:
        stats.append(
            (
                "Included left",
                f"{_qty(m.included_remaining)} of {_qty(m.included)}",
                "included-remaining",
            )
        )
    stats.append(("Projected", _qty(m.projected), "projected"))
    dl = "".join(f'<div><dt>{k}</dt><dd data-field="{f}">{v}</dd></div>' for k, v, f in stats)
    return (
        f'<article class="meter" data-meter="{escape(m.meter)}">'
        f'<h3><span>{escape(m.meter)}</span><span class="amount" data-field="charges">'
        f"{_money(r.currency, m.amount)}</span></h3>"
        f'<dl class="stats">{dl}</dl>{_gauge(m)}{_chart(m.meter, days, units, today)}'
        "</article>"
    )


def _invoice_row(inv: InvoiceLink) -> str:
    due = (
        ""
        if inv.amount_due is None
        else f'<br><span data-field="amount_due">due {_money(inv.currency, inv.amount_due)}</span>'
    )
    links = "".join(
        f'<a href="{escape(href)}">{ext.upper()}</a>' for ext, href in inv.links().items()
    )
    return (
        f'<tr data-invoice="{escape(inv.number)}"><td>{escape(inv.number)}</td>'
        f"<td>{escape(inv.period)}</td><td>{escape(inv.issue_date)}</td>"
        f'<td class="n">{_money(inv.currency, inv.total)}{due}</td>'
        f'<td class="n links">{links}</td></tr>'
    )


def _invoices(r: UsageReport) -> str:
    if not r.invoices:
        return (
            '<p class="empty">No invoices yet: your first one is issued when this period ends.</p>'
        )
    head = (
        '<tr><th>Invoice</th><th>Period</th><th>Issued</th><th class="n">Total</th>'
        '<th class="n">Download</th></tr>'
    )
    return (
        f"<table><thead>{head}</thead><tbody>"
        f"{''.join(_invoice_row(i) for i in r.invoices)}</tbody></table>"
    )


def render_usage_page(r: UsageReport) -> str:
    """Return the usage page of ``r`` (deterministic: everything comes from the report)."""
    days, today = _period_days(r), _date(r.as_of_s)
    meters = "".join(_meter(r, m, days, today) for m in r.meters) or (
        '<p class="empty">Nothing metered on your plan.</p>'
    )
    as_of = datetime.fromtimestamp(r.as_of_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
    last_day = _date(r.period_end_s - 1)
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            f"<title>Usage {escape(r.period)} · {escape(r.customer)}</title>",
            f"<style>{_CSS}</style></head><body><main>",
            f'<header><div><div class="brand">tollhouse</div><h1>Your usage</h1>'
            f'<div class="sub"><span data-field="customer">{escape(r.customer)}</span> · '
            f'<span data-field="plan">{escape(r.plan)}</span> plan · '
            f"{_date(r.period_start_s)} to {last_day}</div></div>"
            f'<div class="sub">as of {as_of}</div></header>',
            _cards(r),
            "<h2>Usage this period</h2>",
            meters,
            "<h2>Past invoices</h2>",
            _invoices(r),
            "<footer><p>Charges so far are what this period would cost if it ended now, priced "
            "exactly as your invoice will be; the projection assumes your current daily rate for "
            "the rest of the period. Units are counted when a request is admitted; the latest "
            "ones may still be on their way to the meter and are shown on today's bar."
            "</p></footer>",
            "</main></body></html>",
            "",
        ]
    )
