"""Envoy protobuf <-> plain values, at the edge."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ea
from google.rpc import code_pb2

from tollhouse.decision import Allow, Deny
from tollhouse.envoy.codec import METADATA_NAMESPACE, decode_check, encode_decision


def _request(path: str, headers: dict[str, str]) -> ea.CheckRequest:
    req = ea.CheckRequest()
    http = req.attributes.request.http
    http.method = "get"
    http.path = path
    http.id = "rid-1"
    http.host = "api.example"
    http.headers.update(headers)
    return req


def test_decode_strips_query_and_uppercases_method() -> None:
    """The path is matched without its query string; the method is upper-case."""
    info = decode_check(_request("/v1/search?q=x&y=1", {"authorization": "Bearer t"}))
    assert (info.method, info.path, info.query) == ("GET", "/v1/search", "q=x&y=1")
    assert info.headers["authorization"] == "Bearer t"
    assert info.request_id == "rid-1"


def test_request_id_is_the_x_request_id_header_the_access_log_carries() -> None:
    """Envoy's ``http.id`` is its stream id; the access log carries x-request-id: prefer it."""
    info = decode_check(_request("/v1/search", {"x-request-id": "5f1f6c8e-2a7b"}))
    assert info.request_id == "5f1f6c8e-2a7b"


def test_allow_overwrites_identity_headers_and_sets_metadata() -> None:
    """OK carries identity headers with OVERWRITE_IF_EXISTS_OR_ADD and removes empty ones."""
    allow = Allow(
        customer="acme",
        plan="pro",
        feature="search",
        decision_id="d1",
        upstream_headers=(("x-tollhouse-customer", "acme"), ("x-tollhouse-usage-id", "")),
        response_headers=(("ratelimit", "limit=10, remaining=9, reset=1"),),
        metadata={"customer": "acme", "usage_id": "u1"},
    )
    resp = encode_decision(allow)
    assert resp.status.code == code_pb2.OK
    ok = resp.ok_response
    pairs = [(h.header.key, h.header.value) for h in ok.headers]
    assert pairs == [("x-tollhouse-customer", "acme")]
    assert all(
        h.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD for h in ok.headers
    )
    assert list(ok.headers_to_remove) == ["x-tollhouse-usage-id"]
    assert ok.response_headers_to_add[0].header.key == "ratelimit"
    # Flat: Envoy itself files it under the ext_authz namespace for the access log.
    meta = resp.dynamic_metadata.fields
    assert meta["usage_id"].string_value == "u1"
    assert METADATA_NAMESPACE not in meta


def test_deny_has_status_problem_body_and_headers() -> None:
    """A deny sets the HTTP status, problem+json body with code, and extra headers."""
    deny = Deny(
        401,
        "invalid_token",
        "Unauthorized",
        "token expired",
        headers=(("www-authenticate", 'Bearer realm="t", error="invalid_token"'),),
    )
    resp = encode_decision(deny)
    assert resp.status.code == code_pb2.UNAUTHENTICATED
    d = resp.denied_response
    assert d.status.code == 401
    body = json.loads(d.body)
    assert body["code"] == "invalid_token"
    assert body["status"] == 401
    names = {h.header.key: h.header.value for h in d.headers}
    assert names["content-type"] == "application/problem+json"
    assert names["www-authenticate"].startswith("Bearer")


def test_unknown_http_status_becomes_503() -> None:
    """A status Envoy's enum does not know is never passed through: it becomes 503."""
    resp = encode_decision(Deny(299, "weird", "Weird"))
    assert resp.denied_response.status.code == 503
    assert resp.status.code == code_pb2.UNAVAILABLE
