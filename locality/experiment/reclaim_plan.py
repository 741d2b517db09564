"""How `locality compare` gets its measured paging points: validated up front, swap shared and restored.

``plan_reclaim`` turns --reclaim/--swap/--idle into a plan or one clear
error (before any run starts). ``auto`` pages out for real when swap is
active, or when --swap was given by root; otherwise the paging figures are
the simulated curve alone, said once on stderr and in the report.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from locality.errors import InvalidArgument

MODES = ("auto", "none", "pageout-idle", "cgroup")
HOW_TO_MEASURE = "for measured points run as root with --swap 4G, or turn swap on first with `locality swap on`"


@dataclass
class ReclaimPlan:
    requested: str
    mode: str  # none | pageout-idle | cgroup
    swap_bytes: int | None
    idle: list[float] | None
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.mode != "none"

    def announce(self) -> None:
        for note in self.notes:
            print(f"locality: {note}", file=sys.stderr)

    def session(self) -> contextlib.AbstractContextManager:
        """Swap for the comparison: turned on if --swap asked and none is active, and in any case
        registered as used, so a concurrent compare that turned it on does not switch it off under us."""
        from locality.kernel.swap import ZRAM_SYSFS, shared_zram_swap

        if self.measured and os.geteuid() == 0 and ZRAM_SYSFS.is_dir():
            return shared_zram_swap(self.swap_bytes)
        return contextlib.nullcontext()  # swap someone else turned on, which we could not turn off anyway

    def thresholds(self, metrics: dict[str, dict[str, Any]], best: str) -> list[float]:
        """--idle, else the verdict's threshold for the best layout, else its longest cold threshold."""
        if self.idle:
            return list(self.idle)
        from locality.experiment.verdict import best_paging

        pick = best_paging(metrics)
        if pick and pick.get("threshold_s"):
            return [float(pick["threshold_s"])]
        colds = [float(k) for k in (metrics.get(best, {}).get("cold_fraction") or {"30": None})]
        return [max(colds)]

    def reclaim_config(self, T: float, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """The reclaim settings of a measured run at T, from the no-reclaim run of the same layout."""
        if self.mode == "pageout-idle":
            # Worker state only: the curve being checked is the worker state's (docs/paging.md).
            return {"policy": "pageout-idle", "idle_seconds": float(T), "scope": "state"}
        # cgroup: a limit that forces out what pageout-idle T would hold out.
        import pandas as pd

        from locality.experiment.paging import at

        try:
            peak = int(pd.read_csv(run_dir / "timeline.csv", usecols=["rss_bytes"])["rss_bytes"].max())
        except (OSError, ValueError, KeyError):
            peak = 0
        held = at(metrics.get("paging") or {"thresholds_s": []}, "process", "held_pages", T) or 0.0
        return {"policy": "cgroup", "limit": max(64 << 20, peak - int(held * int(metrics.get("page_size") or 4096)))}


def plan_reclaim(reclaim: str, swap: int | None, idle: Sequence[float] | None, run_s: float | None,
                 steps: int | None = None, step_interval: float = 0.0) -> ReclaimPlan:
    """Validate --reclaim/--swap/--idle before anything runs; raises InvalidArgument with the fix."""
    from locality.kernel import swap_active

    if reclaim not in MODES:
        raise InvalidArgument(f"--reclaim: unknown {reclaim!r}", f"allowed: {', '.join(MODES)}")
    root = os.geteuid() == 0
    if swap is not None:
        if not root:
            raise InvalidArgument("--swap needs root (it turns a zram swap device on)",
                                  "run as root, or leave --swap out to get the simulated curve alone")
        import psutil

        total = psutil.virtual_memory().total
        if swap > total:
            raise InvalidArgument(f"--swap {swap / 2**30:.1f} GiB is larger than this machine's memory "
                                  f"({total / 2**30:.1f} GiB)",
                                  "give a smaller --swap, e.g. 4G")
    length = run_s if run_s is not None else (steps * step_interval if steps else None)
    for T in idle or []:
        if not T > 0:
            raise InvalidArgument(f"--idle {T:g}: thresholds must be > 0 seconds", "e.g. --idle 10,30")
        if length is not None and T >= length:
            raise InvalidArgument(f"--idle {T:g}: longer than the run ({length:g} s)",
                                  "give thresholds below the run length, or a longer --duration")
    active = bool(swap_active())
    can_swap = active or (swap is not None and root)
    if reclaim in ("pageout-idle", "cgroup") and not can_swap:
        raise InvalidArgument(f"--reclaim {reclaim} needs swap and none is active",
                              "add --swap SIZE (as root), or turn swap on first with `locality swap on`")
    plan = ReclaimPlan(reclaim, "none", swap if (swap is not None and not active) else None,
                       list(idle) if idle else None)
    if reclaim == "auto":
        plan.mode = "pageout-idle" if can_swap else "none"
        if not can_swap:
            plan.notes.append("no swap is active, so the paging figures are simulated from the written-page trace "
                              "alone (a lower bound on refaults); " + HOW_TO_MEASURE + ".")
    elif reclaim == "none":
        plan.notes.append("--reclaim none: the paging figures are simulated only; " + HOW_TO_MEASURE + ".")
    else:
        plan.mode = reclaim
    return plan

