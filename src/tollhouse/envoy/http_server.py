"""The HTTP/1.1 ext_authz listener (``authz_http_listen``), on the same loop and Checker as gRPC.

Parsing is httptools' (llhttp, the C parser of Node.js): no HTTP is parsed by hand here. Each
connection is an :class:`asyncio.Protocol`; requests on one connection are answered in order
(keep-alive and pipelining), one at a time, by a single task that drains the connection's queue.

Limits, so nothing but a well-behaved Envoy gets far: the request line plus headers
(``max_header_bytes``), the number of headers, the body (Envoy sends none by default), queued
pipelined requests (reading pauses above ``max_pipelined``), open connections (more are closed at
once and counted), a header timeout against slow clients and an idle timeout, both enforced by one
sweeper task per listener rather than a timer per request. Anything the parser refuses
(Content-Length with Transfer-Encoding, two Content-Lengths, bad bytes) is a 400 and the connection
closes: it is never an allow, and no exception ever leaves a connection without an answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any, cast

import httptools

from tollhouse.check import Checker
from tollhouse.config import AuthzHttpConfig
from tollhouse.decision import Decision, Deny, unavailable
from tollhouse.envoy.answer import observe
from tollhouse.envoy.http_codec import BadRequest, UnsafeHeader, decode_request, encode_decision
from tollhouse.logs import get_logger
from tollhouse.metrics import AUTHZ_HTTP_CONNECTIONS, AUTHZ_HTTP_REFUSED

__all__ = ["HttpAuthzServer"]

log = get_logger(__name__)
_SWEEP_S = 0.5

_Pending = tuple[bytes, bytes, list[tuple[bytes, bytes]], bool, float]


_TITLES = {413: "Content too large", 431: "Request header fields too large"}


class _TooLarge(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.deny = Deny(status, code, _TITLES.get(status, "Bad request"), detail)


class _Connection(asyncio.Protocol):
    """One Envoy connection: parse, queue, answer in order."""

    def __init__(self, server: HttpAuthzServer) -> None:
        self.server = server
        self.cfg = server.cfg
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()  # once per connection: it costs a getpid()
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[_Pending] = collections.deque()
        self.worker: asyncio.Task[None] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.body_bytes = 0
        self.in_message = False
        self.message_started = 0.0
        self.last_activity = time.monotonic()
        self.paused = False
        self.closing = False

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection, or close it at once past ``max_connections``."""
        self.transport = cast(asyncio.Transport, transport)  # a stream server's transport
        if len(self.server.connections) >= self.cfg.max_connections:
            AUTHZ_HTTP_REFUSED.labels("max_connections").inc()
            self.closing = True
            self.transport.abort()
            return
        self.server.connections.add(self)
        AUTHZ_HTTP_CONNECTIONS.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; a Check already running still finishes (and is counted)."""
        if self in self.server.connections:
            self.server.connections.discard(self)
            AUTHZ_HTTP_CONNECTIONS.dec()
        self.closing = True
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a protocol error answers 400 (431/413 for a limit) and closes."""
        self.last_activity = time.monotonic()
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Deny(400, "bad_request", "Bad request", "upgrade is not supported"))
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            deny = cause.deny if isinstance(cause, _TooLarge) else _bad("callback failed")
            self._fail(deny)
        except httptools.HttpParserError as e:
            AUTHZ_HTTP_REFUSED.labels("parse_error").inc()
            self._fail(_bad(f"malformed request: {e}"))

    def pause_writing(self) -> None:
        """Envoy reads slowly: stop reading until it catches up."""
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """Envoy caught up."""
        self.paused = False
        if self.transport is not None and len(self.queue) < self.cfg.max_pipelined:
            self.transport.resume_reading()

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts: reset the per-message state, start its header clock."""
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.body_bytes = 0
        self.in_message = True
        self.message_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        """The request target, maybe in pieces."""
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line."""
        self.headers.append((name, value))
        if len(self.headers) > self.cfg.max_headers:
            AUTHZ_HTTP_REFUSED.labels("too_many_headers").inc()
            raise _TooLarge(431, "headers_too_large", "too many headers")
        self._count(len(name) + len(value) + 4)

    def on_body(self, body: bytes) -> None:
        """Envoy sends no body by default; a large one is refused."""
        self.body_bytes += len(body)
        if self.body_bytes > self.cfg.max_body_bytes:
            AUTHZ_HTTP_REFUSED.labels("body_too_large").inc()
            raise _TooLarge(413, "body_too_large", "the request body is too large")

    def on_message_complete(self) -> None:
        """Queue the request; one task answers the queue in order."""
        self.in_message = False
        parser = self.parser
        self.queue.append(
            (
                parser.get_method(),
                self.url,
                self.headers,
                parser.should_keep_alive(),
                time.perf_counter(),
            )
        )
        if len(self.queue) >= self.cfg.max_pipelined and self.transport is not None:
            self.transport.pause_reading()
        if self.worker is None:
            self.worker = self.loop.create_task(self._drain())

    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.cfg.max_header_bytes:
            AUTHZ_HTTP_REFUSED.labels("headers_too_large").inc()
            raise _TooLarge(431, "headers_too_large", "the request headers are too large")

    # ---- answering ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        try:
            while self.queue and not self.closing:
                await self._answer(*self.queue.popleft())
                if not self.paused and self.transport is not None:
                    self.transport.resume_reading()
        finally:
            self.worker = None

    async def _answer(
        self,
        method: bytes,
        url: bytes,
        raw: list[tuple[bytes, bytes]],
        keep_alive: bool,
        started: float,
    ) -> None:
        server = self.server
        server.in_flight += 1
        try:
            try:
                req = decode_request(method, url, raw, self.cfg.path_prefix)
            except (BadRequest, UnicodeDecodeError) as e:
                AUTHZ_HTTP_REFUSED.labels("bad_request").inc()
                self._fail(_bad(str(e)))
                return
            decision = await server.checker.check(req)
            close = not keep_alive or server.stopping
            self._write(decision, close, method == b"HEAD", started)
        finally:
            server.in_flight -= 1

    def _write(self, decision: Decision, close: bool, head_only: bool, started: float) -> None:
        try:
            data = encode_decision(decision, close=close, head_only=head_only)
        except UnsafeHeader:
            log.error("authz_http.unsafe_header", code=getattr(decision, "code", "ok"))
            decision = unavailable("internal_error", "the answer could not be encoded")
            data = encode_decision(decision, close=close, head_only=head_only)
        observe(decision, started)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            self.closing = True
            transport.close()

    def _fail(self, deny: Deny) -> None:
        """Answer a request that never reached the Checker, then close the connection."""
        self.queue.clear()
        self.closing = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.write(encode_decision(deny, close=True))
            transport.close()

    def sweep(self, now: float) -> None:
        """Close a connection whose headers are too slow, or that idled too long."""
        if self.closing or self.transport is None:
            return
        if self.in_message and now - self.message_started > self.cfg.header_timeout_s:
            AUTHZ_HTTP_REFUSED.labels("header_timeout").inc()
            self._fail(Deny(408, "request_timeout", "Request timeout", "headers too slow"))
        elif (
            self.worker is None
            and not self.in_message
            and now - self.last_activity > self.cfg.idle_timeout_s
        ):
            self.closing = True
            self.transport.close()


def _bad(detail: str) -> Deny:
    return Deny(400, "bad_request", "Bad request", detail)


class HttpAuthzServer:
    """The listener: start, sweep slow and idle connections, drain on stop."""

    def __init__(self, checker: Checker, cfg: AuthzHttpConfig, listen: str) -> None:
        self.checker = checker
        self.cfg = cfg
        self.listen = listen
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and listen (raises OSError when the address is taken)."""
        host, _, port = self.listen.rpartition(":")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host.strip("[]"),
            int(port),
            reuse_address=True,
            reuse_port=False,
            backlog=1024,
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="tollhouse-authz-http-sweep")
        log.info("authz_http.started", listen=self.listen)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.sweep(now)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let in-flight Checks answer (with ``connection: close``), close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110 (own counter)
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    @property
    def address(self) -> Any:
        """The bound socket address (host, port); None before :meth:`start`."""
        return None if self._server is None else self._server.sockets[0].getsockname()
