"""What ``tollhouse demo --keep`` prints: every demo credential and ready-to-paste shell lines.

The admin block follows the README's "Getting credentials": create a customer, issue it an API
key, call the API with that key, revoke it. Its lines are plain bash (curl, and python3 to read
one JSON field), and ``tests/integration/test_envoy_demo.py`` runs exactly what is printed.
"""

from __future__ import annotations

from pathlib import Path

from tollhouse.demo.localstack import LocalStack

__all__ = ["ADMIN_HEADER", "admin_lines", "credential_lines", "keep_help"]

ADMIN_HEADER = 'The admin API (README "Getting credentials"), paste these lines in order:'
TOKEN_HOURS = 8
_JSON_FIELD = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"{}\"])'"


def credential_lines(stack: LocalStack) -> list[str]:
    """``export`` lines: a JWT per demo JWT customer, globex's API key, the admin token."""
    life = TOKEN_HOURS * 3600
    lines = [
        f"export {who.upper()}='{stack.token(who, lifetime_s=life)}'   # {plan}"
        for who, plan in (("alice", "free"), ("dana", "free, 2 requests a month"), ("bob", "pro"))
    ]
    lines.append(f"export GLOBEX_KEY='{stack.api_key}'   # enterprise, an API key")
    if stack.admin_token is not None:
        lines.append(
            f"export ADMIN_TOKEN='{stack.admin_token}'   # also in {stack.admin_token_file}"
        )
    return lines


def admin_lines(stack: LocalStack) -> list[str]:
    """The README's API-key story against this stack, one shell command per line."""
    admin, base = stack.admin_url, stack.base_url
    field = _JSON_FIELD.format
    return [
        'ADMIN="Authorization: Bearer $ADMIN_TOKEN"',
        f"curl -s -X POST {admin}/customers -H \"$ADMIN\" -H 'Content-Type: application/json' "
        '-d \'{"id": "acme", "name": "Acme Ltd", "plan": "pro"}\'; echo',
        f'ISSUED=$(curl -s -X POST {admin}/customers/acme/keys -H "$ADMIN"); echo "$ISSUED"',
        f"ACME_KEY=$(printf '%s' \"$ISSUED\" | {field('key')})",
        f"ACME_KEY_ID=$(printf '%s' \"$ISSUED\" | {field('id')})",
        "sleep 1   # a new key works within a second, on every replica",
        f'curl -si {base}/v1/export/report.csv -H "x-api-key: $ACME_KEY"; echo   # 200, acme',
        f'curl -s -X POST {admin}/keys/$ACME_KEY_ID/revoke -H "$ADMIN"; echo',
        "sleep 1   # a revoked key is refused within a second",
        f'curl -si {base}/v1/export/report.csv -H "x-api-key: $ACME_KEY"; echo   # 401',
    ]


def _indent(lines: list[str]) -> str:
    return "\n".join("  " + line for line in lines)


def keep_help(stack: LocalStack, key_file: Path | None) -> str:
    """The whole ``--keep`` text (credentials, requests to try, the admin API, where things are)."""
    base = stack.base_url
    mint = ""
    if key_file is not None:
        mint = (
            f"\nMore tokens, for any customer id (signed with the demo key):\n"
            f"  tollhouse dev token carol --key {key_file}\n"
        )
    admin = ""
    if stack.admin_token is not None:
        admin = f"\n{ADMIN_HEADER}\n{_indent(admin_lines(stack))}\n"
    return f"""
The stack is running (Ctrl-C to stop). Demo credentials (tokens valid {TOKEN_HOURS} hours):

{_indent(credential_lines(stack))}
{mint}
Try:
  curl -i '{base}/v1/search?q=envoy' -H "authorization: Bearer $ALICE"      # 200, free plan
  curl -i '{base}/v1/export/report.csv' -H "authorization: Bearer $ALICE"   # 403 not entitled
  curl -i '{base}/v1/export/report.csv' -H "authorization: Bearer $BOB"     # 200, pro plan
  curl -i '{base}/v1/reports/monthly?tokens=1200' -H "x-api-key: $GLOBEX_KEY"  # 200, enterprise
  curl -i '{base}/v1/usage' -H "authorization: Bearer $DANA"                # dana's usage
  curl -i '{base}/v1/search'                                                # 401 no credentials
  curl -i '{base}/v1/search' -H "authorization: Bearer $BOB" -H "x-api-key: $GLOBEX_KEY"  # 400
{admin}
tollhouse config (hot-reloaded on save): {stack.tollhouse.config_path}
tollhouse metrics: http://127.0.0.1:{stack.ports.tollhouse_admin}/metrics
Envoy admin:       http://127.0.0.1:{stack.ports.envoy_admin}/stats
Logs:              {stack.tollhouse.log_path}  {stack.envoy.log_path}
"""
