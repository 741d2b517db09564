"""The metrics table of a report: which columns, in which order, and each cell's text.

The columns that answer the question (footprint, page utilization, working
set, what could be paged out) come first, in the main table; latency,
throughput and overheads go to a second, collapsed one. Ratios are taken
against the group's baseline (report/groups.py). Also used by `locality
show` and `locality diff`, so every view formats a number the same way.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from locality.report.data import RunData, find_key
from locality.report.groups import Group

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
# The columns that answer the question (locality, what could be paged out, footprint) come
# first, in the main table; the rest (latency, throughput, overheads) in a collapsed second one.
MAIN = ("bytes_per_worker", "state_page_utilization", "page_utilization", "state_wss_bytes_mean")
MAIN_AFTER_COLD = ("refault_rate_pct_per_min",)

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


# A probe or VM run has no worker metrics; these come from its per-VMA smaps rows (last sample).
FOREIGN_COLUMNS: list[tuple[str, str, float, int, bool]] = [
    ("resident_bytes_last", "resident, last sample (MiB)", 1.0 / (1 << 20), 4, True),
    ("swapped_bytes_last", "swapped, last sample (MiB)", 1.0 / (1 << 20), 4, True),
    ("referenced_bytes_last", "referenced, last interval (MiB)", 1.0 / (1 << 20), 4, True),
]
FOREIGN_KINDS = ("probe", "beam")


def foreign_values(run: RunData) -> dict[str, float]:
    """FOREIGN_COLUMNS of a probe or VM run, summed over its VMAs at the last sample."""
    tl = run.vma_timeline
    if run.kind not in FOREIGN_KINDS or tl is None or not len(tl) or "t" not in tl:
        return {}
    last = tl[tl["t"] == tl["t"].max()]
    out = {}
    for key, column in (("resident_bytes_last", "rss_bytes"), ("swapped_bytes_last", "swap_bytes"),
                        ("referenced_bytes_last", "referenced_bytes")):
        if column in last and last[column].notna().any():
            out[key] = float(last[column].sum())
    return out


def value_of(run: RunData, key: str) -> Any:
    return run.metrics[key] if key in run.metrics else foreign_values(run).get(key)


def _metric_cell(run: RunData, base: RunData | None, key: str, scale: float, digits: int, compared: bool) -> Cell:
    value = value_of(run, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or run.failed:
        return Cell("—")
    ratio = ""
    ref = value_of(base, key) if base is not None else None
    if compared and run is not base and isinstance(ref, (int, float)) and not isinstance(ref, bool) and ref:
        ratio = f"{value / ref:.3g}×"
    return Cell(fmt_number(value * scale, digits), ratio)


def metric_columns(runs: list[RunData] = ()) -> tuple[list[tuple], list[tuple]]:
    """(main, more) METRICS entries; cold-fraction columns sit between MAIN and MAIN_AFTER_COLD.

    With probe or VM runs, their FOREIGN_COLUMNS join the main table; a report
    without worker runs leaves out the columns none of its runs has (a probe's
    row is not a row of dashes)."""
    by_key = {m[0]: m for m in METRICS}
    main = [by_key[k] for k in MAIN] + [("__cold__", "", 1.0, 3, False)] + [by_key[k] for k in MAIN_AFTER_COLD]
    more = [m for m in METRICS if m[0] not in MAIN and m[0] not in MAIN_AFTER_COLD]
    kinds = {r.kind for r in runs}
    if kinds & set(FOREIGN_KINDS):
        main += FOREIGN_COLUMNS
    if runs and not kinds - set(FOREIGN_KINDS):
        def has(m: tuple) -> bool:
            return m[0] == "__cold__" or any(_number(value_of(r, m[0])) for r in runs)
        main, more = [m for m in main if has(m)], [m for m in more if has(m)]
    return main, more


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_rows(runs: list[RunData], groups: list[Group]) -> dict[str, Any]:
    """The metrics tables: headings and, per group, rows whose ratios use the group's baseline."""
    colds = cold_columns(runs)
    main, more = metric_columns(runs)
    main_headings = []
    for key, heading, *_ in main:
        main_headings += [h for _, h in colds] if key == "__cold__" else [heading]
    out_groups = []
    for group in groups:
        base = group.baseline
        rows = []
        # The baseline first: the row every ratio below it refers to.
        for run in sorted(group.runs, key=lambda r: r is not base):
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


