"""``tollhouse credits ...`` on a SQLite store: grant, list, balance, void, recharge, spend cap."""

from __future__ import annotations

import argparse
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tollhouse.store.cli import add_cli
from tollhouse.store.credit_models import MILLI
from tollhouse.store.credits_cli import major_to_minor

CONFIG = """\
meters: {requests: {}}
plans:
  free: {}
  pro: {price: {currency: JPY}}
store: {url: 'sqlite:///./store.db'}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """Run one command; return its exit code and parsed JSON output (or stderr text)."""
    parser = argparse.ArgumentParser(prog="tollhouse")
    add_cli(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(list(argv))
        code = int(args.func(args))
    except SystemExit as e:  # argparse refused the arguments
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


@pytest.fixture
def cfg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """A migrated store from a config, with customer ``acme`` on plan free (no price)."""
    (tmp_path / "tollhouse.yaml").write_text(CONFIG)
    args = ["--config", str(tmp_path / "tollhouse.yaml")]
    assert run(capsys, "store", "migrate", *args)[0] == 0
    assert (
        run(
            capsys, "customers", "create", "--name", "Acme", "--plan", "free", "--id", "acme", *args
        )[0]
        == 0
    )
    return args


def test_grant_list_balance_void_round_trip(
    cfg: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A grant shows in list and balance; after void the balance is 0 and a 2nd void fails."""
    code, g = run(
        capsys,
        "credits",
        "grant",
        "acme",
        "--amount",
        "150",
        "--currency",
        "USD",
        "--meter",
        "requests",
        "--source",
        "promotional",
        "--priority",
        "3",
        *cfg,
    )
    assert code == 0, g
    assert (g["amount"], g["currency"], g["source"], g["priority"]) == (
        150,
        "USD",
        "promotional",
        3,
    )
    assert g["scope"]["meters"] == ["requests"]
    code, listed = run(capsys, "credits", "list", "acme", *cfg)
    assert code == 0
    assert [(i["id"], i["remaining"], i["usable"]) for i in listed["items"]] == [
        (g["id"], 150, True)
    ]
    assert listed["balance"] == {"amount": 150, "amount_milli": 150 * MILLI, "currency": "USD"}
    code, bal = run(capsys, "credits", "balance", "acme", *cfg)
    assert (code, bal["amount"], bal["currency"]) == (0, 150, "USD")
    code, v = run(capsys, "credits", "void", "acme", g["id"], *cfg)
    assert code == 0
    assert v["voided_at"] is not None
    assert v["usable"] is False
    assert run(capsys, "credits", "balance", "acme", *cfg)[1]["amount"] == 0
    code, err = run(capsys, "credits", "void", "acme", g["id"], *cfg)
    assert code == 1
    assert "already_voided" in err
    code, audit = run(capsys, "customers", "audit", "--target", "acme", *cfg)
    assert [(a["action"], a["actor"]) for a in audit][-2:] == [
        ("credit.grant", "cli"),
        ("credit.void", "cli"),
    ]


