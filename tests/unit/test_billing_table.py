"""`tollhouse bill` and the demo print invoices as an aligned table."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from tollhouse.billing.table import format_invoices


@dataclass(frozen=True)
class _Summary:
    number: str
    customer: str
    currency: str
    total: Decimal
    status: str
    files: tuple[Path, ...]


def test_columns_line_up_whatever_the_cell_widths() -> None:
    """Every row starts each column at the same offset; totals are right-aligned."""
    rows = [
        _Summary(
            "INV-2026-11-a-0001",
            "a",
            "USD",
            Decimal("0.00"),
            "issued",
            (Path("/x/a.json"), Path("/x/a.html")),
        ),
        _Summary(
            "INV-2026-11-globex-0001",
            "globex-industries",
            "USD",
            Decimal("1234.50"),
            "preview",
            (Path("/x/globex.html"),),
        ),
    ]
    lines = format_invoices(rows).splitlines()
    assert len(lines) == 4  # header, rule, two invoices
    header, rule = lines[0], lines[1]
    starts = [header.index(h) for h in ("customer", "total", "status", "HTML invoice")]
    for line in lines[2:]:
        for start in starts:
            assert line[start - 2 : start] == "  ", (line, start)
            assert line[start] != " " or line[start:].lstrip().startswith(("USD",)), line
    assert lines[2].index("/x/a.html") == lines[3].index("/x/globex.html") == starts[3]
    assert lines[2].index("0.00") + 4 == lines[3].index("1234.50") + 7  # right edges agree
    assert set(rule.replace(" ", "")) == {"-"}


def test_an_invoice_without_html_shows_a_dash() -> None:
    """A summary with no HTML file still fills the last column."""
    row = _Summary("INV-1", "c", "EUR", Decimal("1"), "issued", (Path("c.csv"),))
    assert format_invoices([row]).splitlines()[2].endswith("  -")


@dataclass(frozen=True)
class _WithDue(_Summary):
    amount_due: Decimal | None = None


def test_amount_due_column_appears_with_prepaid_credits() -> None:
    """With credits on any invoice a right-aligned due column follows total; others show -."""
    rows = [
        _WithDue(
            "INV-1", "a", "USD", Decimal("20.20"), "issued", (Path("a.html"),), Decimal("2.31")
        ),
        _WithDue("INV-2", "b", "USD", Decimal("5.00"), "issued", (Path("b.html"),)),
    ]
    lines = format_invoices(rows).splitlines()
    assert lines[0].split() == ["invoice", "customer", "total", "due", "status", "HTML", "invoice"]
    assert lines[2].split()[4:7] == ["USD", "2.31", "issued"]
    assert lines[3].split()[4:6] == ["-", "issued"]
    assert lines[2].index("2.31") + 4 == lines[3].index(" -  ") + 2  # right edges agree
