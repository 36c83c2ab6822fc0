"""Envoy's HTTP ext_authz (``http_service``) wire format: request -> RequestInfo, Decision -> bytes.

Envoy sends the original method, ``path_prefix`` + the original path (query included) and the
headers its ``authorization_request.allowed_headers`` lets through, with no body. What to answer
is decided in :mod:`tollhouse.envoy.answer`; this module only spells it as HTTP/1.1:

- **allow**: ``200`` with the identity headers (copied upstream, overwriting the client's, by
  ``allowed_upstream_headers``), ``x-envoy-auth-headers-to-remove`` naming the identity headers
  tollhouse has no value for, the RateLimit headers (``allowed_client_headers_on_success``) and
  every metadata key as an ``x-tollhouse-*`` header (``dynamic_metadata_from_headers`` files them
  under ``envoy.filters.http.ext_authz``, where the access log finds them);
- **deny**: the deny status, the problem+json body and its headers (``allowed_client_headers``).

Header values come from tokens and the store: a value with a control character is refused here
(:class:`UnsafeHeader`), never written, so no caller can inject a header into the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from tollhouse.decision import Allow, Decision, Deny, RequestInfo
from tollhouse.envoy.answer import deny_answer, upstream_split
from tollhouse.envoy.metadata import metadata_header

__all__ = ["BadRequest", "UnsafeHeader", "decode_request", "encode_decision"]

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}


class BadRequest(ValueError):
    """The request is not one Envoy would send: answered 400, never an allow."""


class UnsafeHeader(ValueError):
    """A header value holds CR, LF or another control character: the answer is not written."""


def decode_request(
    method: bytes, url: bytes, raw_headers: Sequence[tuple[bytes, bytes]], path_prefix: str = ""
) -> RequestInfo:
    """The plain view of one authorization request (header names lower-case, repeats joined).

    Header values are decoded as Latin-1 (HTTP's obs-text), so any byte decodes and a non-ASCII
    credential simply fails to verify. The URL must be ASCII origin-form under ``path_prefix``.
    """
    try:
        target = url.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the request target is not ASCII") from None
    if not target.startswith("/"):
        raise BadRequest("the request target is not a path")
    if path_prefix:
        if not target.startswith(path_prefix):
            raise BadRequest("the request target is not under the configured path_prefix")
        target = target[len(path_prefix) :] or "/"
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    headers = _headers(raw_headers)
    return RequestInfo(
        method=method.decode("ascii").upper(),
        path=path or "/",
        headers=headers,
        request_id=headers.get("x-request-id", ""),
        host=headers.get("host", ""),
        query=query,
    )


def _headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in headers:  # a repeated header, joined as Envoy's gRPC CheckRequest joins it
            headers[key] += "," + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")
    return headers


def _head(status: int, headers: list[tuple[str, str]], close: bool) -> bytes:
    if close:
        headers.append(("connection", "close"))
    parts = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"]
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    # One CR and one LF per line, and nothing else below 0x20: no injected line.
    lines = len(headers) + 2
    if text.count("\n") != lines or text.count("\r") != lines or "\0" in text:
        raise UnsafeHeader("a header value holds a control character")
    return text.encode()


def _allow(d: Allow, close: bool) -> bytes:
    to_set, to_remove = upstream_split(d)
    headers = list(to_set)
    if to_remove:
        headers.append((HEADERS_TO_REMOVE, ", ".join(to_remove)))
    headers += d.response_headers
    names = {n for n, _ in to_set}
    for key, value in d.metadata.items():
        name = metadata_header(key)
        if name not in names and value != "":
            headers.append((name, str(value).lower() if value.__class__ is bool else str(value)))
    headers.append(("content-length", "0"))
    return _head(200, headers, close)


def _deny(d: Deny, close: bool, head_only: bool) -> bytes:
    answer = deny_answer(d)
    headers = [*answer.headers, ("content-length", str(len(answer.body)))]
    head = _head(answer.status, headers, close)
    return head if head_only else head + answer.body


def encode_decision(d: Decision, *, close: bool = False, head_only: bool = False) -> bytes:
    """The HTTP/1.1 response Envoy acts on (``head_only`` for a HEAD request: no body bytes).

    Raises :class:`UnsafeHeader` when a value cannot be written safely.
    """
    return _allow(d, close) if isinstance(d, Allow) else _deny(d, close, head_only)
