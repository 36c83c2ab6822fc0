"""The one SQLite connection setup of every file tollhouse writes (meter, ledger, counters, store).

WAL with ``synchronous=FULL``: a commit is on disk when it returns, so what was acknowledged
(a meter batch, an invoice, an admin change, spent credit) survives a crash or a power cut, and
readers (the billing job, ``GET /v1/usage``) never block the writer. Autocommit mode
(``isolation_level=None``): transactions are explicit ``BEGIN`` ... ``COMMIT``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["connect"]


def connect(path: Path, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    """Open (creating its directory) ``path`` for use from one worker thread at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn
