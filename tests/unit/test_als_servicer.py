"""The AccessLogService servicer over a real grpc.aio channel, fed real Envoy ALS protos."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from prometheus_client import REGISTRY

from tests.servers import free_port
from tollhouse.config import parse_config
from tollhouse.envoy.als import (
    METADATA_NAMESPACE,
    USAGE_ID_HEADER,
    AccessLogServicer,
    add_to_server,
)
from tollhouse.metering import Metering, SqliteMeterSink
from tollhouse.metering.schema import UsageRecord

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _entry(
    usage_id: str | None,
    *,
    code: int = 200,
    upstream: bool = True,
    denied: bool = False,
    resp_body: int = 1000,
) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry()
    c = e.common_properties
    if usage_id is not None:
        meta = struct_pb2.Struct()
        meta.update({"usage_id": usage_id, "customer": "acme", "feature": "export"})
        c.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(meta)
    if upstream:
        c.upstream_remote_address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=8080)
            )
        )
    if denied:
        c.response_flags.unauthorized_details.reason = 1
    c.duration.FromMicroseconds(2500)
    e.request.request_headers_bytes = 200
    e.request.request_body_bytes = 50
    e.response.response_code.value = code
    e.response.response_headers_bytes = 100
    e.response.response_body_bytes = resp_body
    e.response.response_code_details = "via_upstream" if upstream else "ext_authz_denied"
    return e


def _msg(*entries: al.HTTPAccessLogEntry) -> als_pb2.StreamAccessLogsMessage:
    m = als_pb2.StreamAccessLogsMessage()
    m.identifier.log_name = "tollhouse"
    m.http_logs.log_entry.extend(entries)
    return m


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Metering, grpc.aio.Channel]]:
    """Serve a Metering's ALS servicer on a real grpc.aio server; yield it and a channel."""
    cfg = parse_config(
        {
            "meters": {"requests": {}, "egress": {"from": "response_bytes"}},
            "features": {
                "export": {"rules": [{"path": "/v1/export/**"}], "meters": ["requests", "egress"]}
            },
            "metering": {
                "spool": str(tmp_path / "spool"),
                "meter": f"sqlite:///{tmp_path / 'meter.db'}",
            },
        }
    )
    m = Metering(cfg, instance="t", sink=SqliteMeterSink(tmp_path / "meter.db"))
    await m.spool.open()
    server = grpc.aio.server()
    add_to_server(AccessLogServicer(m), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield m, channel
    await channel.close()
    await server.stop(None)
    await m.stop(deadline_s=1)


async def _reserve(m: Metering, request_id: str = "r") -> str:
    rec = m.build_reservation(
        customer="acme",
        plan="pro",
        feature="export",
        method="GET",
        path="/v1/export/a",
        request_id=request_id,
        decision_id="d",
    )
    await m.reserve(rec)
    return rec.usage_id


async def _stream(channel: grpc.aio.Channel, *msgs: als_pb2.StreamAccessLogsMessage) -> None:
    stub = als_pb2_grpc.AccessLogServiceStub(channel)
    await stub.StreamAccessLogs(iter(msgs), timeout=10)


async def test_served_entry_confirms_with_bytes(rig: tuple[Metering, grpc.aio.Channel]) -> None:
    """An upstream-served entry confirms its reservation with status, bytes and duration."""
    m, ch = rig
    uid = await _reserve(m)
    await _stream(ch, _msg(_entry(uid)))
    await m.spool.counts()
    rec = await m.spool.get(uid)
    assert rec is not None
    assert rec.state == UsageRecord.CONFIRMED
    assert (rec.response_code, rec.request_bytes, rec.response_bytes) == (200, 250, 1100)
    assert rec.duration_us == 2500
    assert rec.upstream_served
    assert dict(rec.units) == {"requests": 1, "egress": 1100}
    assert rec.billable


async def test_denied_and_unrouted_entries_void(rig: tuple[Metering, grpc.aio.Channel]) -> None:
    """An ext_authz denial flag or no upstream host voids the reservation."""
    m, ch = rig
    a, b = await _reserve(m), await _reserve(m)
    await _stream(
        ch,
        _msg(_entry(a, code=403, upstream=False, denied=True), _entry(b, code=503, upstream=False)),
    )
    await m.spool.counts()
    for uid in (a, b):
        rec = await m.spool.get(uid)
        assert rec is not None
        assert rec.state == UsageRecord.VOIDED
        assert not rec.billable


async def test_no_metadata_is_counted_never_billed(rig: tuple[Metering, grpc.aio.Channel]) -> None:
    """An entry without tollhouse metadata increments a metric and touches no record."""
    m, ch = rig
    uid = await _reserve(m)
    before = _metric("tollhouse_als_entries_total", outcome="no_metadata")
    await _stream(ch, _msg(_entry(None), _entry(None)))
    counts = await m.spool.counts()
    assert _metric("tollhouse_als_entries_total", outcome="no_metadata") - before == 2
    assert counts["RESERVED"] == 1
    assert counts["CONFIRMED"] == 0
    rec = await m.spool.get(uid)
    assert rec is not None
    assert rec.state == UsageRecord.RESERVED


async def test_late_answer_is_voided_by_request_id(
    rig: tuple[Metering, grpc.aio.Channel],
) -> None:
    """An entry without metadata voids the pending reservation of the same Envoy request id.

    That is a request Envoy refused (its ext_authz timeout passed before tollhouse's OK came):
    it must never be billed as unconfirmed later. Other reservations are untouched.
    """
    m, ch = rig
    late, other = await _reserve(m, "rid-late"), await _reserve(m, "rid-other")
    entry = _entry(None, code=503, upstream=False)
    entry.request.request_id = "rid-late"
    entry.common_properties.response_flags.unauthorized_details.reason = 1
    await _stream(ch, _msg(entry))
    await m.spool.counts()
    voided = await m.spool.get(late)
    assert voided is not None
    assert voided.state == UsageRecord.VOIDED
    assert not voided.billable
    pending = await m.spool.get(other)
    assert pending is not None
    assert pending.state == UsageRecord.RESERVED


async def test_garbage_bytes_do_not_kill_the_stream(rig: tuple[Metering, grpc.aio.Channel]) -> None:
    """Unparsable bytes mid-stream are counted; the next message on the same stream still lands."""
    m, ch = rig
    uid = await _reserve(m)
    before = _metric("tollhouse_als_messages_total", outcome="garbage")
    call = ch.stream_unary(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
        request_serializer=lambda b: b,
        response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
    )
    frames = [b"\xff\xff\xff\xff garbage", _msg(_entry(uid)).SerializeToString()]
    await call(iter(frames), timeout=10)
    await m.spool.counts()
    rec = await m.spool.get(uid)
    assert _metric("tollhouse_als_messages_total", outcome="garbage") - before == 1
    assert rec is not None
    assert rec.state == UsageRecord.CONFIRMED


async def test_duplicate_entry_is_not_billed_twice(rig: tuple[Metering, grpc.aio.Channel]) -> None:
    """The same usage_id logged twice (one stream and a later one) finalises once, then ignores."""
    m, ch = rig
    uid = await _reserve(m)
    before = _metric("tollhouse_usage_entries_ignored_total", reason="duplicate")
    await _stream(ch, _msg(_entry(uid, resp_body=10), _entry(uid, resp_body=99999)))
    await _stream(ch, _msg(_entry(uid, resp_body=77777)))
    await m.spool.counts()
    rec = await m.spool.get(uid)
    assert rec is not None
    assert rec.state == UsageRecord.CONFIRMED
    assert rec.units["egress"] == 110
    assert _metric("tollhouse_usage_entries_ignored_total", reason="duplicate") - before == 2
    await m.forward_once()
    assert await m.forward_once() == 0


async def test_tcp_only_message_is_counted(rig: tuple[Metering, grpc.aio.Channel]) -> None:
    """A message carrying TCP entries only is counted as non_http and changes nothing."""
    m, ch = rig
    before = _metric("tollhouse_als_entries_total", outcome="non_http")
    msg = als_pb2.StreamAccessLogsMessage()
    msg.tcp_logs.log_entry.add()
    await _stream(ch, msg)
    assert _metric("tollhouse_als_entries_total", outcome="non_http") - before == 1
    assert (await m.spool.counts())["CONFIRMED"] == 0


# --- one bad entry loses nothing else; the HTTP transport's usage-id shapes ------------------


async def _stream_raw(channel: grpc.aio.Channel, *frames: bytes) -> None:
    call = channel.stream_unary(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
        request_serializer=lambda b: b,
        response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
    )
    await call(iter(frames), timeout=10)


async def test_non_utf8_request_id_costs_no_other_entry(
    rig: tuple[Metering, grpc.aio.Channel],
) -> None:
    """One entry with a non-UTF-8 x-request-id among 5: all 5 CONFIRMED, the bad field counted.

    protobuf refuses the whole message (checked); the servicer reads it entry by entry.
    """
    m, ch = rig
    uids = [await _reserve(m) for _ in range(5)]
    entries = [_entry(u) for u in uids]
    entries[2].request.request_id = "POISON-request-id"
    raw = _msg(*entries).SerializeToString().replace(b"POISON", b"\xff\xfe\xfd\xfc\xfb\xfa")
    with pytest.raises(DecodeError):
        als_pb2.StreamAccessLogsMessage.FromString(raw)
    bad = _metric("tollhouse_als_malformed_total", reason="invalid_utf8")
    recovered = _metric("tollhouse_als_messages_total", outcome="recovered")
    garbage = _metric("tollhouse_als_messages_total", outcome="garbage")
    await _stream_raw(ch, raw)
    await m.spool.counts()
    for uid in uids:
        rec = await m.spool.get(uid)
        assert rec is not None
        assert rec.state == UsageRecord.CONFIRMED, uid
        assert dict(rec.units) == {"requests": 1, "egress": 1100}
    assert _metric("tollhouse_als_malformed_total", reason="invalid_utf8") - bad == 1
    assert _metric("tollhouse_als_messages_total", outcome="recovered") - recovered == 1
    assert _metric("tollhouse_als_messages_total", outcome="garbage") == garbage


async def test_unreadable_entry_is_counted_and_the_rest_confirmed(
    rig: tuple[Metering, grpc.aio.Channel],
) -> None:
    """An entry whose own bytes are cut is counted unreadable; its neighbours are CONFIRMED."""
    m, ch = rig
    a, lost, b = await _reserve(m), await _reserve(m), await _reserve(m)
    blobs = [_entry(u).SerializeToString() for u in (a, lost, b)]
    blobs[1] = blobs[1][:-5]
    inner = b"".join(b"\x0a" + _len(x) + x for x in blobs)  # log_entry = 1
    raw = b"\x12" + _len(inner) + inner  # http_logs = 2
    before = _metric("tollhouse_als_entries_total", outcome="unreadable")
    await _stream_raw(ch, raw)
    await m.spool.counts()
    states = [(await m.spool.get(u)).state for u in (a, lost, b)]  # type: ignore[union-attr]
    assert states == [UsageRecord.CONFIRMED, UsageRecord.RESERVED, UsageRecord.CONFIRMED]
    assert _metric("tollhouse_als_entries_total", outcome="unreadable") - before == 1


def _len(b: bytes) -> bytes:
    n, out = len(b), bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _http_authz_entry(usage_id: str) -> al.HTTPAccessLogEntry:
    """The HTTP transport's shape: authz response headers as metadata, keyed by header name."""
    e = _entry(None)
    meta = struct_pb2.Struct()
    meta.update({"x-tollhouse-usage-id": usage_id, "x-tollhouse-decision-id": "d"})
    e.common_properties.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(meta)
    return e


async def test_http_transport_metadata_confirms(rig: tuple[Metering, grpc.aio.Channel]) -> None:
    """Metadata keyed ``x-tollhouse-usage-id`` (dynamic_metadata_from_headers) confirms."""
    m, ch = rig
    uid = await _reserve(m)
    await _stream(ch, _msg(_http_authz_entry(uid)))
    await m.spool.counts()
    rec = await m.spool.get(uid)
    assert rec is not None
    assert rec.state == UsageRecord.CONFIRMED


def _header_entry(usage_id: str, **kw: Any) -> al.HTTPAccessLogEntry:
    """Istio's shape: no metadata, the usage id in the logged request header."""
    e = _entry(None, **kw)
    e.request.request_headers[USAGE_ID_HEADER] = usage_id
    return e


@pytest.fixture
async def header_rig(
    rig: tuple[Metering, grpc.aio.Channel],
) -> AsyncIterator[tuple[Metering, grpc.aio.Channel]]:
    """The same Metering, also served by a servicer with usage_id_from_request_header on."""
    m, _ = rig
    server = grpc.aio.server()
    add_to_server(AccessLogServicer(m, usage_id_from_request_header=True), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield m, channel
    await channel.close()
    await server.stop(None)


async def test_request_header_usage_id_needs_the_flag(
    rig: tuple[Metering, grpc.aio.Channel],
    header_rig: tuple[Metering, grpc.aio.Channel],
) -> None:
    """The logged x-tollhouse-usage-id is ignored by default, and confirms with the flag on."""
    m, off = rig
    _, on = header_rig
    uid = await _reserve(m)
    await _stream(off, _msg(_header_entry(uid)))
    await m.spool.counts()
    assert (await m.spool.get(uid)).state == UsageRecord.RESERVED  # type: ignore[union-attr]
    await _stream(on, _msg(_header_entry(uid)))
    await m.spool.counts()
    assert (await m.spool.get(uid)).state == UsageRecord.CONFIRMED  # type: ignore[union-attr]


async def test_request_header_is_never_trusted_when_not_served(
    header_rig: tuple[Metering, grpc.aio.Channel],
) -> None:
    """A denied request logs the client's own header: it never voids the record it names."""
    m, ch = header_rig
    uid = await _reserve(m)
    await _stream(ch, _msg(_header_entry(uid, code=403, upstream=False, denied=True)))
    await m.spool.counts()
    assert (await m.spool.get(uid)).state == UsageRecord.RESERVED  # type: ignore[union-attr]


async def test_metadata_wins_over_the_request_header(
    header_rig: tuple[Metering, grpc.aio.Channel],
) -> None:
    """With ext_authz metadata present, the request header is not looked at."""
    m, ch = header_rig
    meta_uid, header_uid = await _reserve(m), await _reserve(m)
    e = _entry(meta_uid)
    e.request.request_headers[USAGE_ID_HEADER] = header_uid
    await _stream(ch, _msg(e))
    await m.spool.counts()
    assert (await m.spool.get(meta_uid)).state == UsageRecord.CONFIRMED  # type: ignore[union-attr]
    assert (await m.spool.get(header_uid)).state == UsageRecord.RESERVED  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["client-chosen", "A" * 32, "0" * 31, "0" * 33, " " + "0" * 31])
async def test_malformed_usage_id_is_counted_and_ignored(
    header_rig: tuple[Metering, grpc.aio.Channel],
    bad: str,
) -> None:
    """A usage id that is not 32 lowercase hex digits (metadata or header) is counted, unused."""
    m, ch = header_rig
    before = _metric("tollhouse_als_malformed_total", reason="bad_usage_id")
    await _stream(ch, _msg(_entry(bad), _http_authz_entry(bad), _header_entry(bad)))
    assert _metric("tollhouse_als_malformed_total", reason="bad_usage_id") - before == 3
    assert (await m.spool.counts())["CONFIRMED"] == 0
