"""One stored run in the terminal (`locality show`), and two side by side (`locality diff`).

Both read the run store only and format numbers as the HTML report does
(report/table.py). ``diff`` judges a difference against run-to-run noise
when it can measure it: the repeats of a run are the complete runs beside
it (same parent directory, same kind) whose config differs at most in
``seed``, ``name`` or ``out``. With repeats, a difference counts when it
exceeds twice the standard deviation of a difference of two single runs
(sqrt(sd_a^2 + sd_b^2), each sd from that run's repeats; a side without
repeats borrows the other's). Without repeats the noise is unknown and
said so, never assumed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locality.report.data import RunData, find_key, load_run_data
from locality.report.table import FOREIGN_COLUMNS, METRICS, _seconds, fmt_number, value_of

REPEAT_FREE_KEYS = ("seed", "name", "out")
# A VM run's own accounting, shown after the common metrics.
BEAM_METRICS = [
    ("bytes_per_process_erlang", "bytes / process, process_info (B)", 1.0, 4, True),
    ("bytes_per_process_vm", "bytes / process, erlang:memory growth (B)", 1.0, 4, True),
    ("bytes_per_process_rss", "bytes / process, RSS growth (B)", 1.0, 4, True),
    ("bytes_per_process_pss", "bytes / process, PSS growth (B)", 1.0, 4, True),
]
FILES = ("manifest.json", "metrics.json", "timeline.csv", "vmas.csv", "pages.npz", "latency.csv", "steps.json", "beam.json")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def headline(run: RunData) -> list[tuple[str, str, float, str]]:
    """(key, heading, value in the heading's unit, formatted) of every headline metric the run has, in report order."""
    out = []
    specs = METRICS[:] + (BEAM_METRICS if run.kind == "beam" else []) + FOREIGN_COLUMNS
    for key, heading, scale, digits, _ in specs:
        value = _number(value_of(run, key))
        if value is not None:
            out.append((key, heading, value * scale, fmt_number(value * scale, digits)))
    cold = run.metrics.get("cold_fraction")
    if isinstance(cold, dict):
        for k, v in sorted(cold.items(), key=lambda kv: _seconds(kv[0]) or math.inf):
            seconds, value = _seconds(k), _number(v)
            if seconds is not None and value is not None:
                out.append((f"cold_fraction.{seconds:g}", f"cold after {seconds:g} s (%)", 100 * value, fmt_number(100 * value, 3)))
    if run.kind == "probe" and run.vma_timeline is not None and len(run.vma_timeline):
        vmas = int(run.vma_timeline["vma"].nunique())
        out.append(("vmas", "VMAs seen", float(vmas), fmt_number(vmas)))
    return out


def essentials(run: RunData) -> dict[str, Any]:
    """The config keys a reader needs to recognise the run, flattened (pattern.p, reclaim.policy)."""
    if run.kind != "run":
        return {k: v for k, v in run.config.items() if v is not None and not isinstance(v, (dict, list))}
    flat = _flat_raw(run.config)
    keep = ("workers", "layout", "scheduler", "arena", "hugepages", "steps", "duration", "step_interval", "seed",
            "sampling.interval", "sampling.writes", "reclaim.policy", "reclaim.idle_seconds", "reclaim.limit")
    out = {k: flat[k] for k in keep if flat.get(k) is not None}
    out.update({k: v for k, v in flat.items() if k.startswith("pattern.") and v is not None})
    return out


def _flat_raw(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat_raw(value, f"{prefix}{key}."))
    return out


def _files(run: RunData) -> dict[str, int]:
    return {name: (run.path / name).stat().st_size for name in FILES if (run.path / name).is_file()}


def show_doc(run: RunData) -> dict[str, Any]:
    return {
        "run_dir": str(run.path), "id": run.id, "kind": run.kind, "status": run.status, "error": run.error,
        "created": run.manifest.get("created"), "finished": run.manifest.get("finished"),
        "config": essentials(run),
        "metrics": [{"metric": key, "heading": heading, "value": value} for key, heading, value, _ in headline(run)],
        "files": _files(run),
    }


def show_text(run: RunData) -> str:
    doc = show_doc(run)
    lines = [f"{run.path}  ({run.kind} {run.id}, {run.status})"]
    if run.error:
        lines.append(f"  error: {run.error.splitlines()[0]}")
    lines.append(f"  created {doc['created'] or '—'}, finished {doc['finished'] or '—'}")
    lines.append("config")
    for key, value in doc["config"].items():
        lines.append(f"  {key:<22} {value}")
    rows = headline(run)
    lines.append("metrics" if rows else "metrics: none stored")
    width = max((len(h) for _, h, _, _ in rows), default=0)
    for _, heading, _, text in rows:
        lines.append(f"  {heading:<{width}}  {text:>12}")
    lines.append("files")
    for name in doc["files"]:
        lines.append(f"  {run.path / name}")
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts as CSV (header from the first row; nested values as JSON)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def show_csv(run: RunData) -> str:
    return csv_text([{"run_dir": str(run.path), "metric": key, "heading": heading, "value": value}
                     for key, heading, value, _ in headline(run)])


# --- diff ----------------------------------------------------------------------------


def _repeat_key(run: RunData) -> str:
    return json.dumps({k: v for k, v in run.config.items() if k not in REPEAT_FREE_KEYS}, sort_keys=True, default=str)


def repeats(run: RunData) -> list[RunData]:
    """The complete runs beside ``run`` with its config apart from seed/name/out (itself included)."""
    key, found = _repeat_key(run), [run]
    parent = run.path.parent
    for d in sorted(parent.iterdir()) if parent.is_dir() else []:
        if d.resolve() == run.path.resolve() or not (d / "manifest.json").is_file():
            continue
        try:
            other = load_run_data(d)
        except Exception:  # noqa: BLE001 - an unreadable neighbour is not a repeat
            continue
        if other.kind == run.kind and other.status == "complete" and _repeat_key(other) == key:
            found.append(other)
    return found


def _values(runs: list[RunData], key: str) -> list[float]:
    out = []
    for r in runs:
        value = dict((k, v) for k, _, v, _ in headline(r)).get(key)
        if value is not None:
            out.append(value)
    return out


@dataclass
class DiffRow:
    key: str
    heading: str
    a: float | None
    b: float | None
    a_text: str
    b_text: str
    ratio: float | None
    noise_pct: float | None  # 2 x sd of a difference, as % of A; None: no repeats
    significant: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.key, "heading": self.heading, "a": self.a, "b": self.b, "ratio": self.ratio,
                "noise_pct": self.noise_pct, "significant": self.significant}


