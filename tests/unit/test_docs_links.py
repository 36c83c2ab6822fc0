"""The newcomer's docs: README links the architecture doc, and the docs' relative links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
DOCS = [ROOT / "README.md", ROOT / "k8s" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_points_at_the_architecture_doc_not_a_file_outside_the_repo() -> None:
    """README links docs/architecture.md (which exists) and no longer names shared/DESIGN.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in text
    assert (ROOT / "docs" / "architecture.md").is_file()
    assert "DESIGN.md" not in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative Markdown link of the doc names a file or folder of the repository."""
    text = doc.read_text(encoding="utf-8")
    broken = [
        target
        for target in LINK.findall(text)
        if not target.startswith(("http://", "https://", "mailto:"))
        and not (doc.parent / target).exists()
    ]
    assert not broken, broken


def test_the_docs_agree_on_the_access_log_flush_interval() -> None:
    """Every Envoy config and doc that sets buffer_flush_interval gives the same value."""
    values = set()
    for path in [*ROOT.glob("envoy/*"), *ROOT.glob("k8s/**/*.yaml"), *DOCS]:
        if path.is_file():
            values |= set(
                re.findall(
                    r"buffer_flush_interval[`:| ]+`?(\d+(?:\.\d+)?s)",
                    path.read_text(encoding="utf-8"),
                )
            )
    assert values == {"0.1s"}
