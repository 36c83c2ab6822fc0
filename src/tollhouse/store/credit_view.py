"""What the admin API and the CLI show of a customer's credits: grants, consumption, balance.

Consumption is counted in 1/1000 minor units (:data:`~tollhouse.store.credit_models.MILLI`);
people see whole minor units, rounded down, so that nothing is shown that is not there. The
balance is rounded once, from the exact sum (``balance_milli(...) // MILLI``), so it can be up to
one minor unit per grant more than the sum of the grants' rounded ``remaining``.

The balance is in one currency: the customer's plan's (when the caller knows the catalog), else
that of the first usable grant in consumption order. ``balances`` lists every currency of the
customer's usable grants, so a grant in another currency is never hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tollhouse.store.credit_models import MILLI, CreditGrant, balance_milli, remaining_milli

if TYPE_CHECKING:
    from tollhouse.store.service import StoreService

__all__ = ["CurrencyOf", "balance_json", "credit_report", "grant_json", "load_credit_report"]

CurrencyOf = Callable[[str], str | None]  # plan name -> its price's currency (None: unknown)


def grant_json(g: CreditGrant, consumed_milli: int, now: float) -> dict[str, Any]:
    """The grant with what is spent and left of it (minor units rounded down, and exact)."""
    left = remaining_milli(g, consumed_milli)
    return {
        **g.to_json(),
        "consumed": consumed_milli // MILLI,
        "remaining": left // MILLI,
        "consumed_milli": consumed_milli,
        "remaining_milli": left,
        "usable": g.usable(now),
    }


def balance_json(
    grants: Sequence[CreditGrant], consumed: Mapping[str, int], now: float, currency: str | None
) -> dict[str, Any]:
    """``{amount, amount_milli, currency}``: what is left of the usable grants in ``currency``."""
    exact = balance_milli((g for g in grants if g.currency == currency), consumed, now)
    return {"amount": exact // MILLI, "amount_milli": exact, "currency": currency}


def _currency(grants: Sequence[CreditGrant], now: float, plan_currency: str | None) -> str | None:
    if plan_currency is not None:
        return plan_currency
    pool = [g for g in grants if g.usable(now)] or list(grants)
    return pool[0].currency if pool else None


def credit_report(
    customer: str,
    grants: Sequence[CreditGrant],
    consumed: Mapping[str, int],
    now: float,
    plan_currency: str | None = None,
) -> dict[str, Any]:
    """The JSON of ``GET /admin/customers/{id}/credits`` (``grants`` in consumption order)."""
    currencies = sorted({g.currency for g in grants if g.usable(now)})
    return {
        "customer": customer,
        "at": now,
        "items": [grant_json(g, consumed.get(g.id, 0), now) for g in grants],
        "balance": balance_json(grants, consumed, now, _currency(grants, now, plan_currency)),
        "balances": [balance_json(grants, consumed, now, c) for c in currencies],
    }


async def load_credit_report(
    svc: StoreService, customer_id: str, currency_of: CurrencyOf | None = None
) -> dict[str, Any]:
    """Read the customer's grants and consumption from the store and report them."""
    plan_currency = None
    if currency_of is not None:
        plan_currency = currency_of((await svc.get_customer(customer_id)).plan)
    grants = await svc.list_grants(customer_id)
    consumed = await svc.consumed(customer_id)
    return credit_report(customer_id, grants, consumed, svc.clock(), plan_currency)