def diff_rows(a: RunData, b: RunData, reps_a: list[RunData], reps_b: list[RunData]) -> list[DiffRow]:
    ha = {k: (h, v, t) for k, h, v, t in headline(a)}
    hb = {k: (h, v, t) for k, h, v, t in headline(b)}
    rows = []
    for key in list(ha) + [k for k in hb if k not in ha]:
        heading = (ha.get(key) or hb.get(key))[0]
        va, vb = (ha[key][1] if key in ha else None), (hb[key][1] if key in hb else None)
        ratio = vb / va if va and vb is not None else None
        sds = [statistics.stdev(v) for v in (_values(reps_a, key), _values(reps_b, key)) if len(v) >= 2]
        noise = significant = None
        if sds and va is not None and vb is not None:
            sd_a, sd_b = (sds[0], sds[-1])
            spread = 2 * math.sqrt(sd_a ** 2 + sd_b ** 2)
            significant = abs(vb - va) > spread
            noise = 100 * spread / abs(va) if va else None
        rows.append(DiffRow(key, heading, va, vb, ha[key][2] if key in ha else "—", hb[key][2] if key in hb else "—",
                            ratio, noise, significant))
    return rows


def _describe(run: RunData) -> str:
    what = run.layout if run.kind == "run" else run.kind
    return f"{run.path} ({what}, {run.status})"


def diff_doc(a: RunData, b: RunData) -> dict[str, Any]:
    reps_a, reps_b = repeats(a), repeats(b)
    return {
        "run_dirs": [str(a.path), str(b.path)],
        "repeats": {"a": len(reps_a), "b": len(reps_b)},
        "config_differences": config_differences(a, b),
        "metrics": [r.as_dict() for r in diff_rows(a, b, reps_a, reps_b)],
    }


def config_differences(a: RunData, b: RunData) -> dict[str, list[Any]]:
    fa, fb = _flat_raw(a.config), _flat_raw(b.config)
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def diff_text(a: RunData, b: RunData) -> str:
    reps_a, reps_b = repeats(a), repeats(b)
    rows = diff_rows(a, b, reps_a, reps_b)
    lines = [f"A: {_describe(a)}", f"B: {_describe(b)}"]
    differ = config_differences(a, b)
    if differ:
        unset = "(unset)"
        lines.append("config: " + ", ".join(f"{k} {unset if va is None else va} -> {unset if vb is None else vb}"
                                            for k, (va, vb) in differ.items()))
    n_a, n_b = len(reps_a), len(reps_b)
    if n_a < 2 and n_b < 2:
        lines.append("noise: unknown (no repeats beside either run: store runs of the same config, "
                     "e.g. --grid seed=1,2,3, in the same directory)")
    else:
        lines.append(f"noise: from {n_a} run(s) of A's config and {n_b} of B's (same directory, config equal but seed)")
    width = max((len(r.heading) for r in rows), default=6)
    lines.append(f"{'metric':<{width}}  {'A':>12}  {'B':>12}  {'B/A':>8}")
    for r in rows:
        ratio = f"{r.ratio:.3g}x" if r.ratio is not None else "—"
        line = f"{r.heading:<{width}}  {r.a_text:>12}  {r.b_text:>12}  {ratio:>8}"
        if r.significant is not None:
            line += f"  {'significant' if r.significant else 'within noise'} (±{r.noise_pct:.2g}%)" if r.noise_pct is not None \
                else f"  {'significant' if r.significant else 'within noise'}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def diff_csv(a: RunData, b: RunData) -> str:
    rows = diff_rows(a, b, repeats(a), repeats(b))
    return csv_text([{"run_a": str(a.path), "run_b": str(b.path), **r.as_dict()} for r in rows])


def load(path: str | Path) -> RunData:
    """One run directory, labelled as the report would."""
    run = load_run_data(path)
    run.label = run.layout or run.id if run.kind == "run" else f"{run.kind} {find_key(run.config, 'pid') or ''}".strip()
    return run
