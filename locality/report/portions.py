"""Portions of the footprint in the report: stacked bars, the heatmap's band, a table, the verdict.

Drawn from stored runs alone: metrics.json ``portions`` (resident bytes and
WSS per portion) and pages.npz ``portion`` (one portion per tracked page).
Registered in ``figures.FIGURES`` (FIGURE_DEFS); drawn by default only when a run has
portions, so reports of older runs do not gain empty boxes.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from locality.report.data import RunData

MIB = float(1 << 20)

from locality.population.portions import PORTIONS

# One colour per portion (in PORTIONS order), the same in every figure.
COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#e6ab02", "#999999")


def portion_figures(run: RunData) -> dict[str, dict[str, Any]]:
    value = run.metrics.get("portions")
    return value if isinstance(value, dict) else {}


def _wss(fig: dict[str, Any]) -> Any:
    """Mean WSS per sample window; a VM run (beam) gives ``wss_bytes`` per window length: the shortest."""
    if "wss_bytes_mean" in fig or not isinstance(fig.get("wss_bytes"), dict) or not fig["wss_bytes"]:
        return fig.get("wss_bytes_mean")
    windows = fig["wss_bytes"]
    return windows[min(windows, key=_seconds)]


def _seconds(key: Any) -> float:
    """A window or idle-age key ('5', '5.0', '5 s', '5s') as seconds; unknown forms sort last."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|seconds)?\s*", str(key))
    return float(m.group(1)) if m else float("inf")


