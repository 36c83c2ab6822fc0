"""The HTTP listeners: admin (/metrics, /healthz, /readyz, /admin) and customer usage.

The usage listener serves ``/v1/usage`` and is meant to be routed through Envoy and ext_authz.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tollhouse.logs import get_logger

__all__ = ["AdminHttp", "problem_response"]

log = get_logger(__name__)


def problem_response(status: int, code: str, title: str, detail: str = "") -> web.Response:
    """An RFC 9457 problem+json response."""
    body = {"type": f"https://tollhouse.dev/problems/{code}", "title": title, "status": status,
            "code": code}
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status, content_type="application/problem+json")


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class AdminHttp:
    """Both HTTP listeners of a running app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._runners: list[web.AppRunner] = []

    def _admin_app(self) -> web.Application:
        web_app = web.Application()
        web_app.router.add_get("/metrics", self.metrics)
        web_app.router.add_get("/healthz", self.healthz)
        web_app.router.add_get("/readyz", self.readyz)
        admin = self._admin_api()
        if admin is not None:
            web_app.add_subapp("/admin", admin)
        return web_app

    def _admin_api(self) -> web.Application | None:
        directory = getattr(self.app, "directory", None)
        admin_cfg = getattr(self.app.cfg, "admin", None)
        if directory is None or admin_cfg is None or admin_cfg.token_file is None:
            return None
        from tollhouse.admin import build_admin_app

        return build_admin_app(self.app.cfg, current=lambda: self.app.cfg)

    async def metrics(self, _: web.Request) -> web.Response:
        """Prometheus exposition (gauges kept by requests are refreshed first)."""
        refresh = getattr(self.app, "refresh_metrics", None)
        if refresh is not None:
            refresh()
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        """Readiness: config, keys and entitlements loaded."""
        detail = self.app.ready_detail()
        return web.json_response(detail, status=200 if detail["ready"] else 503)

    async def _listen(self, web_app: web.Application, addr: str) -> None:
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        host, port = _hostport(addr)
        site = web.TCPSite(runner, host, port, reuse_port=False)
        await site.start()
        self._runners.append(runner)

    async def start(self) -> None:
        """Start the admin listener and, if configured, the usage listener."""
        cfg = self.app.cfg
        if cfg.admin_listen:
            await self._listen(self._admin_app(), cfg.admin_listen)
        if cfg.usage_listen:
            from tollhouse.usage_http import build_usage_app

            await self._listen(build_usage_app(self.app), cfg.usage_listen)

    async def stop(self) -> None:
        """Stop listening."""
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()
