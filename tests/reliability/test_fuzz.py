"""Fuzzing the decoders with hypothesis: garbage in gives a decision or a named error, never more.

Targets: the token parser (through the Authenticator), the gRPC Check decoder plus the Check,
the access-log decoder, the HTTP ext_authz request decoder, and the config loader. The budget
is small in CI (``FUZZ_EXAMPLES``, default 150 per target) and larger behind ``make fuzz``
(``FUZZ_EXAMPLES=5000``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2 as ea
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollhouse import devkeys
from tollhouse.authn import Authenticator, AuthnFailure
from tollhouse.check import Checker, State
from tollhouse.config import ConfigError, parse_config
from tollhouse.decision import Allow, Deny
from tollhouse.entitlements import build_catalog
from tollhouse.envoy.als import entries_of
from tollhouse.envoy.codec import decode_check, encode_decision
from tollhouse.envoy.http_codec import BadRequest, UnsafeHeader, decode_request

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ISS = "https://issuer.example"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_segment = st.one_of(st.binary(max_size=80).map(_b64), st.text(max_size=40))
_json_header = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u"]),
    st.one_of(st.text(max_size=12), st.integers(), st.none()),
    max_size=4,
).map(lambda d: _b64(json.dumps(d).encode()))
tokens = st.one_of(
    st.text(max_size=200),
    st.tuples(st.one_of(_json_header, _segment), _segment, _segment).map(".".join),
    st.lists(_segment, min_size=1, max_size=6).map(".".join),
)
header_names = st.sampled_from(
    [
        "authorization",
        "x-api-key",
        "x-request-id",
        "host",
        "cookie",
        "x-tollhouse-customer",
        "content-length",
    ]
)
header_maps = st.dictionaries(header_names, st.text(max_size=120), max_size=5)


def _auth(tmp_path: Path) -> Authenticator:
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(devkeys.generate_ec("k1"))))
    cfg = parse_config(
        {
            "auth": {
                "jwt": [
                    {"issuer": ISS, "audiences": ["api"], "jwks_file": str(tmp_path / "jwks.json")}
                ],
                "api_keys": {"header": "x-api-key", "keys": []},
            },
            "features": {"search": [{"methods": ["GET"], "path": "/v1/search*"}]},
            "plans": {"free": {"features": ["search"]}},
            "customers": {"acme": {"plan": "free"}},
        }
    )
    return Authenticator(cfg.auth)


def test_token_parser_refuses_garbage_tokens(tmp_path: Path) -> None:
    """Any bearer token that was not signed by the issuer's key is an AuthnFailure, never raised."""
    authn = _auth(tmp_path)
    asyncio.run(authn.start())

    @FUZZ
    @given(tokens)
    def run(token: str) -> None:
        got = authn.authenticate({"authorization": f"Bearer {token}"})
        assert isinstance(got, AuthnFailure), got

    try:
        run()
    finally:
        asyncio.run(authn.stop())


def _check_request(path: str, method: str, headers: dict[str, str]) -> ea.CheckRequest:
    req = ea.CheckRequest()
    http = req.attributes.request.http
    http.path, http.method = path, method
    http.headers.update(headers)
    return req


def test_check_decoder_and_check_never_allow_garbage(tmp_path: Path) -> None:
    """Random paths, methods and headers: decode, check and encode; a deny every time, no raise."""
    authn = _auth(tmp_path)
    cfg_catalog = build_catalog(
        parse_config(
            {
                "features": {"search": [{"methods": ["GET"], "path": "/v1/search*"}]},
                "plans": {"free": {"features": ["search"]}},
                "customers": {"acme": {"plan": "free"}},
            }
        )
    )
    loop = asyncio.new_event_loop()
    loop.run_until_complete(authn.start())
    checker = Checker(State(cfg_catalog), authn)

    @FUZZ
    @given(st.text(max_size=100), st.text(max_size=10), header_maps)
    def run(path: str, method: str, headers: dict[str, str]) -> None:
        info = decode_check(_check_request(path, method, headers))
        decision = loop.run_until_complete(checker.check(info))
        assert not isinstance(decision, Allow), decision
        assert isinstance(decision, Deny), decision
        assert 400 <= decision.status < 600
        encode_decision(decision).SerializeToString()

    try:
        run()
    finally:
        loop.run_until_complete(authn.stop())
        loop.close()


@FUZZ
@given(st.binary(max_size=2000))
def test_access_log_decoder_never_raises(data: bytes) -> None:
    """Any bytes as a StreamAccessLogsMessage: a list of entries (maybe empty), never a raise."""
    entries = entries_of(data)
    assert isinstance(entries, list)
    for e in entries:
        assert e.usage_id is None or isinstance(e.usage_id, str)


@FUZZ
@given(
    st.binary(max_size=12),
    st.binary(max_size=200),
    st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=100)), max_size=8),
    st.sampled_from(["", "/authz", "/x/"]),
)
def test_http_request_decoder_gives_a_request_or_a_named_error(
    method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], prefix: str
) -> None:
    """Any method, target and header bytes: a RequestInfo, or BadRequest / UnsafeHeader."""
    try:
        info = decode_request(method, url, headers, prefix)
    except (BadRequest, UnsafeHeader):
        return
    assert info.path.startswith("/")
    assert all(k == k.lower() for k in info.headers)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.text(max_size=20))
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "plans",
                    "features",
                    "meters",
                    "auth",
                    "jwt",
                    "quotas",
                    "price",
                    "listen",
                    "metering",
                    "customers",
                    "rules",
                    "path",
                    "methods",
                    "plan",
                    "currency",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


@FUZZ
@given(_docs)
def test_config_loader_gives_a_config_or_dotted_problems(doc: Any) -> None:
    """Any YAML-shaped document: a Config, or a ConfigError whose problems name where."""
    problems: list[tuple[str, str]] | None = None
    try:
        parse_config(doc)
    except ConfigError as e:
        problems = e.problems
    if problems is None:
        return
    assert problems
    for where, message in problems:
        assert isinstance(where, str)
        assert where
        assert isinstance(message, str)
        assert message
