"""When subscriptions start: `default_plan` callers and config customers (`since:`), billed once.

The real job (`main_bill`, as the CronJob runs it) on a real SQLite meter and ledger; the clock is
the CLI's `--now`. Plan `team`: base fee 19.99 per period, 50 requests included, then 0.003 each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import Clock
from tests.support.billing import open_meter, record, write_meter
from tests.support.billing_store import MY_PLANS, in_store
from tollhouse.billing.job_cli import add_bill_arguments, main_bill
from tollhouse.billing.ledger import open_ledger
from tollhouse.billing.periods import period_for_label
from tollhouse.billing.pricing import BaseFeeSegment, prorate_segments
from tollhouse.config import ConfigError, parse_config
from tollhouse.store import migrate


def _ts(when: str) -> int:
    return int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp())


CAROL_FIRST = _ts("2020-10-10T12:00:00")  # carol: a default_plan caller, first request


def _write_config(tmp: Path, customers: dict[str, Any], default_plan: str | None = None) -> None:
    (tmp / "tollhouse.yaml").write_text(
        yaml.safe_dump(
            {
                "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
                "plans": json.loads(json.dumps(MY_PLANS)),
                "customers": customers,
                "default_plan": default_plan,
                "metering": {"meter": f"sqlite:///{tmp}/meter.db"},
                "billing": {
                    "ledger": f"sqlite:///{tmp}/ledger.db",
                    "invoices_dir": str(tmp / "inv"),
                },
            }
        )
    )


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


def _base_fees(tmp: Path, number: str) -> list[tuple[str, str, str, bool]]:
    doc = json.loads((tmp / "inv" / f"{number}.json").read_text())
    return [(b["from"], b["to"], b["amount"], b["prorated"]) for b in doc["base_fees"]]


def _first_period_fee(start_s: int, label: str) -> Decimal:
    """The base fee of ``team`` from ``start_s`` to the end of ``label``, by pricing's rules."""
    p = period_for_label(label, None)
    seg = BaseFeeSegment("team", Decimal("19.99"), start_s, p.end_s, p.seconds)
    return prorate_segments([seg], "USD")[0]


@pytest.fixture
def carol(tmp_path: Path) -> Path:
    """default_plan `team`; config customer beta; carol, known to no one, calls every 10 h.

    carol's 60 requests run from 2020-10-10T12:00Z (52 of them in October) to 2020-11-04.
    """
    _write_config(tmp_path, {"beta": {"plan": "starter", "since": "2020-01-01"}}, "team")
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"c{i}", "carol", CAROL_FIRST + 36_000 * i, {"requests": 1}) for i in range(60)]
        + [record(f"b{i}", "beta", _ts("2020-10-02") + i, {"requests": 1}) for i in range(10)],
    )
    return tmp_path


