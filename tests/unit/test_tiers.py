"""The test tiers: every collected test carries exactly one of unit, component, e2e, deploy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("unit", "component", "e2e", "deploy")

# Collects the whole suite in a child pytest and prints each test's tier markers as JSON.
_COLLECT = textwrap.dedent("""
    import json, sys
    import pytest

    TIERS = %r
    found = {}

    class Tiers:
        def pytest_collection_finish(self, session):
            for item in session.items:
                found[item.nodeid] = [m.name for m in item.iter_markers() if m.name in TIERS]

    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], [Tiers()])
    print("TIERS " + json.dumps(found))
    sys.exit(int(code))
""")


def test_every_test_has_exactly_one_tier_marker() -> None:
    """No collected test lacks a tier marker, none has two, and every tier selects some tests."""
    proc = subprocess.run(
        [sys.executable, "-c", _COLLECT % (TIERS,)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TIERS "))
    found: dict[str, list[str]] = json.loads(line.removeprefix("TIERS "))
    assert len(found) > 100, "the child collected too few tests to judge"
    wrong = {nodeid: tiers for nodeid, tiers in found.items() if len(set(tiers)) != 1}
    assert wrong == {}
    assert {t for tiers in found.values() for t in tiers} == set(TIERS)
