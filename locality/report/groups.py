"""Runs of a sweep as a reader compares them: grouped by the grid's other axes.

A sweep of layouts x patterns x policies asks "which layout is best for
this pattern under this policy", so each ratio is taken against the
baseline of its own group (same pattern, same policy), never against one
run of another workload. The axes are found from the stored configs alone:
the config keys whose values differ between runs. Keys that only follow
another axis (``pattern.radius`` exists only for ``pattern.name = sheet``)
are not axes of their own. The seed is not an axis: runs that differ only
by seed are repeats of one point, and stay in one group.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locality.errors import InvalidArgument
from locality.report.data import RunData, baseline_index

# Config keys that name or place a run rather than describe its workload.
NOT_AXES = frozenset({"seed", "out", "name", "pid", "arena_dir", "command", "cmdline", "target"})


@dataclass
class Group:
    axes: list[tuple[str, str]]  # (axis, value) shared by the group's runs
    runs: list[RunData]
    baseline: RunData | None

    @property
    def title(self) -> str:
        return " · ".join(f"{k} = {v}" for k, v in self.axes) or "all runs"


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"pattern.name": "sheet", ...}; leaves as compact JSON text."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = tree if isinstance(tree, str) else json.dumps(tree)
    return out


def _flat(run: RunData) -> dict[str, str]:
    flat = {k: v for k, v in flatten(run.config).items() if k not in NOT_AXES}
    flat["kind"] = run.kind
    return flat


SELECTORS = ("name", "policy")


def _priority(key: str) -> tuple:
    # kind and layout first; then a table's selector (pattern.name, reclaim.policy) before its parameters.
    leaf = key.rsplit(".", 1)[-1]
    return (key not in ("kind", "layout"), leaf not in SELECTORS, key.count("."), key)


def _follows(key: str, other: str, flats: list[dict[str, str]]) -> bool:
    """``key`` is a parameter of selector ``other`` (same table, or the run kind) and a function of it."""
    table, leaf = key.rpartition(".")[0], key.rsplit(".", 1)[-1]
    if leaf in SELECTORS or key == "layout":
        return False
    if not (other == "kind" or (other.rpartition(".")[0] == table and other.rsplit(".", 1)[-1] in SELECTORS and table)):
        return False
    seen: dict[str | None, str | None] = {}
    return all(seen.setdefault(f.get(other), f.get(key)) == f.get(key) for f in flats)


def axes_of(runs: list[RunData]) -> list[str]:
    """Config keys that vary between runs, minus the parameters that follow their selector; ``layout`` first."""
    flats = [_flat(r) for r in runs]
    keys = sorted({k for f in flats for k in f}, key=_priority)
    varying = [k for k in keys if len({f.get(k) for f in flats}) > 1]
    kept: list[str] = []
    for key in varying:
        if not any(_follows(key, other, flats) for other in kept):
            kept.append(key)
    return kept


def _matches(run: RunData, name: str) -> bool:
    return name in (run.layout, run.label, run.id, run.path.name)


def group_runs(runs: list[RunData], baseline: str | None = None, *, relabel: bool = True) -> tuple[list[str], list[Group]]:
    """(axes, groups): runs grouped by every axis but ``layout``, in first-seen order.

    Each group's baseline: the run matching ``baseline`` (a layout, label or
    run id) in it, else (no ``baseline`` given) its `objects` run, else its
    first usable run. Sets ``run.group_baseline`` and run labels that stay
    unique across groups (``layout · value · value``), unless ``relabel`` is False (the caller's
    labels already say what each run is, e.g. compare's run ids).
    """
    if baseline is not None and not any(_matches(r, baseline) for r in runs):
        raise InvalidArgument(f"--baseline {baseline!r} matches no run",
                              "give a layout (objects), a run label or a run id from the report")
    axes = axes_of(runs)
    group_axes = [a for a in axes if a != "layout"]
    groups: dict[tuple, Group] = {}
    flats = {id(r): _flat(r) for r in runs}
    for run in runs:
        values = tuple((a, flats[id(run)].get(a, "—")) for a in group_axes)
        groups.setdefault(values, Group(list(values), [], None)).runs.append(run)
    for group in groups.values():
        if baseline is not None:
            chosen = [r for r in group.runs if _matches(r, baseline) and not r.failed]
            group.baseline = chosen[0] if chosen else None
        else:
            usable = [r for r in group.runs if r.metrics and not r.failed]
            group.baseline = group.runs[baseline_index(group.runs)] if usable else None
        for run in group.runs:
            run.group_baseline = group.baseline
    if len(groups) > 1 and relabel:
        _label_with_axes(runs, group_axes, flats)
    return axes, list(groups.values())


def _short(value: str) -> str:
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return f"{parsed:,}" if isinstance(parsed, int) and not isinstance(parsed, bool) else str(parsed)


def _label_with_axes(runs: list[RunData], group_axes: list[str], flats: dict[int, dict[str, str]]) -> None:
    labels = []
    for run in runs:
        # A VM or probe run keeps what it watched (beam default, probe 123); a worker run its layout.
        head = run.label if run.kind in ("probe", "beam") and run.label else (run.layout or run.kind)
        labels.append(" · ".join([head] + [_short(flats[id(run)].get(a, "—")) for a in group_axes]))
    for run, label in zip(runs, labels):
        run.label = label if labels.count(label) == 1 else f"{label} [{run.id}]"


def experiment_name(runs: list[RunData]) -> str:
    """The config's ``name`` if the runs share one, else their common directory, else 'locality'."""
    names = {r.config.get("name") for r in runs}
    if len(names) == 1 and next(iter(names)):
        return str(next(iter(names)))
    outs = {str(r.config.get("out") or "") for r in runs}
    if len(outs) == 1 and Path(next(iter(outs))).name not in ("", "runs"):
        return Path(next(iter(outs))).name
    common = Path(os.path.commonpath([str(r.path.resolve().parent) for r in runs]))
    if common.name and common != Path.cwd() and common.name != "runs":
        return common.name
    return "locality"


def short_title(runs: list[RunData], axes: list[str], name: str | None = None) -> str:
    """'thesis: 42 runs, layout × pattern.name × reclaim.policy' (never the run ids)."""
    n = len(runs)
    if n == 1 and name is None:
        return f"locality report: {runs[0].label or runs[0].id}"
    text = f"{name or experiment_name(runs)}: {n} run{'s' if n != 1 else ''}"
    return f"{text}, {' × '.join(axes)}" if axes else text
