"""``tollhouse credits grant|void|list|balance|recharge|spend-cap``: prepaid credits in the store.

Like ``tollhouse customers``: ``--config FILE`` or ``--store-url URL``, JSON on stdout, the same
:class:`~tollhouse.store.service.StoreService` calls as the admin API (audit actor ``cli``), exit 1
on a refused change, 2 on bad input. Amounts are integer minor units (``--amount 150`` is 1.50
USD), or ``--amount-major 1.50``, converted exactly with the currency's minor unit (a value finer
than it is refused, never rounded). With ``--config``, balances are in the plan's currency.
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from tollhouse.billing.pricing import minor_unit
from tollhouse.config import load_config
from tollhouse.store.cli import ACTOR, _common, _when, run_service
from tollhouse.store.credit_models import GRANT_SOURCES
from tollhouse.store.credit_view import CurrencyOf, grant_json, load_credit_report
from tollhouse.store.service import StoreService

__all__ = ["add_credits_cli", "major_to_minor"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _decimal(value: str) -> Decimal:
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{value!r} is not a decimal amount") from None
    if not d.is_finite() or d <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive amount")
    return d


def major_to_minor(amount: Decimal, currency: str) -> int:
    """``1.50`` USD -> 150: exact, or ValueError when ``amount`` is finer than the minor unit."""
    units = amount / minor_unit(currency)
    if units != units.to_integral_value():
        raise ValueError(
            f"--amount-major {amount} is finer than the minor unit of {currency}"
            f" ({minor_unit(currency)})"
        )
    return int(units)


def _currency_of(a: argparse.Namespace) -> CurrencyOf | None:
    if not a.config or a.store_url:
        return None
    plans = load_config(a.config).plans

    def of(plan: str) -> str | None:
        p = plans.get(plan)
        return p.price.currency if p is not None and p.price is not None else None

    return of


async def _grant(s: StoreService, a: argparse.Namespace) -> Any:
    amount = a.amount if a.amount_major is None else major_to_minor(a.amount_major, a.currency)
    g = await s.grant_credit(
        a.customer,
        actor=ACTOR,
        amount=amount,
        currency=a.currency,
        priority=a.priority,
        effective_at=a.effective,
        expires_at=a.expires,
        meters=a.meter,
        features=a.feature,
        source=a.source,
    )
    return grant_json(g, 0, s.clock())


async def _void(s: StoreService, a: argparse.Namespace) -> Any:
    g = await s.void_grant(a.customer, a.grant, actor=ACTOR)
    return grant_json(g, (await s.consumed(a.customer)).get(g.id, 0), s.clock())


async def _list(s: StoreService, a: argparse.Namespace) -> Any:
    return await load_credit_report(s, a.customer, _currency_of(a))


async def _balance(s: StoreService, a: argparse.Namespace) -> Any:
    r = await load_credit_report(s, a.customer, _currency_of(a))
    return {"customer": a.customer, "at": r["at"], **r["balance"], "balances": r["balances"]}


async def _recharge(s: StoreService, a: argparse.Namespace) -> Any:
    if a.clear:
        rule = await s.set_recharge_rule(a.customer, None, actor=ACTOR)
    elif a.threshold is not None or a.target is not None:
        if a.threshold is None or a.target is None:
            raise ValueError("give both --threshold and --target (or --clear)")
        rule = await s.set_recharge_rule(a.customer, a.threshold, a.target, actor=ACTOR)
    else:
        rule = await s.recharge_rule(a.customer)
    return {"customer": a.customer, "rule": rule and rule.to_json()}


async def _spend_cap(s: StoreService, a: argparse.Namespace) -> Any:
    if a.amount is None:
        cap = await s.spend_cap(a.customer)
    else:
        amount = None if a.amount == "clear" else _minor(a.amount)
        cap = await s.set_spend_cap(a.customer, amount, actor=ACTOR)
    return {"customer": a.customer, "spend_cap": cap and cap.to_json()}


def _minor(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise ValueError(f"spend cap {raw!r}: give integer minor units or `clear`")
    return int(raw)


def _grant_parser(c: Sub) -> None:
    p = _common(c.add_parser("grant", help="grant credit to a customer (audited)"))
    p.add_argument("customer")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--amount", type=int, help="integer minor units (150 = 1.50 USD)")
    amount.add_argument(
        "--amount-major",
        type=_decimal,
        help="major units (1.50), converted exactly with the currency's exponent",
    )
    p.add_argument("--currency", required=True, help="ISO 4217 code, e.g. USD")
    p.add_argument("--priority", type=int, default=10, help="lower is consumed first (10)")
    p.add_argument("--effective", type=_when, help="Unix seconds or ISO 8601 (UTC); default now")
    p.add_argument("--expires", type=_when, help="Unix seconds or ISO 8601 (UTC); default never")
    p.add_argument("--meter", action="append", default=[], help="scope: only this meter (repeat)")
    p.add_argument(
        "--feature", action="append", default=[], help="scope: only this feature (repeat)"
    )
    p.add_argument("--source", choices=GRANT_SOURCES, default="purchase")
    p.set_defaults(func=run_service(_grant))


def add_credits_cli(sub: Sub) -> None:
    """Add ``credits`` to the ``tollhouse`` subcommands."""
    cr = sub.add_parser("credits", help="prepaid credit grants, balance, recharge rule, spend cap")
    c = cr.add_subparsers(dest="credits_command", required=True)
    _grant_parser(c)
    p = _common(c.add_parser("void", help="void a grant: what is left of it is no longer usable"))
    p.add_argument("customer")
    p.add_argument("grant")
    p.set_defaults(func=run_service(_void))
    p = _common(c.add_parser("list", help="grants (consumption order), spent, left, balance"))
    p.add_argument("customer")
    p.set_defaults(func=run_service(_list))
    p = _common(c.add_parser("balance", help="what is left, rounded down to the minor unit"))
    p.add_argument("customer")
    p.set_defaults(func=run_service(_balance))
    p = _common(
        c.add_parser(
            "recharge", help="show, set (--threshold, --target) or --clear the auto-recharge rule"
        )
    )
    p.add_argument("customer")
    p.add_argument("--threshold", type=int, help="minor units")
    p.add_argument("--target", type=int, help="minor units, above the threshold")
    p.add_argument("--clear", action="store_true")
    p.set_defaults(func=run_service(_recharge))
    p = _common(
        c.add_parser(
            "spend-cap",
            help="show, set (AMOUNT minor units) or `clear` the current period's spend cap",
        )
    )
    p.add_argument("customer")
    p.add_argument("amount", nargs="?")
    p.set_defaults(func=run_service(_spend_cap))
