"""Names in the config (plans, customers, meters, features) must match the id pattern whole."""

from __future__ import annotations

import pytest

from tollhouse.config import ConfigError, parse_config


@pytest.mark.parametrize("name", ["ev\nil", "evil\n\x00", "a b", "acme/x", "-acme"])
def test_a_customer_name_that_is_not_a_whole_id_is_a_config_error(name: str) -> None:
    """A customer key with a newline, NUL, space or slash: ConfigError naming customers.<key>."""
    with pytest.raises(ConfigError) as info:
        parse_config({"plans": {"free": {}}, "customers": {name: {"plan": "free"}}})
    assert any(path.startswith("customers.") for path, _ in info.value.problems)


def test_plan_reference_with_a_newline_inside_is_refused() -> None:
    """A customer's plan with a newline inside is refused (the pattern is anchored at both ends)."""
    with pytest.raises(ConfigError) as info:
        parse_config({"plans": {"free": {}}, "customers": {"acme": {"plan": "fr\nee"}}})
    assert any(path == "customers.acme.plan" for path, _ in info.value.problems)


def test_surrounding_whitespace_is_stripped_not_kept() -> None:
    """A trailing newline around a name (YAML block scalars) is stripped: the id has none."""
    cfg = parse_config({"plans": {"free\n": {}}, "customers": {"evil\n": {"plan": "free\n"}}})
    assert list(cfg.customers) == ["evil"]
    assert cfg.customers["evil"].plan == "free"
    assert list(cfg.plans) == ["free"]
