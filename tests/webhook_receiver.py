"""A real local webhook receiver (aiohttp on a free port) that the webhook tests deliver to."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from tests.servers import free_port

__all__ = ["Received", "Receiver"]


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    """Records every POST and answers ``status``; with ``hang`` set it answers nothing."""

    port: int = field(default_factory=free_port)
    status: int = 200
    hang: bool = False
    delay_s: float = 0.0
    seen: list[Received] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The URL to register."""
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        wid = request.headers.get("webhook-id", "")
        self.seen.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
        self.in_flight[wid] = self.in_flight.get(wid, 0) + 1
        self.max_in_flight[wid] = max(self.max_in_flight.get(wid, 0), self.in_flight[wid])
        try:
            if self.hang:
                await asyncio.Event().wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return web.Response(status=self.status, text="ok")
        finally:
            self.in_flight[wid] -= 1

    async def start(self) -> Receiver:
        """Listen on ``port`` (the same one after a restart)."""
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        """Stop listening and drop the connections in flight (their requests get no answer)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> list[str]:
        """The ``webhook-id`` of every request received, in order."""
        return [r.headers["webhook-id"] for r in self.seen]
