"""Real HTTP through real Envoy to `tollhouse serve`: who passes, who is refused, and how.

One stack for the whole module (see conftest). Tests that change it (config, keys, process) put it
back before they return; the one that stops tollhouse restarts it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.integration.harness import (
    AUDIENCE,
    ISSUER,
    HttpResponse,
    LocalStack,
    upstream_saw,
    wait_until,
)
from tollhouse.devkeys import (
    generate_ec,
    generate_rsa,
    hs256_token_with_public_key,
    jwks,
    make_token,
    unsigned_token,
)

pytestmark = pytest.mark.e2e  # starts a real Envoy

PROBLEM = "application/problem+json"


def _case() -> str:
    return uuid.uuid4().hex[:12]


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _seen_headers(resp: HttpResponse) -> dict[str, str]:
    assert resp.status == 200, (resp.status, resp.body[:300])
    doc: dict[str, Any] = resp.json()
    return dict(doc["headers"])


def _assert_denied(
    stack: LocalStack, resp: HttpResponse, status: int, code: str, case: str
) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.headers.get("content-type", "").startswith(PROBLEM)
    problem: dict[str, Any] = resp.json()
    assert problem["code"] == code, problem
    assert problem["status"] == status
    assert upstream_saw(stack.upstream, case) == []
    return problem


def test_valid_jwt_reaches_upstream_with_identity_headers(stack: LocalStack) -> None:
    """A valid JWT gets 200 and the API sees customer, plan and feature headers."""
    resp = stack.request("/v1/search?q=envoy", token=stack.token("alice"))
    seen = _seen_headers(resp)
    assert seen["x-tollhouse-customer"] == "alice"
    assert seen["x-tollhouse-plan"] == "free"
    assert seen["x-tollhouse-feature"] == "search"
    assert seen["x-tollhouse-usage-id"]
    assert "authorization" in seen  # tollhouse does not strip the caller's credential


def test_valid_es256_jwt_is_accepted(stack: LocalStack) -> None:
    """An ES256 key in the JWKS works like the RSA one."""
    ec_key = generate_ec("ec-" + _case())
    stack.jwks.set_document(jwks(stack.key, ec_key))
    try:
        resp = wait_until(
            lambda: stack.request("/v1/search", token=stack.token("bob", key=ec_key)),
            lambda r: r.status == 200,
            what="ES256 key picked up",
        )
        assert _seen_headers(resp)["x-tollhouse-customer"] == "bob"
    finally:
        stack.jwks.set_document(jwks(stack.key))


def test_missing_credentials_is_401_without_error_param(stack: LocalStack) -> None:
    """No credentials: 401, Bearer challenge with the realm and no error parameter."""
    case = _case()
    resp = stack.request(f"/v1/search?case={case}")
    _assert_denied(stack, resp, 401, "missing_credentials", case)
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'realm="tollhouse"' in challenge
    assert "error=" not in challenge


@pytest.fixture(scope="module")
def bad_tokens(stack: LocalStack) -> dict[str, str]:
    """One token per way a JWT can be wrong (built once per module: RSA keygen is slow)."""
    now = time.time()
    other = generate_rsa(stack.key.kid)  # same kid, different key: a bad signature
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(now) + 600}
    good = stack.token("alice")
    head, body, sig = good.split(".")
    return {
        "malformed": "not-a-jwt",
        "truncated": f"{head}.{body}",
        "expired": stack.token("alice", now=now - 7200, lifetime_s=600),
        "nbf_in_future": stack.token("alice", extra_claims={"nbf": int(now) + 3600}),
        "wrong_issuer": stack.token("alice", issuer="https://evil.example"),
        "wrong_audience": stack.token("alice", audience="someone-else"),
        "bad_signature": make_token(other, issuer=ISSUER, audience=AUDIENCE, subject="alice"),
        "tampered_payload": f"{head}.{stack.token('globex').split('.')[1]}.{sig}",
        "alg_none": unsigned_token(claims),
        "hs256_with_rsa_public_key": hs256_token_with_public_key(stack.key, claims),
        "unknown_kid": stack.token("alice", headers={"kid": "no-such-kid-" + _case()}),
        "no_exp": stack.token("alice", extra_claims={"exp": None}),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "malformed",
        "truncated",
        "expired",
        "nbf_in_future",
        "wrong_issuer",
        "wrong_audience",
        "bad_signature",
        "tampered_payload",
        "alg_none",
        "hs256_with_rsa_public_key",
        "unknown_kid",
        "no_exp",
    ],
)
def test_bad_jwt_is_401_invalid_token(
    stack: LocalStack, bad_tokens: dict[str, str], kind: str
) -> None:
    """Each forged, expired or mis-addressed token is a 401 invalid_token, never a 200."""
    case = _case()
    resp = stack.request(f"/v1/search?case={case}", token=bad_tokens[kind])
    _assert_denied(stack, resp, 401, "invalid_token", case)
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert "error_description=" in challenge


def test_valid_api_key_is_200(stack: LocalStack) -> None:
    """The generated API key identifies globex on the enterprise plan."""
    seen = _seen_headers(stack.request("/v1/reports/monthly", api_key=stack.api_key))
    assert seen["x-tollhouse-customer"] == "globex"
    assert seen["x-tollhouse-plan"] == "enterprise"
    assert seen["x-tollhouse-feature"] == "reports"


def test_unknown_api_key_is_401(stack: LocalStack) -> None:
    """A key whose hash is not configured is a 401 invalid_api_key."""
    case = _case()
    resp = stack.request(f"/v1/search?case={case}", api_key="th_demo_wrong-" + case)
    _assert_denied(stack, resp, 401, "invalid_api_key", case)


def test_bearer_and_api_key_together_is_400(stack: LocalStack) -> None:
    """Both a bearer token and an API key: ambiguous, 400."""
    case = _case()
    resp = stack.request(f"/v1/search?case={case}", token=stack.token("bob"), api_key=stack.api_key)
    _assert_denied(stack, resp, 400, "ambiguous_credentials", case)


def test_free_plan_calling_pro_feature_is_403(stack: LocalStack) -> None:
    """A free-plan customer calling export (pro only) is a 403 not_entitled."""
    case = _case()
    resp = stack.request(f"/v1/export/report.csv?case={case}", token=stack.token("alice"))
    _assert_denied(stack, resp, 403, "not_entitled", case)


def test_usage_route_is_guarded_by_ext_authz(stack: LocalStack) -> None:
    """/v1/usage without credentials is refused by tollhouse before it is routed."""
    resp = stack.request("/v1/usage")
    assert resp.status == 401
    assert resp.json()["code"] == "missing_credentials"


def test_spoofed_identity_headers_are_replaced(stack: LocalStack) -> None:
    """Client-sent x-tollhouse-* headers never reach the API; tollhouse's values do."""
    spoof = {
        "x-tollhouse-customer": "globex",
        "x-tollhouse-plan": "enterprise",
        "x-tollhouse-feature": "reports",
        "x-tollhouse-usage-id": "spoofed-usage-id",
    }
    resp = stack.request("/v1/search", token=stack.token("bob"), headers=spoof)
    seen = _seen_headers(resp)
    assert seen["x-tollhouse-customer"] == "bob"
    assert seen["x-tollhouse-plan"] == "pro"
    assert seen["x-tollhouse-feature"] == "search"
    assert seen["x-tollhouse-usage-id"] not in ("", "spoofed-usage-id")
    assert "," not in seen["x-tollhouse-usage-id"]  # replaced, not appended


