"""The AccessLogService servicer over a real grpc.aio channel, fed real Envoy ALS protos."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY

from tests.servers import free_port
from tollhouse.config import parse_config
from tollhouse.envoy.als import METADATA_NAMESPACE, add_to_server
from tollhouse.metering import Metering, SqliteMeterSink
from tollhouse.metering.schema import UsageRecord


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _entry(usage_id: str | None, *, code: int = 200, upstream: bool = True,
           denied: bool = False, resp_body: int = 1000) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry()
    c = e.common_properties
    if usage_id is not None:
        meta = struct_pb2.Struct()
        meta.update({"usage_id": usage_id, "customer": "acme", "feature": "export"})
        c.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(meta)
    if upstream:
        c.upstream_remote_address.CopyFrom(address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=8080)))
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
    cfg = parse_config({
        "meters": {"requests": {}, "egress": {"from": "response_bytes"}},
        "features": {"export": {"rules": [{"path": "/v1/export/**"}],
                                "meters": ["requests", "egress"]}},
        "metering": {"spool": str(tmp_path / "spool"),
                     "meter": f"sqlite:///{tmp_path / 'meter.db'}"},
    })
    m = Metering(cfg, instance="t", sink=SqliteMeterSink(tmp_path / "meter.db"))
    await m.spool.open()
    server = grpc.aio.server()
    add_to_server(m.als_servicer(), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield m, channel
    await channel.close()
    await server.stop(None)
    await m.stop(deadline_s=1)


async def _reserve(m: Metering, request_id: str = "r") -> str:
    rec = m.build_reservation(customer="acme", plan="pro", feature="export", method="GET",
                              path="/v1/export/a", request_id=request_id, decision_id="d")
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
    await _stream(ch, _msg(_entry(a, code=403, upstream=False, denied=True),
                           _entry(b, code=503, upstream=False)))
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