def test_amount_major_is_converted_exactly_with_the_currencys_exponent(
    cfg: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--amount-major 1.50 USD is 150; 500 JPY is 500; a fraction finer than the unit exits 2."""
    assert major_to_minor(Decimal("1.50"), "USD") == 150
    assert major_to_minor(Decimal("500"), "JPY") == 500
    assert major_to_minor(Decimal("0.125"), "BHD") == 125
    code, g = run(
        capsys, "credits", "grant", "acme", "--amount-major", "1.50", "--currency", "USD", *cfg
    )
    assert (code, g["amount"]) == (0, 150)
    code, err = run(
        capsys, "credits", "grant", "acme", "--amount-major", "1.005", "--currency", "USD", *cfg
    )
    assert code == 2
    assert "finer than the minor unit of USD" in err
    assert (
        run(capsys, "credits", "grant", "acme", "--amount-major", "1.5", "--currency", "JPY", *cfg)[
            0
        ]
        == 2
    )
    for bad in ("NaN", "-1", "abc"):
        assert (
            run(
                capsys, "credits", "grant", "acme", "--amount-major", bad, "--currency", "USD", *cfg
            )[0]
            == 2
        ), bad
    code, err = run(capsys, "credits", "grant", "acme", "--amount", "0", "--currency", "USD", *cfg)
    assert code == 1
    assert "amount" in err
    assert [i["amount"] for i in run(capsys, "credits", "list", "acme", *cfg)[1]["items"]] == [150]


def test_expired_grant_and_plan_currency_in_the_balance(
    cfg: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An expired grant is listed unusable, not in the balance; a JPY plan's balance is JPY."""
    now = time.time()
    assert (
        run(
            capsys,
            "credits",
            "grant",
            "acme",
            "--amount",
            "700",
            "--currency",
            "JPY",
            "--effective",
            str(now - 7200),
            "--expires",
            str(now - 3600),
            *cfg,
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            "credits",
            "grant",
            "acme",
            "--amount",
            "30",
            "--currency",
            "JPY",
            "--expires",
            "2999-01-01T00:00:00Z",
            *cfg,
        )[0]
        == 0
    )
    code, listed = run(capsys, "credits", "list", "acme", *cfg)
    assert code == 0
    assert sorted((i["amount"], i["usable"]) for i in listed["items"]) == [(30, True), (700, False)]
    assert listed["balance"]["amount"] == 30
    assert (
        run(
            capsys,
            "credits",
            "grant",
            "acme",
            "--amount",
            "9",
            "--currency",
            "USD",
            "--priority",
            "0",
            *cfg,
        )[0]
        == 0
    )
    assert run(capsys, "customers", "plan", "acme", "pro", *cfg)[0] == 0
    code, bal = run(capsys, "credits", "balance", "acme", *cfg)
    assert (bal["amount"], bal["currency"]) == (30, "JPY")  # the plan's, not the first grant's
    assert {b["currency"]: b["amount"] for b in bal["balances"]} == {"JPY": 30, "USD": 9}


def test_recharge_rule_and_spend_cap(cfg: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Set, show and clear the recharge rule and the spend cap; bad values exit non-zero."""
    assert run(capsys, "credits", "recharge", "acme", *cfg)[1] == {"customer": "acme", "rule": None}
    code, r = run(
        capsys, "credits", "recharge", "acme", "--threshold", "100", "--target", "500", *cfg
    )
    assert (code, r["rule"]["threshold"], r["rule"]["target"]) == (0, 100, 500)
    assert run(capsys, "credits", "recharge", "acme", *cfg)[1] == r
    assert run(capsys, "credits", "recharge", "acme", "--threshold", "5", *cfg)[0] == 2
    assert (
        run(capsys, "credits", "recharge", "acme", "--threshold", "5", "--target", "5", *cfg)[0]
        == 1
    )
    assert run(capsys, "credits", "recharge", "acme", "--clear", *cfg)[1]["rule"] is None
    assert run(capsys, "credits", "recharge", "acme", *cfg)[1]["rule"] is None
    code, c = run(capsys, "credits", "spend-cap", "acme", "2500", *cfg)
    assert (code, c["spend_cap"]["amount"]) == (0, 2500)
    assert run(capsys, "credits", "spend-cap", "acme", *cfg)[1] == c
    assert run(capsys, "credits", "spend-cap", "acme", "-3", *cfg)[0] == 2
    assert run(capsys, "credits", "spend-cap", "acme", "clear", *cfg)[1]["spend_cap"] is None
    assert run(capsys, "credits", "spend-cap", "acme", *cfg)[1]["spend_cap"] is None
    code, audit = run(capsys, "customers", "audit", "--target", "acme", *cfg)
    assert [a["action"] for a in audit].count("spend_cap.set") == 2
    assert [a["action"] for a in audit].count("credit.recharge_rule") == 2
