"""CheckRequest -> RequestInfo and Decision -> CheckResponse. The only place these protos are built.

Identity headers go upstream with ``OVERWRITE_IF_EXISTS_OR_ADD`` so a client can never spoof them;
an identity header tollhouse has no value for is removed. Denies carry problem+json bodies.
"""

from __future__ import annotations

from functools import lru_cache

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from tollhouse.decision import Allow, Decision, Deny, RequestInfo
from tollhouse.envoy.answer import deny_answer, upstream_split
from tollhouse.envoy.metadata import METADATA_NAMESPACE

__all__ = ["METADATA_NAMESPACE", "decode_check", "encode_decision"]

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def decode_check(req: ea.CheckRequest) -> RequestInfo:
    """The plain view of an ext_authz CheckRequest (path without its query string)."""
    http = req.attributes.request.http
    path, _, query = http.path.partition("?")
    headers = http.headers
    return RequestInfo(
        method=http.method.upper(),
        path=path or "/",
        headers=headers,
        # x-request-id, as the access-log entry carries it (``http.id`` is Envoy's stream id).
        request_id=headers.get("x-request-id") or http.id,
        host=http.host,
        query=query,
    )


@lru_cache(maxsize=4096)
def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def _allow(d: Allow) -> ea.CheckResponse:
    """Build the OK in place (upb ``add()`` and field sets: no message copies on the hot path)."""
    resp = ea.CheckResponse()
    resp.status.code = code_pb2.OK
    ok = resp.ok_response
    ok.SetInParent()
    add = ok.headers.add
    to_set, to_remove = upstream_split(d)
    for name, value in to_set:
        h = add(append_action=_OVERWRITE)
        h.header.key = name
        h.header.value = value
    ok.headers_to_remove.extend(to_remove)
    add = ok.response_headers_to_add.add
    for name, value in d.response_headers:
        h = add(append_action=_OVERWRITE)
        h.header.key = name
        h.header.value = value
    # Flat: Envoy itself files the CheckResponse's dynamic metadata under METADATA_NAMESPACE.
    fields = resp.dynamic_metadata.fields
    for key, v in d.metadata.items():
        if v.__class__ is str:
            fields[key].string_value = v
        elif v.__class__ is bool:
            fields[key].bool_value = v
        else:
            fields[key].number_value = v
    return resp


def _deny(d: Deny) -> ea.CheckResponse:
    answer = deny_answer(d)
    status = answer.status
    denied = ea.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=status),  # type: ignore[arg-type,unused-ignore]
        body=answer.body.decode(),
    )
    denied.headers.extend(_header(n, v) for n, v in answer.headers)
    grpc_code = code_pb2.UNAUTHENTICATED if status == 401 else code_pb2.PERMISSION_DENIED
    if status == 503:
        grpc_code = code_pb2.UNAVAILABLE
    return ea.CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=d.code), denied_response=denied
    )


def encode_decision(d: Decision) -> ea.CheckResponse:
    """The CheckResponse Envoy acts on."""
    return _allow(d) if isinstance(d, Allow) else _deny(d)