def _values(run: RunData, key: str) -> dict[str, float]:
    out = {}
    for name, fig in portion_figures(run).items():
        v = (_wss(fig) if key == "wss_bytes_mean" else fig.get(key)) if isinstance(fig, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            out[name] = float(v)
    return out


def has_portions(runs: list[RunData]) -> bool:
    return any(portion_figures(r) for r in runs)


def _stacked(runs: list[RunData], left_out: list[str], key: str, what: str, xlabel: str) -> Figure:
    from locality.report.figures import _figure, _split  # figures imports this module at its end

    kept = _split(runs, lambda r: bool(_values(r, key)) and sum(_values(r, key).values()) > 0, what, left_out)
    fig = _figure(rows=len(kept), row_height=0.3)
    fig.set_figheight(fig.get_figheight() + 0.5)  # the legend below
    ax = fig.add_subplot()
    y = np.arange(len(kept))[::-1]
    left = np.zeros(len(kept))
    names = [p for p in PORTIONS if any(p in _values(r, key) for _, r in kept)]
    names += sorted({p for _, r in kept for p in _values(r, key)} - set(names))
    for k, name in enumerate(names):
        widths = np.array([_values(r, key).get(name, 0.0) for _, r in kept]) / MIB
        color = COLORS[PORTIONS.index(name)] if name in PORTIONS else f"C{k}"
        ax.barh(y, widths, left=left, color=color, height=0.7, label=name)
        left += widths
    for yy, total in zip(y, left):
        ax.annotate(f" {total:,.4g}", (total, yy), va="center", ha="left", fontsize="x-small")
    ax.margins(x=0.12)
    ax.set_yticks(y, [r.label for _, r in kept])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("run")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside lower center", ncols=4, fontsize="x-small")
    return fig


def draw_portion_resident(runs: list[RunData], left_out: list[str]) -> Figure:
    return _stacked(runs, left_out, "resident_bytes", "resident bytes per portion", "resident (MiB)")


def draw_portion_wss(runs: list[RunData], left_out: list[str]) -> Figure:
    return _stacked(runs, left_out, "wss_bytes_mean", "working set per portion", "mean WSS per sample window (MiB)")


def portion_band(ax: Any, run: RunData, bins: int) -> None:
    """A colour band right of a heatmap: the most common portion of each page bin."""
    pages = run.pages
    if pages is None or pages.portion is None or pages.n_pages == 0:
        return
    names = pages.portion_names
    colors = [COLORS[PORTIONS.index(n)] if n in PORTIONS else "#000000" for n in names]
    n = pages.n_pages
    edges = np.linspace(0, n, max(1, min(bins, n)) + 1).astype(np.int64)
    major = np.array([np.bincount(pages.portion[a:b], minlength=len(names)).argmax() for a, b in zip(edges[:-1], edges[1:])])
    band = ax.inset_axes([1.005, 0.0, 0.022, 1.0])
    band.imshow(major[:, None], origin="lower", aspect="auto", cmap=ListedColormap(colors), vmin=-0.5,
                vmax=len(names) - 0.5, interpolation="nearest", extent=(0, 1, 0, n * run.page_size / MIB))
    band.set_axis_off()


def verdict(run: RunData) -> str | None:
    """Which portion dominates the run's working set, from its metrics."""
    top = dominant(run)
    if top is None:
        return None
    wss = _values(run, "wss_bytes_mean")
    total = sum(wss.values())
    text = (f"{run.label}: {top} dominates the working set, {wss[top] / MIB:,.3g} MiB of the "
            f"{total / MIB:,.3g} MiB written per sample window ({100 * wss[top] / total:.0f}%)")
    resident = _values(run, "resident_bytes")
    if resident:
        big = max(resident, key=resident.get)
        text += f"; the largest resident portion is {big} ({100 * resident[big] / sum(resident.values()):.0f}% of RSS)"
    mixed = run.metrics.get("mixed_pages")
    if isinstance(mixed, int):
        text += f"; {mixed:,} tracked pages hold more than one portion"
    return text + "."


def dominant(run: RunData) -> str | None:
    wss = _values(run, "wss_bytes_mean")
    return max(wss, key=wss.get) if not run.failed and sum(wss.values()) > 0 else None


def verdicts(runs: list[RunData]) -> list[str]:
    """One sentence per run; with several runs, first which portion dominates in how many."""
    lines = [v for v in map(verdict, runs) if v]
    by: dict[str, list[str]] = {}
    for run in runs:
        if (top := dominant(run)) is not None:
            by.setdefault(top, []).append(run.label)
    if len(lines) > 1:
        parts = [f"{name} in {len(labels)} ({', '.join(labels)})" for name, labels in sorted(by.items(), key=lambda kv: -len(kv[1]))]
        lines.insert(0, f"Across {sum(map(len, by.values()))} runs the working set is dominated by " + "; ".join(parts) + ".")
    return lines


def _fmt(v: Any, scale: float = 1.0, digits: int = 3) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        return "—"
    return f"{v * scale:,.{digits}g}"


def table(runs: list[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    """Headings and one row per (run, portion) of every run with portions, in PORTIONS order."""
    colds = sorted({k for r in runs for f in portion_figures(r).values() if isinstance(f, dict)
                    for k in (f.get("cold_fraction") or {})}, key=_seconds)
    headings = ["resident (MiB)", "share of RSS (%)", "mean WSS (MiB)", "page utilization (%)",
                *[f"cold after {c} s (%)" for c in colds], "paged out (pages, max)", "refaulted (pages)"]
    rows = []
    for run in runs:
        figures = portion_figures(run)
        names = [p for p in PORTIONS if p in figures] + sorted(set(figures) - set(PORTIONS))
        for name in names:
            f = figures[name] if isinstance(figures[name], dict) else {}
            cold = f.get("cold_fraction") or {}
            rows.append({"run": run.label, "portion": name, "cells": [
                _fmt(f.get("resident_bytes"), 1 / MIB, 4), _fmt(f.get("share_of_rss"), 100), _fmt(_wss(f), 1 / MIB, 4),
                _fmt(f.get("page_utilization"), 100), *[_fmt(cold.get(c), 100) for c in colds],
                _fmt(f.get("paged_out_pages_max"), 1, 9), _fmt(f.get("refaulted_pages"), 1, 9)]})
    return headings, rows


# (name, title, caption, draw, when): figures.py makes FigureSpecs of them.
FIGURE_DEFS = (
    ("portion_resident", "Resident memory by portion",
     "Resident bytes of each portion at the last sample: tracked pages by their portion, every other mapped "
     "page (code, stacks) by its VMA; the bars add up to the run's RSS. The label is the total in MiB.",
     draw_portion_resident, has_portions),
    ("portion_wss", "Working set by portion",
     "Mean pages written per full sample window, by portion (write-tracked pages only: anonymous memory and "
     "arenas, so code appears only through libraries' .bss and stacks only through thread stacks).",
     draw_portion_wss, has_portions),
)
