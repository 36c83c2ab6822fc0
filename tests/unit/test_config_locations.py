"""The meter URL is parsed once, in config, into a frozen MeterLocation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tollhouse.config import ConfigError, MeterLocation, parse_config


def test_a_sqlite_meter_is_parsed_into_its_file(tmp_path: Path) -> None:
    """sqlite:///path becomes kind sqlite with the file as a Path; the URL is kept as given."""
    cfg = parse_config({"metering": {"meter": f"sqlite://{tmp_path}/m.db"}})
    assert cfg.metering.meter.kind == "sqlite"
    assert cfg.metering.meter.path == tmp_path / "m.db"
    assert cfg.metering.meter.url == f"sqlite://{tmp_path}/m.db"


def test_a_relative_sqlite_meter_resolves_against_the_config_folder(tmp_path: Path) -> None:
    """sqlite:///./m.db in a config file names the file beside that config file."""
    cfg = parse_config({"metering": {"meter": "sqlite:///./m.db"}}, base_dir=tmp_path)
    assert cfg.metering.meter.path == tmp_path.resolve() / "m.db"


def test_a_redis_meter_has_no_file_and_its_password_is_never_displayed() -> None:
    """redis:// and rediss:// are kind redis; display (and str) replace the password by ***."""
    cfg = parse_config({"metering": {"meter": "rediss://bill:s3cret@cache:6380/2"}})
    meter = cfg.metering.meter
    assert (meter.kind, meter.path) == ("redis", None)
    assert meter.url == "rediss://bill:s3cret@cache:6380/2"
    assert meter.display == "rediss://bill:***@cache:6380/2"
    assert "s3cret" not in str(meter)
    with pytest.raises(ValueError, match="not a SQLite meter"):
        meter.sqlite_file()


@pytest.mark.parametrize("url", ["postgresql://db/x", "sqlite:///", "redis://", "m.db", ""])
def test_a_bad_meter_url_is_a_config_error_at_its_dotted_path(url: str) -> None:
    """Anything but sqlite:///path or redis://host is refused with metering.meter named."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"metering": {"meter": url}})
    assert [where for where, _ in exc.value.problems] == ["metering.meter"]


def test_the_meter_location_is_frozen_and_serialises_back_to_its_url() -> None:
    """The parsed value cannot be changed in place; a dump of the config writes the URL."""
    cfg = parse_config({"metering": {"meter": "redis://cache:6379/0"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.metering.meter.url = "redis://elsewhere"  # type: ignore[misc]
    assert cfg.metering.model_dump()["meter"] == "redis://cache:6379/0"
    assert MeterLocation.parse("redis://cache:6379/0") == cfg.metering.meter
