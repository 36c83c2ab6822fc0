"""`tollhouse dev jwks | token | hash-key`: test credentials that tollhouse itself accepts."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import jwt
import pytest

from tollhouse.authn.api_keys import hash_api_key as hash_key
from tollhouse.cli import main
from tollhouse.devkeys import generate_ec, jwk_thumbprint, load_private_key, write_private_key


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["dev", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_jwks_generate_writes_a_private_key_readable_by_its_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dev jwks --generate` creates the PEM (0600) and prints its public JWKS, kid = thumbprint."""
    key = tmp_path / "k" / "signing.pem"
    rc, out, err = _run(capsys, "jwks", "--key", str(key), "--generate")
    assert rc == 0, err
    assert key.stat().st_mode & 0o777 == 0o600
    doc = json.loads(out)
    [jwk] = doc["keys"]
    assert set(jwk) >= {"kty", "n", "e", "kid", "alg"}
    assert "d" not in jwk  # the public half only
    assert jwk["kid"] == jwk_thumbprint(jwk)
    again = _run(capsys, "jwks", "--key", str(key), "--generate")[1]
    assert json.loads(again) == doc  # an existing key is never replaced


def test_token_verifies_against_the_printed_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `dev token` JWT verifies with the `dev jwks` key: kid, iss, aud, sub and extra claims."""
    key = tmp_path / "signing.pem"
    jwks_doc = json.loads(_run(capsys, "jwks", "--key", str(key), "--generate")[1])
    rc, out, err = _run(
        capsys,
        "token",
        "acme",
        "--key",
        str(key),
        "--issuer",
        "https://i/",
        "--audience",
        "api",
        "--lifetime-s",
        "600",
        "--claim",
        "tier=3",
    )
    assert rc == 0, err
    token = out.strip()
    header = jwt.get_unverified_header(token)
    jwk = jwt.PyJWK(jwks_doc["keys"][0])
    assert header["kid"] == jwks_doc["keys"][0]["kid"]
    claims = jwt.decode(token, jwk.key, algorithms=["RS256"], audience="api", issuer="https://i/")
    assert claims["sub"] == "acme"
    assert claims["tier"] == 3
    assert claims["exp"] - claims["iat"] == 600


def test_token_with_an_ec_key_is_es256(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A P-256 PEM signs ES256 and its kid is the same thumbprint `load_private_key` computes."""
    pem = tmp_path / "ec.pem"
    write_private_key(generate_ec(), pem)
    token = _run(capsys, "token", "bob", "--key", str(pem))[1].strip()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] == load_private_key(pem).kid


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "x", "--key", "missing.pem"], "cannot read missing.pem"),
        (["token", "x", "--key", "{bad}", "--claim", "novalue"], "not an unencrypted PEM"),
        (["jwks", "--key", "missing.pem"], "cannot read missing.pem"),
        (["hash-key"], "give the API key"),
    ],
)
def test_bad_input_is_exit_2_with_a_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    """A missing or unusable key file, or no API key, is exit 2 with one line on stderr."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pem").write_text("not a key", encoding="utf-8")
    args = [a.replace("{bad}", "bad.pem") for a in args]
    rc, out, err = _run(capsys, *args)
    assert rc == 2
    assert out == ""
    assert message in err


def test_hash_key_is_what_the_config_and_the_authenticator_expect(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dev hash-key KEY` (or from stdin) prints the SHA-256 hex the API-key lookup uses."""
    assert _run(capsys, "hash-key", "th_abc")[1].strip() == hash_key("th_abc")
    monkeypatch.setattr("sys.stdin", io.StringIO("th_from_stdin\n"))
    assert _run(capsys, "hash-key", "-")[1].strip() == hashlib.sha256(b"th_from_stdin").hexdigest()


def test_hash_key_new_prints_a_fresh_key_and_its_config_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--new` prints a random th_ key and the `{sha256, customer}` entry that matches it."""
    out = _run(capsys, "hash-key", "--new", "--customer", "acme")[1]
    key = out.splitlines()[0].removeprefix("key: ")
    assert key.startswith("th_")
    assert len(key) > 40
    assert f'{{sha256: "{hash_key(key)}", customer: acme}}' in out
    assert _run(capsys, "hash-key", "--new")[1] != out
