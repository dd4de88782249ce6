"""benchmarks/compression.py at smoke size, so that the script cannot rot between the runs that print figures."""

from __future__ import annotations

import pytest

from benchmarks import compression


def test_compression_figures_print(capsys: pytest.CaptureFixture[str]) -> None:
    assert compression.main(["--mib", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "ratio, text-like, level 1, 256 KiB frames" in out and "1 MiB range, 256 KiB frames, unaligned" in out
