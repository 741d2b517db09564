"""Runs -> one self-contained HTML file.

No script, no external resource: figures are inline SVG, styles are inline,
and a Content-Security-Policy forbids every fetch, so the file opens the same
from file:// on a machine without network. Jinja2 autoescapes every value;
only the SVG that matplotlib wrote (which escapes its own text) is marked safe.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jinja2
from markupsafe import Markup

from locality.experiment import store
from locality.report import figures as figs
from locality.report import foreign  # noqa: F401 - registers the probe and VM figures
from locality.report.data import RunData, find_key, find_runs
from locality.report.groups import Group, group_runs, short_title

QUESTION = (
    "When a million small, rarely activated workers live in one process, which parts of their "
    "memory have good spatial locality, how much of it could be paged out, and which allocation "
    "strategies make the hot part small and dense?"
)

# (metrics.json key, column heading, scale, digits, compared to the baseline)
METRICS: list[tuple[str, str, float, int, bool]] = [
    ("bytes_per_worker", "bytes / worker (B)", 1.0, 4, True),
    # Worker state first: the pages holding the layout's state (what the layouts change);
    # then every tracked page of the process (interpreter, scheduler, heap).
    ("state_page_utilization", "page utilization, worker state (%)", 100.0, 3, True),
    ("page_utilization", "page utilization, whole process (%)", 100.0, 3, True),
    ("state_wss_bytes_mean", "mean WSS, worker state (MiB)", 1.0 / (1 << 20), 4, True),
    ("wss_bytes_mean", "mean WSS, whole process (MiB)", 1.0 / (1 << 20), 4, True),
    ("refault_rate_pct_per_min", "refault rate (% WSS/min)", 1.0, 3, True),
    ("latency_p50_us", "latency p50 (µs)", 1.0, 3, True),
    ("latency_p99_us", "latency p99 (µs)", 1.0, 3, True),
    ("activations_per_s", "activations / s", 1.0, 4, True),
    ("relocation_ms_per_step", "relocation (ms / step)", 1.0, 3, True),
    ("swapped_pages_max", "swapped pages (max)", 1.0, 6, True),
    ("sampler_overhead_pct", "sampler overhead (%)", 1.0, 3, False),
    ("reclaim_overhead_pct", "reclaim policy time (% of wall)", 1.0, 3, False),
]
# The columns that answer the question (locality, what could be paged out, footprint) come
# first, in the main table; the rest (latency, throughput, overheads) in a collapsed second one.
MAIN = ("bytes_per_worker", "state_page_utilization", "page_utilization", "state_wss_bytes_mean")
MAIN_AFTER_COLD = ("refault_rate_pct_per_min",)

# The HTML page is wider than a thesis column and its text stays text.
REPORT_STYLE = {"figure.figsize": (6.4, 3.0), "font.size": 9, "axes.labelsize": 9, "axes.titlesize": 9,
                "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "svg.fonttype": "none"}


@dataclass
class Cell:
    text: str
    ratio: str = ""


def fmt_number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 10 ** digits or float(value).is_integer()):
        return f"{value:,.0f}"
    return f"{value:,.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def _seconds(key: Any) -> float | None:
    """A cold_fraction key ('5', '5.0' or '5 s') as seconds, or None."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|seconds)?\s*", str(key))
    return float(m.group(1)) if m else None


def cold_columns(runs: list[RunData]) -> list[tuple[float, str]]:
    """One column per cold-fraction window any run measured, shortest first."""
    windows: dict[float, str] = {}
    for run in runs:
        value = run.metrics.get("cold_fraction")
        if isinstance(value, dict):
            for key in value:
                seconds = _seconds(key)
                if seconds is not None:
                    windows.setdefault(seconds, f"cold after {seconds:g} s (%)")
    return sorted(windows.items())


