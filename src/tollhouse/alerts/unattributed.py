"""``usage.unattributed``: served requests whose reservation never arrived, reported per minute.

Metering drops an access-log entry whose usage id no reservation ever matched once the grace
period ends (``tollhouse_usage_served_orphans_total``): it is never billed, because nobody knows
whom to bill. That is usually a misconfiguration (a route that skips ext_authz, a second Envoy
logging to this sidecar), so it is also an event: at most one per replica and minute, with the
count, dedupe key ``usage.unattributed:<instance>:<minute start>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from datetime import UTC, datetime

from tollhouse.logs import get_logger
from tollhouse.webhooks.models import EmitEvent

__all__ = ["UnattributedUsage"]

log = get_logger(__name__)


class UnattributedUsage:
    """Counts dropped served facts (``add``, on the loop) and emits them once a window."""

    def __init__(
        self, *, emit: EmitEvent, instance: str, clock: Callable[[], float], window_s: float = 60.0
    ) -> None:
        self._emit = emit
        self._instance = instance
        self._clock = clock
        self.window_s = window_s
        self._pending: dict[int, int] = {}  # window start (Unix s) -> facts

    def add(self, n: int) -> None:
        """``n`` served facts were dropped without a reservation just now."""
        start = int(math.floor(self._clock() / self.window_s) * self.window_s)
        self._pending[start] = self._pending.get(start, 0) + n

    async def flush(self, *, all_windows: bool = False) -> int:
        """Emit every finished window (all of them with ``all_windows``); events newly recorded."""
        now, new = self._clock(), 0
        for start in sorted(self._pending):
            if not all_windows and start + self.window_s > now:
                continue
            count = self._pending[start]
            data = {
                "count": count,
                "instance": self._instance,
                "window_start": _iso(start),
                "window_end": _iso(start + self.window_s),
            }
            key = f"usage.unattributed:{self._instance}:{start}"
            new += int(await self._emit("usage.unattributed", None, key, data))
            del self._pending[start]  # only once recorded: a failed emit is retried
        return new

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every few seconds until ``stop``, then flush what is left."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(5.0, self.window_s))
            try:
                await asyncio.wait_for(self.flush(all_windows=stop.is_set()), 10)
            except Exception:  # the outbox's store: kept, retried next round
                log.warning("alerts.unattributed_failed", exc=True)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
