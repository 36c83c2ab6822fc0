"""The one SQLite connection setup of every file tollhouse writes (meter, ledger, counters, store).

WAL with ``synchronous=FULL``: a commit is on disk when it returns, so what was acknowledged
(a meter batch, an invoice, an admin change, spent credit) survives a crash or a power cut, and
readers (the billing job, ``GET /v1/usage``) never block the writer. Autocommit mode
(``isolation_level=None``): transactions are explicit ``BEGIN`` ... ``COMMIT``.

Readers of a file another process writes (the billing job and ``tollhouse usage`` on the meter,
the ledger's copy threads, the legacy spool) open it with :func:`connect_existing`, which never
creates it or changes its journal mode. The ``timeout`` of both is SQLite's busy timeout: no
``PRAGMA busy_timeout`` elsewhere.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

__all__ = ["connect", "connect_existing", "file_uri"]


def connect(path: Path, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    """Open (creating its directory) ``path`` for use from one worker thread at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def file_uri(path: Path, *, read_only: bool = True) -> str:
    """The ``file:`` URI of an existing ``path``: ``mode=ro``, or ``mode=rw`` (never creates)."""
    mode = "ro" if read_only else "rw"
    return "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=" + mode


def connect_existing(
    path: Path, *, timeout_s: float = 10.0, read_only: bool = True
) -> sqlite3.Connection:
    """Open an existing ``path`` (read-only by default), usable from any thread; never creates it.

    ``read_only=False`` is for a file whose journal may need recovering before it is read.
    """
    return sqlite3.connect(
        file_uri(path, read_only=read_only),
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=timeout_s,
    )
