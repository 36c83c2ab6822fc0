"""What a hot reload may change: the keys read only at start, and when a changed file is applied.

A reload applies the catalog (features, plans, prices, customers), auth and the billing policy at
once. The keys in :data:`START_ONLY` are read when the process starts (they open listeners, files
and connections): a reload that changes one keeps the running value, and the caller reports it as
``restart_needed``. :class:`SettledFiles` holds a changed file back until it has stayed unchanged
for ``reload_settle_s``, so an editor or a ``kubectl cp`` mid-write is never applied half-written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tollhouse.config import Config

__all__ = ["START_ONLY", "SettledFiles", "keep_start_only", "restart_needed"]

# Dotted keys whose running value stays until a restart (README: "Keys read only at start").
START_ONLY: tuple[str, ...] = (
    "listen",
    "admin_listen",
    "usage_listen",
    "authz_http_listen",
    "authz_http",
    "metrics_listen",
    "instance",
    "check_deadline_ms",
    "counters",
    "counters_file",
    "store",
    "admin",
    "webhooks",
    "alerts",
    "metering.enabled",
    "metering.spool",
    "metering.meter",
    "metering.join",
    "metering.process",
    "metering.group_commit_ms",
)


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def restart_needed(running: Config, new: Config) -> list[str]:
    """The start-only keys whose value in ``new`` differs from the running one."""
    return [key for key in START_ONLY if _get(running, key) != _get(new, key)]


def keep_start_only(running: Config, new: Config) -> Config:
    """``new`` with the running value of every start-only key (what is really in force)."""
    top = {k: getattr(running, k) for k in START_ONLY if "." not in k}
    sub = {k.split(".", 1)[1]: _get(running, k) for k in START_ONLY if k.startswith("metering.")}
    return new.model_copy(update={**top, "metering": new.metering.model_copy(update=sub)})


Signature = tuple[tuple[int, int, int] | None, ...]


def _signature(paths: Sequence[Path]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class SettledFiles:
    """Watch files by (mtime, size, inode); :meth:`poll` is True once a change has settled.

    A change is due when the files have shown the same new signature for ``settle_s()``
    (measured on ``clock``); a change that is undone before that is never due.
    """

    def __init__(
        self,
        paths: Callable[[], Sequence[Path]],
        settle_s: Callable[[], float],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = paths
        self._settle_s = settle_s
        self._clock = clock
        self._done: Signature = _signature(paths())
        self._seen: Signature | None = None
        self._seen_at = 0.0

    @property
    def pending(self) -> bool:
        """A change has been seen and is waiting to settle."""
        return self._seen is not None

    def poll(self) -> bool:
        """True once (then not again) when a change has stayed unchanged for the settle time."""
        sig = _signature(self._paths())
        now = self._clock()
        if sig == self._done:
            self._seen = None
            return False
        if sig != self._seen:
            self._seen, self._seen_at = sig, now
        if now - self._seen_at < self._settle_s():
            return False
        self._done, self._seen = sig, None
        return True
