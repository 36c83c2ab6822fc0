"""The HTTP listeners: admin (/metrics, /healthz, /readyz, /admin), metrics apart, customer usage.

With ``metrics_listen`` set, ``/metrics`` is served there only, so a network policy can let
Prometheus in without opening ``/admin``.

The usage listener serves ``/v1/usage`` and is meant to be routed through Envoy and ext_authz.
Every error on both listeners is problem+json, and none echoes or logs the request: aiohttp's
own answer to a request it cannot parse quotes the offending bytes (an oversized Authorization
header, say) in its text/plain body and its log, so its connections answer 431 (header section
too large) or 400 here, and log only the status, the code and the exception's type.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tollhouse.logs import get_logger
from tollhouse.problems import problem_response

__all__ = ["AdminHttp", "SafeAppRunner", "problem_response", "problems_middleware"]

log = get_logger(__name__)
ADMIN_MAX_BODY = 64 * 1024  # bytes of an admin request body; more: 413 body_too_large


_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "body_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
    500: "internal_error",
    504: "timeout",
}
_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Content too large",
    431: "Request header fields too large",
    500: "Internal error",
    504: "Timeout",
}
_PROTOCOL_DETAILS = {
    431: "the request line, a header field or the number of header fields is "
    "over this listener's limit",
    400: "the request is not valid HTTP/1.1",
}


def _protocol_status(exc: BaseException | None, status: int) -> int:
    """431 for a request line or header over aiohttp's limits, or too many headers."""
    if isinstance(exc, LineTooLong):
        return 431
    if isinstance(exc, HttpProcessingError) and "too many headers" in exc.message.lower():
        return 431
    return status


class _RequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering protocol errors without quoting the request."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """problem+json, connection closed; ``message`` (the raw request's bytes) is dropped."""
        status = _protocol_status(exc, status)
        code = _CODES.get(status, "bad_request" if status < 500 else "internal_error")
        if status >= 500:
            log.error(
                "http.internal_error",
                exc=exc or False,
                status=status,
                code=code,
                method=request.method,
                path=request.path,
            )
        else:  # parse errors: the exception's message quotes the request, so only its type
            log.warning(
                "http.bad_request",
                status=status,
                code=code,
                error_type=type(exc).__name__ if exc is not None else None,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started")
        resp = problem_response(
            status,
            code,
            _TITLES.get(status, "Error"),
            _PROTOCOL_DETAILS.get(status, "") if exc is not None else "",
        )
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """Log aiohttp's other internal errors: one structured line, no request bytes."""
        exc = kw.get("exc_info")
        log.error(
            "http.server_error",
            exc=exc if isinstance(exc, BaseException) else True,
            detail=str(args[0]) if args else "",
        )


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class SafeAppRunner(web.AppRunner):
    """An AppRunner whose connections are :class:`_RequestHandler` (no access log)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, access_log=None, **kwargs)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )


@web.middleware
async def problems_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Any HTTP error (unknown path, wrong method, body too large) or bug: problem+json."""
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        resp = problem_response(
            e.status, _CODES.get(e.status, "bad_request"), _TITLES.get(e.status, e.reason)
        )
        resp.headers.update(headers)
        return resp
    except Exception:
        log.error("http.internal_error", exc=True, method=request.method, path=request.path)
        return problem_response(500, "internal_error", "Internal error")


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class AdminHttp:
    """Both HTTP listeners of a running app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._runners: list[web.AppRunner] = []

    def _admin_app(self) -> web.Application:
        # The limit applies to the root app only (a sub-app's client_max_size is not used).
        web_app = web.Application(middlewares=[problems_middleware], client_max_size=ADMIN_MAX_BODY)
        if not self.app.cfg.metrics_listen:  # else /metrics has a listener of its own
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
        """Prometheus exposition: request-kept gauges refreshed, the worker's families merged."""
        refresh = getattr(self.app, "refresh_metrics", None)
        if refresh is not None:
            refresh()
        body = generate_latest()
        worker = getattr(getattr(self.app, "metering", None), "worker", None)
        if worker is not None:
            from tollhouse.metering.metrics import WORKER_FAMILIES
            from tollhouse.metering.worker_link import merge_exposition

            body = merge_exposition(body, await worker.metrics(), WORKER_FAMILIES)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        """Readiness: config, keys and entitlements loaded."""
        detail = self.app.ready_detail()
        return web.json_response(detail, status=200 if detail["ready"] else 503)

    async def _listen(self, web_app: web.Application, addr: str) -> None:
        runner = SafeAppRunner(web_app)
        await runner.setup()
        host, port = _hostport(addr)
        site = web.TCPSite(runner, host, port, reuse_port=False)
        await site.start()
        self._runners.append(runner)

    async def start(self) -> None:
        """Start the admin listener and, if configured, the metrics and usage listeners."""
        cfg = self.app.cfg
        if cfg.admin_listen:
            await self._listen(self._admin_app(), cfg.admin_listen)
        if cfg.metrics_listen:
            metrics_app = web.Application(middlewares=[problems_middleware])
            metrics_app.router.add_get("/metrics", self.metrics)
            await self._listen(metrics_app, cfg.metrics_listen)
        if cfg.usage_listen:
            from tollhouse.usage_http import build_usage_app

            await self._listen(build_usage_app(self.app), cfg.usage_listen)

    async def stop(self) -> None:
        """Stop listening."""
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()
