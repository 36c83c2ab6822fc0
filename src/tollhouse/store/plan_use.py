"""Plans that entitlement-store customers are on, checked against a config before it is used.

A config without a plan that store customers are on would answer their every request 503
``unknown_plan``. ``tollhouse check-config`` refuses such a file when the store is reachable, and
a hot reload that removes (or renames) such a plan is refused (see ``tollhouse.app``).
"""

from __future__ import annotations

from tollhouse.config import Config, sqlite_path
from tollhouse.store.directory import Directory
from tollhouse.store.schema import SchemaError

__all__ = ["plan_problems", "store_plan_problems"]


def plan_problems(on: dict[str, tuple[int, list[str]]], source: str) -> list[tuple[str, str]]:
    """Config problems for plans store customers are on (``on``: plan -> count, sample ids)."""
    out = []
    for plan, (n, ids) in sorted(on.items()):
        more = ", ..." if n > len(ids) else ""
        out.append(
            (
                f"plans.{plan}",
                f"{source}, but {n} store customer(s) are on it ({', '.join(ids)}{more}): "
                f"keep the plan, or move them first (`tollhouse customers plan`)",
            )
        )
    return out


async def store_plan_problems(cfg: Config) -> tuple[list[tuple[str, str]], str | None]:
    """Problems for plans store customers are on that ``cfg`` lacks, and a note when unchecked.

    The note says why nothing was checked (no store file, an unmigrated store, unreachable).
    A SQLite store that does not exist yet is not created.
    """
    if cfg.store is None:
        return [], None
    url = cfg.store.url
    if url.startswith("sqlite:///") and not sqlite_path(url).exists():
        return [], f"entitlement store {sqlite_path(url)} does not exist: plans not checked"
    directory = Directory(cfg.store)
    try:
        await directory.start()
    except SchemaError as e:
        return [], f"entitlement store: {e}: plans not checked"
    try:
        if not directory.ready:  # start() tried the first full load: it failed
            error = directory.status_detail().get("error")
            return [], f"entitlement store not reachable ({error}): plans not checked"
        on = await directory.customers_on(None)
    finally:
        await directory.stop()
    missing = {plan: v for plan, v in on.items() if plan not in cfg.plans}
    return plan_problems(missing, "not in this config"), None
