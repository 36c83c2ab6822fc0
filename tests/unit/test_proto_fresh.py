"""The checked-in generated code in src/tollhouse/_pb matches proto/ (run `make proto`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PB = ROOT / "src" / "tollhouse" / "_pb"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerating from proto/ with grpcio-tools gives byte-identical files."""
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *protos,
        ],
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated
    for rel in generated:
        checked_in = PB / rel
        assert checked_in.exists(), f"{rel} is not checked in: run `make proto`"
        assert checked_in.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale: run `make proto`"
        )


def test_usage_record_round_trips() -> None:
    """The generated UsageRecord serialises and parses with its units map and state."""
    from tollhouse._pb.tollhouse.v1.usage_pb2 import UsageRecord

    rec = UsageRecord(usage_id="u1", customer="acme", state=UsageRecord.CONFIRMED)
    rec.units["requests"] = 1
    back = UsageRecord.FromString(rec.SerializeToString())
    assert back.units["requests"] == 1
    assert back.state == UsageRecord.CONFIRMED
