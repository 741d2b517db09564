"""Figures of foreign processes: `locality probe PID` and `locality beam` runs.

A probe or VM run has no workers of ours: no written set, no useful bytes.
What it has is per-VMA smaps rows over time (timeline.csv of a probe,
vmas.csv of a VM run), page residency (pages.npz) and, for a VM, its own
accounting (metrics.json). These figures draw exactly that; they are
registered in ``figures.FIGURES`` like the worker figures (import this
module to register them; html and thesis do).

VMA classes: a VM run stores the class of each mapping (beam.classify);
a probe run is classified here by what /proc/PID/maps tells (path, perms).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from locality.report import figures as figs
from locality.report.data import RunData

MIB = figs.MIB
FOREIGN = ("probe", "beam")
wrap_label = figs.wrap_label  # long class names wrap onto two lines, never cut


def vma_class(path: object, perms: object) -> str:
    """A probe's VMA by what /proc/PID/maps tells about it."""
    path = path if isinstance(path, str) else ""
    perms = perms if isinstance(perms, str) else ""
    if path == "[heap]":
        return "heap (brk)"
    if path.startswith("[stack"):
        return "stack"
    if path.startswith("["):
        return f"kernel {path}"
    if path:
        return "code (executable files)" if "x" in perms else "file-backed data"
    if "x" in perms:
        return "anonymous executable (JIT)"
    return "anonymous"


def classes(tl: pd.DataFrame) -> pd.Series:
    if "class" in tl and tl["class"].notna().any():
        return tl["class"].fillna("unclassified").astype(str)
    return pd.Series([vma_class(p, q) for p, q in zip(tl.get("path", [None] * len(tl)), tl.get("perms", [None] * len(tl)))],
                     index=tl.index)


