"""What every figure module draws with: the shipped style, the figure and legend shapes, colours,
and the rule that runs without a figure's data are left out and named (never drawn as zero).

report.figures, report.foreign and report.portions draw with these; report.figures re-exports them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import matplotlib

matplotlib.use("Agg")  # before any canvas is made; the report never opens a window
import matplotlib.style  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402

from locality.report.data import RunData  # noqa: E402

STYLE_PATH = Path(__file__).with_name("locality.mplstyle")
MIB = float(1 << 20)

# Axes whose values are names, not quantities: they carry a label but no unit.
CATEGORICAL_LABELS = frozenset({"run", "region"})


class NoData(Exception):
    """No run has the data this figure needs; ``str(e)`` says which data."""


@dataclass
class Rendered:
    name: str
    figure: Figure
    left_out: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    caption: str
    draw: Callable[[list[RunData], list[str]], Figure]
    probe_only: bool = False
    when: Callable[[list[RunData]], bool] | None = None  # drawn by default only if this holds for the runs


@contextlib.contextmanager
def style(**overrides: object) -> Iterator[None]:
    """The shipped style, plus overrides (the HTML report uses wider figures)."""
    with matplotlib.style.context([str(STYLE_PATH), dict(overrides)]):
        yield


def _colors(n: int) -> list[str]:
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


def _linestyle(i: int) -> str:
    # After the palette repeats, the line style keeps runs apart (and in greyscale print).
    return ("-", "--", ":", "-.")[(i // 8) % 4]


def _marker(i: int) -> str:
    # The scatter counterpart of _linestyle.
    return ("o", "^", "s", "D")[(i // 8) % 4]


def _legend(fig: Figure, ax, *, loc: str = "best") -> None:
    """A legend inside the axes while it is short; below them once it would cover the data."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= 8:
        ax.legend(loc=loc)
    else:
        # The figure grows by the legend's rows, so the axes keep their height.
        row_in = FontProperties(size=matplotlib.rcParams["legend.fontsize"]).get_size_in_points() * 1.6 / 72
        fig.set_figheight(fig.get_figheight() + row_in * math.ceil(entries / 2))
        fig.legend(loc="outside lower center", ncols=2)


def _figure(rows: int = 1, row_height: float | None = None) -> Figure:
    """A figure of the style's width; stacked rows (small multiples, bars) set its height."""
    width, height = matplotlib.rcParams["figure.figsize"]
    if row_height is not None or rows > 1:
        height = (row_height or height * 0.55) * rows + 0.6
    return Figure(figsize=(width, height))


def _split(runs: list[RunData], has: Callable[[RunData], bool], what: str, left_out: list[str]) -> list[tuple[int, RunData]]:
    """Runs (with their colour index) that have ``what``; the others go to left_out."""
    kept = []
    for i, run in enumerate(runs):
        if run.failed:
            left_out.append(f"{run.label}: run failed")
        elif has(run):
            kept.append((i, run))
        else:
            left_out.append(f"{run.label}: no {what}")
    if not kept:
        raise NoData(f"no run has {what}")
    return kept


def _metric(run: RunData, key: str) -> float | None:
    value = run.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def _has_column(run: RunData, *columns: str) -> bool:
    return run.timeline is not None and len(run.timeline) > 0 and all(c in run.timeline for c in columns) and "vma" not in run.timeline
