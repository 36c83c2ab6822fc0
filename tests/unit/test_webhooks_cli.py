"""`tollhouse webhooks ...` on a SQLite store, through the real console entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tollhouse.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    """Run one command; return its exit code and parsed JSON output (or stderr text)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


def test_cli_registers_tests_lists_and_removes_webhooks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Add prints the secret once; list never shows it; test queues a delivery; rm deletes it."""
    url = ["--store-url", f"sqlite://{tmp_path}/store.db"]
    assert run(capsys, "store", "migrate", *url)[0] == 0
    code, ep = run(
        capsys,
        "webhooks",
        "add",
        "https://hooks.test/in",
        "--event",
        "invoice.issued",
        "--event",
        "credit.low",
        *url,
    )
    assert code == 0
    assert isinstance(ep, dict)
    assert ep["events"] == ["invoice.issued", "credit.low"]
    assert str(ep["secret"]).startswith("whsec_")
    code, listed = run(capsys, "webhooks", "list", *url)
    assert code == 0
    assert [e["id"] for e in listed] == [ep["id"]]  # type: ignore[attr-defined]
    assert ep["secret"] not in json.dumps(listed)
    code, event = run(capsys, "webhooks", "test", ep["id"], *url)
    assert code == 0
    assert event["type"] == "webhook.test"  # type: ignore[index]
    code, deliveries = run(capsys, "webhooks", "deliveries", "--webhook", ep["id"], *url)
    assert [(d["event_id"], d["state"]) for d in deliveries] == [  # type: ignore[attr-defined]
        (event["id"], "pending")
    ]  # type: ignore[index]
    assert run(capsys, "webhooks", "redeliver", "--dead", ep["id"], *url) == (0, {"requeued": 0})
    code, again = run(capsys, "webhooks", "redeliver", "--event", event["id"], *url)  # type: ignore[index]
    assert code == 0
    assert len(again) == 1  # type: ignore[arg-type]
    assert run(capsys, "webhooks", "disable", ep["id"], *url)[1]["enabled"] is False  # type: ignore[index]
    assert run(capsys, "webhooks", "rm", ep["id"], *url)[0] == 0
    assert run(capsys, "webhooks", "list", *url) == (0, [])


def test_cli_refuses_bad_input_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad url or an unknown endpoint is a clear error on stderr and exit 1."""
    url = ["--store-url", f"sqlite://{tmp_path}/store.db"]
    run(capsys, "store", "migrate", *url)
    code, err = run(capsys, "webhooks", "add", "file:///etc/passwd", *url)
    assert code == 1
    assert "invalid: url" in str(err)
    code, err = run(capsys, "webhooks", "test", "wh_missing", *url)
    assert code == 1
    assert "not_found" in str(err)


def test_cli_takes_a_given_secret_from_a_file_never_argv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--secret-file registers that secret; an empty file is refused and registers nothing."""
    url = ["--store-url", f"sqlite://{tmp_path}/store.db"]
    assert run(capsys, "store", "migrate", *url)[0] == 0
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    (tmp_path / "s").write_text(secret + "\n")
    code, ep = run(
        capsys,
        "webhooks",
        "add",
        "https://hooks.test/in",
        "--secret-file",
        str(tmp_path / "s"),
        *url,
    )
    assert code == 0
    assert ep["secret"] == secret  # type: ignore[index]
    (tmp_path / "empty").write_text("\n")
    code, err = run(
        capsys,
        "webhooks",
        "add",
        "https://hooks.test/b",
        "--secret-file",
        str(tmp_path / "empty"),
        *url,
    )
    assert code != 0
    assert "--secret-file: the file is empty" in str(err)
    assert len(run(capsys, "webhooks", "list", *url)[1]) == 1  # type: ignore[arg-type]