def test_dot_segments_are_normalised_before_the_check(stack: LocalStack) -> None:
    """/v1/search/../export is checked as /v1/export: free plan gets 403, pro reaches /v1/export."""
    case = _case()
    resp = stack.request(f"/v1/search/../export?case={case}", token=stack.token("alice"))
    _assert_denied(stack, resp, 403, "not_entitled", case)
    resp = stack.request(f"/v1/search/../export/report.csv?case={case}", token=stack.token("bob"))
    assert _seen_headers(resp)["x-tollhouse-feature"] == "export"
    assert [r["path"] for r in upstream_saw(stack.upstream, case)] == [
        f"/v1/export/report.csv?case={case}"
    ]


def test_repeated_slashes_are_merged(stack: LocalStack) -> None:
    """//v1///search matches the search feature and reaches the API as /v1/search."""
    case = _case()
    resp = stack.request(f"//v1///search?case={case}", token=stack.token("alice"))
    assert _seen_headers(resp)["x-tollhouse-feature"] == "search"
    assert [r["path"] for r in upstream_saw(stack.upstream, case)] == [f"/v1/search?case={case}"]


def test_plan_change_in_config_applies_without_restart(stack: LocalStack) -> None:
    """Moving alice to pro in the config file lets her export within seconds, same process."""
    pid = stack.tollhouse.proc.pid if stack.tollhouse.proc else None
    original = stack.config

    def export() -> int:
        return stack.request("/v1/export/report.csv", token=stack.token("alice")).status

    assert export() == 403
    changed = {**original, "customers": {**original["customers"], "alice": {"plan": "pro"}}}
    stack.reconfigure(changed)
    try:
        wait_until(export, lambda s: s == 200, what="alice on pro after reload")
    finally:
        stack.reconfigure(original)
    wait_until(export, lambda s: s == 403, what="alice back on free after reload")
    assert stack.tollhouse.proc is not None
    assert stack.tollhouse.proc.pid == pid


