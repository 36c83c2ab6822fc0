"""schemathesis against the running admin API: no server error, responses match openapi.yaml."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import PostgresServer
from tests.support.admin import TOKEN, start_admin
from tests.support.store import T0, fresh_pg_url
from tollhouse.admin import OPENAPI_PATH

EXAMPLES = int(os.environ.get("TH_SCHEMATHESIS_EXAMPLES", "30"))  # per operation


def coherent(case: Any) -> bool:
    """Whether a body keeps the cross-field rules a schema cannot state (documented, 422 if not).

    A grant's ``expires_at`` after its ``effective_at`` (default: the admin clock's now, T0); a
    recharge rule's ``target`` above its ``threshold``. Breaking them is tested in
    test_admin_credits; here the fuzzer checks that every other schema-valid body is accepted.
    """
    b = case.body
    if not isinstance(b, dict):
        return True
    num = (int, float)
    exp, eff = b.get("expires_at"), b.get("effective_at")
    eff = T0 if eff is None else eff
    if isinstance(exp, num) and isinstance(eff, num) and exp <= eff:
        return False
    low, high = b.get("threshold"), b.get("target")
    return not (isinstance(low, int) and isinstance(high, int) and high <= low)


def run_schemathesis(base: str) -> list[str]:
    """Fuzz every operation; return the failures (operation label and error)."""
    schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == 35
    for op in ops:

        @given(case=op.as_strategy().filter(coherent), known=st.booleans())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any, known: bool) -> None:
            if known and "customer" in (case.path_parameters or {}):
                case.path_parameters["customer"] = "acme"  # an existing customer: 2xx paths
            case.call_and_validate(base_url=base, headers=headers)

        try:
            check()
        except Exception as e:
            failures.append(f"{op.label}: {type(e).__name__}: {str(e)[:2000]}")
    return failures


async def _fuzz(url: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    # No catalog: every schema-valid plan / meter name is accepted, so schemathesis can check
    # that schema-valid requests are accepted (the catalog's 422 unknown_plan is tested elsewhere).
    runner, base = await start_admin(url, token_file, catalog=False)
    try:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            await s.post(
                base + "/customers",
                json={"id": "acme", "name": "Acme", "plan": "free"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        failures = await asyncio.to_thread(run_schemathesis, base)
    finally:
        await runner.cleanup()
    assert failures == []


async def test_schemathesis_sqlite(tmp_path: Path) -> None:
    """Every operation on SQLite: no 5xx, documented statuses, content types and bodies."""
    await _fuzz(f"sqlite://{tmp_path}/store.db", tmp_path)


async def test_schemathesis_postgresql(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """Every operation on PostgreSQL (NUL bytes, huge numbers): no 5xx, conforming responses."""
    await _fuzz(fresh_pg_url(postgres_server), tmp_path)
