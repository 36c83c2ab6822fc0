"""Credit grants, spend caps and recharge rules of the in-memory snapshot, loaded with customers.

A full load reads every customer's; a delta reloads those of the customers that changed (a grant,
a void, a cap or a rule is recorded as a change of its customer). Voided grants and grants
expired for longer than a day are not loaded: they can never be used again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from tollhouse.store.backend import Tx
from tollhouse.store.credit_models import CreditGrant, grant_order
from tollhouse.store.credit_service import GRANT_SQL, grant_from_row

__all__ = ["CreditRows", "load_credit_rows"]

_EXPIRED_KEEP_S = 86_400.0


@dataclass(slots=True)
class CreditRows:
    """Per customer: usable grants (consumption order), caps by period, the recharge rule."""

    grants: dict[str, tuple[CreditGrant, ...]] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)  # grant id -> flushed spend
    caps: dict[str, dict[str, int]] = field(default_factory=dict)  # customer -> period -> cap
    recharge: dict[str, tuple[int, int]] = field(default_factory=dict)  # (threshold, target)


def _in(ids: list[str] | None, column: str) -> tuple[str, list[Any]]:
    if ids is None:
        return "", []
    return f" AND {column} IN (" + ",".join("?" * len(ids)) + ")", list(ids)


async def load_credit_rows(tx: Tx, ids: list[str] | None, now: float) -> CreditRows:
    """Read the credit state of ``ids`` (None: every customer) in the open transaction."""
    out = CreditRows()
    where, params = _in(ids, "customer")
    grants: dict[str, list[CreditGrant]] = {}
    rows = await tx.execute(
        f"{GRANT_SQL} WHERE voided_at IS NULL AND (expires_at IS NULL OR expires_at > ?){where}",
        [now - _EXPIRED_KEEP_S, *params],
    )
    for r in rows:
        g = grant_from_row(r)
        grants.setdefault(sys.intern(g.customer), []).append(g)
    out.grants = {c: tuple(sorted(gs, key=grant_order)) for c, gs in grants.items()}
    gwhere, gparams = _in(ids, "g.customer")
    for gid, consumed in await tx.execute(
        "SELECT c.grant_id, c.consumed FROM credit_consumed c JOIN credit_grants g"  # noqa: S608 - constant SQL pieces, values bound
        f" ON g.id = c.grant_id WHERE g.voided_at IS NULL{gwhere}",
        gparams,
    ):
        out.consumed[gid] = int(consumed)
    for cid, period, amount in await tx.execute(
        f"SELECT customer, period, amount FROM spend_caps WHERE 1 = 1{where}",  # noqa: S608 - constant SQL pieces, values bound
        params,
    ):
        out.caps.setdefault(sys.intern(cid), {})[period] = int(amount)
    for cid, threshold, target in await tx.execute(
        f"SELECT customer, threshold, target FROM credit_recharge_rules WHERE 1 = 1{where}",  # noqa: S608 - constant SQL pieces, values bound
        params,
    ):
        out.recharge[sys.intern(cid)] = (int(threshold), int(target))
    return out
