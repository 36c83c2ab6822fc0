"""Ledger test support: a crash at a named point of the billing job, and a fresh ledger URL."""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["Crash", "CrashAt", "ledger_url"]


class Crash(Exception):
    """A simulated kill of the billing job."""


class CrashAt:
    """Failure hook: raise at the ``nth`` time ``point`` is reached."""

    def __init__(self, point: str, nth: int = 1) -> None:
        self.point, self.nth, self.seen = point, nth, 0

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen == self.nth:
                raise Crash(point)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return a fresh ledger: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return str(request.getfixturevalue("postgres_server").fresh_database_url("ledger_"))
