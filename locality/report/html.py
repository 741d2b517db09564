"""Runs -> one self-contained HTML file.

No script, no external resource: figures are inline SVG, styles are inline,
and a Content-Security-Policy forbids every fetch, so the file opens the same
from file:// on a machine without network. Jinja2 autoescapes every value;
only the SVG that matplotlib wrote (which escapes its own text) is marked safe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import jinja2
from markupsafe import Markup

from locality.experiment import store
from locality.experiment.schema import FILES
from locality.report import figures as figs
from locality.report import foreign  # noqa: F401 - registers the probe and VM figures
from locality.report.figure_files import to_svg
from locality.report.data import RunData, find_runs
from locality.report.groups import group_runs, short_title
from locality.report.table import METRICS, fmt_number, metrics_rows  # noqa: F401 - METRICS, fmt_number: public here too
from locality.report.portions import table as portion_table
from locality.report.portions import verdicts as portion_verdicts

QUESTION = (
    "When a million small, rarely activated workers live in one process, which parts of their "
    "memory have good spatial locality, how much of it could be paged out, and which allocation "
    "strategies make the hot part small and dense?"
)

# The HTML page is wider than a thesis column and its text stays text.
REPORT_STYLE = {"figure.figsize": (6.4, 3.0), "font.size": 9, "axes.labelsize": 9, "axes.titlesize": 9,
                "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "svg.fonttype": "none"}


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
                block["svg"] = Markup(to_svg(rendered.figure, salt=f"locality-{name}"))
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
                notes: Iterable[str] = (), baseline: str | None = None, verdict: dict[str, Any] | None = None,
                experiment: str | None = None, keep_labels: bool = False) -> str:
    """The report page. ``baseline``: a layout, label or run id taken as each group's baseline.
    ``verdict``: computed by the experiment that made the runs (e.g. `locality beam compare`),
    rendered at the top: {questions: [{question, winner, value, versus_baseline, cost}],
    targets: [{target, met, measured}], table: {headings, rows: [{technique, cells}]}}; without it,
    the paging verdict is read off the runs' metrics.
    ``experiment``: the name the default title starts with (else found from the runs' configs and paths).
    ``keep_labels``: the runs' labels stay as given (else grouped runs are labelled by their axes)."""
    if not runs:
        raise ValueError("no runs to report")
    axes, groups = group_runs(runs, baseline, relabel=not keep_labels)
    table = metrics_rows(runs, groups)
    names = list(figure_names) if figure_names is not None else figs.default_names(runs)
    from locality.report.verdict import IDLE_KEYS, paging_notes, paging_rows, verdict_lines

    template = _environment().get_template("report.html.j2")
    return template.render(
        # An experiment's own verdict (beam compare) replaces the one read off the layout runs' metrics.
        paging_verdict=[] if verdict else verdict_lines(runs),
        paging_rows=paging_rows(runs),
        idle_keys=IDLE_KEYS,
        title=title or short_title(runs, axes, experiment),
        question=QUESTION,
        runs=runs,
        axes=axes,
        groups=groups,
        table=table,
        setup=setup_of(runs),
        figures=figure_blocks(runs, names),
        portion_verdicts=portion_verdicts(runs),
        portion_table=portion_table(runs),
        notes=[*notes, *shared_node_notes(runs), *crashed_notes(runs), *paging_notes(runs)],
        verdict=verdict or {},
        created=store.utcnow(),
    )


def write_report(run_dirs: Iterable[str | Path] | list[RunData], out: str | Path, *, title: str | None = None,
                 notes: Iterable[str] = (), baseline: str | None = None, verdict: dict[str, Any] | None = None,
                 keep_labels: bool = False) -> Path:
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
    html = render_html(runs, title=title, notes=notes, baseline=baseline, verdict=verdict, keep_labels=keep_labels)
    return store.atomic_write_text(out, html)