def test_jwks_url_rotation(stack: LocalStack) -> None:
    """A key added to the JWKS URL is accepted; a removed key's fresh tokens are refused."""
    old, new = stack.key, generate_rsa("rotated-" + _case())

    def status_with(key: Any) -> int:
        # A fresh token each time (distinct jti), so no verified-token cache entry can answer.
        tok = stack.token("bob", key=key, extra_claims={"jti": _case()})
        return stack.request("/v1/search", token=tok).status

    stack.jwks.set_document(jwks(old, new))
    try:
        wait_until(lambda: status_with(new), lambda s: s == 200, what="new key accepted")
        stack.jwks.set_document(jwks(new))
        wait_until(lambda: status_with(old), lambda s: s == 401, what="removed key refused")
        assert status_with(new) == 200
    finally:
        stack.jwks.set_document(jwks(old))
    wait_until(lambda: status_with(old), lambda s: s == 200, what="original key back")


def test_access_log_stream_reaches_tollhouse(stack: LocalStack) -> None:
    """Envoy's gRPC access logger writes to tollhouse's ALS without dropping entries."""
    stack.request("/v1/search", token=stack.token("alice"))
    stats = wait_until(
        stack.envoy.stats,
        lambda s: s.get("access_logs.grpc_access_log.logs_written", 0) > 0,
        what="access-log entries written",
    )
    assert stats.get("access_logs.grpc_access_log.logs_dropped", 0) == 0


def test_tollhouse_stopped_means_503_never_200(stack: LocalStack) -> None:
    """SIGTERM drains and exits 0; then Envoy answers 503 for valid callers; restart recovers."""
    assert stack.tollhouse.stop() == 0
    try:
        case = _case()
        statuses = {
            stack.request(f"/v1/search?case={case}", token=stack.token("alice")).status
            for _ in range(5)
        }
        assert statuses == {503}
        assert upstream_saw(stack.upstream, case) == []
    finally:
        stack.tollhouse.start()
    wait_until(
        lambda: stack.request("/v1/search", token=stack.token("alice")).status,
        lambda s: s == 200,
        what="200 after tollhouse restart",
    )


def test_tollhouse_killed_means_503_never_200(stack: LocalStack) -> None:
    """SIGKILL (no drain): Envoy answers 503 for valid callers until tollhouse is back."""
    stack.tollhouse.kill()
    try:
        case = _case()
        statuses = {
            stack.request(f"/v1/search?case={case}", token=stack.token("bob")).status
            for _ in range(5)
        }
        assert statuses == {503}
        assert upstream_saw(stack.upstream, case) == []
    finally:
        stack.tollhouse.start()
    wait_until(
        lambda: stack.request("/v1/search", token=stack.token("bob")).status,
        lambda s: s == 200,
        what="200 after tollhouse restart",
    )
