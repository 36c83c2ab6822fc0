"""Config validation: every bad field is reported with its dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollhouse.cli import main
from tollhouse.config import ConfigError, load_config, parse_config

GOOD = """
listen: 127.0.0.1:9001
auth:
  jwt:
    - issuer: https://issuer.example
      audiences: [api]
      jwks_file: keys/jwks.json
  api_keys:
    keys:
      - {sha256: "%s", customer: acme}
meters:
  egress_bytes: {from: response_bytes}
  tokens: {from_response_header: x-usage-tokens}
features:
  search: [{methods: [GET], path: "/v1/search*"}]
  export: {rules: [{methods: [GET, POST], path: "/v1/export/**"}], meters: [requests, egress_bytes]}
plans:
  free: {features: [search], quotas: {requests: 1000}, rate_limits: {per_second: 5}}
  pro:
    features: [search, export]
    price:
      currency: USD
      base_fee: "49.00"
      meters:
        requests:
          included: 100
          model: graduated
          tiers: [{up_to: 1000, unit_price: "0.01"}, {unit_price: "0.005"}]
customers:
  acme: {plan: pro}
metering:
  spool: spool
  meter: sqlite:///./meter.db
""" % ("ab" * 32)


def _problems(data: dict) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return [p for p, _ in exc.value.problems]


def test_good_config_loads_and_resolves_paths(tmp_path: Path) -> None:
    """Relative files and sqlite:///./ URLs resolve against the config file's folder."""
    f = tmp_path / "c.yaml"
    f.write_text(GOOD)
    cfg = load_config(f)
    assert cfg.auth.jwt[0].jwks_file == tmp_path / "keys/jwks.json"
    assert cfg.metering.spool == tmp_path / "spool"
    assert cfg.metering.meter.url == f"sqlite://{tmp_path}/meter.db"
    assert cfg.metering.meter.path == tmp_path / "meter.db"
    assert cfg.features["search"].meters == ("requests",)
    assert cfg.meters["tokens"].source == "header:x-usage-tokens"
    assert str(cfg.plans["pro"].price.base_fee) == "49.00"  # type: ignore[union-attr]


def test_unknown_key_has_dotted_path() -> None:
    """A typo is an error naming the exact field."""
    assert _problems({"plans": {"free": {"featurez": []}}}) == ["plans.free.featurez"]


def test_dangling_references_are_reported() -> None:
    """Plans naming unknown features and customers naming unknown plans are rejected."""
    probs = _problems(
        {
            "features": {"s": [{"path": "/s"}]},
            "plans": {"free": {"features": ["s", "nope"]}},
            "customers": {"acme": {"plan": "gold"}},
        }
    )
    assert probs == ["plans.free.features.1", "customers.acme.plan"]


