"""Whether the fact log can write: the writer thread's failures, outages and retry pacing.

The log turns unhealthy on a failed ``pwrite`` or ``fdatasync`` (disk full, I/O error, a file size
limit), on its active segment deleted under it (``rm -r`` of the spool, or the directory
replaced: writes to an unlinked file would succeed and be lost at the next start; checked after
each write and every ``retry_s``), and on a segment it could not create at open. Appends then fail
at once; before the next batch, and every ``retry_s`` when idle, the writer tries a fresh segment
(creating the directory again if needed) and is healthy again once that works. The failed
segment keeps its good records and is freed like any sealed one.

The writer (:class:`tollhouse.metering.factlog.FactLog`) reports each failed write, fdatasync or
segment creation here and asks :meth:`HealthTracker.retry_due` before it tries a fresh segment;
anyone (the app's readiness) reads :attr:`HealthTracker.state`, an immutable :class:`LogHealth`.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tollhouse.logs import get_logger

__all__ = ["HealthTracker", "LogHealth", "ensure_linked"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LogHealth:
    """``ok`` while the fact log can write; else the last error, since when, how many failures."""

    ok: bool = True
    error: str | None = None
    since: float | None = None  # wall time of the first failure of this outage, for people
    failures: int = 0  # failed writes and recovery attempts in this outage

    def detail(self) -> dict[str, object]:
        """What ``/readyz`` shows."""
        return {
            "writable": self.ok,
            "error": self.error,
            "since": self.since,
            "failures": self.failures,
        }


class HealthTracker:
    """The writer thread's record of outages; :attr:`state` may be read from any thread."""

    def __init__(self, directory: Path, retry_s: float) -> None:
        self.directory = directory
        self.retry_s = retry_s
        self.state = LogHealth()
        self._next_retry = 0.0  # monotonic
        self._next_checkup = 0.0

    def failed(self, op: str, e: OSError, *, retry_now: bool = False) -> None:
        """The log cannot write; log the outage's start and each new error."""
        h = self.state
        error = f"{op}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
        if h.ok or h.error != error:
            log.error(
                "factlog.unwritable",
                op=op,
                error=type(e).__name__,
                detail=error,
                directory=str(self.directory),
                failures=h.failures + 1,
            )
        since = time.time() if h.ok else h.since
        self.state = LogHealth(False, error, since, h.failures + 1)
        if retry_now:
            self._next_retry = 0.0

    def retry_due(self) -> bool:
        """True (and the next retry paced ``retry_s`` later) when a recovery may be tried now."""
        now = time.monotonic()
        if now < self._next_retry:
            return False
        self._next_retry = now + self.retry_s
        return True

    def checkup_due(self) -> bool:
        """True at most every ``retry_s``: time to check that the segment still exists."""
        now = time.monotonic()
        if now < self._next_checkup:
            return False
        self._next_checkup = now + self.retry_s
        return True

    def recovered(self, segment: int) -> None:
        """A fresh segment was opened: healthy again."""
        log.info(
            "factlog.recovered",
            segment=segment,
            failures=self.state.failures,
            error=self.state.error,
        )
        self.state = LogHealth()


def ensure_linked(fd: int, path: Path) -> None:
    """Raise ``OSError(ENOENT)`` when the open file ``fd`` was deleted (no link to it is left)."""
    if os.fstat(fd).st_nlink == 0:
        raise OSError(errno.ENOENT, "the active segment was deleted", str(path))
