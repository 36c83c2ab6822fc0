"""One metadata namespace and one set of keys: what the codecs write, the ALS decoder reads."""

from __future__ import annotations

from envoy.data.accesslog.v3 import accesslog_pb2 as al
from google.protobuf import struct_pb2

from tollhouse.decision import USAGE_ID_KEY, Allow
from tollhouse.envoy import codec, http_codec
from tollhouse.envoy.als import to_log_entry
from tollhouse.envoy.metadata import METADATA_HEADER_PREFIX, METADATA_NAMESPACE, USAGE_ID_HEADER

UID = "0123456789abcdef0123456789abcdef"


def _allow() -> Allow:
    return Allow(
        customer="acme",
        plan="pro",
        feature="search",
        decision_id="d-1",
        usage_id=UID,
        metadata={"customer": "acme", USAGE_ID_KEY: UID},
    )


def _logged(meta: struct_pb2.Struct) -> al.HTTPAccessLogEntry:
    """An access-log entry carrying ``meta`` where Envoy files ext_authz metadata."""
    e = al.HTTPAccessLogEntry()
    e.common_properties.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(meta)
    e.response.response_code.value = 200
    return e


def test_the_grpc_codecs_usage_id_is_read_back_by_the_access_log_decoder() -> None:
    """The CheckResponse's dynamic metadata, filed under the namespace, yields the usage id."""
    resp = codec.encode_decision(_allow())
    assert resp.dynamic_metadata.fields[USAGE_ID_KEY].string_value == UID
    assert to_log_entry(_logged(resp.dynamic_metadata)).usage_id == UID


def test_the_http_codecs_usage_id_header_is_read_back_by_the_access_log_decoder() -> None:
    """x-tollhouse-* answer headers, turned into metadata by header name, yield the usage id."""
    head = http_codec.encode_decision(_allow()).decode().split("\r\n\r\n")[0]
    pairs = [line.split(": ", 1) for line in head.split("\r\n")[1:]]
    meta = struct_pb2.Struct()
    meta.update({k: v for k, v in pairs if k.startswith(METADATA_HEADER_PREFIX)})
    assert meta.fields[USAGE_ID_HEADER].string_value == UID
    assert to_log_entry(_logged(meta)).usage_id == UID
