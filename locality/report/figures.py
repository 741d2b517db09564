"""The figures, drawn from stored runs only, in the shipped thesis style.

Each figure is a function ``draw(runs) -> Figure`` registered in FIGURES.
A figure whose data no run has raises NoData with the reason; runs that lack
the data are left out of a figure and named in ``Rendered.left_out``, so the
report can say so instead of drawing something that was not measured.

Figures use matplotlib's object API (``Figure()``), never pyplot's global
state, so rendering many figures in one process leaks nothing.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
from matplotlib.figure import Figure

from locality.report.data import RunData, baseline_index
from locality.report.figure_files import save, to_svg  # noqa: F401 - their old home
from locality.report.figure_kit import (  # noqa: F401 - the other figure modules use them as figs.<name>
    CATEGORICAL_LABELS, MIB, STYLE_PATH, FigureSpec, NoData, Rendered, _colors, _figure, _has_column, _legend,
    _linestyle, _marker, _metric, _split, style)


# --- metric bars ---------------------------------------------------------------


def _metric_bars(runs: list[RunData], left_out: list[str], key: str, what: str, xlabel: str, scale: float = 1.0) -> Figure:
    kept = _split(runs, lambda r: _metric(r, key) is not None and r.status != "failed", what, left_out)
    fig = _figure(rows=len(kept), row_height=0.25)
    _bar_panel(fig.add_subplot(), runs, kept, key, xlabel, scale)
    return fig


def _bar_panel(ax, runs: list[RunData], kept: list[tuple[int, RunData]], key: str, xlabel: str, scale: float) -> None:
    """One horizontal bar per kept run, labelled with its ratio to its baseline (its group's, in a
    grouped report; else the figure's first objects run)."""
    default_base = runs[baseline_index(runs)]
    colors = _colors(len(runs))
    y = np.arange(len(kept))[::-1]
    values = [_metric(r, key) * scale for _, r in kept]
    ax.barh(y, values, color=[colors[i] for i, _ in kept], height=0.7)
    ax.set_yticks(y, [r.label for _, r in kept])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("run")
    ax.grid(axis="y", visible=False)
    labelled = False
    for yy, (_, run), v in zip(y, kept, values):
        base = run.group_baseline if run.group_baseline is not None else default_base
        base_value = _metric(base, key)
        if base_value:
            ax.annotate(f" {_metric(run, key) / base_value:.3g}×", (v, yy), va="center", ha="left", fontsize="x-small")
            labelled = True
    if labelled:
        ax.margins(x=0.18)


def draw_bytes_per_worker(runs: list[RunData], left_out: list[str]) -> Figure:
    return _metric_bars(runs, left_out, "bytes_per_worker", "bytes per worker", "bytes per worker (B)")


UTILIZATION_PANELS = (
    ("state_page_utilization", "worker state page utilization", "page utilization, worker state (%)"),
    ("page_utilization", "whole process page utilization", "page utilization, whole process (%)"),
)


def draw_page_utilization(runs: list[RunData], left_out: list[str]) -> Figure:
    """Worker state on top (what the layouts change), the whole process below.

    Runs stored before the state pages were measured have only the whole
    process figure: then it is the one panel.
    """
    panels = []
    for key, what, xlabel in UTILIZATION_PANELS:
        missing: list[str] = []
        try:
            kept = _split(runs, lambda r: _metric(r, key) is not None, what, missing)
        except NoData:
            left_out += [m for m in missing if m not in left_out]
            continue
        left_out += [m for m in missing if m not in left_out]
        panels.append((key, xlabel, kept))
    if not panels:
        raise NoData("no run has page utilization")
    rows = sum(len(kept) for _, _, kept in panels)
    fig = _figure(rows=rows, row_height=0.25)
    fig.set_figheight(fig.get_figheight() + 0.6 * (len(panels) - 1))  # room for the second panel's axis label
    axes = fig.subplots(len(panels), 1, squeeze=False,
                        gridspec_kw={"height_ratios": [max(1, len(kept)) for _, _, kept in panels]})[:, 0]
    for ax, (key, xlabel, kept) in zip(axes, panels):
        _bar_panel(ax, runs, kept, key, xlabel, 100.0)
    return fig


# --- timelines -------------------------------------------------------------------


def draw_wss_over_time(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = _split(runs, lambda r: _has_column(r, "t", "written_pages"), "written_pages in timeline.csv", left_out)
    colors = _colors(len(runs))
    fig = _figure()
    ax = fig.add_subplot()
    for i, run in kept:
        tl = run.timeline
        ax.plot(tl["t"], tl["written_pages"] * run.page_size / MIB, color=colors[i], linestyle=_linestyle(i), label=run.label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("working set per sample (MiB)")
    ax.set_ylim(bottom=0)
    _legend(fig, ax)
    return fig


def memory_saved_pct(run: RunData) -> float | None:
    """Share of the peak resident tracked pages that reclaim kept out, averaged from the peak on."""
    if not _has_column(run, "resident_pages"):
        return None
    resident = run.timeline["resident_pages"].to_numpy(dtype=np.float64)
    peak_at = int(np.argmax(resident))
    peak = resident[peak_at]
    if peak <= 0:
        return None
    return float(100.0 * np.mean(1.0 - resident[peak_at:] / peak))


def _curve_points(run: RunData) -> np.ndarray | None:
    """(refault % WSS/min, % held out) of a run's simulated worker-state curve, or None."""
    st = ((run.metrics or {}).get("paging") or {}).get("state") or {}
    from locality.experiment.paging import REFAULT_BUDGET_PCT_PER_MIN

    x, y = st.get("refault_pct_wss_per_min"), st.get("saved_fraction")
    if not x or not y:
        return None
    n = len(x)
    res = st.get("refault_pct_resolution") or [None] * n
    back = st.get("refault_pages") or [None] * n
    # No refault over a span too short to resolve the budget says nothing: left out, not drawn at 0.
    pts = np.array([(a, 100.0 * b) for a, b, r, k in zip(x, y, res, back) if a is not None and b is not None
                    and not (k == 0 and r is not None and r > REFAULT_BUDGET_PCT_PER_MIN)], dtype=np.float64)
    return pts if pts.size else None


def _measured_point(run: RunData) -> tuple[float, float] | None:
    st = ((run.metrics or {}).get("pageout_check") or {}).get("state") or {}
    x, y = st.get("measured_refault_pct_wss_per_min"), st.get("saved_fraction")
    return (float(x), 100.0 * float(y)) if x is not None and y is not None else None


def _front(points: np.ndarray) -> np.ndarray:
    """Pareto front: no other point holds out more with fewer refaults."""
    order = np.lexsort((-points[:, 1], points[:, 0]))
    front, best = [], -np.inf
    for k in order:
        if points[k, 1] > best:
            front.append(points[k])
            best = points[k, 1]
    return np.array(front)


def draw_pareto(runs: list[RunData], left_out: list[str]) -> Figure:
    if any(_curve_points(r) is not None for r in runs):
        return draw_paging_curves(runs, left_out)
    return draw_pareto_measured(runs, left_out)


def draw_paging_curves(runs: list[RunData], left_out: list[str]) -> Figure:
    from locality.experiment.paging import REFAULT_BUDGET_PCT_PER_MIN

    kept = _split(runs, lambda r: _curve_points(r) is not None or _measured_point(r) is not None,
                  "paging curve or real page-out", left_out)
    colors = _colors(len(runs))
    fig = _figure()
    ax = fig.add_subplot()
    every = []
    for i, run in kept:
        pts = _curve_points(run)
        if pts is not None:
            ax.plot(pts[:, 0], pts[:, 1], color=colors[i], linestyle=_linestyle(i), marker=".", markersize=3,
                    label=run.label)
            every.append(pts)
        mp = _measured_point(run)
        if mp is not None:
            ax.scatter([mp[0]], [mp[1]], color=colors[i], marker="*", s=90, zorder=4, edgecolors="black",
                       linewidths=0.5, label=f"{run.label}, measured")
            every.append(np.array([mp]))
    allpts = np.concatenate(every)
    front = _front(allpts)
    ax.step(front[:, 0], front[:, 1], where="post", color="0.4", linewidth=1.2, zorder=2, label="Pareto front")
    ax.axvline(REFAULT_BUDGET_PCT_PER_MIN, color="#b00020", linestyle=":", linewidth=1,
               label=f"{REFAULT_BUDGET_PCT_PER_MIN:g}%/min budget")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)
    ax.set_xlabel("refault rate (% of WSS per min)")
    ax.set_ylabel("worker state held out (%)")
    _legend(fig, ax)
    return fig


def draw_pareto_measured(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = _split(
        runs,
        lambda r: _metric(r, "refault_rate_pct_per_min") is not None and memory_saved_pct(r) is not None,
        "refault rate and resident_pages",
        left_out,
    )
    colors = _colors(len(runs))
    points = np.array([(_metric(r, "refault_rate_pct_per_min"), memory_saved_pct(r)) for _, r in kept])
    fig = _figure()
    ax = fig.add_subplot()
    for (i, run), (x, y) in zip(kept, points):
        ax.scatter([x], [y], color=colors[i], marker=_marker(i), label=run.label, zorder=3)
    front = _front(points)  # no other run saves more memory with fewer refaults
    ax.step(front[:, 0], front[:, 1], where="post", color="0.5", linewidth=0.8, zorder=2)
    ax.set_xlabel("refault rate (% of WSS per min)")
    ax.set_ylabel("memory saved (%)")
    _legend(fig, ax)
    return fig


# --- page matrices -----------------------------------------------------------------


def _bin_columns(matrix: np.ndarray, bins: int) -> np.ndarray:
    """samples x pages bool -> samples x bins fraction true (contiguous page bins)."""
    n = matrix.shape[1]
    bins = max(1, min(bins, n))
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    # Row by row: a 2-D reduceat over a million columns is several times slower.
    rows = np.asarray(matrix, dtype=bool).view(np.uint8)
    sums = np.stack([np.add.reduceat(row, edges[:-1], dtype=np.int64) for row in rows])
    return sums / np.diff(edges)


def _time_extent(t: np.ndarray) -> tuple[float, float]:
    if len(t) == 1:
        return float(t[0]) - 0.5, float(t[0]) + 0.5
    step = float(np.median(np.diff(t)))
    return float(t[0]) - step / 2, float(t[-1]) + step / 2


def _region_marks(ax, run: RunData) -> None:
    """Boundaries between regions (arenas or VMAs); names only for large ones."""
    region = run.pages.region
    if region.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, region[1:] != region[:-1]])
    ends = np.r_[starts[1:], region.size]
    mib = run.page_size / MIB
    for s, e in zip(starts, ends):
        if s > 0:
            ax.axhline(s * mib, color="white", linewidth=0.6)
        if (e - s) >= 0.08 * region.size and len(starts) > 1:
            name = run.pages.regions[region[s]] if 0 <= region[s] < len(run.pages.regions) else "?"
            pos = (s + e) / 2 * mib
            ax.text(0.01, pos, region_label(name), transform=ax.get_yaxis_transform(), color="white", fontsize="xx-small", va="center", ha="left")


def draw_heatmap(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = _split(runs, lambda r: r.pages is not None and "written" in r.pages.packed and r.pages.n_pages > 0, "written matrix in pages.npz", left_out)
    return matrix_over_time(kept, "written", "viridis", "pages written (%)")


def matrix_over_time(kept: list[tuple[int, RunData]], matrix: str, cmap: str, label: str) -> Figure:
    """One panel per run: its page matrix ``matrix`` binned over address order (y) and samples (x)."""
    fig = _figure(rows=len(kept))
    axes = fig.subplots(len(kept), 1, squeeze=False)[:, 0]
    image = None
    for ax, (_, run) in zip(axes, kept):
        pages = run.pages
        frac = _bin_columns(pages.matrix(matrix), 400) * 100.0
        total_mib = pages.n_pages * run.page_size / MIB
        x0, x1 = _time_extent(pages.t)
        image = ax.imshow(frac.T, origin="lower", aspect="auto", extent=(x0, x1, 0, total_mib), vmin=0, vmax=100, cmap=cmap)
        _region_marks(ax, run)
        portion_band(ax, run, 400)
        ax.set_title(run.label, loc="left")
        ax.set_ylabel("offset (MiB)")
        ax.set_xlabel("time (s)")
        ax.grid(False)
    cbar = fig.colorbar(image, ax=list(axes), shrink=min(0.9, 2.0 / len(axes)), aspect=12)
    cbar.set_label(label)
    return fig


MAP_REGIONS = 12  # rows of the residency map; smaller regions are named in the caption


def region_label(name: str) -> str:
    """'0x7f..-0x7f.. rw-p /usr/lib/libc.so.6' -> 'libc.so.6 rw-p'; arena names stay as they are."""
    parts = name.split(None, 2)
    if len(parts) >= 2 and re.fullmatch(r"0x[0-9a-f]+-0x[0-9a-f]+", parts[0]):
        path = parts[2].rsplit("/", 1)[-1] if len(parts) == 3 else f"anon {parts[0].split('-')[0]}"
        name = f"{path} {parts[1]}"
    # A VM region is '<class> 0x<start>': the address first, so it survives when a long class wraps.
    vm = re.fullmatch(r"(.*\S)\s+(0x[0-9a-f]+)", name)
    if vm:
        name = f"{vm.group(2)} {vm.group(1)}"
    # Wrapped, never cut: a class such as 'other anonymous (..., process table)' stays readable.
    return wrap_label(name)


def wrap_label(text: str, width: int = 42) -> str:
    """At most two lines of ``width``; a longer text loses its end to ' …', never its start."""
    lines = textwrap.wrap(text, width) or [text]
    return "\n".join(lines) if len(lines) <= 2 else lines[0] + "\n" + textwrap.shorten(" ".join(lines[1:]), width, placeholder=" …")


def draw_residency_map(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = _split(runs, lambda r: r.pages is not None and "resident" in r.pages.packed and r.pages.n_pages > 0, "resident matrix in pages.npz", left_out)
    heights = []
    for _, run in kept:
        heights.append(min(MAP_REGIONS, len(np.unique(run.pages.region))))
    fig = _figure(rows=len(kept), row_height=0.35 + 0.24 * max(heights))  # room for two-line labels
    axes = fig.subplots(len(kept), 1, squeeze=False)[:, 0]
    image = None
    for ax, (_, run) in zip(axes, kept):
        pages = run.pages
        last = pages.last_row("resident")
        # One row per region: the layout's arenas first, then the largest others, each
        # group in address order; x is the position within the region, so a small
        # region is as legible as a large one.
        ids, counts = np.unique(pages.region, return_counts=True)
        names = {int(r): (pages.regions[r] if 0 <= r < len(pages.regions) else str(r)) for r in ids}
        arenas = [int(r) for r in ids if names[int(r)].startswith("arena")]
        others = [int(r) for r in ids[np.argsort(-counts, kind="stable")] if int(r) not in arenas]
        chosen = set((arenas + others)[:MAP_REGIONS])
        in_order = [int(r) for r in dict.fromkeys(pages.region.tolist())]
        region_ids = [r for r in in_order if r in chosen and r in arenas] + [r for r in in_order if r in chosen and r not in arenas]
        if len(ids) > len(region_ids):
            left_out.append(f"{run.label}: {len(ids) - len(region_ids)} smaller regions not shown")
        bins = 200
        rows = np.zeros((len(region_ids), bins))
        labels = []
        for k, r in enumerate(region_ids):
            sel = last[pages.region == r]
            binned = _bin_columns(sel[None, :], bins)[0] * 100.0
            # Fewer pages than bins: each page spans bins in proportion to its share of the region.
            rows[k] = binned[(np.arange(bins) * binned.size) // bins]
            name = pages.regions[r] if 0 <= r < len(pages.regions) else str(r)
            labels.append(f"{region_label(name)} ({sel.size * run.page_size / MIB:.3g} MiB)")
        image = ax.imshow(rows, origin="upper", aspect="auto", vmin=0, vmax=100, cmap="cividis",
                          extent=(0, 100, len(region_ids) - 0.5, -0.5), interpolation="nearest")
        ax.set_yticks(range(len(region_ids)), labels)
        ax.set_title(f"{run.label} (t = {pages.t[-1]:.3g} s)", loc="left")
        ax.set_xlabel("position in region (%)")
        ax.set_ylabel("region")
        ax.grid(False)
    cbar = fig.colorbar(image, ax=list(axes), shrink=min(0.9, 2.0 / len(axes)), aspect=12)
    cbar.set_label("resident pages (%)")
    return fig


def page_ages(run: RunData) -> tuple[np.ndarray, int]:
    """Seconds since the last write of each page resident at the last sample,
    and the number of resident pages never written while tracked."""
    pages = run.pages
    written, t = pages.written, pages.t
    last_resident = pages.last_row("resident")
    ever = written.any(axis=0)
    last_write = written.shape[0] - 1 - np.argmax(written[::-1], axis=0)
    ages = t[-1] - t[last_write[last_resident & ever]]
    return ages, int(np.count_nonzero(last_resident & ~ever))


def draw_page_age(runs: list[RunData], left_out: list[str]) -> Figure:
    def has(r: RunData) -> bool:
        p = r.pages
        return p is not None and "written" in p.packed and "resident" in p.packed and p.n_pages > 0 and bool(p.last_row("resident").any())

    kept = _split(runs, has, "written and resident matrices in pages.npz", left_out)
    colors = _colors(len(runs))
    fig = _figure()
    ax = fig.add_subplot()
    span = max(float(r.pages.t[-1] - r.pages.t[0]) for _, r in kept)
    edges = np.linspace(0, max(span, 1e-9), 21)
    never_x = edges[-1] + (edges[1] - edges[0])
    for i, run in kept:
        ages, never = page_ages(run)
        total = ages.size + never
        hist, _ = np.histogram(ages, bins=edges)
        ax.stairs(hist / total * 100.0, edges, color=colors[i], linestyle=_linestyle(i), label=run.label)
        ax.plot([never_x], [never / total * 100.0], marker="o", color=colors[i], linestyle="none")
    ax.annotate("never\nwritten", (never_x, 0), xytext=(0, -14), textcoords="offset points", ha="center", va="top",
                fontsize="x-small", annotation_clip=False)
    ax.set_xlim(0, never_x + (edges[1] - edges[0]))
    ax.set_xlabel("time since last write (s)")
    ax.set_ylabel("resident pages (%)")
    _legend(fig, ax)
    return fig


def draw_latency_cdf(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = _split(runs, lambda r: r.latency_ns is not None and r.latency_ns.size > 0, "latency.csv", left_out)
    colors = _colors(len(runs))
    fig = _figure()
    ax = fig.add_subplot()
    for i, run in kept:
        us = np.sort(run.latency_ns) / 1e3
        share = np.arange(1, us.size + 1) / us.size * 100.0
        ax.step(us, share, where="post", color=colors[i], linestyle=_linestyle(i), label=run.label)
    if all((r.latency_ns > 0).all() for _, r in kept):
        ax.set_xscale("log")
    ax.set_xlabel("activation latency (µs)")
    ax.set_ylabel("activations (%)")
    ax.set_ylim(0, 100)
    _legend(fig, ax, loc="lower right")
    return fig


# The worker figures; locality.report.foreign adds those of probe and VM runs (probe_only).
FIGURES: dict[str, FigureSpec] = {
    spec.name: spec
    for spec in (
        FigureSpec("bytes_per_worker", "Bytes per worker",
                   "(PSS of the population − PSS of an empty one) / workers; the label is the ratio to the baseline.",
                   draw_bytes_per_worker),
        FigureSpec("page_utilization", "Page utilization",
                   "Useful bytes of the activations / (pages written, summed over sample windows, × page size). "
                   "Top: only the pages holding worker state (the layout's arenas, or the objects' pages right "
                   "after spawn); bottom: every tracked page of the process. The label is the ratio to the baseline.",
                   draw_page_utilization),
        FigureSpec("wss_over_time", "Working set over time",
                   "Distinct pages written in each sample window.", draw_wss_over_time),
        FigureSpec("pareto", "Memory saved vs refault rate",
                   "Lines: each run's simulated page-out-after-T curve for its worker state, one point per idle "
                   "threshold T (1 s up to the run length; longer T to the left): share held out, mean over samples "
                   "from T on, against pages written after >= T idle per minute as % of the working set (a lower "
                   "bound: reads are not seen). Stars: real page-outs (MADV_PAGEOUT to zram), measured. Grey: the "
                   "Pareto front; red dotted: the 0.2%-of-WSS-per-minute far-memory budget. Runs without a curve "
                   "show memory saved as the mean share of the peak resident tracked pages not resident.",
                   draw_pareto),
        FigureSpec("heatmap", "Writes per page over time",
                   "Tracked pages in address order (binned); colour: share of the bin written in the sample window. "
                   "White lines: region boundaries. Band at the right (runs with portions): the most common portion "
                   "of each bin, coloured as in the portion figures.", draw_heatmap),
        FigureSpec("residency_map", "Residency map of the address space",
                   "Resident share of each page bin at the last sample, one row per region (arena or VMA).",
                   draw_residency_map),
        FigureSpec("latency_cdf", "Activation latency",
                   "Cumulative distribution of wake-to-done latency, measured in the child.", draw_latency_cdf),
        FigureSpec("page_age", "Page age",
                   "Pages resident at the last sample by time since their last write.", draw_page_age),
    )
}


def render(name: str, runs: list[RunData]) -> Rendered:
    """Draw one figure under the current style; raises NoData if nothing to draw."""
    spec = FIGURES[name]
    left_out: list[str] = []
    fig = spec.draw(runs, left_out)
    return Rendered(name, fig, left_out)


# Worker figures whose data foreign runs have too (a VM run's PSS per process, its latency, residency).
ALSO_FOREIGN = {"bytes_per_worker": {"beam"}, "latency_cdf": {"beam"}, "residency_map": {"probe", "beam"}}
# Figures only one kind of run can have (filled by the modules that register them).
ONLY_KINDS: dict[str, set[str]] = {}


def default_names(runs: list[RunData]) -> list[str]:
    """The figures a report tries: worker figures if there are worker runs (or the foreign runs
    have their data), per-VMA ones if there are probe or VM runs; never slots no run could fill."""
    kinds = {r.kind for r in runs}
    per_vma = any(r.vma_timeline is not None for r in runs) or bool(kinds & {"probe", "beam"})
    workers = bool(kinds - {"probe", "beam"})
    return [n for n, s in FIGURES.items()
            if (per_vma if s.probe_only else workers or bool(kinds & ALSO_FOREIGN.get(n, set())))
            and (n not in ONLY_KINDS or bool(kinds & ONLY_KINDS[n])) and (s.when is None or s.when(runs))]


# Registered last: report.portions draws with the helpers above.
from locality.report.portions import FIGURE_DEFS, portion_band  # noqa: E402

FIGURES.update({name: FigureSpec(name, title, caption, draw, when=when) for name, title, caption, draw, when in FIGURE_DEFS})
