"""benchmarks/compression_at_rest.py at smoke size, so that the script cannot rot between the runs that print
figures (a smoke run's figures mean nothing)."""

from __future__ import annotations

import pytest

from benchmarks import compression_at_rest


def test_compression_at_rest_figures_print(capsys: pytest.CaptureFixture[str]) -> None:
    assert compression_at_rest.main(["--mib", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "disk after compaction" in out and "1 MiB Range GET from its middle" in out
