"""What a grid of runs needs before it starts: swap, root, time and memory.

`locality sweep` and `locality figures` print this before they start, so a
reader learns that a thesis grid needs swap or runs for 45 minutes before
the first run, not from a failed point. Every figure is derived from the
configs and from stored runs, never invented:

- swap: a `pageout-idle` point on anonymous memory (an anon arena, or the
  `objects` layout's heap) cannot page out without it (see policies.py).
- root: `locality swap on` and cgroup memory limits need it.
- time: per point, ``steps x step_interval`` (or ``duration``) is a floor
  the run cannot beat; where a complete run of the same layout, scheduler
  and pattern is stored under ``out``, its measured wall time beyond that
  floor (spawn, stepping, sampling), scaled by workers, is added.
- memory: estimate.estimate_from with measured bytes/worker (estimate.stored_footprint from a
  stored run; without one the sweep measures it with a calibration run
  just before starting, so here it is "not yet measured").
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from locality.experiment import store
from locality.units import format_bytes

SWAP_COMMAND = "sudo locality swap on --size 8G"


@dataclass
class GridNeeds:
    points: int
    pending: int
    swap_points: int = 0
    swap_active: bool | None = None
    root_reasons: list[str] = field(default_factory=list)
    is_root: bool = False
    seconds_floor: float = 0.0
    seconds_estimate: float = 0.0
    measured_points: int = 0  # pending points whose time estimate includes a stored run's measured overhead
    memory_peak_bytes: int | None = None
    memory_source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "points": self.points, "pending": self.pending, "swap_points": self.swap_points,
            "swap_active": self.swap_active, "root": bool(self.root_reasons), "root_reasons": self.root_reasons,
            "is_root": self.is_root, "seconds_floor": round(self.seconds_floor, 1),
            "seconds_estimate": round(self.seconds_estimate, 1), "measured_points": self.measured_points,
            "memory_peak_bytes": self.memory_peak_bytes, "memory_source": self.memory_source,
        }

    def short(self) -> str:
        """The same facts in one clause, for an error line."""
        parts = []
        if self.swap_points:
            parts.append(f"swap for {self.swap_points} point(s)" + ("" if self.swap_active else f" (off now: {SWAP_COMMAND})"))
        if self.root_reasons:
            parts.append("root" + ("" if self.is_root else " (you are not root)"))
        if self.pending:
            parts.append(f"about {human_seconds(self.seconds_estimate)}")
        if self.memory_peak_bytes is not None:
            parts.append(f"about {format_bytes(self.memory_peak_bytes)} at the largest point")
        return "needs " + ", ".join(parts) if parts else "needs nothing special"

    def lines(self) -> list[str]:
        """Human-readable, one fact a line."""
        out = [f"grid: {self.points} points, {self.pending} to run, {self.points - self.pending} already complete"]
        if self.swap_points:
            state = {True: "on now", False: f"OFF now: run `{SWAP_COMMAND}` first", None: "state unknown"}[self.swap_active]
            out.append(f"  swap: needed by {self.swap_points} point(s) (pageout-idle on anonymous memory); {state}")
        else:
            out.append("  swap: not needed")
        if self.root_reasons:
            who = "you are root" if self.is_root else "you are NOT root"
            out.append(f"  root: needed for {'; '.join(self.root_reasons)} ({who})")
        else:
            out.append("  root: not needed")
        if self.pending:
            how = (f"{self.measured_points} of {self.pending} from stored runs' measured wall time"
                   if self.measured_points else "steps x step_interval only; spawn and sampling add to it")
            out.append(f"  time: about {human_seconds(self.seconds_estimate)} "
                       f"(at least {human_seconds(self.seconds_floor)}; {how})")
        if self.memory_peak_bytes is not None:
            out.append(f"  memory: about {format_bytes(self.memory_peak_bytes)} at the largest point ({self.memory_source})")
        elif self.pending:
            out.append(f"  memory: {self.memory_source}")
        return out


def human_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def needs_swap(cfg: Any) -> bool:
    return cfg.reclaim.policy == "pageout-idle" and (cfg.arena == "anon" or cfg.layout == "objects")


def floor_seconds(cfg: Any) -> float:
    by_steps = (cfg.steps or 0) * cfg.step_interval
    if cfg.duration is not None:
        return min(cfg.duration, by_steps) if cfg.steps is not None else cfg.duration
    return by_steps


def _wall_seconds(manifest: dict[str, Any]) -> float | None:
    try:
        a = _dt.datetime.fromisoformat(manifest["created"])
        b = _dt.datetime.fromisoformat(manifest["finished"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (b - a).total_seconds())


def _stored_runs(out: Path) -> list[tuple[dict[str, Any], float]]:
    """(config, wall seconds) of every complete run directly under ``out``."""
    found = []
    if not out.is_dir():
        return found
    for d in sorted(out.iterdir()):
        try:
            m = store.read_manifest(d)
        except (OSError, ValueError):
            continue
        wall = _wall_seconds(m)
        if m.get("status") == "complete" and wall is not None and isinstance(m.get("config"), dict):
            found.append((m["config"], wall))
    return found


def _same_kind(a: dict[str, Any], cfg: Any) -> bool:
    pattern = a.get("pattern") or {}
    return (a.get("layout"), a.get("scheduler"), (pattern or {}).get("name")) == (cfg.layout, cfg.scheduler, cfg.pattern.name)


def _estimate(cfg: Any, stored: list[tuple[dict[str, Any], float]]) -> tuple[float, bool]:
    floor = floor_seconds(cfg)
    for config, wall in stored:
        if _same_kind(config, cfg) and config.get("workers"):
            from locality.experiment.config import validate

            try:
                ref = validate({k: v for k, v in config.items()})
            except Exception:  # noqa: BLE001 - a run stored under an older schema: not a reference
                continue
            extra = max(0.0, wall - floor_seconds(ref)) * cfg.workers / ref.workers
            return floor + extra, True
    return floor, False


def grid_needs(points: Sequence[Any], out: str | os.PathLike, pending: Sequence[Any],
               footprints: dict | None = None) -> GridNeeds:
    """What running ``pending`` (a subset of ``points``, SweepPoints) under ``out`` needs.

    ``footprints``: the sweep budget check's measurements (estimate.measured_footprint's cache),
    so the memory of calibrated points is shown too."""
    from locality.experiment.estimate import estimate_from, stored_footprint

    out = Path(out)
    needs = GridNeeds(points=len(points), pending=len(pending))
    needs.swap_points = sum(needs_swap(p.config) for p in pending)
    if needs.swap_points:
        try:
            from locality.kernel import swap_active

            needs.swap_active = bool(swap_active())
        except Exception:  # noqa: BLE001 - /proc/swaps unreadable: say unknown, do not guess
            needs.swap_active = None
        if not needs.swap_active:
            needs.root_reasons.append("`locality swap on` (zram)")
    cgroups = sum(p.config.reclaim.policy == "cgroup" for p in pending)
    if cgroups:
        needs.root_reasons.append(f"cgroup memory limits ({cgroups} point(s))")
    needs.is_root = os.geteuid() == 0
    stored = _stored_runs(out)
    cache: dict = footprints if footprints is not None else {}
    missing_footprint = 0
    for p in pending:
        needs.seconds_floor += floor_seconds(p.config)
        seconds, measured = _estimate(p.config, stored)
        needs.seconds_estimate += seconds
        needs.measured_points += measured
        fp = stored_footprint(p.config, out, cache)
        if fp is None:
            missing_footprint += 1
            continue
        est, how = estimate_from(p.config, fp)
        if needs.memory_peak_bytes is None or est > needs.memory_peak_bytes:
            needs.memory_peak_bytes, needs.memory_source = est, how
    if missing_footprint:
        note = f"{missing_footprint} point(s) not yet measured: the sweep calibrates them before starting"
        needs.memory_source = f"{needs.memory_source}; {note}" if needs.memory_peak_bytes is not None else note
    return needs
