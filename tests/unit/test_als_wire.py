"""The wire-format walker that reads refused access-log messages entry by entry (envoy/als_wire)."""

from __future__ import annotations

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollhouse.envoy.als import METADATA_NAMESPACE
from tollhouse.envoy.als_wire import Recovered, WireError, iter_fields, recover
from tollhouse.metering.spool import new_usage_id

_BAD = b"\xff\xfe"  # obs-text in HTTP, never valid UTF-8


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _frame(number: int, payload: bytes) -> bytes:
    """One length-delimited field, framed by hand (independent of the code under test)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _wrap(entry_blobs: list[bytes], *, identifier: bytes = b"") -> bytes:
    """A StreamAccessLogsMessage with these serialised HTTP entries: http_logs(2).log_entry(1)."""
    inner = b"".join(_frame(1, b) for b in entry_blobs)
    head = _frame(1, identifier) if identifier else b""
    return head + _frame(2, inner)


def _entry(i: int, *, customer: str = "acme") -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry()
    meta = struct_pb2.Struct()
    meta.update({"usage_id": new_usage_id(), "customer": customer})
    e.common_properties.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(meta)
    e.request.request_id = f"rid-{i:04d}-PLACEHOLDER"
    e.request.path = f"/v1/search/{i}"
    e.response.response_code.value = 200
    e.response.response_headers["x-usage-tokens"] = "VALUE-PLACEHOLDER"
    e.response.response_body_bytes = 100 + i
    return e


def _poison(blob: bytes, marker: bytes) -> bytes:
    """Replace the first two bytes of ``marker`` with non-UTF-8 bytes: same length, same framing."""
    assert marker in blob
    return blob.replace(marker, _BAD + marker[2:], 1)


def _usage_id(e: al.HTTPAccessLogEntry) -> str:
    return str(
        e.common_properties.metadata.filter_metadata[METADATA_NAMESPACE]
        .fields["usage_id"]
        .string_value
    )


def _refused(data: bytes) -> None:
    """Precondition: protobuf (upb) refuses the whole message, so the walker is what reads it."""
    with pytest.raises(DecodeError):
        als_pb2.StreamAccessLogsMessage.FromString(data)


def _recovered(data: bytes) -> Recovered:
    out = recover(data)
    assert out is not None
    return out


def test_invalid_utf8_request_id_keeps_every_entry() -> None:
    """A non-UTF-8 x-request-id in the middle entry: all 3 entries read, that one repaired."""
    entries = [_entry(i) for i in range(3)]
    blobs = [e.SerializeToString() for e in entries]
    blobs[1] = _poison(blobs[1], b"rid-0001")
    data = _wrap(blobs)
    _refused(data)
    out = _recovered(data)
    assert len(out.entries) == 3
    assert (out.invalid_utf8, out.unreadable, out.truncated) == (1, 0, False)
    assert out.entries[0] == entries[0]
    assert out.entries[2] == entries[2]
    assert out.entries[1].request.request_id.startswith("\ufffd")
    assert out.entries[1].request.request_id.endswith("-0001-PLACEHOLDER")
    assert _usage_id(out.entries[1]) == _usage_id(entries[1])  # what it carries is still there


def test_invalid_utf8_response_header_value_is_replaced() -> None:
    """A non-UTF-8 response header value (a map<string,string> value) is replaced, entry kept."""
    entries = [_entry(i) for i in range(2)]
    blobs = [e.SerializeToString() for e in entries]
    blobs[0] = _poison(blobs[0], b"VALUE-PLACEHOLDER")
    data = _wrap(blobs)
    _refused(data)
    out = _recovered(data)
    assert out.invalid_utf8 == 1
    value = out.entries[0].response.response_headers["x-usage-tokens"]
    assert value == "\ufffd\ufffdLUE-PLACEHOLDER"
    assert out.entries[0].response.response_body_bytes == 100
    assert _usage_id(out.entries[0]) == _usage_id(entries[0])
    assert out.entries[1] == entries[1]


def test_invalid_utf8_in_metadata_string_is_replaced() -> None:
    """A non-UTF-8 string inside the ext_authz metadata Struct is replaced; the usage id stays."""
    entries = [_entry(0, customer="CUSTOMER-X"), _entry(1)]
    blobs = [e.SerializeToString() for e in entries]
    blobs[0] = _poison(blobs[0], b"CUSTOMER-X")
    data = _wrap(blobs)
    _refused(data)
    out = _recovered(data)
    assert out.invalid_utf8 == 1
    fields = out.entries[0].common_properties.metadata.filter_metadata[METADATA_NAMESPACE].fields
    assert fields["customer"].string_value == "\ufffd\ufffdSTOMER-X"
    assert _usage_id(out.entries[0]) == _usage_id(entries[0])
    assert out.entries[1] == entries[1]


def test_several_bad_strings_in_one_entry_are_each_counted() -> None:
    """Two bad strings in one entry and one in another: 3 replacements, 3 entries kept."""
    blobs = [_entry(i).SerializeToString() for i in range(3)]
    blobs[0] = _poison(_poison(blobs[0], b"rid-0000"), b"VALUE-PLACEHOLDER")
    blobs[2] = _poison(blobs[2], b"/v1/search/2")
    out = _recovered(_wrap(blobs))
    assert (len(out.entries), out.invalid_utf8, out.unreadable) == (3, 3, 0)


def test_bad_identifier_loses_no_entry() -> None:
    """A non-UTF-8 log name in the stream identifier costs nothing: the entries are read."""
    ident = als_pb2.StreamAccessLogsMessage.Identifier(log_name="LOGNAME-tollhouse")
    entries = [_entry(i) for i in range(2)]
    data = _wrap(
        [e.SerializeToString() for e in entries],
        identifier=_poison(ident.SerializeToString(), b"LOGNAME"),
    )
    _refused(data)
    out = _recovered(data)
    assert list(out.entries) == entries
    assert out.invalid_utf8 == 0


def test_truncated_entry_in_the_middle_is_counted_and_the_rest_read() -> None:
    """An entry cut short (its own framing intact) is unreadable; the entries around it are kept."""
    entries = [_entry(i) for i in range(3)]
    blobs = [e.SerializeToString() for e in entries]
    blobs[1] = blobs[1][: len(blobs[1]) - 7]
    data = _wrap(blobs)
    _refused(data)
    out = _recovered(data)
    assert list(out.entries) == [entries[0], entries[2]]
    assert (out.unreadable, out.truncated) == (1, False)


def test_broken_message_framing_keeps_what_came_before() -> None:
    """The message itself cut mid-entry: the entries before the cut are kept, the cut reported."""
    entries = [_entry(i) for i in range(3)]
    data = _wrap([e.SerializeToString() for e in entries])
    cut = data[: len(data) - 20]
    out = _recovered(cut)
    assert list(out.entries) == entries[:2]
    assert out.truncated


def test_tcp_entries_are_counted() -> None:
    """TCP entries are counted (never decoded), next to the HTTP entries of a refused message."""
    tcp = als_pb2.StreamAccessLogsMessage.TCPAccessLogEntries()
    tcp.log_entry.add()
    tcp.log_entry.add()
    blobs = [_poison(_entry(0).SerializeToString(), b"rid-0000")]
    data = _wrap(blobs) + _frame(3, tcp.SerializeToString())
    out = _recovered(data)
    assert (len(out.entries), out.tcp_entries) == (1, 2)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff garbage",
        b"",
        b"\x00",
        b"\x12\xff\xff\xff\xff\x0f",  # http_logs with an absurd length
        b"\x12\x05\x0a\x03\xff\xfe",  # an entry that is itself cut
        bytes(range(256)),
        b"\x0b" * 50,  # start-group keys never closed
    ],
)
def test_garbage_is_none_and_never_raises(data: bytes) -> None:
    """Bytes holding not one readable entry give None (counted as garbage by the servicer)."""
    out = recover(data)
    assert out is None or (not out.entries and (out.unreadable or out.truncated))


def test_iter_fields_reports_a_break_after_the_good_fields() -> None:
    """Fields before a break are yielded, then WireError; nothing is read past the end."""
    data = _frame(1, b"ab") + _frame(2, b"cd") + b"\x1a\x10xy"
    fields = iter_fields(data)
    got = [(f.number, data[f.value_start : f.end]) for f in (next(fields), next(fields))]
    assert got == [(1, b"ab"), (2, b"cd")]
    with pytest.raises(WireError):
        next(fields)


def test_groups_in_unknown_fields_are_skipped() -> None:
    """A (proto2-style) group among unknown fields is skipped whole, nested groups included."""
    group = b"\xfb\x01" + b"\x08\x01" + b"\x83\x02\x84\x02" + b"\xfc\x01"  # 31{ 1:1 32{ } }
    blob = _poison(_entry(0).SerializeToString(), b"rid-0000")
    out = _recovered(group + _wrap([blob]))
    assert len(out.entries) == 1
    assert out.invalid_utf8 == 1


# --- properties ------------------------------------------------------------------------------

_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@st.composite
def _messages(draw: st.DrawFn) -> list[al.HTTPAccessLogEntry]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        e = _entry(i)
        e.request.user_agent = draw(_texts)
        e.response.response_headers[draw(_texts)] = draw(_texts)
        out.append(e)
    return out


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(_messages(), st.data())
def test_mutating_one_entry_never_costs_another(
    entries: list[al.HTTPAccessLogEntry],
    data: st.DataObject,
) -> None:
    """Random bytes overwritten inside one entry: never a raise, every other entry read intact."""
    blobs = [e.SerializeToString() for e in entries]
    victim = data.draw(st.integers(0, len(blobs) - 1))
    blob = bytearray(blobs[victim])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    blobs[victim] = bytes(blob)
    raw = _wrap(blobs)
    try:
        got = list(als_pb2.StreamAccessLogsMessage.FromString(raw).http_logs.log_entry)
    except DecodeError:
        got = list(_recovered(raw).entries)
    others = [e for i, e in enumerate(entries) if i != victim]
    assert [e for e in got if e in others] == others
    assert len(got) in (len(entries), len(entries) - 1)


@_FUZZ
@given(_messages(), st.data())
def test_non_utf8_strings_never_lose_an_entry(
    entries: list[al.HTTPAccessLogEntry],
    data: st.DataObject,
) -> None:
    """Any string field's bytes replaced by non-UTF-8 of the same length: every entry is read."""
    blobs = [e.SerializeToString() for e in entries]
    victim = data.draw(st.integers(0, len(blobs) - 1))
    marker = data.draw(st.sampled_from([b"rid-", b"VALUE-PLACEHOLDER", b"/v1/search/", b"acme"]))
    blobs[victim] = _poison(blobs[victim], marker)
    out = _recovered(_wrap(blobs))
    assert len(out.entries) == len(entries)
    assert out.invalid_utf8 == 1
    assert [_usage_id(e) for e in out.entries] == [_usage_id(e) for e in entries]


@_FUZZ
@given(_messages(), st.data())
def test_any_mutation_of_a_message_never_raises(
    entries: list[al.HTTPAccessLogEntry],
    data: st.DataObject,
) -> None:
    """Random byte overwrites, cuts and insertions anywhere in a message: recover never raises."""
    raw = bytearray(_wrap([e.SerializeToString() for e in entries]))
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "set":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 8))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        if not raw:
            break
    out = recover(bytes(raw))
    assert out is None or len(out.entries) + out.unreadable <= len(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    """Arbitrary bytes: None or a Recovered value, never an exception."""
    out = recover(data)
    assert out is None or isinstance(out, Recovered)
