"""``tollhouse dev ...``: mint test credentials for a local or staging tollhouse.

- ``dev jwks --key FILE [--generate]``: the JWKS (public half) of a PEM signing key, for an
  issuer's ``jwks_file``; ``--generate`` first creates the key (RSA, mode 0600) when FILE is absent;
- ``dev token SUB --key FILE``: a signed JWT for customer ``SUB`` (``kid`` = the key's RFC 7638
  thumbprint, as in ``dev jwks``; the demo's issuer and audience by default);
- ``dev hash-key [KEY | - | --new]``: the SHA-256 hex that ``auth.api_keys.keys`` holds.

Nothing here is needed in production: real tokens come from the authorization server and real API
keys from the admin API. Secrets go to stdout only (never to the log).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tollhouse.authn.api_keys import hash_api_key
from tollhouse.devkeys import (
    generate_rsa,
    jwks,
    load_private_key,
    make_token,
    new_api_key,
    write_private_key,
)

__all__ = ["add_dev_cli"]

DEMO_ISSUER = "https://issuer.demo.tollhouse.test"
DEMO_AUDIENCE = "demo-api"


def _fail(message: str) -> int:
    print(f"tollhouse dev: {message}", file=sys.stderr)
    return 2


def _cmd_jwks(args: argparse.Namespace) -> int:
    path = Path(args.key)
    if args.generate and not path.exists():
        write_private_key(generate_rsa(), path)
        print(f"tollhouse dev: wrote a new RSA signing key to {path} (mode 0600)", file=sys.stderr)
    try:
        key = load_private_key(path, args.kid)
    except OSError as e:
        return _fail(f"cannot read {path}: {e.strerror}")
    except ValueError as e:
        return _fail(str(e))
    print(json.dumps(jwks(key), indent=2))
    return 0


def _claims(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--claim wants NAME=VALUE, not {pair!r}")
        try:
            out[name] = json.loads(value)  # numbers, lists, true/false
        except ValueError:
            out[name] = value
    return out


def _cmd_token(args: argparse.Namespace) -> int:
    if args.lifetime_s <= 0:
        return _fail("--lifetime-s must be positive")
    try:
        key = load_private_key(Path(args.key), args.kid)
        extra = _claims(args.claim)
    except OSError as e:
        return _fail(f"cannot read {args.key}: {e.strerror}")
    except ValueError as e:
        return _fail(str(e))
    auds: list[str] = args.audience or [DEMO_AUDIENCE]
    audience: str | list[str] = auds[0] if len(auds) == 1 else auds
    print(
        make_token(
            key,
            issuer=args.issuer,
            audience=audience,
            subject=args.sub,
            lifetime_s=args.lifetime_s,
            extra_claims=extra,
        )
    )
    return 0


def _cmd_hash_key(args: argparse.Namespace) -> int:
    if args.new:
        if args.api_key is not None:
            return _fail("give KEY or --new, not both")
        key = new_api_key()
        print(f"key: {key}")
        print(f'config: {{sha256: "{hash_api_key(key)}", customer: {args.customer}}}')
        return 0
    if args.api_key is None:
        return _fail("give the API key, '-' to read it from stdin, or --new")
    key = sys.stdin.readline().strip() if args.api_key == "-" else args.api_key
    if not key:
        return _fail("empty API key")
    print(hash_api_key(key))
    return 0


def add_dev_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tollhouse dev jwks | token | hash-key``."""
    dev = sub.add_parser(
        "dev",
        help="mint test credentials: signing keys, JWTs, API key hashes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = dev.add_subparsers(dest="dev_command", required=True)

    p = cmds.add_parser("jwks", help="print the JWKS of a PEM signing key")
    p.add_argument("--key", required=True, help="PEM private key file (RSA or P-256)")
    p.add_argument(
        "--generate",
        action="store_true",
        help="create an RSA key in --key first when the file does not exist",
    )
    p.add_argument("--kid", help="key id (default: the key's RFC 7638 thumbprint)")
    p.set_defaults(func=_cmd_jwks)

    p = cmds.add_parser("token", help="print a signed JWT for a customer")
    p.add_argument("sub", help="the customer id (the token's sub claim)")
    p.add_argument(
        "--key", required=True, help="PEM private key file (e.g. demo-out/keys/signing-key.pem)"
    )
    p.add_argument("--kid", help="key id (default: the key's RFC 7638 thumbprint)")
    p.add_argument("--issuer", default=DEMO_ISSUER, help=f"iss (default {DEMO_ISSUER})")
    p.add_argument(
        "--audience",
        action="append",
        default=None,
        help=f"aud, repeatable (default {DEMO_AUDIENCE})",
    )
    p.add_argument("--lifetime-s", type=float, default=3600.0, help="exp - iat (default 3600)")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra claim (VALUE parsed as JSON when it can be)",
    )
    p.set_defaults(func=_cmd_token)

    p = cmds.add_parser("hash-key", help="print the SHA-256 hex of an API key for the config")
    p.add_argument("api_key", nargs="?", metavar="KEY", help="the key, or - to read it from stdin")
    p.add_argument("--new", action="store_true", help="generate a key and print it with its hash")
    p.add_argument("--customer", default="CUSTOMER", help="customer id for the --new config line")
    p.set_defaults(func=_cmd_hash_key)
