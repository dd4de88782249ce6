"""benchmarks/portal.py at smoke size, so that the script cannot rot between the runs that print figures (a smoke
run's figures mean nothing). Without a baseline tree: the comparison's second server is the same code path."""

from __future__ import annotations

import pytest

from benchmarks import portal


def test_portal_figures_print(capsys: pytest.CaptureFixture[str]) -> None:
    assert portal.main(["--tags", "30", "--rounds", "2", "--baseline", "none"]) == 0
    out = capsys.readouterr().out
    assert "repository page, middle page, by push time [this]" in out
    assert "JSON tag, 4-platform index [this]" in out and "manifest GET by tag (one-tag repository)" in out
