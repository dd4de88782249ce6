"""`berth bench --compare --distributed` in its smoke mode: its engines (PostgreSQL, SeaweedFS), Distribution on S3,
Berth distributed and Berth embedded, each of issue 17's cases once at tiny sizes, so the harness cannot rot. Figures
from this run mean nothing (tiny sizes, one round, no machine limits): only that every case ran and gave numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.harness.distributed import CASE_NAMES, DISTRIBUTED, DISTRIBUTED_CASES, EMBEDDED, REFERENCE, TARGETS
from benchmarks.harness.run import main

# One figure of each case (at the smoke scale: 4 connections, 4 images, 2 parallel pushes, 20 tags).
CASE_FIGURES = {"manifest GET": "manifest GET by tag, c4: req/s", "monolithic upload": "raw monolithic upload: MiB/s",
                "manifest PUTs + tags/list": "tags/list of 20 tags: ms",
                "many images in parallel": "4 images, 2 parallel skopeo pushes: s"}


def test_compare_distributed_smoke(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    assert main(["--compare", "--distributed", "--smoke", "--rounds", "1", "--no-limits", "--json",
                 str(report_path), "--workdir", str(tmp_path / "work")]) == 0
    report = json.loads(report_path.read_text())
    assert report["targets"] == TARGETS == [REFERENCE, DISTRIBUTED, EMBEDDED]
    assert [name for name, _ in DISTRIBUTED_CASES] == list(CASE_NAMES)
    medians = report["medians"]
    # (the disk figure only where the data is on this machine's disk: Berth embedded)
    assert medians[REFERENCE].keys() == medians[DISTRIBUTED].keys() == \
        medians[EMBEDDED].keys() - {"disk used after `many` / unique bytes"}
    for target, figures in medians.items():
        assert all(math.isfinite(v) and v >= 0 for v in figures.values()), target
        for case_name in CASE_NAMES:
            assert figures[CASE_FIGURES[case_name]] > 0, (target, case_name)
            assert figures[f"server CPU s: {case_name}"] >= 0
            assert figures[f"server peak PSS MiB: {case_name}"] > 0, (target, case_name)
        assert figures["server peak RSS MiB (VmHWM summed over processes)"] > 0
    # The cost of the distributed mode: a ratio for every figure of every case.
    assert report["cost"].keys() == medians[DISTRIBUTED].keys()
    assert all(math.isfinite(v) and v > 0 for v in report["cost"].values())
    assert report["workers"] >= 1
    assert report["engines"]["postgresql peak RSS MiB (VmHWM summed over processes)"] > 0
    assert report["engines"]["seaweedfs peak RSS MiB (VmHWM summed over processes)"] > 0
    assert isinstance(report["goals"], list)  # (no c16 at the smoke scale: the goals need the real counts)
