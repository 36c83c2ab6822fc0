"""The facts of the usage path as plain values, and their wire form (``tollhouse.v1.UsageFact``).

``Reserved`` is written by the Check, ``Served`` by the access-log receiver (in-process
metering), ``AccessLog`` by the receiver of the process that serves Checks when a metering worker
decodes the access log (it expands each one into ``Served`` facts), ``Final`` only when a
previous release's spool is carried over. The encoders build the exact bytes of a ``UsageFact``
without copying the record into a wrapper message (a oneof field is a tag, a length and the
nested message's bytes), so the Check pays one ``SerializeToString`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tollhouse._pb.tollhouse.v1.usage_pb2 import AccessLogBatch, ServedFact, UsageFact
from tollhouse.metering.policy import LogEntry
from tollhouse.metering.schema import UsageRecord

__all__ = [
    "AccessLog",
    "Fact",
    "Final",
    "Reserved",
    "Served",
    "decode_fact",
    "encode_access_log",
    "encode_final",
    "encode_reserved",
    "encode_served",
    "served_from_message",
    "served_message",
]

_TAG_RESERVED = b"\x0a"  # field 1, length-delimited
_TAG_FINAL = b"\x1a"  # field 3, length-delimited


@dataclass(frozen=True, slots=True)
class Reserved:
    """An admitted request: ``record`` is the serialized RESERVED ``UsageRecord``."""

    usage_id: str
    admitted_ms: int
    request_id: str
    record: bytes


@dataclass(frozen=True, slots=True)
class Served:
    """What the access log said about a request (``entry.usage_id`` is set)."""

    entry: LogEntry
    received_ms: int
    instance: str = ""


@dataclass(frozen=True, slots=True)
class Final:
    """A record that is already final (carried over from the previous release's spool)."""

    record: UsageRecord


@dataclass(frozen=True, slots=True)
class AccessLog:
    """An access-log message as Envoy sent it, not yet decoded (see ``AccessLogBatch``)."""

    message: bytes
    received_ms: int
    instance: str = ""


Fact = Reserved | Served | Final | AccessLog


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_reserved(blob: bytes) -> bytes:
    """``UsageFact{reserved}`` from a serialized ``UsageRecord``."""
    return _TAG_RESERVED + _varint(len(blob)) + blob


def encode_final(record: UsageRecord) -> bytes:
    """``UsageFact{final}``."""
    blob = record.SerializeToString()
    return _TAG_FINAL + _varint(len(blob)) + blob


def encode_access_log(message: bytes, received_ms: int, instance: str) -> bytes:
    """``UsageFact{access_log}``: the raw message, its arrival time and the receiving instance."""
    batch = AccessLogBatch(received_at_ms=received_ms, instance=instance, message=message)
    return UsageFact(access_log=batch).SerializeToString()


def encode_served(fact: Served, meter_headers: Iterable[str]) -> bytes:
    """``UsageFact{served}``, keeping only the response headers that header meters read."""
    return UsageFact(served=served_message(fact, meter_headers)).SerializeToString()


def served_message(fact: Served, meter_headers: Iterable[str]) -> ServedFact:
    """The ``ServedFact`` message of a fact, keeping only the headers that meters read."""
    e = fact.entry
    headers = {h: e.response_headers[h] for h in meter_headers if h in e.response_headers}
    return ServedFact(
        usage_id=e.usage_id or "",
        response_code=e.response_code,
        request_bytes=e.request_bytes,
        response_bytes=e.response_bytes,
        duration_us=e.duration_us,
        upstream_served=e.upstream_served,
        response_flags=e.response_flags,
        request_id=e.request_id,
        meter_headers=headers,
        received_at_ms=fact.received_ms,
        instance=fact.instance,
    )


def served_from_message(s: ServedFact) -> Served:
    """The plain fact of a ``ServedFact`` message (an empty usage id stays None)."""
    entry = LogEntry(
        usage_id=s.usage_id or None,
        response_code=s.response_code,
        request_id=s.request_id,
        request_bytes=s.request_bytes,
        response_bytes=s.response_bytes,
        duration_us=s.duration_us,
        upstream_served=s.upstream_served,
        response_flags=s.response_flags,
        response_headers=dict(s.meter_headers),
    )
    return Served(entry, s.received_at_ms, s.instance)


def decode_fact(payload: bytes) -> Fact:
    """Parse one ``UsageFact``; raises ``ValueError`` for bytes that are not one."""
    try:
        msg = UsageFact.FromString(payload)
    except Exception as e:  # DecodeError, or a RuntimeWarning-free upb error
        raise ValueError(f"not a UsageFact: {e}") from e
    kind = msg.WhichOneof("fact")
    if kind == "reserved":
        r = msg.reserved
        if not r.usage_id:
            raise ValueError("a reserved fact without usage_id")
        return Reserved(r.usage_id, r.admitted_at_ms, r.request_id, r.SerializeToString())
    if kind == "served":
        if not msg.served.usage_id and not msg.served.request_id:
            raise ValueError("a served fact without usage_id or request_id")
        return served_from_message(msg.served)
    if kind == "final":
        if not msg.final.usage_id:
            raise ValueError("a final record without usage_id")
        return Final(msg.final)
    if kind == "access_log":
        a = msg.access_log
        return AccessLog(a.message, a.received_at_ms, a.instance)
    raise ValueError("an empty UsageFact")
