"""Versioned schema migrations, and the version check that serving relies on.

``tollhouse_schema`` holds one row: the schema version. :func:`migrate` applies every step above it
in one transaction; :func:`open_store` refuses a store that is not migrated or is newer than this
code (a newer tollhouse may have changed the meaning of a column: serving it could admit wrongly).
"""

from __future__ import annotations

from tollhouse.logs import get_logger
from tollhouse.store.backend import Backend, Tx, connect_backend

__all__ = ["SCHEMA_VERSION", "SchemaError", "migrate", "open_store", "schema_version"]

log = get_logger(__name__)

# Each step: (sqlite statements, postgresql statements). Append new steps; never edit old ones.
_SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
_REAL = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION"}


def _v1(dialect: str) -> list[str]:
    serial, real = _SERIAL[dialect], _REAL[dialect]
    return [
        f"""CREATE TABLE customers (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL DEFAULT '',
            metadata TEXT NOT NULL DEFAULT '{{}}', created_at {real} NOT NULL)""",
        f"""CREATE TABLE subscriptions (
            customer TEXT PRIMARY KEY REFERENCES customers(id), anchor TEXT,
            status TEXT NOT NULL CHECK (status IN ('active','past_due','suspended','cancelled')),
            status_since {real} NOT NULL)""",
        f"""CREATE TABLE plan_changes (
            id {serial}, customer TEXT NOT NULL REFERENCES customers(id), plan TEXT NOT NULL,
            effective_from {real} NOT NULL, created_at {real} NOT NULL)""",
        "CREATE INDEX plan_changes_customer ON plan_changes (customer, effective_from)",
        f"""CREATE TABLE api_keys (
            id TEXT PRIMARY KEY, customer TEXT NOT NULL REFERENCES customers(id),
            sha256 TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, created_at {real} NOT NULL,
            revoked_at {real})""",
        "CREATE INDEX api_keys_customer ON api_keys (customer)",
        """CREATE TABLE quota_overrides (
            customer TEXT NOT NULL REFERENCES customers(id), meter TEXT NOT NULL,
            units BIGINT NOT NULL, PRIMARY KEY (customer, meter))""",
        f"""CREATE TABLE topups (
            id {serial}, customer TEXT NOT NULL REFERENCES customers(id), meter TEXT NOT NULL,
            units BIGINT NOT NULL, period TEXT NOT NULL, created_at {real} NOT NULL)""",
        "CREATE INDEX topups_customer ON topups (customer, period)",
        f"""CREATE TABLE audit_log (
            id {serial}, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
            before TEXT, after TEXT, at {real} NOT NULL)""",
        f"""CREATE TABLE changes (
            version {serial}, entity TEXT NOT NULL, entity_id TEXT NOT NULL, at {real} NOT NULL)""",
    ]


def _v2(dialect: str) -> list[str]:
    """Issue 16: the customer's Stripe customer id (``tollhouse export stripe``); NULL: none."""
    del dialect
    return ["ALTER TABLE customers ADD COLUMN stripe_customer_id TEXT"]


