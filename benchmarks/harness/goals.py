"""Berth's speed targets (issue 5), checked against one `--compare` run: each is a ratio of a Berth figure to
Distribution's from the same run (only ratios from one run count: absolute rates here move 2-3x with the load), or,
where it says so, the Berth figure itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Goal:
    metric: str
    target: float
    stretch: float | None = None
    at_least: bool = True  # the ratio must reach the target (False: stay at or below it)
    setup: str | None = None  # which Berth set-up ("berth-open", "berth-project"...); None: every one checked
    absolute: bool = False  # compare the Berth figure itself, not its ratio to Distribution's

    def met(self, value: float, target: float | None = None) -> bool:
        bound = self.target if target is None else target
        return value >= bound if self.at_least else value <= bound


GOALS = [
    Goal("manifest GET by tag, c16: req/s", 12, 15, setup="berth-open"),
    Goal("manifest GET by tag, c16: p99 ms", 0.2, 0.1, at_least=False, setup="berth-open"),
    Goal("manifest GET by tag, c16: req/s", 8, 10, setup="berth-project"),
    Goal("raw monolithic upload: MiB/s", 2, 2.5),
    Goal("raw chunked upload (8 MiB PATCH): MiB/s", 2.5, 3),
    Goal("raw blob GET, full: MiB/s", 1.0),
    Goal("raw blob GET, Range: MiB/s", 1.0),
    # "skopeo push / pull of 1 GiB >= 1.2x" is a speed; the harness records seconds, so the bound is 1/1.2.
    Goal("skopeo push big: s", 1 / 1.2, 1 / 1.5, at_least=False),
    Goal("skopeo pull big: s", 1 / 1.2, 1 / 1.5, at_least=False),
    Goal("sequential manifest PUTs: req/s", 3, 5),
    Goal("tags/list of 1000 tags: ms", 0.5, 0.25, at_least=False),
    Goal("100 images, 8 parallel skopeo pushes: s", 0.8, 0.7, at_least=False),
    Goal("disk used after `many` / unique bytes", 1.02, 1.00, at_least=False, absolute=True),
    Goal("server peak PSS MiB: whole run", 1.0, 0.7, at_least=False),
    Goal("server peak RSS MiB (VmHWM summed over processes)", 1.0, 0.7, at_least=False),
]


def check(medians: dict[str, dict[str, float]], goals: list[Goal] | None = None, reference_name: str = "distribution",
          setups: tuple[str, ...] = ("berth-open", "berth-project")) -> list[dict[str, object]]:
    """One row per goal and Berth set-up whose figures the run has (by default issue 5's goals against
    Distribution on its filesystem)."""
    rows: list[dict[str, object]] = []
    reference = medians.get(reference_name, {})
    for goal in GOALS if goals is None else goals:
        for setup in setups:
            if goal.setup not in (None, setup) or goal.metric not in medians.get(setup, {}):
                continue
            value = medians[setup][goal.metric]
            if not goal.absolute:
                ref = reference.get(goal.metric)
                if not ref:
                    continue
                value /= ref
            rows.append({"metric": goal.metric, "setup": setup, "value": value, "target": goal.target,
                         "stretch": goal.stretch, "at_least": goal.at_least, "absolute": goal.absolute,
                         "met": goal.met(value),
                         "stretch_met": goal.stretch is not None and goal.met(value, goal.stretch)})
    return rows


def table(rows: list[dict[str, object]], title: str = "target (issue 5)") -> str:
    if not rows:
        return ""
    width = max(len(str(r["metric"])) for r in rows + [{"metric": title}]) + 2
    lines = [f"{title:<{width}}{'set-up':>18}{'this run':>10}{'target':>9}{'stretch':>9}  met",
             "-" * (width + 51)]
    for r in rows:
        sign = ">=" if r["at_least"] else "<="
        unit = "" if r["absolute"] else "x"
        stretch = f"{r['stretch']:.2f}" if r["stretch"] is not None else "-"
        verdict = "stretch" if r["stretch_met"] else ("yes" if r["met"] else "NO")
        lines.append(f"{r['metric']:<{width}}{r['setup']:>18}{r['value']:>9.2f}{unit}{sign:>4}{r['target']:>5.2f}"
                     f"{stretch:>9}  {verdict}")
    return "\n".join(lines)
