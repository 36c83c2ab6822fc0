"""One config snapshot per Check: what is reserved comes from the catalog the Check took."""

from __future__ import annotations

from pathlib import Path

from tests.support.check import ISS, get_request, make_checker
from tollhouse import devkeys
from tollhouse.config import parse_config
from tollhouse.decision import Allow
from tollhouse.metering import Metering

SEARCH = [{"methods": ["GET"], "path": "/v1/search*"}]


async def test_reservation_units_come_from_the_checks_snapshot(tmp_path: Path) -> None:
    """Metering already reconfigured to a newer config does not change this Check's units.

    The Check's catalog sells ``search`` by ``requests``; metering was reconfigured with a config
    that sells it by ``calls``. The reservation carries the Check's units (``requests``), so a
    reload landing while a Check awaits its admission never mixes the two configs in one record.
    """
    key = devkeys.generate_ec("k1")
    spool, meter = tmp_path / "spool", f"sqlite:///{tmp_path / 'meter.db'}"
    newer = parse_config(
        {
            "meters": {"requests": {}, "calls": {}},
            "features": {"search": {"rules": SEARCH, "meters": ["calls"]}},
            "plans": {"pro": {"features": ["search"]}},
            "metering": {"spool": str(spool), "meter": meter},
        }
    )
    metering = Metering(newer, instance="t")
    await metering.start()
    try:
        checker = await make_checker(
            tmp_path,
            key,
            metering=metering,
            extra={"metering": {"spool": str(spool), "meter": meter}},
        )
        token = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
        d = await checker.check(get_request("/v1/search?q=1", token))
        assert isinstance(d, Allow), d
        rec = await metering.spool.get(d.usage_id)
        assert rec is not None
        assert dict(rec.units) == {"requests": 1}
    finally:
        assert await metering.stop(deadline_s=5)
