"""Two SQL backends behind one small async interface: SQLite (in a thread) and PostgreSQL (psycopg).

SQL is written once with ``?`` placeholders; the PostgreSQL backend rewrites them to ``%s``. A
:class:`Tx` runs statements inside one transaction; :meth:`Backend.transaction` serialises writers
of one process (a lock) and the database serialises writers of several (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL row locks and an advisory lock in migrations).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, TypeVar

import psycopg

from tollhouse.config import sqlite_path
from tollhouse.sqlite import connect as sqlite_connect

__all__ = ["Backend", "Row", "StoreUnavailable", "Tx", "connect_backend", "pg_conninfo"]

Row = tuple[Any, ...]
Params = Sequence[Any]
T = TypeVar("T")
QUERY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with a driver error (not a caller mistake)."""


class Tx(Protocol):
    """One open transaction."""

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement; return its rows (empty for statements without a result)."""
        ...

    def chunks(self, sql: str, params: Params = (), size: int = 20_000) -> AsyncIterator[list[Row]]:
        """Stream a large result in chunks of at most ``size`` rows."""
        ...


class Backend(Protocol):
    """A connection to the store; not shared between a writer and a reader on purpose."""

    dialect: Literal["sqlite", "postgresql"]

    def transaction(self, *, readonly: bool = False) -> contextlib.AbstractAsyncContextManager[Tx]:
        """Open a transaction: committed on normal exit, rolled back on an exception."""
        ...

    async def close(self) -> None:
        """Close the connection; idempotent."""
        ...


def connect_backend(url: str) -> Backend:
    """Return a backend for ``sqlite:///path`` or ``postgresql://...`` (connects lazily)."""
    if url.startswith("sqlite:///"):
        return SqliteBackend(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(url)
    raise ValueError("store url must be sqlite:///path or postgresql://...")


def pg_conninfo(url: str) -> str:
    """Return ``url`` normalised for libpq (``postgres://`` is accepted too)."""
    return "postgresql://" + url.split("://", 1)[1]


# --- SQLite ----------------------------------------------------------------------------------


class _SqliteTx:
    def __init__(self, backend: SqliteBackend) -> None:
        self._b = backend

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._b.run(lambda c: c.execute(sql, tuple(params)).fetchall())

    async def chunks(
        self, sql: str, params: Params = (), size: int = 20_000
    ) -> AsyncIterator[list[Row]]:
        cur = await self._b.run(lambda c: c.execute(sql, tuple(params)))
        try:
            while True:
                rows = await self._b.run(lambda _c: cur.fetchmany(size))
                if not rows:
                    return
                yield rows
        finally:
            await self._b.run(lambda _c: cur.close())


class SqliteBackend:
    """One sqlite3 connection owned by one worker thread; the event loop never touches the file."""

    dialect: Literal["sqlite", "postgresql"] = "sqlite"

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="th-store")
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite_connect(self.path)  # FULL: an acknowledged change survives a crash
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._ex, lambda: fn(self._open()))
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    @contextlib.asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        async with self._lock:
            await self.run(lambda c: c.execute("BEGIN" if readonly else "BEGIN IMMEDIATE"))
            try:
                yield _SqliteTx(self)
            except BaseException:
                await self.run(lambda c: c.execute("ROLLBACK"))
                raise
            await self.run(lambda c: c.execute("COMMIT"))

    async def close(self) -> None:
        def _close(c: sqlite3.Connection) -> None:
            c.close()

        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self.run(_close)
            self._conn = None
        self._ex.shutdown(wait=False)


# --- PostgreSQL ------------------------------------------------------------------------------


def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self._c = conn

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._c.cursor() as cur:
            await asyncio.wait_for(cur.execute(_pg(sql), tuple(params)), QUERY_TIMEOUT_S)
            if cur.description is None:
                return []
            return await asyncio.wait_for(cur.fetchall(), QUERY_TIMEOUT_S)

    async def chunks(
        self, sql: str, params: Params = (), size: int = 20_000
    ) -> AsyncIterator[list[Row]]:
        async with self._c.cursor(name="th_chunks") as cur:
            await asyncio.wait_for(cur.execute(_pg(sql), tuple(params)), QUERY_TIMEOUT_S)
            while True:
                rows = await asyncio.wait_for(cur.fetchmany(size), QUERY_TIMEOUT_S)
                if not rows:
                    return
                yield rows


class PostgresBackend:
    """One psycopg async connection, reconnected after a failure; one transaction at a time."""

    dialect: Literal["sqlite", "postgresql"] = "postgresql"

    def __init__(self, url: str) -> None:
        self.conninfo = pg_conninfo(url)
        self._conn: psycopg.AsyncConnection[Row] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Row]:
        if self._conn is not None and not self._conn.closed:
            try:  # a server restart leaves a dead connection: find out before a real statement
                await asyncio.wait_for(self._conn.execute("SELECT 1"), CONNECT_TIMEOUT_S)
            except (psycopg.Error, OSError, TimeoutError):
                await self._drop()
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
                ),
                CONNECT_TIMEOUT_S + 1,
            )
        return self._conn

    @contextlib.asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        async with self._lock:
            try:
                conn = await self._connection()
                async with conn.transaction():
                    if readonly:
                        await _PgTx(conn).execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
                        )
                    yield _PgTx(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError) as e:
                await self._drop()
                raise StoreUnavailable(f"postgresql: {type(e).__name__}: {e}") from e

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None

    async def close(self) -> None:
        await self._drop()
