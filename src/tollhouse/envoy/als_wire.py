"""Reading a ``StreamAccessLogsMessage`` that protobuf refuses, entry by entry, from its wire form.

The fast path (``envoy/als.py``) parses a whole message in C. upb refuses a message in which any
proto3 ``string`` field is not valid UTF-8, and one client can put such bytes in its
``x-request-id``: without this module, that one entry would cost every other entry of the
message. When the fast path fails, :func:`recover` walks the protobuf wire format with a small
tag/varint reader, driven by the messages' descriptors (field numbers, and which fields are
strings or messages; no field's meaning is decided here):

1. it splits the message into its HTTP entries (``http_logs.log_entry``) and counts its TCP ones;
2. it parses each entry on its own (in C again); an entry that fails is repaired, every ``string``
   field at any depth that is not valid UTF-8 being replaced by its ``errors="replace"``
   decoding, and parsed again;
3. an entry that still does not parse (truncated, a bad tag) is counted as unreadable.

An entry is never lost for another's fault: only its own framing (its length prefix) has to be
intact. If the framing of the message itself breaks, the entries before the break are kept and
the break is reported. Nothing here raises, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

__all__ = ["Recovered", "WireError", "WireField", "iter_fields", "recover", "repair_utf8"]

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_MAX_FIELD = (1 << 29) - 1
_MAX_DEPTH = 100  # protobuf's own default recursion limit

_MESSAGE = als_pb2.StreamAccessLogsMessage.DESCRIPTOR
_HTTP_LOGS = _MESSAGE.fields_by_name["http_logs"]
_TCP_LOGS = _MESSAGE.fields_by_name["tcp_logs"]
_HTTP_ENTRY = _HTTP_LOGS.message_type.fields_by_name["log_entry"]
_TCP_ENTRY = _TCP_LOGS.message_type.fields_by_name["log_entry"]
_ENTRY_DESCRIPTOR: Descriptor = al.HTTPAccessLogEntry.DESCRIPTOR
assert _HTTP_ENTRY.message_type is _ENTRY_DESCRIPTOR


class WireError(Exception):
    """The bytes are not a well-formed protobuf message (truncated, a bad tag or wire type)."""


class WireField(NamedTuple):
    """One field as it sits in a buffer: ``value_start`` is the payload (after any length)."""

    number: int
    wire_type: int
    start: int
    value_start: int
    end: int


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a base-128 varint at ``pos``; return it and the position after it."""
    result = shift = 0
    while pos < end and shift < 64:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise WireError("truncated or overlong varint")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read a field key at ``pos``: (field number, wire type, position after the key)."""
    key, pos = _varint(buf, pos, end)
    number, wire_type = key >> 3, key & 7
    if not 0 < number <= _MAX_FIELD:
        raise WireError(f"bad field number {number}")
    return number, wire_type, pos


def _skip(buf: bytes, pos: int, end: int, number: int, wire_type: int) -> int:
    """Return the position after a value of ``wire_type`` that starts at ``pos``."""
    if wire_type == _VARINT:
        return _varint(buf, pos, end)[1]
    if wire_type == _I64:
        nxt = pos + 8
    elif wire_type == _I32:
        nxt = pos + 4
    elif wire_type == _LEN:
        n, pos = _varint(buf, pos, end)
        nxt = pos + n
    elif wire_type == _SGROUP:
        nxt = _skip_group(buf, pos, end, number)
    else:
        raise WireError(f"unexpected wire type {wire_type}")
    if nxt > end:
        raise WireError("field runs past the end of its message")
    return nxt


def _skip_group(buf: bytes, pos: int, end: int, number: int) -> int:
    """Return the position after the end-group key matching ``number`` (groups may nest)."""
    open_groups = [number]
    while open_groups:
        if len(open_groups) > _MAX_DEPTH:
            raise WireError("groups nested too deep")
        inner, wire_type, pos = _tag(buf, pos, end)
        if wire_type == _EGROUP:
            if inner != open_groups.pop():
                raise WireError("mismatched end group")
        elif wire_type == _SGROUP:
            open_groups.append(inner)
        else:
            pos = _skip(buf, pos, end, inner, wire_type)
    return pos


def iter_fields(
    buf: bytes, start: int = 0, end: int | None = None, *, clip: bool = False
) -> Iterator[WireField]:
    """Yield the fields of the message in ``buf[start:end]``; raise :class:`WireError` at a break.

    Fields already yielded stay valid when a later one turns out to be broken. ``clip``: a
    length-delimited field that runs past the end is yielded cut at the end, then the break is
    raised (the caller may read the whole fields inside it, never the cut one).
    """
    stop = len(buf) if end is None else end
    pos = start
    while pos < stop:
        number, wire_type, after_key = _tag(buf, pos, stop)
        value_start = after_key
        if wire_type == _LEN:
            n, value_start = _varint(buf, after_key, stop)
            nxt = value_start + n
            if nxt > stop:
                if clip:
                    yield WireField(number, wire_type, pos, value_start, stop)
                raise WireError("field runs past the end of its message")
        else:
            nxt = _skip(buf, after_key, stop, number, wire_type)
        yield WireField(number, wire_type, pos, value_start, nxt)
        pos = nxt


def repair_utf8(buf: bytes, desc: Descriptor, _depth: int = 0) -> tuple[bytes | None, int]:
    """Rewrite every ``string`` field of ``desc`` (at any depth) that is not valid UTF-8.

    Return the repaired bytes (None when nothing needed repair) and how many fields were
    replaced by their ``errors="replace"`` decoding. Raise :class:`WireError` on broken framing.
    """
    if _depth > _MAX_DEPTH:
        raise WireError("messages nested too deep")
    parts: list[bytes] = []
    copied = fixed = 0
    for f in iter_fields(buf):
        fd = desc.fields_by_number.get(f.number) if f.wire_type == _LEN else None
        if fd is None:
            continue  # unknown fields and other wire types: protobuf keeps them as they are
        payload = buf[f.value_start : f.end]
        new: bytes | None = None
        n = 0
        if fd.type == FieldDescriptor.TYPE_STRING:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                new, n = payload.decode("utf-8", "replace").encode("utf-8"), 1
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type is not None:
            new, n = repair_utf8(payload, fd.message_type, _depth + 1)
        if new is None:
            continue
        fixed += n
        parts += (
            buf[copied : f.start],
            _encode_varint((f.number << 3) | _LEN),
            _encode_varint(len(new)),
            new,
        )
        copied = f.end
    if not parts:
        return None, 0
    parts.append(buf[copied:])
    return b"".join(parts), fixed


@dataclass(frozen=True, slots=True)
class Recovered:
    """What could be read of a message the fast path refused.

    ``invalid_utf8``: string fields replaced in the entries kept. ``unreadable``: entries whose own
    bytes do not parse even repaired (lost, counted). ``truncated``: the framing of the message
    itself broke, so whatever followed the break could not even be split into entries.
    """

    entries: tuple[al.HTTPAccessLogEntry, ...]
    tcp_entries: int = 0
    invalid_utf8: int = 0
    unreadable: int = 0
    truncated: bool = False


@dataclass(slots=True)
class _Walk:
    entries: list[al.HTTPAccessLogEntry] = field(default_factory=list)
    tcp_entries: int = 0
    invalid_utf8: int = 0
    unreadable: int = 0
    truncated: bool = False


def _entry(raw: bytes, walk: _Walk) -> None:
    """Parse one HTTP entry; repair its strings if it does not parse; count it if it is lost."""
    try:
        walk.entries.append(al.HTTPAccessLogEntry.FromString(raw))
        return
    except (DecodeError, ValueError):
        pass
    try:
        fixed, n = repair_utf8(raw, _ENTRY_DESCRIPTOR)
        if fixed is None:
            raise WireError("entry refused for another reason than UTF-8")
        entry = al.HTTPAccessLogEntry.FromString(fixed)
    except (WireError, DecodeError, ValueError, RecursionError):
        walk.unreadable += 1
        return
    walk.entries.append(entry)
    walk.invalid_utf8 += n


def _inner(data: bytes, outer: WireField, entry_number: int, walk: _Walk, *, http: bool) -> None:
    """Walk one ``http_logs`` / ``tcp_logs`` field: parse or count its ``log_entry`` fields."""
    try:
        for f in iter_fields(data, outer.value_start, outer.end):
            if f.number != entry_number or f.wire_type != _LEN:
                continue
            if http:
                _entry(data[f.value_start : f.end], walk)
            else:
                walk.tcp_entries += 1
    except WireError:
        walk.truncated = True


def recover(data: bytes) -> Recovered | None:
    """Read what can be read of a ``StreamAccessLogsMessage``; None when no entry is (garbage)."""
    walk = _Walk()
    try:
        for f in iter_fields(data, clip=True):  # a cut message: read its whole entries
            if f.wire_type != _LEN:
                continue
            if f.number == _HTTP_LOGS.number:
                _inner(data, f, _HTTP_ENTRY.number, walk, http=True)
            elif f.number == _TCP_LOGS.number:
                _inner(data, f, _TCP_ENTRY.number, walk, http=False)
    except WireError:
        walk.truncated = True
    if not (walk.entries or walk.tcp_entries or walk.unreadable):
        return None  # not one entry in it, whatever else it holds
    return Recovered(
        tuple(walk.entries), walk.tcp_entries, walk.invalid_utf8, walk.unreadable, walk.truncated
    )
