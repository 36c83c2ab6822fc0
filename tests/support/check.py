"""Check test support: a Checker on a small catalog, and requests to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tollhouse import devkeys
from tollhouse.authn import Authenticator
from tollhouse.check import Checker, State
from tollhouse.config import parse_config
from tollhouse.decision import RequestInfo
from tollhouse.entitlements import build_catalog

__all__ = ["ISS", "get_request", "make_checker"]

ISS = "https://issuer.example"


async def make_checker(tmp_path: Path, key: devkeys.DevKey, **kw: Any) -> Checker:
    """A started Checker: JWTs of ``key`` from ISS, plans free and pro, acme (pro), bob (free).

    ``extra``: more config keys; the other keywords go to ``Checker``.
    """
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    cfg = parse_config(
        {
            "auth": {
                "jwt": [
                    {"issuer": ISS, "audiences": ["api"], "jwks_file": str(tmp_path / "jwks.json")}
                ]
            },
            "features": {
                "search": [{"methods": ["GET"], "path": "/v1/search*"}],
                "export": [{"methods": ["GET"], "path": "/v1/export/**"}],
            },
            "plans": {"free": {"features": ["search"]}, "pro": {"features": ["search", "export"]}},
            "customers": {"acme": {"plan": "pro"}, "bob": {"plan": "free"}},
            **kw.pop("extra", {}),
        }
    )
    authn = Authenticator(cfg.auth)
    await authn.start()
    return Checker(State(build_catalog(cfg)), authn, **kw)


def get_request(path: str, token: str | None) -> RequestInfo:
    """``GET path`` with a bearer token (none: no Authorization header)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return RequestInfo(method="GET", path=path, headers=headers)
