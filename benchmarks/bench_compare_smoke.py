"""`berth bench --compare` in its smoke mode: every case against Distribution and both Berth set-ups, in seconds,
so the harness cannot rot. Figures from this run mean nothing (tiny sizes, one round)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.harness.cases import CASES
from benchmarks.harness.run import main


def test_compare_smoke(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    assert main(["--compare", "--smoke", "--rounds", "1", "--json", str(report_path),
                 "--workdir", str(tmp_path / "work")]) == 0
    report = json.loads(report_path.read_text())
    assert report["targets"] == ["distribution", "berth-open", "berth-project"]
    medians = report["medians"]
    assert medians["distribution"].keys() == medians["berth-open"].keys() == medians["berth-project"].keys()
    for case_name, _ in CASES:
        assert f"server CPU s: {case_name}" in medians["berth-project"]
        assert medians["distribution"][f"server peak PSS MiB: {case_name}"] > 0
    for figures in medians.values():
        assert all(math.isfinite(v) and v >= 0 for v in figures.values())
        assert figures["manifest GET by tag, c4: req/s"] > 0 and figures["server peak PSS MiB: whole run"] > 0
    assert isinstance(report["goals"], list)
    assert {"limit: sha256 hashing, one thread: MiB/s", "limit: loopback HTTP GET (nginx sendfile): MiB/s"} <= \
        report["limits"].keys()
