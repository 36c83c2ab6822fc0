"""Config errors a YAML author can act on: typo suggestions, "list" not "tuple", plurals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollhouse.cli import main
from tollhouse.config import ConfigError, parse_config


def _problems(doc: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    return dict(e.value.problems)


@pytest.mark.parametrize(
    ("doc", "path", "suggestion"),
    [
        ({"lisen": "127.0.0.1:1"}, "lisen", "listen"),
        ({"metering": {"spol": "x"}}, "metering.spol", "spool"),
        ({"plans": {"pro": {"featurs": []}}}, "plans.pro.featurs", "features"),
        (
            {
                "auth": {
                    "jwt": [{"issuer": "i", "audiences": ["a"], "jwks_file": "k", "leway_s": 3}]
                }
            },
            "auth.jwt.0.leway_s",
            "leeway_s",
        ),
        ({"meters": {"t": {"frm": "response_bytes"}}}, "meters.t.frm", "from"),
        (
            {"features": {"s": [{"methds": ["GET"], "path": "/x"}]}},
            "features.s.rules.0.methds",
            "methods",
        ),
    ],
)
def test_a_mistyped_key_names_the_key_it_resembles(
    doc: dict[str, object], path: str, suggestion: str
) -> None:
    """An unknown key close to a known one at the same place says "did you mean" that one."""
    problems = _problems(doc)
    key = path.rsplit(".", 1)[-1]
    assert problems[path] == f"unknown key {key!r} (did you mean {suggestion!r}?)"


def test_an_unknown_key_like_nothing_gets_no_suggestion() -> None:
    """A key resembling no allowed key is reported as unknown, without a guess."""
    assert _problems({"zzzzzz": 1}) == {"zzzzzz": "unknown key 'zzzzzz'"}


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"auth": {"jwt": "https://issuer"}}, "auth.jwt"),
        ({"plans": {"pro": {"features": "search"}}}, "plans.pro.features"),
        (
            {"auth": {"jwt": [{"issuer": "i", "audiences": "a", "jwks_file": "k"}]}},
            "auth.jwt.0.audiences",
        ),
    ],
)
def test_a_scalar_where_a_list_belongs_says_list(doc: dict[str, object], path: str) -> None:
    """YAML has lists, not tuples: the message says what to write."""
    msg = _problems(doc)[path]
    assert msg == "Input should be a list"
    assert "tuple" not in msg.lower()


def test_a_list_where_a_mapping_belongs_says_mapping() -> None:
    """`plans: []` is refused as "should be a mapping", not Python's "dictionary"."""
    assert _problems({"plans": []}) == {"plans": "Input should be a mapping"}


def test_check_config_counts_in_the_singular_and_plural(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config` says "1 issuer" and "2 plans", never "1 issuers"."""
    (tmp_path / "jwks.json").write_text('{"keys": []}', encoding="utf-8")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        """
auth: {jwt: [{issuer: https://i, audiences: [a], jwks_file: jwks.json}]}
features: {s: [{path: /x}]}
plans: {free: {features: [s]}, pro: {features: [s]}}
customers: {acme: {plan: pro}}
""",
        encoding="utf-8",
    )
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "(2 plans, 1 feature, 1 customer, 1 issuer)" in out
