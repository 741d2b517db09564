"""What a run keeps: one timeline row per sample, then the run's files.

``RunRecord.sample`` measures the child from outside (smaps_rollup, fault
counters, and the sampler's page state when sampling) and appends a row;
timeline.csv is rewritten every few seconds, so even a killed runner leaves
a readable timeline. ``RunRecord.write`` stores timeline.csv, latency.csv,
pages.npz and metrics.json whole (docs/internals.md), whatever the status.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from locality.errors import LocalityError
from locality.experiment import store
from locality.experiment.config import ExperimentConfig
from locality.experiment.metrics import _tkey, compute

FLUSH_EVERY_S = 5.0


class RunRecord:
    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = []
        self.window = {"activations": 0, "useful_bytes": 0}
        self.step = 0
        self.pageout_bytes = 0
        self.last_flush = 0.0

    def steps(self, m: dict[str, Any]) -> None:
        """Count a batch of steps the child reported into the current window."""
        self.step = int(m["step"])
        self.window["activations"] += int(m["activations"])
        self.window["useful_bytes"] += int(m["useful_bytes"])

    def sample(self, pid: int, t: float, now: float, sampler: Any, policy: Any) -> dict[str, Any] | None:
        """One row at ``t`` s into the run; None if the child is gone (its reader says how)."""
        from locality.kernel import faults, rollup

        try:
            roll = rollup(pid)
            minflt, majflt = faults(pid)
        except LocalityError:
            return None
        row = store.row("run", {
            "t": t,
            "step": self.step,
            "activations": self.window["activations"],
            "useful_bytes": self.window["useful_bytes"],
            "rss_bytes": roll.get("rss", 0),
            "pss_bytes": roll.get("pss", 0),
            "swap_bytes": roll.get("swap", 0),
            "major_faults": majflt,
            "minor_faults": minflt,
        })
        self.window = {"activations": 0, "useful_bytes": 0}
        if sampler is not None:
            s = sampler.sample(now)
            t_pol = time.perf_counter()
            advised = policy.after_sample(sampler, now)
            self.pageout_bytes += advised
            row.update(store.row("run", {
                "written_pages": s.written_pages,
                "discarded_pages": s.discarded_pages,
                "unresolved_pages": s.unresolved_pages,
                "resident_pages": s.resident_pages,
                "swapped_pages": s.swapped_pages,
                "populated_pages": s.populated_pages,
                "refaulted_pages": s.refaulted_pages,
                "paged_out_pages": s.paged_out_pages,
                "tracked_pages": s.tracked_pages,
                "pageout_bytes": advised,
                # Kept apart: the policy's MADV_PAGEOUT of gigabytes would otherwise be
                # reported as the sampler's own cost.
                "sample_ms": s.sample_s * 1e3,
                "policy_ms": (time.perf_counter() - t_pol) * 1e3,
            }))
            if s.written_state_pages is not None:
                row.update(store.row("run", {"written_state_pages": s.written_state_pages}))
            row.update(store.row("run", {f"cold_pages_{_tkey(t)}": c for t, c in s.cold_pages.items()}))
        self.rows.append(row)
        if now - self.last_flush >= FLUSH_EVERY_S:
            store.atomic_write_csv(self.run_dir / "timeline.csv", pd.DataFrame(self.rows))
            self.last_flush = now
        return row

    def write(self, *, child: dict[str, Any], latency_path: Path, sampler: Any, pss_empty: int | None,
              pss_spawned: int | None, spawn_s: float | None, state_info: dict[str, Any] | None,
              portions: Any = None) -> None:
        """Store every file of the run from what was measured (any status)."""
        from locality.kernel import PAGE_SIZE

        d = self.run_dir
        timeline = pd.DataFrame(self.rows)
        store.atomic_write_csv(d / "timeline.csv", timeline if len(timeline) else store.empty_timeline("run"))
        try:
            lat = np.load(latency_path) if latency_path.stat().st_size else np.empty(0, np.int64)
        except (OSError, ValueError):
            lat = np.empty(0, np.int64)
        store.atomic_write_csv(d / "latency.csv", pd.DataFrame({"latency_ns": lat.astype(np.int64)}))
        if portions is not None:  # experiment.portions.PortionCounter
            store.atomic_write_csv(d / "portions.csv", portions.table())
        if sampler is not None and self.config.sampling.pages and sampler.times:
            extra = portions.npz_arrays() if portions is not None else {}
            store.atomic_write_npz(d / "pages.npz", **sampler.page_matrices(), **extra)
        if not len(timeline):
            return
        metrics = compute(
            timeline,
            child,
            config=self.config,
            page_size=int(PAGE_SIZE),
            pss_empty=pss_empty,
            pss_spawned=pss_spawned,
            latencies_ns=lat,
            cold_thresholds=list(self.config.sampling.cold_thresholds),
            interval=float(self.config.sampling.interval),
            state_pages=state_info["count"] if state_info else None,
            state_tracked_pages=state_info["tracked"] if state_info else None,
        )
        metrics["spawn_s"] = spawn_s
        metrics["pageout_bytes"] = self.pageout_bytes
        if portions is not None:
            metrics.update(portions.metrics(timeline, self.config, int(child.get("useful_bytes", 0))))
        store.atomic_write_json(d / "metrics.json", store.check_metrics("run", metrics))