def _cold_cell(run: RunData, seconds: float) -> Cell:
    value = run.metrics.get("cold_fraction")
    if run.failed or not isinstance(value, dict):
        return Cell("—")
    for key, v in value.items():
        if _seconds(key) == seconds:
            # None: the run was shorter than the window, so it was not measured.
            return Cell(fmt_number(100.0 * v, 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—")
    return Cell("—")


def _metric_cell(run: RunData, base: RunData | None, key: str, scale: float, digits: int, compared: bool) -> Cell:
    value = run.metrics.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or run.failed:
        return Cell("—")
    ratio = ""
    ref = base.metrics.get(key) if base is not None else None
    if compared and run is not base and isinstance(ref, (int, float)) and not isinstance(ref, bool) and ref:
        ratio = f"{value / ref:.3g}×"
    return Cell(fmt_number(value * scale, digits), ratio)


def metric_columns() -> tuple[list[tuple], list[tuple]]:
    """(main, more) METRICS entries; cold-fraction columns sit between MAIN and MAIN_AFTER_COLD."""
    by_key = {m[0]: m for m in METRICS}
    main = [by_key[k] for k in MAIN]
    after = [by_key[k] for k in MAIN_AFTER_COLD]
    more = [m for m in METRICS if m[0] not in MAIN and m[0] not in MAIN_AFTER_COLD]
    return main + [("__cold__", "", 1.0, 3, False)] + after, more


def metrics_rows(runs: list[RunData], groups: list[Group]) -> dict[str, Any]:
    """The metrics tables: headings and, per group, rows whose ratios use the group's baseline."""
    colds = cold_columns(runs)
    main, more = metric_columns()
    main_headings = []
    for key, heading, *_ in main:
        main_headings += [h for _, h in colds] if key == "__cold__" else [heading]
    out_groups = []
    for group in groups:
        base = group.baseline
        rows = []
        for run in group.runs:
            cells: list[Cell] = []
            for key, _, scale, digits, compared in main:
                if key == "__cold__":
                    cells += [_cold_cell(run, seconds) for seconds, _ in colds]
                else:
                    cells.append(_metric_cell(run, base, key, scale, digits, compared))
            extra = [_metric_cell(run, base, key, scale, digits, compared) for key, _, scale, digits, compared in more]
            rows.append({
                "run": run,
                "baseline": run is base,
                "css": " ".join(dict.fromkeys(c for c, on in (("baseline", run is base), (run.status, True)) if on)),
                "workers": fmt_number(run.metrics.get("workers") or find_key(run.config, "workers")),
                "scheduler": run.metrics.get("scheduler") or find_key(run.config, "scheduler") or "—",
                "pattern": _name(run.metrics.get("pattern") or find_key(run.config, "pattern")),
                "cells": cells,
                "more": extra,
            })
        out_groups.append({"title": group.title, "baseline": base, "rows": rows})
    return {"main": main_headings, "more": [h for _, h, *_ in more], "groups": out_groups}


def _name(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("name", json.dumps(value, sort_keys=True))
    return "—" if value is None else str(value)


def setup_of(runs: list[RunData]) -> dict[str, Any]:
    """Machine, kernel and capabilities, with a warning if the runs disagree."""
    first = runs[0].manifest
    machines = {json.dumps(r.manifest.get("machine", {}), sort_keys=True) for r in runs}
    capabilities = first.get("capabilities") or {}
    caps = []
    for name in sorted(capabilities):
        c = capabilities[name]
        if isinstance(c, dict):
            caps.append({"name": name, "available": bool(c.get("available")), "reason": c.get("reason") or "", "hint": c.get("hint") or ""})
        else:
            caps.append({"name": name, "available": bool(c), "reason": "", "hint": ""})
    return {
        "machine": first.get("machine") or {},
        "versions": first.get("versions") or {},
        "capabilities": caps,
        "same_machine": len(machines) == 1,
        "page_sizes": sorted({int(s) for r in runs for s in (r.manifest.get("page_sizes_seen") or [])}),
    }


def figure_blocks(runs: list[RunData], names: Iterable[str]) -> list[dict[str, Any]]:
    blocks = []
    with figs.style(**REPORT_STYLE):
        for name in names:
            spec = figs.FIGURES[name]
            block = {"name": name, "title": spec.title, "caption": spec.caption, "svg": None, "missing": None, "left_out": []}
            try:
                rendered = figs.render(name, runs)
            except figs.NoData as e:
                block["missing"] = f"Not drawn: {e}."
            else:
                block["svg"] = Markup(figs.to_svg(rendered.figure, salt=f"locality-{name}"))
                block["left_out"] = rendered.left_out
            blocks.append(block)
    return blocks


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("locality.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_number
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    env.filters["mib"] = lambda v: fmt_number(v / (1 << 20), 4) if isinstance(v, (int, float)) else "—"
    return env


def shared_node_notes(runs: list[RunData]) -> list[str]:
    """Runs of a distributed sweep that ran beside another point on the same node.

    Their memory and CPU figures may be disturbed by the neighbour, so the
    report says so (manifest ``shared_node_with``, written by --executor dask).
    """
    notes = []
    for r in runs:
        others = r.manifest.get("shared_node_with") or []
        if others:
            host = (r.manifest.get("node") or {}).get("hostname", "the same node")
            notes.append(f"{r.label} shared {host} with {', '.join(map(str, others))} while it ran: "
                         "its memory and throughput figures may include their interference.")
    return notes


def render_html(runs: list[RunData], *, title: str | None = None, figure_names: Iterable[str] | None = None,
                notes: Iterable[str] = (), baseline: str | None = None, verdict: Iterable[str] = ()) -> str:
    """The report page. ``baseline``: a layout, label or run id taken as each group's baseline.
    ``verdict``: sentences that answer the question, shown above the tables (empty: no block)."""
    if not runs:
        raise ValueError("no runs to report")
    axes, groups = group_runs(runs, baseline)
    table = metrics_rows(runs, groups)
    names = list(figure_names) if figure_names is not None else figs.default_names(runs)
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=title or short_title(runs, axes),
        question=QUESTION,
        runs=runs,
        axes=axes,
        groups=groups,
        table=table,
        verdict=list(verdict),
        setup=setup_of(runs),
        figures=figure_blocks(runs, names),
        notes=[*notes, *shared_node_notes(runs)],
        created=store.utcnow(),
    )


def write_report(run_dirs: Iterable[str | Path] | list[RunData], out: str | Path, *, title: str | None = None,
                 notes: Iterable[str] = (), baseline: str | None = None) -> Path:
    """Render the report of ``run_dirs`` (paths or loaded runs) to ``out``, atomically.

    Directories that are not runs stand for every run below them (found
    recursively); the report says how many were found and what was skipped.
    """
    items = list(run_dirs)
    notes = list(notes)
    if items and all(isinstance(r, RunData) for r in items):
        runs = items
    else:
        found = find_runs(items)
        runs = found.runs
        if found.summary():
            notes.append(found.summary())
    html = render_html(runs, title=title, notes=notes, baseline=baseline)
    return store.atomic_write_text(out, html)
