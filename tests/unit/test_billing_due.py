"""`tollhouse bill` without `--period`: every ended, unissued period of every customer, once.

The real job (`main_bill`, as the CronJob runs it) on a real SQLite meter, ledger and entitlement
store; the clock is the CLI's `--now`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from tests.support import Clock
from tests.support.billing import open_meter, record, write_meter
from tests.support.billing_store import MY_PLANS, in_store
from tollhouse.billing.job_cli import add_bill_arguments, main_bill
from tollhouse.billing.ledger import open_ledger
from tollhouse.store import StoreService, migrate


def _ts(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


OCT_1 = _ts("2020-10-01")
OCT_15 = _ts("2020-10-15")


def _bill(tmp: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tollhouse bill")
    add_bill_arguments(parser)
    return main_bill(parser.parse_args(["--config", str(tmp / "tollhouse.yaml"), *argv]))


def _issued(tmp: Path) -> list[tuple[str, str, str]]:
    """``(customer, period, total)`` of every invoice in the ledger, sorted."""
    ledger = open_ledger(f"sqlite:///{tmp}/ledger.db")
    try:
        rows = ledger.exec("SELECT customer, period, document FROM invoices ORDER BY 1, 2")
        return [(str(c), str(p), str(json.loads(d)["total"])) for c, p, d in rows]
    finally:
        ledger.close()


@pytest.fixture
def two_customers(tmp_path: Path) -> Path:
    """Config customer beta (calendar months) and store customer anna, anchored on 2020-10-15.

    beta (starter) has 40 x 100 requests in October; anna (team), anchored by her creation day,
    60 requests from 2020-10-15 to 2020-11-08 (every 10 h).
    """
    url = f"sqlite://{tmp_path}/store.db"
    asyncio.run(migrate(url))

    async def create(s: StoreService) -> None:
        await s.create_customer(actor="t", name="Anna", plan="team", customer_id="anna")

    in_store(url, Clock(OCT_15 + 3600), create)
    (tmp_path / "tollhouse.yaml").write_text(
        yaml.safe_dump(
            {
                "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
                "plans": json.loads(json.dumps(MY_PLANS)),
                "customers": {"beta": {"plan": "starter"}},
                "metering": {"meter": f"sqlite:///{tmp_path}/meter.db"},
                "billing": {
                    "ledger": f"sqlite:///{tmp_path}/ledger.db",
                    "invoices_dir": str(tmp_path / "inv"),
                },
                "store": {"url": url},
            }
        )
    )
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"b{i}", "beta", OCT_1 + 3600 * i, {"requests": 100}) for i in range(40)]
        + [record(f"a{i}", "anna", OCT_15 + 7200 + 36_000 * i, {"requests": 1}) for i in range(60)],
    )  # every 10 h, the last on 2020-11-08
    return tmp_path


def test_nothing_ended_exits_0_and_issues_nothing(
    two_customers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing ended yet (2020-10-20): exit 0, no invoice, and the output says nothing is due.

    Neither beta's October nor anna's 10-15..11-15 has ended; no PROBLEM for an open period.
    """
    assert _bill(two_customers, "--now", "2020-10-20T00:17:00") == 0
    out, err = capsys.readouterr()
    assert "nothing due" in out
    assert "PROBLEM" not in err
    assert _issued(two_customers) == []