def test_alg_none_and_hs_without_secret_rejected() -> None:
    """`none` is never allowed; HS256 needs a shared secret file."""
    base = {"issuer": "i", "audiences": ["a"], "jwks_file": "k.json"}
    assert _problems({"auth": {"jwt": [{**base, "algorithms": ["none"]}]}}) == [
        "auth.jwt.0.algorithms"
    ]
    assert _problems({"auth": {"jwt": [{**base, "algorithms": ["HS256"]}]}}) == ["auth.jwt.0"]


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tollhouse check-config` exits 0 on a good file and 1 with dotted paths on a bad one."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text('{"keys": []}')
    bad = tmp_path / "bad.yaml"
    bad.write_text("plans:\n  free: {features: [x]}\nlisten: nowhere\n")
    assert main(["check-config", str(good)]) == 0
    assert main(["check-config", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "listen" in err
    assert "bad.yaml" in err


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    """Broken YAML names the line instead of a traceback."""
    f = tmp_path / "c.yaml"
    f.write_text("plans:\n  free: [\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert exc.value.problems[0][0].startswith("line ")


def test_api_keys_file_is_merged(tmp_path: Path) -> None:
    """auth.api_keys.keys_file (e.g. a mounted Secret) adds its key hashes to the inline ones."""
    (tmp_path / "keys.yaml").write_text(f'- {{sha256: "{"cd" * 32}", customer: acme}}\n')
    f = tmp_path / "c.yaml"
    f.write_text(GOOD.replace("  api_keys:\n", "  api_keys:\n    keys_file: keys.yaml\n"))
    cfg = load_config(f)
    assert [k.sha256 for k in cfg.auth.api_keys.keys] == ["ab" * 32, "cd" * 32]


def test_bad_api_keys_file_names_the_field(tmp_path: Path) -> None:
    """A keys file with a bad hash is rejected with the field's path and the entry's index."""
    (tmp_path / "keys.yaml").write_text("- {sha256: nothex, customer: acme}\n")
    f = tmp_path / "c.yaml"
    f.write_text(GOOD.replace("  api_keys:\n", "  api_keys:\n    keys_file: keys.yaml\n"))
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert exc.value.problems[0][0] == "auth.api_keys.keys_file[0.sha256]"


def test_serve_refuses_a_bad_config_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tollhouse serve` with a bad config exits 2 naming the field, and never listens."""
    f = tmp_path / "bad.yaml"
    f.write_text("listen: 127.0.0.1:1\nplans:\n  free: {quotas: {requests: -1}}\n")
    assert main(["serve", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "plans.free.quotas" in err


def test_check_config_refuses_a_missing_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A jwks_file that names nothing fails check-config with its dotted path and the full path."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert main(["check-config", str(good)]) == 1
    err = capsys.readouterr().err
    assert f"auth.jwt.0.jwks_file: file not found: {tmp_path / 'keys' / 'jwks.json'}" in err


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_key_files_are_checked_when_asked(tmp_path: Path, kind: str) -> None:
    """key_files=True: a missing hs_secret_file, or a directory in its place, is a ConfigError.

    The problem carries the dotted path and the file; the default (billing, store commands)
    does not look at key files.
    """
    secret = tmp_path / "hs.key"
    if kind == "directory":
        secret.mkdir()
    f = tmp_path / "c.yaml"
    f.write_text(
        "auth:\n  jwt:\n    - {issuer: i, audiences: [a], hs_secret_file: hs.key,"
        " algorithms: [HS256]}\n"
    )
    load_config(f)
    with pytest.raises(ConfigError) as exc:
        load_config(f, key_files=True)
    [(where, msg)] = exc.value.problems
    assert where == "auth.jwt.0.hs_secret_file"
    assert msg.endswith(str(secret))
    expected = {"missing": "file not found", "directory": "not a file"}[kind]
    assert msg.startswith(expected)


def test_prepaid_plans_need_a_store_a_price_and_flat_per_unit_prices() -> None:
    """A prepaid plan without a store, without a price, or with tiers/included is refused."""
    store = {"url": "sqlite:///tmp/store.db"}
    assert _problems({"plans": {"p": {"prepaid": True}}}) == ["plans.p.prepaid"]
    assert _problems({"store": store, "plans": {"p": {"prepaid": True}}}) == ["plans.p.price"]
    tiers = {"model": "graduated", "tiers": [{"unit_price": "0.01"}]}
    free_first = {"included": 10, "unit_price": "0.01"}
    assert _problems(
        {
            "store": store,
            "meters": {"tokens": {}},
            "plans": {
                "p": {
                    "prepaid": True,
                    "price": {"meters": {"requests": tiers, "tokens": free_first}},
                }
            },
        }
    ) == ["plans.p.price.meters.requests.model", "plans.p.price.meters.tokens.model"]
    ok = parse_config(
        {
            "store": store,
            "plans": {
                "p": {
                    "prepaid": True,
                    "price": {"currency": "JPY", "meters": {"requests": {"unit_price": "3"}}},
                }
            },
        }
    )
    assert ok.plans["p"].on_credit_exhausted == "deny"
