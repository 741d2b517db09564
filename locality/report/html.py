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
from locality.experiment.schema import FILES
from locality.report import figures as figs
from locality.report.data import RunData, baseline_index, find_key, load_runs
from locality.report.portions import table as portion_table
from locality.report.portions import verdicts as portion_verdicts

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
    # the bound the pattern's co-activation groups and the record packing set (layouts/ceiling.py)
    ("page_utilization_ceiling", "page utilization ceiling (%)", 100.0, 3, False),
    ("state_utilization_of_ceiling", "worker state, share of ceiling (%)", 100.0, 3, False),
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


def metrics_rows(runs: list[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    base = runs[baseline_index(runs)] if runs else None
    colds = cold_columns(runs)
    headings = [h for _, h, *_ in METRICS] + [h for _, h in colds]
    rows = []
    for run in runs:
        cells = []
        for key, _, scale, digits, compared in METRICS:
            value = run.metrics.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or run.failed:
                cells.append(Cell("—"))
                continue
            ratio = ""
            ref = base.metrics.get(key) if base is not None else None
            if compared and run is not base and isinstance(ref, (int, float)) and ref:
                ratio = f"{value / ref:.3g}×"
            cells.append(Cell(fmt_number(value * scale, digits), ratio))
        cells += [_cold_cell(run, seconds) for seconds, _ in colds]
        rows.append({
            "run": run,
            "baseline": run is base,
            "css": " ".join(dict.fromkeys(c for c, on in (("baseline", run is base), (run.status, True)) if on)),
            "workers": fmt_number(run.metrics.get("workers") or find_key(run.config, "workers")),
            "scheduler": run.metrics.get("scheduler") or find_key(run.config, "scheduler") or "—",
            "pattern": _name(run.metrics.get("pattern") or find_key(run.config, "pattern")),
            "cells": cells,
        })
    return headings, rows


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


def crashed_notes(runs: list[RunData]) -> list[str]:
    """What a run whose runner died kept, and which files it lacks (its figures use what it kept)."""
    notes = []
    for r in runs:
        if r.status != "crashed":
            continue
        pid = (r.manifest.get("runner") or {}).get("pid", "?")
        kept = [f"{len(r.timeline)} timeline rows" if r.timeline is not None else None,
                f"{len(r.pages.t)} page-matrix samples" if r.pages is not None else None]
        lacks = [f.name for f in FILES if r.kind in f.kinds and "/" not in f.name and not (r.path / f.name).exists()]
        notes.append(f"{r.label} crashed: its runner (PID {pid}) died while it ran. It kept "
                     f"{', '.join(k for k in kept if k) or 'no samples'}"
                     + (f"; it lacks {', '.join(lacks)}" if lacks else "")
                     + (", so its metrics are not shown." if "metrics.json" in lacks else "."))
    return notes


def render_html(runs: list[RunData], *, title: str | None = None, figure_names: Iterable[str] | None = None,
                notes: Iterable[str] = (), verdict: dict[str, Any] | None = None) -> str:
    """``verdict``: computed by the experiment that made the runs (e.g. `locality beam compare`),
    rendered at the top: {questions: [{question, winner, value, versus_baseline, cost}],
    targets: [{target, met, measured}], table: {headings, rows: [{technique, cells}]}}."""
    if not runs:
        raise ValueError("no runs to report")
    headings, rows = metrics_rows(runs)
    names = list(figure_names) if figure_names is not None else figs.default_names(runs)
    from locality.report.verdict import IDLE_KEYS, paging_notes, paging_rows, verdict_lines

    template = _environment().get_template("report.html.j2")
    return template.render(
        # An experiment's own verdict (beam compare) replaces the one read off the layout runs' metrics.
        paging_verdict=[] if verdict else verdict_lines(runs),
        paging_rows=paging_rows(runs),
        idle_keys=IDLE_KEYS,
        title=title or ("locality report: " + ", ".join(r.label for r in runs)),
        question=QUESTION,
        runs=runs,
        baseline=runs[baseline_index(runs)],
        headings=headings,
        rows=rows,
        setup=setup_of(runs),
        figures=figure_blocks(runs, names),
        portion_verdicts=portion_verdicts(runs),
        portion_table=portion_table(runs),
        notes=[*notes, *shared_node_notes(runs), *crashed_notes(runs), *paging_notes(runs)],
        verdict=verdict or {},
        created=store.utcnow(),
    )


def write_report(run_dirs: Iterable[str | Path] | list[RunData], out: str | Path, *, title: str | None = None,
                 notes: Iterable[str] = (), verdict: dict[str, Any] | None = None) -> Path:
    """Render the report of ``run_dirs`` (paths or loaded runs) to ``out``, atomically."""
    items = list(run_dirs)
    runs = items if items and all(isinstance(r, RunData) for r in items) else load_runs(items)
    html = render_html(runs, title=title, notes=notes, verdict=verdict)
    return store.atomic_write_text(out, html)
