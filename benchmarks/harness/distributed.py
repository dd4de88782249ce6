"""`berth bench --compare --distributed`: Berth on PostgreSQL + SeaweedFS beside CNCF Distribution on the same
SeaweedFS (its `s3` driver, a bucket of its own), and Berth embedded (LMDB + files) in the same run, for issue 17's
speed targets and for what the distributed mode costs against the embedded one.

The engines are throwaway servers started here the way the tests start theirs (engines.py): a PostgreSQL cluster
and one `weed server` on loopback, removed afterwards. Both Berth set-ups run one node with the default number of
workers (one per core) and the open policy; the cases are the four that issue 17 sets targets for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import procfs
from .cases import CASES, Context, Figures
from .engines import S3_ACCESS_KEY, S3_SECRET_KEY, Engines
from .goals import Goal
from .targets import Target, start_berth, start_distribution

REFERENCE = "distribution-s3"
DISTRIBUTED = "berth-distributed"
EMBEDDED = "berth-embedded"
TARGETS = [REFERENCE, DISTRIBUTED, EMBEDDED]

CASE_NAMES = ("manifest GET", "monolithic upload", "manifest PUTs + tags/list", "many images in parallel")
DISTRIBUTED_CASES: list[tuple[str, Callable[[Target, Context], Figures]]] = [
    (name, case) for name, case in CASES if name in CASE_NAMES]

# Issue 17's targets: Berth distributed against Distribution on the same S3 server, ratios of one run.
GOALS = [
    Goal("manifest GET by tag, c16: req/s", 5, setup=DISTRIBUTED),
    Goal("tags/list of 1000 tags: ms", 0.25, at_least=False, setup=DISTRIBUTED),
    Goal("100 images, 8 parallel skopeo pushes: s", 0.7, at_least=False, setup=DISTRIBUTED),
    Goal("raw monolithic upload: MiB/s", 1.5, setup=DISTRIBUTED),
]

# The columns of the table: each Berth set-up against Distribution-on-S3, and the distributed mode's cost.
RATIOS = [(DISTRIBUTED, REFERENCE, f"{DISTRIBUTED} ratio"), (EMBEDDED, REFERENCE, f"{EMBEDDED} ratio"),
          (DISTRIBUTED, EMBEDDED, "distributed/embedded")]


@dataclass
class SetUp:
    engines: Engines
    targets: list[Target] = field(default_factory=list)

    def stop(self) -> None:
        for target in self.targets:
            with contextlib.suppress(Exception):
                target.stop()
        self.engines.stop()


def start(workdir: Path) -> SetUp:
    """The engines, then Distribution on one bucket and Berth distributed on another (and its own database), then
    Berth embedded; on any failure whatever started is stopped."""
    from .engines import start_engines

    setup = SetUp(start_engines())
    try:
        s3 = setup.engines.s3
        setup.targets.append(start_distribution(workdir, {
            "endpoint": s3.endpoint, "bucket": s3.create_bucket(), "access_key": S3_ACCESS_KEY,
            "secret_key": S3_SECRET_KEY}))
        store = ("--metadata", setup.engines.postgres.create_database() + "?schema=registry",
                 "--blobs", f"s3://{s3.create_bucket()}/berth?endpoint={s3.endpoint}")
        setup.targets.append(start_berth(workdir, "open", DISTRIBUTED, store, env=s3.environment()))
        setup.targets.append(start_berth(workdir, "open", EMBEDDED))
    except BaseException:
        setup.stop()
        raise
    return setup


def engine_memory(engines: Engines) -> dict[str, float]:
    """Each engine's peak resident set over the run (VmHWM summed over its processes, MiB) and its PSS now: shared
    by Distribution and Berth distributed, so not counted in either one's figures."""
    postmaster = engines.postgres.directory / "data" / "postmaster.pid"
    pids = {"postgresql": procfs.tree(int(postmaster.read_text().split()[0])) if postmaster.exists() else [],
            "seaweedfs": procfs.tree(engines.s3.process.pid)}
    figures: dict[str, float] = {}
    for name, group in pids.items():
        figures[f"{name} peak RSS MiB (VmHWM summed over processes)"] = procfs.peak_resident(group) / (1 << 20)
        figures[f"{name} PSS MiB at the end"] = procfs.proportional(group) / (1 << 20)
    return figures


def cost(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    """Berth distributed / Berth embedded for every figure both have (for times, latencies and memory less is
    better, for rates more)."""
    distributed, embedded = medians.get(DISTRIBUTED, {}), medians.get(EMBEDDED, {})
    return {metric: value / embedded[metric] for metric, value in distributed.items() if embedded.get(metric)}


def workers() -> int:
    """The workers each Berth node runs: `berth serve`'s default, one per core."""
    return os.cpu_count() or 1
