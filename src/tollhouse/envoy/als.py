"""The ``envoy.service.accesslog.v3.AccessLogService`` servicer for grpc.aio.

Envoy's gRPC access logger streams ``StreamAccessLogsMessage``s and never waits for an answer.
Each HTTP entry is turned into a plain :class:`~tollhouse.metering.policy.LogEntry` and handed to
the ingest object (:class:`~tollhouse.metering.Metering`) once per message, so state updates are
batched into the spool's writer. Nothing here raises: a garbage message (even bytes that do not
parse: the method is registered with a tolerant deserializer), an entry without tollhouse metadata
or a failing entry is counted and the stream goes on.

One bad entry costs nothing else: a message protobuf refuses (a string field that is not valid
UTF-8, which any client can cause through its ``x-request-id``) is read entry by entry by
:mod:`tollhouse.envoy.als_wire`, each malformed part counted by reason.

The usage id of an entry comes from the ext_authz dynamic metadata (namespace
``envoy.filters.http.ext_authz``): ``usage_id`` (the gRPC transport's CheckResponse metadata),
else ``x-tollhouse-usage-id`` (the HTTP transport, through Envoy's
``dynamic_metadata_from_headers``). Only when an entry has no ext_authz metadata at all, the
upstream was reached, and ``metering.usage_id_from_request_header`` is on, the logged request
header ``x-tollhouse-usage-id`` is used (Istio's ``envoyExtAuthzHttp``; see docs/metering.md
for why that header can be trusted there). A usage id that is not 32 lowercase hex digits is
counted (``bad_usage_id``) and ignored.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeAlias

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf.message import DecodeError

from tollhouse.envoy.als_wire import Recovered, recover
from tollhouse.envoy.metadata import METADATA_NAMESPACE, USAGE_ID_HEADER, USAGE_ID_KEYS
from tollhouse.logs import get_logger
from tollhouse.metering.metrics import ALS_ENTRIES, ALS_MALFORMED, ALS_MESSAGES
from tollhouse.metering.policy import LogEntry

__all__ = [
    "METADATA_NAMESPACE",
    "SERVICE_NAME",
    "USAGE_ID_HEADER",
    "AccessLogHandOff",
    "AccessLogServicer",
    "Ingest",
    "add_hand_off_to_server",
    "add_to_server",
    "entries_of",
    "to_log_entry",
]

log = get_logger(__name__)

SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"
_USAGE_ID = re.compile(r"[0-9a-f]{32}")  # tollhouse.metering.spool.new_usage_id

# Response flags meaning Envoy answered itself (or no upstream was reached): the entry voids.
_LOCAL_REPLY_FLAGS = frozenset(
    {
        "failed_local_healthcheck",
        "no_healthy_upstream",
        "upstream_request_timeout",
        "local_reset",
        "upstream_connection_failure",
        "upstream_overflow",
        "no_route_found",
        "fault_injected",
        "rate_limited",
        "unauthorized_details",
        "rate_limit_service_error",
        "upstream_retry_limit_exceeded",
        "stream_idle_timeout",
        "invalid_envoy_request_headers",
        "downstream_protocol_error",
        "upstream_max_stream_duration_reached",
        "response_from_cache_filter",
        "no_filter_config_found",
        "duration_timeout",
        "no_cluster_found",
        "overload_manager",
        "dns_resolution_failure",
    }
)


class Ingest(Protocol):
    """Where converted entries go (the metering object)."""

    async def ingest(self, entries: Sequence[LogEntry]) -> None:
        """Take a batch of entries that carry a usage id."""


Decoded: TypeAlias = "als_pb2.StreamAccessLogsMessage | Recovered | None"


def _decode(data: bytes) -> Decoded:
    """The method's deserializer: the whole message in C, else entry by entry; never raises."""
    try:
        return als_pb2.StreamAccessLogsMessage.FromString(data)
    except (DecodeError, ValueError):
        pass
    try:
        return recover(data)
    except Exception as e:  # a bug in the walker must not kill the stream: count it as garbage
        log.error("als.recover_failed", error=type(e).__name__, size=len(data))
        return None


