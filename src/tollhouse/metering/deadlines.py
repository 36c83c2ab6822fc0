"""One timer for every waiter of the fact log: a reservation not durable in time fails.

A Check waits for its reserved fact to be fdatasynced, but never longer than
``check_deadline_ms``: a hung disk must not hang Envoy. ``asyncio.timeout`` around each wait would
arm and cancel a timer per Check (a heap push, a cancelled handle left in the heap, a context
manager); here the waits queue in arrival order and one timer, armed for the oldest, fails those
still pending when their time is up. Waiters come in deadline order because they share one
deadline; after a reload that shortens it, a new waiter may wait at most the old deadline.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["Deadlines"]


class Deadlines:
    """Fail futures still pending ``after_s`` after they were added, with :class:`TimeoutError`."""

    __slots__ = ("_queue", "_timer")

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, fut: asyncio.Future[None], after_s: float) -> None:
        """Give ``fut`` until ``after_s`` from now (its loop's clock)."""
        loop = fut.get_loop()
        self._queue.append((loop.time() + after_s, fut))
        if self._timer is None:
            self._timer = loop.call_at(self._queue[0][0], self._fire, loop)

    def __len__(self) -> int:
        return len(self._queue)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        queue = self._queue
        while queue and (queue[0][0] <= now or queue[0][1].done()):
            _, fut = queue.popleft()
            if not fut.done():
                fut.set_exception(TimeoutError("not durable before the deadline"))
        if queue:
            self._timer = loop.call_at(queue[0][0], self._fire, loop)
