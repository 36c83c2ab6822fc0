"""The Check pipeline: phases in order, one Decision each, failing closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.check import ISS, get_request, make_checker
from tollhouse import devkeys
from tollhouse.decision import Allow, Deny
from tollhouse.subscriber import Status, Subscriber


@pytest.fixture
def key() -> devkeys.DevKey:
    return devkeys.generate_ec("k1")


def _tok(key: devkeys.DevKey, sub: str) -> str:
    return devkeys.make_token(key, issuer=ISS, audience="api", subject=sub)


async def test_allowed_request_carries_identity(tmp_path: Path, key: devkeys.DevKey) -> None:
    """A valid token of an entitled customer is allowed with customer, plan and feature."""
    c = await make_checker(tmp_path, key)
    d = await c.check(get_request("/v1/export/a", _tok(key, "acme")))
    assert isinstance(d, Allow)
    assert (d.customer, d.plan, d.feature) == ("acme", "pro", "export")
    assert ("x-tollhouse-customer", "acme") in d.upstream_headers
    assert d.metadata["decision_id"] == d.decision_id


async def test_not_entitled_and_unknown_route(tmp_path: Path, key: devkeys.DevKey) -> None:
    """A free customer on a pro feature gets 403 not_entitled; an uncatalogued route 403."""
    c = await make_checker(tmp_path, key)
    d = await c.check(get_request("/v1/export/a", _tok(key, "bob")))
    assert isinstance(d, Deny)
    assert (d.status, d.code) == (403, "not_entitled")
    d = await c.check(get_request("/admin", _tok(key, "acme")))
    assert isinstance(d, Deny)
    assert (d.status, d.code) == (403, "unknown_route")


async def test_unknown_customer_and_default_plan(tmp_path: Path, key: devkeys.DevKey) -> None:
    """An unknown customer is 403 unless default_plan is set."""
    c = await make_checker(tmp_path, key)
    d = await c.check(get_request("/v1/search", _tok(key, "stranger")))
    assert isinstance(d, Deny)
    assert d.code == "unknown_customer"
    c = await make_checker(tmp_path, key, extra={"default_plan": "free"})
    d = await c.check(get_request("/v1/search", _tok(key, "stranger")))
    assert isinstance(d, Allow)
    assert d.plan == "free"


async def test_missing_credentials_401_without_error(tmp_path: Path, key: devkeys.DevKey) -> None:
    """No credentials: 401 with a WWW-Authenticate challenge that names no error."""
    c = await make_checker(tmp_path, key)
    d = await c.check(get_request("/v1/search", None))
    assert isinstance(d, Deny)
    assert d.status == 401
    challenge = dict(d.headers)["www-authenticate"]
    assert challenge.startswith("Bearer realm=")
    assert "error=" not in challenge


class _Statuses:
    """A stand-in for the store's in-memory directory: customer -> status."""

    def __init__(self, status: Status, since: float = 0.0) -> None:
        self.status, self.since = status, since

    def customer(self, cid: str) -> Subscriber:
        return Subscriber(cid, "pro", status=self.status, status_since_s=self.since, source="store")


@pytest.mark.parametrize(
    ("status", "since", "code"),
    [
        ("suspended", 0.0, "payment_required"),
        ("cancelled", 0.0, "subscription_cancelled"),
        ("past_due", 0.0, "payment_required"),
        ("past_due", 1e12, ""),
    ],
)
async def test_subscription_status(
    tmp_path: Path, key: devkeys.DevKey, status: str, since: float, code: str
) -> None:
    """Suspended -> 402, cancelled -> 403, past_due served only within its grace period."""
    c = await make_checker(tmp_path, key, directory=_Statuses(status, since))
    d = await c.check(get_request("/v1/search", _tok(key, "acme")))
    if code:
        assert isinstance(d, Deny)
        assert d.code == code
        assert d.status == (403 if status == "cancelled" else 402)
    else:
        assert isinstance(d, Allow)


class _BrokenSpool:
    def build_reservation(self, **kw: Any) -> Any:
        raise AssertionError("never reached")


class _FailingSpool:
    """Reserving always fails, as on a full disk."""

    def build_reservation(self, **kw: Any) -> Any:
        return type("R", (), {"usage_id": "u1"})()

    async def reserve(self, record: Any, deadline_s: float) -> None:
        raise OSError("disk full")


async def test_spool_failure_is_503(tmp_path: Path, key: devkeys.DevKey) -> None:
    """A billable request whose reservation cannot be written is 503, never allowed."""
    c = await make_checker(tmp_path, key, metering=_FailingSpool())
    d = await c.check(get_request("/v1/search", _tok(key, "acme")))
    assert isinstance(d, Deny)
    assert (d.status, d.code) == (503, "spool_unavailable")


async def test_internal_error_is_503(tmp_path: Path, key: devkeys.DevKey) -> None:
    """An exception inside a phase becomes 503 internal_error, never an exception or an OK."""
    c = await make_checker(tmp_path, key, metering=_BrokenSpool())
    d = await c.check(get_request("/v1/search", _tok(key, "acme")))
    assert isinstance(d, Deny)
    assert (d.status, d.code) == (503, "internal_error")


class _HungSpool:
    """Reserving never completes, as on a disk that stopped answering."""

    def build_reservation(self, **kw: Any) -> Any:
        return type("R", (), {"usage_id": "u1"})()

    async def reserve(self, record: Any, deadline_s: float) -> None:
        import asyncio

        async with asyncio.timeout(deadline_s):  # as Spool.reserve fails a late wait
            await asyncio.Event().wait()


async def test_hung_spool_is_503_within_the_deadline(tmp_path: Path, key: devkeys.DevKey) -> None:
    """A reservation that does not complete within check_deadline becomes 503, never an OK."""
    c = await make_checker(tmp_path, key, metering=_HungSpool(), deadline_s=0.05)
    d = await c.check(get_request("/v1/search", _tok(key, "acme")))
    assert isinstance(d, Deny)
    assert (d.status, d.code) == (503, "deadline_exceeded")