def _duration_us(common: Any) -> int:
    d = common.duration if common.HasField("duration") else common.time_to_last_downstream_tx_byte
    return max(0, int(d.seconds) * 1_000_000 + int(d.nanos) // 1000)


def _checked(value: str) -> str | None:
    """The usage id if it looks like one (32 lowercase hex digits), else counted and None."""
    if _USAGE_ID.fullmatch(value):
        return value
    ALS_MALFORMED.labels(reason="bad_usage_id").inc()
    return None


def _usage_id(entry: al.HTTPAccessLogEntry, *, served: bool, from_header: bool) -> str | None:
    """The entry's usage id: ext_authz metadata first; the request header only if allowed."""
    meta = entry.common_properties.metadata.filter_metadata
    if METADATA_NAMESPACE in meta:
        fields = meta[METADATA_NAMESPACE].fields
        for key in USAGE_ID_KEYS:
            value = fields.get(key)
            if value is not None and value.WhichOneof("kind") == "string_value":
                return _checked(str(value.string_value)) if value.string_value else None
        return None
    if not (from_header and served):
        return None  # a request that never passed ext_authz logs the client's own headers
    header = entry.request.request_headers.get(USAGE_ID_HEADER)
    return _checked(str(header)) if header else None


def _served(common: Any, code: int, details: str, flags: list[str]) -> bool:
    """Whether the upstream answered: a host was picked, and no local reply or denial."""
    return (
        common.HasField("upstream_remote_address")
        and code != 0
        and not _LOCAL_REPLY_FLAGS.intersection(flags)
        and details in ("", "via_upstream")
    )


def to_log_entry(entry: al.HTTPAccessLogEntry, *, usage_id_from_header: bool = False) -> LogEntry:
    """Convert one HTTP access-log entry (protobuf) into a plain :class:`LogEntry`.

    ``usage_id_from_header``: take the usage id from the logged request header
    ``x-tollhouse-usage-id`` when the entry has no ext_authz metadata and reached the upstream.
    """
    common = entry.common_properties
    req = entry.request
    resp = entry.response
    flags = [fd.name for fd, _ in common.response_flags.ListFields()]
    code = int(resp.response_code.value) if resp.HasField("response_code") else 0
    served = _served(common, code, resp.response_code_details, flags)
    return LogEntry(
        usage_id=_usage_id(entry, served=served, from_header=usage_id_from_header),
        response_code=code,
        request_bytes=int(req.request_headers_bytes) + int(req.request_body_bytes),
        response_bytes=int(resp.response_headers_bytes) + int(resp.response_body_bytes),
        duration_us=_duration_us(common),
        upstream_served=served,
        response_flags=",".join(flags),
        request_id=str(req.request_id),
        response_headers={k.lower(): v for k, v in resp.response_headers.items()},
    )


def _unpack(msg: Decoded) -> Sequence[al.HTTPAccessLogEntry] | None:
    """Count the message (and what was malformed in it); return its HTTP entries (None: garbage)."""
    if isinstance(msg, als_pb2.StreamAccessLogsMessage):
        ALS_MESSAGES.labels(outcome="ok").inc()
        if msg.HasField("tcp_logs"):
            ALS_ENTRIES.labels(outcome="non_http").inc(len(msg.tcp_logs.log_entry))
        return msg.http_logs.log_entry if msg.HasField("http_logs") else ()
    if not isinstance(msg, Recovered):
        ALS_MESSAGES.labels(outcome="garbage").inc()
        return None
    ALS_MESSAGES.labels(outcome="recovered").inc()
    for counter, label, n in (
        (ALS_ENTRIES, "non_http", msg.tcp_entries),
        (ALS_ENTRIES, "unreadable", msg.unreadable),
        (ALS_MALFORMED, "unreadable_entry", msg.unreadable),
        (ALS_MALFORMED, "invalid_utf8", msg.invalid_utf8),
        (ALS_MALFORMED, "truncated_message", int(msg.truncated)),
    ):
        if n:
            counter.labels(label).inc(n)
    if msg.unreadable or msg.truncated:
        log.warning(
            "als.entries_lost",
            unreadable=msg.unreadable,
            truncated=msg.truncated,
            recovered=len(msg.entries),
        )
    return msg.entries


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """StreamAccessLogs: a client stream, answered once when Envoy closes it.

    ``usage_id_from_request_header`` is ``metering.usage_id_from_request_header``; a hot reload
    changes it through :meth:`reconfigure`.
    """

    def __init__(self, ingest: Ingest, *, usage_id_from_request_header: bool = False) -> None:
        self._ingest = ingest
        self._from_header = usage_id_from_request_header

    def reconfigure(self, *, usage_id_from_request_header: bool) -> None:
        """Apply a reloaded ``metering.usage_id_from_request_header``."""
        self._from_header = usage_id_from_request_header

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        """Consume the stream; never raise (a raise would make Envoy reconnect and drop logs)."""
        try:
            async for msg in request_iterator:
                await self.handle(msg)
        except Exception:
            log.error("als.stream_failed", exc=True)
        return als_pb2.StreamAccessLogsResponse()

    async def handle(self, msg: Decoded) -> int:
        """Convert one message and hand its entries to the ingest; return how many were taken."""
        raws = _unpack(msg)
        if not raws:
            return 0
        entries, no_meta, errors = _convert(raws, self._from_header)
        with_meta = sum(1 for e in entries if e.usage_id is not None)
        if entries:
            try:
                await self._ingest.ingest(entries)
            except Exception as e:
                log.error("als.ingest_failed", error=type(e).__name__, entries=len(entries))
                errors += len(entries)
                entries = []
        ingested = with_meta if entries else 0
        _count(ingested, no_meta, errors)
        return ingested


def _convert(
    raws: Sequence[al.HTTPAccessLogEntry], from_header: bool
) -> tuple[list[LogEntry], int, int]:
    """The entries worth a fact (a usage id, or a request id to void by), and what was not."""
    entries: list[LogEntry] = []
    no_meta = errors = 0
    for raw in raws:
        try:
            e = to_log_entry(raw, usage_id_from_header=from_header)
        except Exception:
            errors += 1
            continue
        if e.usage_id is None:
            no_meta += 1  # never billed; a pending reservation of its request is voided
            if not e.request_id:
                continue
        entries.append(e)
    return entries, no_meta, errors


def entries_of(data: bytes, *, usage_id_from_header: bool = False) -> list[LogEntry]:
    """The entries of one raw ``StreamAccessLogsMessage`` (as the metering worker reads it).

    Decoded and counted exactly as the in-process receiver does; never raises.
    """
    raws = _unpack(_decode(data))
    if not raws:
        return []
    entries, no_meta, errors = _convert(raws, usage_id_from_header)
    _count(sum(1 for e in entries if e.usage_id is not None), no_meta, errors)
    return entries


class AccessLogHandOff(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """StreamAccessLogs for the Check process: each message goes to ``sink`` undecoded.

    The sink (:meth:`tollhouse.metering.writer.FactWriter.access_log`) appends it to the fact
    log; the metering worker decodes it there, off the Checks' event loop.
    """

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[bytes], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        """Consume the stream; never raise (a raise would make Envoy reconnect and drop logs)."""
        try:
            async for data in request_iterator:
                self._sink(data)
        except Exception:
            log.error("als.stream_failed", exc=True)
        return als_pb2.StreamAccessLogsResponse()


def add_hand_off_to_server(servicer: AccessLogHandOff, server: grpc.aio.Server) -> None:
    """Register the hand-off servicer: messages arrive as bytes, never parsed here."""
    _register(server, servicer.StreamAccessLogs, None)


def _count(ingested: int, no_meta: int, errors: int) -> None:
    for outcome, n in (("ingested", ingested), ("no_metadata", no_meta), ("error", errors)):
        if n:
            ALS_ENTRIES.labels(outcome=outcome).inc(n)


def add_to_server(servicer: AccessLogServicer, server: grpc.aio.Server) -> None:
    """Register the servicer with a deserializer that reads what it can and counts the rest."""
    _register(server, servicer.StreamAccessLogs, _decode)


def _register(
    server: grpc.aio.Server, method: Any, deserializer: Callable[[bytes], Any] | None
) -> None:
    handler = grpc.stream_unary_rpc_method_handler(
        method,
        request_deserializer=deserializer,
        response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"StreamAccessLogs": handler}),)
    )