def test_default_plan_caller_is_invoiced_from_its_first_request(
    carol: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A caller served through default_plan is invoiced, listed, its first period prorated.

    October's base fee runs from carol's first request (19.99 x 21.5 / 31 days = 13.86), plus 2
    requests over the 50 included (0.006 -> 0.01); the output names carol as a default_plan
    customer with its start in ISO 8601 UTC.
    """
    assert _bill(carol, "--now", "2020-11-20T00:17:00") == 0
    out, err = capsys.readouterr()
    assert "PROBLEM" not in err
    assert re.search(r"TH-2020-10-carol +carol +USD 13\.87 +issued ", out), out
    assert "default_plan  carol  team  since 2020-10-10T12:00:00Z" in out
    assert _first_period_fee(CAROL_FIRST, "2020-10") == Decimal("13.86")
    assert _base_fees(carol, "TH-2020-10-carol") == [
        ("2020-10-10T12:00:00Z", "2020-11-01T00:00:00Z", "13.86", True)
    ]
    doc = json.loads((carol / "inv" / "TH-2020-10-carol.json").read_text())
    assert (doc["plan"], doc["lines"][0]["quantity"]) == ("team", 52)
    assert ("carol", "2020-10", "13.87") in _issued(carol)


def test_default_plan_caller_due_periods_are_issued_once_and_rerun_identically(
    carol: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --period every due period of carol is issued exactly once, in order.

    A second run issues nothing new; a later run issues November (full fee, 8 requests, all
    included) and December; `--period` re-renders an issued invoice byte for byte.
    """
    assert _bill(carol, "--now", "2020-11-20T00:17:00") == 0
    assert _bill(carol, "--now", "2020-11-21T00:17:00") == 0
    assert "nothing due" in capsys.readouterr().out
    assert _bill(carol, "--now", "2021-01-05T00:17:00") == 0
    carols = [(p, t) for c, p, t in _issued(carol) if c == "carol"]
    assert carols == [("2020-10", "13.87"), ("2020-11", "19.99"), ("2020-12", "19.99")]
    capsys.readouterr()
    assert _bill(carol, "--period", "2020-10", "--out", str(carol / "again")) == 0
    again = capsys.readouterr().out
    assert re.search(r"TH-2020-10-carol +carol +USD 13\.87 +already_issued ", again), again
    for ext in ("json", "csv", "html"):
        name = f"TH-2020-10-carol.{ext}"
        assert (carol / "again" / name).read_bytes() == (carol / "inv" / name).read_bytes()


def test_no_invoice_for_a_period_before_the_first_request(
    carol: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--period` of a month before carol's first request issues carol nothing (exit 0).

    beta, subscribed since 2020-01-01, is still invoiced for that month; carol gets a note.
    """
    assert _bill(carol, "--period", "2020-09", "--now", "2020-11-20T00:17:00") == 0
    out = capsys.readouterr().out
    assert "NOTE carol: 2020-09: not invoiced, the subscription starts 2020-10-10T12:00:00Z" in out
    assert _issued(carol) == [("beta", "2020-09", "5.00")]


def test_since_starts_a_config_customer_and_prorates_its_first_period(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`since: 2020-10-15`: no invoice for September; October's fee for its last 17 days only.

    Then a due run issues November (a full period) once; nothing before `since` is invoiced.
    """
    _write_config(tmp_path, {"dora": {"plan": "team", "since": "2020-10-15T00:00:00Z"}})
    assert _bill(tmp_path, "--period", "2020-09", "--now", "2020-11-20T00:17:00") == 0
    assert (
        "NOTE dora: 2020-09: not invoiced, the subscription starts 2020-10-15T00:00:00Z"
        in capsys.readouterr().out
    )
    assert _issued(tmp_path) == []
    assert _bill(tmp_path, "--period", "2020-10", "--now", "2020-11-20T00:17:00") == 0
    fee = _first_period_fee(_ts("2020-10-15"), "2020-10")
    assert fee == Decimal("10.96")  # 19.99 x 17 / 31
    assert _base_fees(tmp_path, "TH-2020-10-dora") == [
        ("2020-10-15T00:00:00Z", "2020-11-01T00:00:00Z", "10.96", True)
    ]
    assert _bill(tmp_path, "--now", "2020-12-20T00:17:00") == 0
    assert _bill(tmp_path, "--now", "2020-12-21T00:17:00") == 0
    assert _issued(tmp_path) == [("dora", "2020-10", "10.96"), ("dora", "2020-11", "19.99")]


def test_config_customer_without_since_starts_at_its_first_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without `since:` and without usage, eve is not invoiced (a note says why, exit 0).

    Once eve calls (from 2020-11-03T06:00Z), November is invoiced from that request, prorated;
    October, before it, never is.
    """
    _write_config(tmp_path, {"eve": {"plan": "team"}})
    assert _bill(tmp_path, "--now", "2020-11-20T00:17:00") == 0
    out = capsys.readouterr().out
    assert "NOTE eve: not billed: no billable usage yet and no `since:`" in out
    assert _issued(tmp_path) == []
    first = _ts("2020-11-03T06:00:00")
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"e{i}", "eve", first + 60 * i, {"requests": 1}) for i in range(5)],
    )
    assert _bill(tmp_path, "--now", "2020-12-02T00:17:00") == 0
    fee = _first_period_fee(first, "2020-11")
    assert _issued(tmp_path) == [("eve", "2020-11", str(fee))]
    assert _base_fees(tmp_path, "TH-2020-11-eve") == [
        ("2020-11-03T06:00:00Z", "2020-12-01T00:00:00Z", str(fee), True)
    ]
    assert _bill(tmp_path, "--period", "2020-10", "--now", "2020-12-02T00:17:00") == 0
    assert "NOTE eve: 2020-10: not invoiced" in capsys.readouterr().out
    assert [p for _, p, _ in _issued(tmp_path)] == ["2020-11"]


@pytest.mark.parametrize("since", ["2020-13-01", "yesterday", 12, "1969-12-31"])
def test_bad_since_is_a_config_error_with_its_dotted_path(
    tmp_path: Path, since: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `since:` that is no UTC date/time (or before 1970) names `customers.eve.since`; exit 2."""
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {"plans": {"team": {}}, "customers": {"eve": {"plan": "team", "since": since}}}
        )
    assert [p for p, _ in exc.value.problems] == ["customers.eve.since"]
    _write_config(tmp_path, {"eve": {"plan": "team", "since": since}})
    assert _bill(tmp_path, "--now", "2020-11-20T00:17:00") == 2
    assert "customers.eve.since" in capsys.readouterr().err


def test_since_accepts_dates_and_utc_times() -> None:
    """`since:` takes a YAML date (midnight UTC) or a date-time; an offset is converted to UTC."""
    cfg = parse_config(
        yaml.safe_load(
            "plans: {team: {}}\ncustomers:\n"
            "  a: {plan: team, since: 2020-10-15}\n"
            "  b: {plan: team, since: 2020-10-15T09:30:00Z}\n"
            "  c: {plan: team, since: '2020-10-15T11:30:00+02:00'}\n"
            "  d: {plan: team, since: '2020-10-15 09:30:00'}\n"
        )
    )
    assert [cfg.customers[c].since_s for c in "abcd"] == [
        _ts("2020-10-15"),
        *[_ts("2020-10-15T09:30:00")] * 3,
    ]


def test_usage_before_since_is_billed_on_the_first_invoice_not_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Requests admitted before `since:` are on the first invoice (an adjustment), not lost.

    dora starts 2020-10-15 but was served 60 requests on 2020-09-20 and 70 on 2020-10-20: no
    September invoice; October's invoice has its 70 requests (20 over the 50 included) and
    September's 60 as an adjustment (10 over, priced with dora's plan).
    """
    _write_config(tmp_path, {"dora": {"plan": "team", "since": "2020-10-15"}})
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"s{i}", "dora", _ts("2020-09-20") + i, {"requests": 1}) for i in range(60)]
        + [record(f"o{i}", "dora", _ts("2020-10-20") + i, {"requests": 1}) for i in range(70)],
    )
    assert _bill(tmp_path, "--now", "2020-11-20T00:17:00") == 0
    assert "PROBLEM" not in capsys.readouterr().err
    assert [p for _, p, _ in _issued(tmp_path)] == ["2020-10"]
    doc = json.loads((tmp_path / "inv" / "TH-2020-10-dora.json").read_text())
    assert (doc["lines"][0]["quantity"], doc["lines"][0]["amount"]) == (70, "0.06")
    assert [(a["period"], a["quantity"], a["amount"]) for a in doc["adjustments"]] == [
        ("2020-09", 60, "0.03")
    ]
    assert doc["total"] == str(Decimal("10.96") + Decimal("0.06") + Decimal("0.03"))


def test_late_usage_before_a_first_usage_start_is_an_adjustment(
    carol: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Late usage from before carol's known start is an adjustment; issued invoices stay.

    A record admitted before her first known request, arriving after her first invoice, is
    billed once as an adjustment on the next invoice; the issued invoice never changes.
    """
    assert _bill(carol, "--now", "2020-11-20T00:17:00") == 0
    first = (carol / "inv" / "TH-2020-10-carol.json").read_bytes()
    write_meter(
        open_meter(carol / "meter.db"),
        [record("late", "carol", _ts("2020-10-05"), {"requests": 1})],
    )
    assert _bill(carol, "--now", "2020-12-02T00:17:00") == 0
    assert "PROBLEM" not in capsys.readouterr().err
    nov = json.loads((carol / "inv" / "TH-2020-11-carol.json").read_text())
    assert [(a["period"], a["quantity"], a["previously_billed"]) for a in nov["adjustments"]] == [
        ("2020-10", 1, 52)
    ]
    assert _bill(carol, "--period", "2020-10", "--now", "2020-12-02T00:17:00") == 0
    assert (carol / "inv" / "TH-2020-10-carol.json").read_bytes() == first


def test_default_plan_callers_are_billed_beside_the_entitlement_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a store (the distributed overlay's shape), an unknown caller is billed on default_plan.

    Store customer anna is billed from her anchor; carol, in neither the store nor the config, is
    billed from her first request and listed as a default_plan customer.
    """
    url = f"sqlite://{tmp_path}/store.db"
    asyncio.run(migrate(url))
    in_store(
        url,
        Clock(_ts("2020-10-01T08:00:00")),
        lambda s: s.create_customer(actor="t", name="Anna", plan="team", customer_id="anna"),
    )
    _write_config(tmp_path, {}, "team")
    cfg = yaml.safe_load((tmp_path / "tollhouse.yaml").read_text())
    (tmp_path / "tollhouse.yaml").write_text(yaml.safe_dump({**cfg, "store": {"url": url}}))
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"c{i}", "carol", CAROL_FIRST + 36_000 * i, {"requests": 1}) for i in range(60)],
    )
    assert _bill(tmp_path, "--now", "2020-11-20T00:17:00") == 0
    out = capsys.readouterr().out
    assert "default_plan  carol  team  since 2020-10-10T12:00:00Z" in out
    assert "default_plan  anna" not in out
    assert _issued(tmp_path) == [("anna", "2020-10", "19.99"), ("carol", "2020-10", "13.87")]


def test_an_invoiced_customer_without_usage_or_since_stays_subscribed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A customer already invoiced (here while it had `since:`) has started, usage or not.

    fred, invoiced for September and October with no usage, loses `since:` (as customers
    invoiced before `since:` existed have none): the next due run still issues November,
    with the full base fee, and no note.
    """
    _write_config(tmp_path, {"fred": {"plan": "team", "since": "2020-09-01"}})
    assert _bill(tmp_path, "--now", "2020-11-20T00:17:00") == 0
    assert [p for _, p, _ in _issued(tmp_path)] == ["2020-09", "2020-10"]
    _write_config(tmp_path, {"fred": {"plan": "team"}})
    capsys.readouterr()
    assert _bill(tmp_path, "--now", "2020-12-20T00:17:00") == 0
    assert "NOTE" not in capsys.readouterr().out
    assert _issued(tmp_path)[-1] == ("fred", "2020-11", "19.99")
    assert _base_fees(tmp_path, "TH-2020-11-fred") == [
        ("2020-11-01T00:00:00Z", "2020-12-01T00:00:00Z", "19.99", False)
    ]
