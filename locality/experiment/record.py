"""What a run keeps: one timeline row per sample, then the run's files.

``RunRecord.sample`` measures the child from outside (smaps_rollup, fault
counters, and the sampler's page state when sampling) and appends a row;
every few seconds the new rows are appended to timeline.csv and the new
page-matrix rows stored as a chunk (appendstore), so a killed runner loses
at most the last interval. ``RunRecord.write`` stores timeline.csv,
latency.csv, pages.npz and metrics.json whole (docs/internals.md), whatever
the status.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from locality.errors import LocalityError
from locality.experiment import store
from locality.experiment.appendstore import AppendStore
from locality.experiment.config import ExperimentConfig
from locality.experiment.metrics import _tkey, compute


class RunRecord:
    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = []
        self.window = {"activations": 0, "useful_bytes": 0}
        self.step = 0
        self.pageout_bytes = 0
        self.disk = AppendStore(run_dir)
        self.rows_on_disk = 0
        self.pages_on_disk = 0

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
        if self.disk.due(now):
            self.flush(sampler)
        return row

    def flush(self, sampler: Any) -> None:
        """Put the rows taken since the last flush on disk (appendstore)."""
        self.disk.append(pd.DataFrame(self.rows[self.rows_on_disk:]))
        self.rows_on_disk = len(self.rows)
        if sampler is not None and self.config.sampling.pages and len(sampler.rows) > self.pages_on_disk:
            self.disk.chunk(sampler.page_matrices(self.pages_on_disk))
            self.pages_on_disk = len(sampler.rows)

    def write(self, *, child: dict[str, Any], latency_path: Path, sampler: Any, pss_empty: int | None,
              pss_spawned: int | None, spawn_s: float | None, state_info: dict[str, Any] | None,
              portions: Any = None, rollup_empty: dict[str, int] | None = None,
              rollup_spawned: dict[str, int] | None = None) -> None:
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
        matrices = sampler.page_matrices() if sampler is not None and sampler.times else None
        keep = matrices is not None and self.config.sampling.pages
        extra = portions.npz_arrays() if keep and portions is not None else {}
        self.disk.finish_pages({**matrices, **extra} if keep else None)
        if not len(timeline):
            return
        metrics = compute(
            timeline,
            child,
            config=self.config,
            page_size=int(PAGE_SIZE),
            pss_empty=pss_empty,
            pss_spawned=pss_spawned,
            rollup_empty=rollup_empty,
            rollup_spawned=rollup_spawned,
            latencies_ns=lat,
            cold_thresholds=list(self.config.sampling.cold_thresholds),
            interval=float(self.config.sampling.interval),
            state_pages=state_info["count"] if state_info else None,
            state_tracked_pages=state_info["tracked"] if state_info else None,
        )
        metrics["spawn_s"] = spawn_s
        metrics["pageout_bytes"] = self.pageout_bytes
        from locality.experiment.ceiling import ceiling_metrics

        metrics.update(ceiling_metrics(self.config, timeline, metrics))
        if portions is not None:
            metrics.update(portions.metrics(timeline, self.config, int(child.get("useful_bytes", 0))))
        if len(timeline) > 1:
            from locality.experiment.paging import run_metrics

            try:
                metrics.update(run_metrics(self.config, timeline, matrices or {}, int(PAGE_SIZE)))
            except Exception as e:  # the measured figures are still worth storing (tests want the error)
                if os.environ.get("LOCALITY_STRICT_SCHEMA") == "1":
                    raise
                metrics["paging_error"] = f"{type(e).__name__}: {e}"
        store.atomic_write_json(d / "metrics.json", store.check_metrics("run", metrics))
