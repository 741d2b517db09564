"""Sweeps: the cartesian product of config values, one run per point, resumable.

A point's id is built from its grid values plus a short hash of its whole
config (``layout=slab+workers=1000-3f2a9c1d``), so ``--resume`` finds the
runs of the same sweep again and never mistakes a run of another base
config for one of this sweep.

Memory-budget guard (local executor): before anything runs, each point's
peak memory is estimated (locality.experiment.estimate) and a point whose
estimate exceeds the available memory (psutil) is refused, naming both
numbers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from locality.errors import InvalidArgument, LocalityError
from locality.experiment import store
from locality.experiment.config import ExperimentConfig, parse_value, with_overrides
from locality.experiment.estimate import MemoryBudgetExceeded, check_memory

__all__ = ["MemoryBudgetExceeded", "SweepPoint", "check_budget", "parse_grid", "file_grid", "points", "pending", "run_sweep"]

EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class SweepPoint:
    point_id: str
    config: ExperimentConfig
    values: dict[str, Any] = field(default_factory=dict)


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["workers=1000,10000", "layout=slab,objects"]`` -> {key: [values]} (values parsed as TOML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise InvalidArgument(f"--grid {item!r}: expected key=v1,v2,...", "e.g. --grid workers=1000,10000")
        if key in grid:
            raise InvalidArgument(f"--grid {key} given twice", "list all its values in one --grid")
        grid[key] = [parse_value(v.strip()) for v in _split_values(values)]
    return grid


def file_grid(path: str | os.PathLike) -> dict[str, list[Any]]:
    """The ``[grid]`` table of an experiment file (key path -> list of values); {} if none."""
    from locality.errors import ConfigError
    from locality.experiment.config import read_toml

    grid = read_toml(path).get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError("grid: must be a table of key = [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: must be a non-empty list of values (got {values!r})")
    return {str(k): list(v) for k, v in grid.items()}


def _split_values(text: str) -> list[str]:
    # Commas inside [...] or quotes belong to the value (a TOML list or string).
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return [v for v in out if v.strip()]


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def config_hash(config: ExperimentConfig) -> str:
    data = config.model_dump(mode="json", exclude={"out", "name"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def points(config: ExperimentConfig, grid: Mapping[str, Sequence[Any]]) -> list[SweepPoint]:
    """One validated config per combination of grid values, in grid order."""
    keys = list(grid)
    for k in keys:
        if not grid[k]:
            raise InvalidArgument(f"--grid {k}: no values")
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        items = list(zip(keys, combo))
        try:
            cfg = with_overrides(config, items)
        except LocalityError as e:
            where = ", ".join(f"{k}={v}" for k, v in items)
            raise type(e)(f"sweep point {where}: {e.message}", e.hint) from None
        slug = "+".join(f"{_slug(k)}={_slug(v)}" for k, v in items)
        out.append(SweepPoint(f"{slug}-{config_hash(cfg)}" if slug else config_hash(cfg), cfg, dict(items)))
    return out


def status_of(run_dir: Path) -> str | None:
    """The point's status (``crashed`` if its runner died), None if it has no readable manifest."""
    return store.effective_status(run_dir)


def pending(points: Sequence[SweepPoint], out: str | os.PathLike, resume: bool) -> list[SweepPoint]:
    """The points still to run: with ``resume``, complete runs and runs a live runner holds
    are skipped (failed, interrupted or crashed ones re-run)."""
    if not resume:
        return list(points)
    return [p for p in points if status_of(Path(out) / p.point_id) not in ("complete", "running")]


# -- memory budget -------------------------------------------------------------


def check_budget(pts: Sequence[SweepPoint], out: str | os.PathLike, cache: dict | None = None) -> None:
    """Refuse the sweep before its first run if any point's estimate exceeds the available memory."""
    check_memory([(f"sweep point {p.point_id}", p.config) for p in pts], out, cache)


# -- running -------------------------------------------------------------------


def run_sweep(
    config: ExperimentConfig,
    grid: Mapping[str, Sequence[Any]],
    out: str | os.PathLike,
    *,
    resume: bool = False,
    executor: str = "local",
    progress: bool = True,
    budget: bool = True,
    on_start: Callable[[list[SweepPoint], dict], None] | None = None,
    **executor_options: Any,
) -> list[Path]:
    """Run every pending point; returns the run dirs of all points (skipped ones included).

    A failed point is stored as ``failed`` and the sweep goes on; Ctrl-C marks
    the current run interrupted and stops the sweep (``--resume`` continues).
    """
    if executor not in EXECUTORS:
        raise InvalidArgument(f"unknown executor {executor!r} (allowed: {', '.join(EXECUTORS)})")
    out = Path(out)
    pts = points(config, grid)
    if len({p.point_id for p in pts}) != len(pts):
        raise InvalidArgument("the grid repeats a value: two points would share a run id")
    todo = pending(pts, out, resume)
    if not resume:
        done = [p.point_id for p in pts if (out / p.point_id / "manifest.json").exists()]
        if done:
            raise InvalidArgument(
                f"{out / done[0]} already exists ({len(done)} of {len(pts)} points)",
                "pass --resume to skip complete runs and re-run the rest, or choose another --out",
            )
    if executor == "dask":
        from locality.experiment.distributed import run_points

        run_points(todo, out, progress=progress, **executor_options)
        return [out / p.point_id for p in pts]
    if executor_options:
        raise InvalidArgument(f"options {', '.join(sorted(executor_options))} need --executor dask")
    from locality.experiment.runner import RunFailed, run
    from locality.experiment.signals import StopSignals

    bar = None
    # Held across the points: a signal between two points stops the sweep
    # (exit 130) instead of being dropped; one during a point interrupts it.
    with StopSignals() as stop:
        footprints: dict = {}  # measured by the budget check (stored runs or calibration), shown by on_start
        if budget:
            check_budget(todo, out, footprints)
        if on_start is not None:  # every check passed: the first point starts next
            on_start(todo, footprints)
        if progress:
            from locality.progress import progress as progress_bar

            bar = progress_bar(len(pts), "sweep", "run", initial=len(pts) - len(todo))
        try:
            for p in todo:
                if stop.signum is not None:
                    raise KeyboardInterrupt
                if bar is not None:
                    bar.set_postfix_str(p.point_id, refresh=True)
                try:
                    run(p.config, out, run_id=p.point_id, progress=False, resume=resume)
                except RunFailed:
                    pass  # stored as failed; the summary lists it
                except (store.RunBusy, store.RunDone):
                    pass  # another `sweep --resume` runs it, or has finished it
                if bar is not None:
                    bar.update(1)
            if stop.signum is not None:
                raise KeyboardInterrupt
        finally:
            if bar is not None:
                bar.close()
    return [out / p.point_id for p in pts]