def test_one_run_issues_every_ended_period_once(
    two_customers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One run issues both ended periods; a second run issues nothing new and exits 0.

    On 2020-11-20 beta's calendar October and anna's anniversary period (10-15..11-15) have ended.
    anna's invoice carries that period's base fee and is dated its end (arrears, as documented).
    """
    assert _bill(two_customers, "--now", "2020-11-20T00:17:00") == 0
    out = " ".join(capsys.readouterr().out.split())  # the table's columns are padded
    assert "TH-2020-10-anna anna USD 20.02 issued" in out  # 19.99 + (60 - 50) * 0.003
    assert "TH-2020-10-beta beta USD 7.80 issued" in out  # (4000 - 100) * 0.002
    assert _issued(two_customers) == [("anna", "2020-10", "20.02"), ("beta", "2020-10", "7.80")]
    anna = json.loads((two_customers / "inv" / "TH-2020-10-anna.json").read_text())
    assert (anna["period_start"][:10], anna["period_end"][:10]) == ("2020-10-15", "2020-11-15")
    # The base fee in arrears: this period's fee, on this period's invoice, issued at its end.
    assert [(b["from"][:10], b["to"][:10], b["amount"]) for b in anna["base_fees"]] == [
        ("2020-10-15", "2020-11-15", "19.99")
    ]
    assert anna["issue_date"] == "2020-11-15"

    assert _bill(two_customers, "--now", "2020-11-20T00:17:00") == 0
    out, err = capsys.readouterr()
    assert "issued" not in out.replace("nothing due: every ended period is already invoiced", "")
    assert "nothing due" in out
    assert "PROBLEM" not in err
    assert len(_issued(two_customers)) == 2


def test_a_late_run_catches_up_every_missed_period_in_order(
    two_customers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run after missed ones (2021-01-20) issues every ended period of each, oldest first.

    beta: October, November, December; anna: the periods from 10-15, 11-15 and 12-15.
    `--period` still re-renders an issued period as before.
    """
    assert _bill(two_customers, "--now", "2021-01-20T00:17:00") == 0
    assert [(c, p) for c, p, _ in _issued(two_customers)] == [
        ("anna", "2020-10"),
        ("anna", "2020-11"),
        ("anna", "2020-12"),
        ("beta", "2020-10"),
        ("beta", "2020-11"),
        ("beta", "2020-12"),
    ]
    out = capsys.readouterr().out
    assert out.index("TH-2020-10-anna") < out.index("TH-2020-11-anna")
    assert _bill(two_customers, "--period", "2020-11") == 0  # --period works as before
    assert "TH-2020-11-beta beta USD 5.00 already_issued" in " ".join(
        capsys.readouterr().out.split()
    )


def test_now_later_than_the_clock_is_refused(
    two_customers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--now` later than the clock or malformed is a bad argument (exit 2); nothing is issued.

    It may only move the clock back: a later time would issue periods that are still open.
    """
    assert _bill(two_customers, "--now", f"{date.today().year + 1}-01-01") == 2
    assert "--now must not be later" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _bill(two_customers, "--now", "yesterday")
    assert exc.value.code == 2
    assert not (two_customers / "ledger.db").exists()


def _cancelled_fox(tmp: Path) -> None:
    """Store customer fox (team), created 2020-10-15 (its anchor), cancelled on 2020-10-25."""
    url = f"sqlite://{tmp}/store.db"
    asyncio.run(migrate(url))
    clock = Clock(OCT_15 + 3600)

    async def setup(s: StoreService) -> None:
        await s.create_customer(actor="t", name="Fox", plan="team", customer_id="fox")
        clock.now = _ts("2020-10-25")
        await s.set_status("fox", "cancelled", actor="t")

    in_store(url, clock, setup)
    (tmp / "tollhouse.yaml").write_text(
        yaml.safe_dump(
            {
                "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
                "plans": json.loads(json.dumps(MY_PLANS)),
                "metering": {"meter": f"sqlite:///{tmp}/meter.db"},
                "billing": {
                    "ledger": f"sqlite:///{tmp}/ledger.db",
                    "invoices_dir": str(tmp / "inv"),
                },
                "store": {"url": url},
            }
        )
    )


def _fox_usage(tmp: Path, prefix: str, day: str, n: int) -> None:
    write_meter(
        open_meter(tmp / "meter.db"),
        [record(f"{prefix}{i}", "fox", _ts(day) + i, {"requests": 1}) for i in range(n)],
    )


def test_cancelled_customer_is_billed_up_to_its_cancellation_period_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cancelled on 2020-10-25: the 10-15 period is invoiced, no later one; then nothing is due.

    Usage that arrives later for a cancelled period is reported (exit 1), never dropped, with
    its admission time in ISO 8601 UTC.
    """
    _cancelled_fox(tmp_path)
    _fox_usage(tmp_path, "f", "2020-10-20", 5)
    assert _bill(tmp_path, "--now", "2020-12-20T00:17:00") == 0
    assert _issued(tmp_path) == [("fox", "2020-10", "19.99")]
    assert "nothing due" not in capsys.readouterr().out
    assert _bill(tmp_path, "--now", "2020-12-21T00:17:00") == 0
    assert "nothing due" in capsys.readouterr().out
    _fox_usage(tmp_path, "g", "2020-11-20", 3)
    assert _bill(tmp_path, "--now", "2021-01-20T00:17:00") == 1
    err = capsys.readouterr().err
    assert "PROBLEM fox: cancelled before" in err
    assert "(admitted at 2020-11-20T00:00:00Z)" in err  # ISO 8601 UTC, not Unix time
    assert _issued(tmp_path) == [("fox", "2020-10", "19.99")]


def test_usage_after_cancellation_in_the_same_run_as_the_last_invoice_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Usage in a cancelled period that reaches the ledger with the last invoice's run: exit 1.

    It is in the generation that invoice sealed, but not on it (outside its period), and no
    later invoice will carry it, so it must be reported, not dropped.
    """
    _cancelled_fox(tmp_path)
    _fox_usage(tmp_path, "f", "2020-10-20", 5)
    _fox_usage(tmp_path, "g", "2020-11-20", 3)
    assert _bill(tmp_path, "--now", "2020-12-20T00:17:00") == 1
    assert "PROBLEM fox: cancelled before" in capsys.readouterr().err
    assert _issued(tmp_path) == [("fox", "2020-10", "19.99")]
    assert _bill(tmp_path, "--period", "2020-11", "--now", "2020-12-20T00:17:00") == 1
    assert "PROBLEM fox: cancelled before 2020-11" in capsys.readouterr().err