def _by_class(run: RunData, column: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """t, class names (largest peak first), values (classes x t) of ``column`` summed per class."""
    tl = run.vma_timeline.copy()
    tl["cls"] = classes(tl)
    table = tl.pivot_table(index="t", columns="cls", values=column, aggfunc="sum", fill_value=0).sort_index()
    order = table.max(axis=0).sort_values(ascending=False, kind="stable").index
    return table.index.to_numpy(np.float64), [str(c) for c in order], np.array([table[c].to_numpy(np.float64) for c in order])


def _has_vma(run: RunData, column: str) -> bool:
    tl = run.vma_timeline
    return tl is not None and len(tl) > 0 and {"t", column} <= set(tl.columns) and tl[column].notna().any()


def draw_class_memory(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = figs._split(runs, lambda r: r.kind in FOREIGN and _has_vma(r, "rss_bytes"), "per-VMA smaps rows", left_out)
    fig = figs._figure(rows=2 * len(kept), row_height=1.5)
    axes = fig.subplots(len(kept), 2, squeeze=False)
    names_seen: list[str] = []
    for (ax_res, ax_swap), (_, run) in zip(axes, kept):
        t, names, rss = _by_class(run, "rss_bytes")
        colors = {n: c for n, c in zip(names, figs._colors(len(names)))}
        ax_res.stackplot(t, rss / MIB, colors=[colors[n] for n in names],
                         labels=[n if n not in names_seen else "_" + n for n in names])
        names_seen += [n for n in names if n not in names_seen]
        ax_res.set_title(f"{run.label}: resident", loc="left")
        ax_res.set_ylabel("resident (MiB)")
        if _has_vma(run, "swap_bytes"):
            t2, names2, swap = _by_class(run, "swap_bytes")
            ax_swap.stackplot(t2, swap / MIB, colors=[colors.get(n, "0.5") for n in names2])
        ax_swap.set_title("swapped", loc="left")
        ax_swap.set_ylabel("swapped (MiB)")
        ax_swap.set_ylim(bottom=0)
        for ax in (ax_res, ax_swap):
            ax.set_xlabel("time (s)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes[1:]:
        h, lab = row[0].get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    fig.set_figheight(fig.get_figheight() + 0.22 * ((len(labels) + 1) // 2))
    fig.legend(handles, [wrap_label(n, 48) for n in labels], loc="outside lower center", ncols=2, fontsize="x-small")
    return fig


def draw_residency_over_time(runs: list[RunData], left_out: list[str]) -> Figure:
    def has(r: RunData) -> bool:
        return r.kind in FOREIGN and r.pages is not None and "resident" in r.pages.packed and r.pages.n_pages > 0

    kept = figs._split(runs, has, "resident matrix in pages.npz (probe and VM runs)", left_out)
    return figs.matrix_over_time(kept, "resident", "cividis", "resident pages (%)")


def draw_referenced_per_interval(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = figs._split(runs, lambda r: r.kind == "probe" and _has_vma(r, "referenced_bytes"),
                       "referenced bytes per interval (probe --track-refs)", left_out)
    fig = figs._figure(rows=len(kept), row_height=2.0)
    axes = fig.subplots(len(kept), 1, squeeze=False)[:, 0]
    for ax, (_, run) in zip(axes, kept):
        t, names, ref = _by_class(run, "referenced_bytes")
        # Sample 0 has no interval before it: referenced is empty there, not zero.
        tl = run.vma_timeline
        first = float(tl.loc[tl["referenced_bytes"].notna(), "t"].min())
        keep = t >= first
        ax.stackplot(t[keep], ref[:, keep] / MIB, labels=names, colors=figs._colors(len(names)))
        t_r, _, rss = _by_class(run, "rss_bytes")
        ax.plot(t_r[t_r >= first], rss.sum(axis=0)[t_r >= first] / MIB, color="0.3", linestyle="--", label="resident (all)")
        ax.set_title(run.label, loc="left")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("referenced in interval (MiB)")
        ax.set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.set_figheight(fig.get_figheight() + 0.22 * ((len(labels) + 1) // 2))
    fig.legend(handles, [wrap_label(n, 48) for n in labels], loc="outside lower center", ncols=2, fontsize="x-small")
    return fig


BYTES_PER_PROCESS = (
    ("bytes_per_process_erlang", "process_info(memory), mean"),
    ("bytes_per_process_vm", "erlang:memory(processes) growth / N"),
    ("bytes_per_process_rss", "VM RSS growth / N"),
    ("bytes_per_process_pss", "VM PSS growth / N"),
)


def draw_bytes_per_process(runs: list[RunData], left_out: list[str]) -> Figure:
    def has(r: RunData) -> bool:
        return r.kind == "beam" and any(figs._metric(r, k) is not None for k, _ in BYTES_PER_PROCESS)

    kept = figs._split(runs, has, "bytes per process (a VM run)", left_out)
    ways = len(BYTES_PER_PROCESS)
    fig = figs._figure(rows=len(kept) * ways, row_height=0.24)
    ax = fig.add_subplot()
    colors = figs._colors(ways)
    height = 0.8 / ways
    for j, (key, name) in enumerate(BYTES_PER_PROCESS):
        ys, values = [], []
        for k, (_, run) in enumerate(kept):
            value = figs._metric(run, key)
            if value is not None:
                ys.append(len(kept) - 1 - k + (ways - 1 - j) * height - 0.4 + height / 2)
                values.append(value)
        bars = ax.barh(ys, values, height=height * 0.9, color=colors[j], label=name)
        ax.bar_label(bars, labels=[f" {v:,.0f}" for v in values], fontsize="x-small")
    ax.set_yticks(range(len(kept))[::-1], [wrap_label(r.label) for _, r in kept])
    ax.set_xlabel("bytes per process (B)")
    ax.set_ylabel("run")
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.15)
    fig.set_figheight(fig.get_figheight() + 0.5)
    fig.legend(loc="outside lower center", ncols=2, fontsize="x-small")
    return fig


def _referenced_window(run: RunData) -> tuple[str, dict] | None:
    by_window = run.metrics.get("referenced_by_class")
    if not isinstance(by_window, dict) or not by_window:
        return None
    key = min(by_window, key=lambda k: float(k) if str(k).replace(".", "", 1).isdigit() else float("inf"))
    classes_ = by_window[key]
    return (key, classes_) if isinstance(classes_, dict) and classes_ else None


def draw_referenced_by_region(runs: list[RunData], left_out: list[str]) -> Figure:
    kept = figs._split(runs, lambda r: r.kind == "beam" and _referenced_window(r) is not None,
                       "referenced bytes by region (a VM run with --track-refs)", left_out)
    rows = sum(len(_referenced_window(r)[1]) for _, r in kept)
    fig = figs._figure(rows=rows, row_height=0.42)
    axes = fig.subplots(len(kept), 1, squeeze=False,
                        gridspec_kw={"height_ratios": [len(_referenced_window(r)[1]) for _, r in kept]})[:, 0]
    for ax, (_, run) in zip(axes, kept):
        window, by_class = _referenced_window(run)
        items = sorted(by_class.items(), key=lambda kv: -float(kv[1].get("rss_bytes") or 0))
        y = np.arange(len(items))[::-1]
        rss = np.array([float(v.get("rss_bytes") or 0) for _, v in items]) / MIB
        ref = np.array([float(v.get("referenced_bytes") or 0) for _, v in items]) / MIB
        ax.barh(y, rss, color="#cccccc", height=0.75, label="resident")
        ax.barh(y, ref, color=figs._colors(1)[0], height=0.45, label="referenced in the window")
        for yy, r_, s_ in zip(y, ref, rss):
            ax.annotate(f" {100 * r_ / s_:.3g}%" if s_ else "", (max(r_, s_), yy), va="center", fontsize="x-small")
        ax.set_yticks(y, [wrap_label(name) for name, _ in items])
        ax.set_title(f"{run.label}: window {window} s", loc="left")
        ax.set_xlabel("memory (MiB)")
        ax.set_ylabel("region")
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.15)
    fig.set_figheight(fig.get_figheight() + 0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="x-small")
    return fig


# --- the largest VMAs over time -------------------------------------------------


def _vma_runs(runs: list[RunData], left_out: list[str], column: str) -> list[tuple[int, RunData]]:
    return figs._split(
        runs,
        lambda r: r.vma_timeline is not None and len(r.vma_timeline) > 0 and {"vma", "t", column} <= set(r.vma_timeline.columns)
        and r.vma_timeline[column].notna().any(),
        f"per-VMA {column}",
        left_out,
    )


def _vma_name(row) -> str:
    path = row.get("path")
    if isinstance(path, str) and path:
        return path.rsplit("/", 1)[-1]
    start = row.get("start")
    try:
        return f"anon {int(start):#x}"
    except (TypeError, ValueError):
        return f"vma {row.get('vma')}"


def _vma_series(run: RunData, column: str, top: int = 6) -> tuple[np.ndarray, list[str], np.ndarray]:
    """t, names, values (series x t) for the ``top`` VMAs by peak value, plus "other"."""
    tl = run.vma_timeline
    table = tl.pivot_table(index="t", columns="vma", values=column, aggfunc="sum", fill_value=0).sort_index()
    peak = table.max(axis=0).sort_values(ascending=False, kind="stable")
    chosen = list(peak.index[:top])
    names_by_vma = tl.drop_duplicates("vma").set_index("vma")
    names = [_vma_name(names_by_vma.loc[v].to_dict() | {"vma": v}) for v in chosen]
    values = [table[v].to_numpy(dtype=np.float64) for v in chosen]
    rest = [v for v in table.columns if v not in chosen]
    if rest:
        names.append(f"other ({len(rest)} VMAs)")
        values.append(table[rest].sum(axis=1).to_numpy(dtype=np.float64))
    return table.index.to_numpy(dtype=np.float64), names, np.array(values)


def _draw_vma(runs: list[RunData], left_out: list[str], column: str, ylabel: str) -> Figure:
    kept = _vma_runs(runs, left_out, column)
    fig = figs._figure(rows=len(kept))
    axes = fig.subplots(len(kept), 1, squeeze=False)[:, 0]
    for ax, (_, run) in zip(axes, kept):
        t, names, values = _vma_series(run, column)
        ax.stackplot(t, values / MIB, labels=names, colors=figs._colors(len(names)))
        ax.set_title(run.label, loc="left")
        ax.set_xlabel("time (s)")
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", fontsize="xx-small", ncols=2)
    return fig


def draw_vma_rss(runs: list[RunData], left_out: list[str]) -> Figure:
    return _draw_vma(runs, left_out, "rss_bytes", "resident (MiB)")


def draw_vma_referenced(runs: list[RunData], left_out: list[str]) -> Figure:
    return _draw_vma(runs, left_out, "referenced_bytes", "referenced (MiB)")


SPECS = (
    figs.FigureSpec("vma_rss", "Resident memory per VMA",
                    "RSS of the largest VMAs over time (smaps).", draw_vma_rss, probe_only=True),
    figs.FigureSpec("vma_referenced", "Referenced memory per VMA",
                    "Referenced bytes of the largest VMAs since the previous sample (clear_refs + smaps).",
                    draw_vma_referenced, probe_only=True),
    figs.FigureSpec("vma_class_memory", "Resident and swapped memory per VMA class",
                    "Sum of smaps Rss (left) and Swap (right) of the VMAs of each class, per sample. A VM run's "
                    "classes are the ones it recorded (allocator regions, code, heap); a probe's come from the path "
                    "and permissions in /proc/PID/maps.", draw_class_memory, probe_only=True),
    figs.FigureSpec("residency_over_time", "Residency of the address space over time",
                    "Tracked pages (every page seen resident or swapped) in address order, binned (offset: MiB from the "
                    "first tracked page); colour: share of the bin resident at each sample (pagemap). White lines: "
                    "VMA boundaries.",
                    draw_residency_over_time, probe_only=True),
    figs.FigureSpec("referenced_per_interval", "Referenced bytes per interval",
                    "Bytes whose accessed bit was set between two samples (clear_refs after each sample, smaps "
                    "Referenced), stacked by VMA class; dashed: all resident bytes. Only with --track-refs.",
                    draw_referenced_per_interval, probe_only=True),
    figs.FigureSpec("bytes_per_process", "Bytes per Erlang process, four ways",
                    "The VM's own accounting (process_info, erlang:memory growth) beside what the kernel saw grow at "
                    "spawn (RSS, PSS), each divided by the number of processes.", draw_bytes_per_process,
                    probe_only=True),
    figs.FigureSpec("referenced_by_region", "Referenced memory by VM region",
                    "Per region class: resident bytes (grey) and bytes referenced within the shortest window "
                    "(clear_refs, then smaps Referenced; mean over windows); the label is the referenced share.",
                    draw_referenced_by_region, probe_only=True),
)
figs.FIGURES.update({s.name: s for s in SPECS})
figs.ONLY_KINDS.update({"bytes_per_process": {"beam"}, "referenced_by_region": {"beam"}, "referenced_per_interval": {"probe"}})