def _v3(dialect: str) -> list[str]:
    """Issue 15: webhook endpoints and the durable outbox (events x endpoints = deliveries).

    ``webhook_events.dedupe_key`` is UNIQUE: an event is recorded at most once, across replicas.
    A delivery is claimed by setting ``lease_owner`` / ``lease_until`` (exclusive: SQLite's
    ``BEGIN IMMEDIATE``, PostgreSQL's ``FOR UPDATE SKIP LOCKED``).
    """
    serial, real = _SERIAL[dialect], _REAL[dialect]
    return [
        f"""CREATE TABLE webhook_endpoints (
            id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, secret TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1, created_at {real} NOT NULL,
            deleted_at {real})""",
        f"""CREATE TABLE webhook_events (
            seq {serial}, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, customer TEXT,
            dedupe_key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, occurred_at {real} NOT NULL)""",
        f"""CREATE TABLE webhook_deliveries (
            id {serial}, event_id TEXT NOT NULL REFERENCES webhook_events(id),
            endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id),
            state TEXT NOT NULL CHECK (state IN ('pending','delivered','dead')),
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at {real} NOT NULL,
            lease_owner TEXT, lease_until {real}, last_status INTEGER, last_error TEXT,
            last_attempt_at {real}, delivered_at {real}, created_at {real} NOT NULL,
            UNIQUE (event_id, endpoint_id))""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at)",
        "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, state)",
    ]


def _v4(dialect: str) -> list[str]:
    """Issue 15: prepaid credit grants, their durable consumption, spend caps, recharge rules.

    Amounts are integer minor units of ``currency``. ``credit_consumed`` holds what replicas have
    spent of a grant (flushed deltas, not admin changes: no audit row); a restart and a Redis
    that lost its data start from it.
    """
    real = _REAL[dialect]
    return [
        f"""CREATE TABLE credit_grants (
            id TEXT PRIMARY KEY, customer TEXT NOT NULL REFERENCES customers(id),
            amount BIGINT NOT NULL CHECK (amount > 0), currency TEXT NOT NULL,
            priority INTEGER NOT NULL, effective_at {real} NOT NULL, expires_at {real},
            scope TEXT NOT NULL DEFAULT '{{}}',
            source TEXT NOT NULL CHECK (source IN ('purchase','promotional','refund')),
            voided_at {real}, created_at {real} NOT NULL)""",
        "CREATE INDEX credit_grants_customer ON credit_grants (customer)",
        """CREATE TABLE credit_consumed (
            grant_id TEXT PRIMARY KEY REFERENCES credit_grants(id),
            consumed BIGINT NOT NULL DEFAULT 0)""",
        f"""CREATE TABLE spend_caps (
            customer TEXT NOT NULL REFERENCES customers(id), period TEXT NOT NULL,
            amount BIGINT NOT NULL CHECK (amount >= 0), set_at {real} NOT NULL,
            PRIMARY KEY (customer, period))""",
        f"""CREATE TABLE credit_recharge_rules (
            customer TEXT PRIMARY KEY REFERENCES customers(id),
            threshold BIGINT NOT NULL CHECK (threshold >= 0),
            target BIGINT NOT NULL CHECK (target > threshold), set_at {real} NOT NULL)""",
    ]


_STEPS = [_v1, _v2, _v3, _v4]
SCHEMA_VERSION = len(_STEPS)


class SchemaError(Exception):
    """The store's schema is missing or of a version this tollhouse does not know."""


async def _current(tx: Tx) -> int:
    await tx.execute("CREATE TABLE IF NOT EXISTS tollhouse_schema (version INTEGER NOT NULL)")
    rows = await tx.execute("SELECT version FROM tollhouse_schema")
    return int(rows[0][0]) if rows else 0


async def schema_version(backend: Backend) -> int:
    """Return the store's schema version (0: never migrated)."""
    async with backend.transaction(readonly=True) as tx:
        rows = await tx.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'tollhouse_schema'"
            " AND table_schema = current_schema()"
            if backend.dialect == "postgresql"
            else "SELECT count(*) FROM sqlite_master WHERE name = 'tollhouse_schema'"
        )
        if not rows[0][0]:
            return 0
        found = await tx.execute("SELECT version FROM tollhouse_schema")
        return int(found[0][0]) if found else 0


async def migrate(url: str) -> int:
    """Bring the store at ``url`` to :data:`SCHEMA_VERSION`; return the version it is now at."""
    backend = connect_backend(url)
    try:
        async with backend.transaction() as tx:
            if backend.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(7461726)")
            current = await _current(tx)
            if current > SCHEMA_VERSION:
                raise SchemaError(_newer(current))
            for step in range(current, SCHEMA_VERSION):
                for stmt in _STEPS[step](backend.dialect):
                    await tx.execute(stmt)
            if current == 0:
                await tx.execute(
                    "INSERT INTO tollhouse_schema (version) VALUES (?)", (SCHEMA_VERSION,)
                )
            elif current < SCHEMA_VERSION:
                await tx.execute("UPDATE tollhouse_schema SET version = ?", (SCHEMA_VERSION,))
        if current != SCHEMA_VERSION:
            log.info(
                "store.migrated",
                dialect=backend.dialect,
                from_version=current,
                to_version=SCHEMA_VERSION,
            )
        return SCHEMA_VERSION
    finally:
        await backend.close()


def _newer(found: int) -> str:
    return (
        f"store schema version {found} is newer than this tollhouse knows "
        f"({SCHEMA_VERSION}); upgrade tollhouse"
    )


async def open_store(url: str) -> Backend:
    """Connect for serving; raise :class:`SchemaError` unless the schema is exactly known."""
    backend = connect_backend(url)
    try:
        found = await schema_version(backend)
    except BaseException:
        await backend.close()
        raise
    if found != SCHEMA_VERSION:
        await backend.close()
        if found == 0:
            raise SchemaError("store is not migrated: run `tollhouse store migrate`")
        if found > SCHEMA_VERSION:
            raise SchemaError(_newer(found))
        raise SchemaError(
            f"store schema version {found} is older than {SCHEMA_VERSION}: "
            "run `tollhouse store migrate`"
        )
    return backend
