"""`metrics_listen`: /metrics on a port of its own, apart from /admin, checked like the others."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.servers import free_port
from tollhouse import devkeys
from tollhouse.app import App
from tollhouse.config import ConfigError, load_config, parse_config

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server


def _problems(doc: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    return dict(e.value.problems)


def test_metrics_listen_on_the_admin_address_is_refused() -> None:
    """The same address as admin_listen is a config error on metrics_listen."""
    problems = _problems({"admin_listen": "127.0.0.1:9002", "metrics_listen": "127.0.0.1:9002"})
    assert problems == {"metrics_listen": "127.0.0.1:9002 clashes with admin_listen (port 9002)"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("0.0.0.0:9002", "127.0.0.1:9002"),
        ("127.0.0.1:9002", "0.0.0.0:9002"),
        ("0.0.0.0:9002", "10.0.0.1:9002"),
    ],
)
def test_a_wildcard_host_clashes_with_every_host_on_its_port(first: str, second: str) -> None:
    """0.0.0.0:P takes P on every address, so another listener on P is refused."""
    problems = _problems({"admin_listen": first, "metrics_listen": second})
    assert problems["metrics_listen"].endswith("clashes with admin_listen (port 9002)")


def test_other_ports_or_other_hosts_do_not_clash() -> None:
    """Distinct ports, or the same port on two specific hosts, are accepted."""
    cfg = parse_config(
        {
            "admin_listen": "0.0.0.0:9002",
            "metrics_listen": "0.0.0.0:9005",
            "usage_listen": "127.0.0.1:9003",
            "authz_http_listen": "127.0.0.2:9003",
        }
    )
    assert cfg.metrics_listen == "0.0.0.0:9005"
    assert parse_config({}).metrics_listen is None


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(devkeys.generate_ec("k1"))))
    path = tmp_path / "tollhouse.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{free_port()}",
                "admin_listen": f"127.0.0.1:{free_port()}",
                "metrics_listen": f"127.0.0.1:{free_port()}",
                "auth": {
                    "jwt": [{"issuer": "https://i", "audiences": ["api"], "jwks_file": "jwks.json"}]
                },
                "metering": {"enabled": False},
                "shutdown_grace_s": 1,
            }
        )
    )
    running = App(path, load_config(path))
    await running.start()
    yield running
    await running.stop()


async def test_metrics_move_to_their_own_listener(app: App) -> None:
    """/metrics answers on metrics_listen only; /readyz and /healthz stay on admin_listen."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{app.cfg.metrics_listen}/metrics") as r:
            assert r.status == 200
            assert "tollhouse_checks_total" in await r.text()
        async with s.get(f"http://{app.cfg.admin_listen}/metrics") as r:
            assert r.status == 404
        async with s.get(f"http://{app.cfg.metrics_listen}/readyz") as r:
            assert r.status == 404
        async with s.get(f"http://{app.cfg.admin_listen}/healthz") as r:
            assert r.status == 200
