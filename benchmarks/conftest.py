"""Shared pieces of the engine benchmarks: figures recorded by each benchmark, printed side by side at the end.

Run: `.venv/bin/pytest benchmarks --benchmark-enable`. Each "raw limit beside X" row is measured in the rounds
alternating with X (raw, X, raw, X, ...) and X's ratio is against that row. Without --benchmark-enable (as in the
test suite) every benchmark runs once at smoke size, so the harness cannot rot; no figures are recorded then.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


@dataclass
class Figure:
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    reference: str | None = None  # the name of the figure this one is compared with

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


class Figures:
    def __init__(self) -> None:
        self.items: dict[str, Figure] = {}

    def add(self, name: str, unit: str, value: float, reference: str | None = None) -> None:
        self.items.setdefault(name, Figure(name, unit, reference=reference)).samples.append(value)

    def lines(self) -> Iterator[str]:
        yield f"{'figure':<62} {'median':>12} {'unit':<8} {'n':>3}  ratio"
        for fig in self.items.values():
            ratio = ""
            ref = self.items.get(fig.reference or "")
            if ref is not None:
                ratio = f"{fig.median / ref.median:.2f}x raw"
            yield f"{fig.name:<62} {fig.median:>12.1f} {fig.unit:<8} {len(fig.samples):>3}  {ratio}"


FIGURES = Figures()


@pytest.fixture
def figures() -> Figures:
    return FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if FIGURES.items:  # recorded only by benchmarks that ran enabled
        terminalreporter.section("Berth engine figures (medians; ratios against the raw limit of the same run)")
        for line in FIGURES.lines():
            terminalreporter.write_line(line)
