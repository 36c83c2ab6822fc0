"""Invoice documents -> files: JSON (machines), CSV (finance), HTML (people). Byte-stable.

Every renderer takes the plain JSON document (as stored in the ledger), so an issued invoice is
re-rendered from what was issued, never re-priced.
"""

from __future__ import annotations

import csv
import io
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollhouse.billing.render_html import render_html

__all__ = ["render_csv", "render_json", "write_invoice_files"]

_CSV_FIELDS = (
    "kind",
    "description",
    "period",
    "meter",
    "quantity",
    "included",
    "billable_quantity",
    "unit_price",
    "amount",
    "currency",
    "records",
    "digest",
)


def render_json(doc: dict[str, Any]) -> str:
    """Return canonical JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _tier_label(t: dict[str, Any]) -> str:
    last = "and up" if t["last_unit"] is None else f"to {t['last_unit']}"
    return f"units {t['first_unit']} {last}"


def render_csv(doc: dict[str, Any]) -> str:
    """Return one row per charge (base fee, meter, tier, top-up, adjustment) plus totals.

    With prepaid credits: a negative ``credit`` row per grant applied, ``credits_applied``,
    ``amount_due`` and ``credits_remaining`` after ``total`` (grants not applied: a row each).
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n", extrasaction="raise")
    w.writeheader()
    cur, period = doc["currency"], doc["period"]

    def row(**kw: Any) -> None:
        w.writerow({"currency": cur, "period": period, **kw})

    for b in doc["base_fees"]:
        desc = f"base fee {b['plan']}" + (
            f" prorated {b['from']}..{b['to']}" if b["prorated"] else ""
        )
        row(kind="base_fee", description=desc, unit_price=b["fee"], amount=b["amount"])
    for ln in doc["lines"]:
        model = ln["model"] + (f" of {ln['package_size']}" if ln.get("package_size") else "")
        row(
            kind="usage",
            description=f"{ln['meter']} ({model})",
            meter=ln["meter"],
            quantity=ln["quantity"],
            included=ln["included"],
            billable_quantity=ln["billable_quantity"],
            unit_price=ln["unit_price"] or "",
            amount=ln["amount"],
            records=ln["records"],
            digest=ln["digest"],
        )
        for t in ln["tiers"]:
            label = _tier_label(t)
            if ln["model"] == "volume":
                label = "all units at tier " + label.removeprefix("units ")
            row(
                kind="tier",
                description=label,
                meter=ln["meter"],
                quantity=t["quantity"],
                unit_price=t["unit_price"],
                amount=t["amount"],
            )
    row(kind="subtotal", description="subtotal", amount=doc["subtotal"])
    if Decimal(doc["minimum_topup"]) != 0:
        row(
            kind="minimum_topup",
            description=f"minimum charge {doc['minimum']}",
            amount=doc["minimum_topup"],
        )
    for a in doc["adjustments"]:
        w.writerow(
            {
                "currency": cur,
                "kind": "adjustment",
                "period": a["period"],
                "description": f"usage of {a['period']} not billed before",
                "meter": a["meter"],
                "quantity": a["quantity"],
                "amount": a["amount"],
                "records": a["records"],
                "digest": a["digest"],
            }
        )
    row(kind="total", description="total", amount=doc["total"])
    if "credits" in doc:
        _credit_rows(doc, row)
    return buf.getvalue()


def _credit_rows(doc: dict[str, Any], row: Any) -> None:
    """Prepaid credits: one negative row per grant applied, the amount due, what is left."""
    c = doc["credits"]
    for g in c["applied"]:
        if Decimal(g["applied"]):
            row(
                kind="credit",
                description=f"prepaid credit {g['grant']} ({g['source']});"
                f" remaining {g['remaining']}",
                amount=_neg(g["applied"]),
            )
    for g in c["not_applied"]:
        row(
            kind="credit_not_applied",
            description=f"prepaid credit {g['grant']} of"
            f" {g['amount']} {g['currency']} not applied: {g['reason']}",
            amount="",
        )
    row(
        kind="credits_applied",
        description="prepaid credits applied",
        amount=_neg(c["applied_total"]),
    )
    row(kind="amount_due", description="amount due", amount=doc["amount_due"])
    row(
        kind="credits_remaining",
        description="prepaid credits remaining after this invoice",
        amount=c["remaining_total"],
    )


def _neg(amount: str) -> str:
    return format(Decimal(0) - Decimal(amount), "f")  # "0.00" stays unsigned


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_invoice_files(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``<number>.json|.csv|.html`` atomically (blocking; the job is its own process)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = doc["number"] + (".preview" if doc["status"] == "preview" else "")
    files = []
    for ext, text in (
        ("json", render_json(doc)),
        ("csv", render_csv(doc)),
        ("html", render_html(doc)),
    ):
        p = out_dir / f"{stem}.{ext}"
        _write(p, text)
        files.append(p)
    return files
