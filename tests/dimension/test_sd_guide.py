"""The snippets of docs/sharpness_dimension.md run and print what the text says."""

from __future__ import annotations

from tests.docs.snippets import run_guide


def test_sharpness_dimension_guide() -> None:
    printed = run_guide("sharpness_dimension.md", min_blocks=4)
    assert "2.18949 2.0" in printed
    assert "of 610 exponents" in printed
    assert "1220 1220 estimated" in printed
