"""metrics.json from one run's measurements (definitions: DESIGN.md "Metrics").

Pure functions of the timeline and the child's counters, so a report can
recompute them from a stored run alone.

- bytes_per_worker = (USS after spawn - USS of the same child before spawn) / N,
  USS = Private_Clean + Private_Dirty, both read by the parent from
  /proc/CHILD/smaps_rollup (owned_empty_bytes, owned_spawned_bytes): what the
  population itself owns. bytes_per_worker_pss is the same growth of PSS,
  which also moves with whatever else shares the child's file pages.
- page_utilization = useful bytes of the activations in the full sampling
  windows (from the layout; with windows aligned to steps each woken worker's
  bytes count once per window, however often it woke in it, so the figure is
  a share <= 1) / (sum over those windows of written pages x page
  size). A run's last, shorter window is left out (as for WSS): how many steps
  it holds is a matter of timing.
- wss_pages_mean = mean written pages per full sampling window.
  Both are whole-process figures: every tracked page (arenas, heap,
  interpreter, coroutine frames) counts.
- state_page_utilization, state_wss_pages_mean: the same, restricted to the
  pages holding worker state (timeline column written_state_pages: the
  layout's arenas, or the objects' heap pages right after spawn);
  state_pages = how many pages hold state, state_tracked_pages = how many of
  them were tracked (all of them unless the heap was not sampled).
- cold_fraction[T] = mean, over samples taken at least T s after tracking
  began, of (populated pages not written for T s) / populated pages, where
  populated = present or swapped (or paged out by us): a reclaim policy does
  not hide the pages it moved out.
- refault_rate_pct_per_min = pages brought back from swap (or re-read after
  our pageout) per minute, as % of wss_pages_mean; major_faults_per_min
  beside it from /proc/CHILD/stat.
- sampler_overhead_pct = time the sampler spent sampling / wall time of the
  sampled phase (its duty cycle: the child is never stopped, so this bounds
  the CPU taken from it on a busy machine). The throughput cost on the child
  is measured side by side by `locality bench sampler`. The reclaim policy's
  own work is not part of it.
- reclaim_overhead_pct = time the reclaim policy spent choosing and paging
  out pages (timeline column policy_ms) / wall time of the sampled phase;
  its cost to the workers shows up as refaults and latency.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

OVERHEAD_KIND = "sampler duty cycle: sampling time / wall time of the sampled phase"


def compute(
    timeline: pd.DataFrame,
    child: Mapping[str, Any],
    *,
    config: Any,
    page_size: int,
    pss_empty: int | None,
    pss_spawned: int | None,
    latencies_ns: np.ndarray,
    cold_thresholds: list[float],
    interval: float,
    state_pages: int | None = None,
    state_tracked_pages: int | None = None,
    rollup_empty: Mapping[str, int] | None = None,
    rollup_spawned: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    n = int(config.workers)
    steps = int(child.get("steps", 0))
    acts = int(child.get("activations", 0))
    step_ns = int(child.get("step_ns", 0))
    out: dict[str, Any] = {
        "workers": n,
        "layout": config.layout,
        "scheduler": config.scheduler,
        "pattern": config.pattern.name,
        "arena": config.arena,
        "reclaim": config.reclaim.policy,
        "steps": steps,
        "activations": acts,
        "page_size": page_size,
    }
    out["pss_empty_bytes"] = pss_empty
    out["pss_spawned_bytes"] = pss_spawned
    out["bytes_per_worker_pss"] = (pss_spawned - pss_empty) / n if pss_empty is not None and pss_spawned is not None else None
    owned_empty, owned_spawned = owned_bytes(rollup_empty), owned_bytes(rollup_spawned)
    out["owned_empty_bytes"] = owned_empty
    out["owned_spawned_bytes"] = owned_spawned
    out["bytes_per_worker"] = (owned_spawned - owned_empty) / n if owned_empty is not None and owned_spawned is not None else None

    resident_sampled = interval > 0 and "written_pages" in timeline and len(timeline) > 1
    sampled = resident_sampled and bool(config.sampling.writes)  # written sets measured
    windows = timeline.iloc[1:] if resident_sampled else timeline.iloc[0:0]
    useful = int(child.get("useful_bytes", 0))
    out["useful_bytes"] = useful
    full = windows
    if sampled:
        full = timeline.iloc[full_windows(timeline, interval, getattr(config, "window_steps", None))]
    # Utilization over the full windows only, with their own useful bytes: the
    # run's last window is cut short at a moment set by timing (4 steps or 40),
    # and its few steps rewrite the interpreter's pages as a full window does,
    # which moved the figure by 12% between repeats of one config.
    # Without per-window useful bytes (older runs) all windows count.
    util, useful_w = windows, useful
    if sampled and "useful_bytes" in full and len(full) < len(windows):
        util, useful_w = full, int(full["useful_bytes"].sum())
    written_total = int(util["written_pages"].sum()) if sampled else 0
    out["page_utilization"] = useful_w / (written_total * page_size) if written_total else None
    out["wss_pages_mean"] = float(full["written_pages"].mean()) if sampled else None
    out["wss_bytes_mean"] = out["wss_pages_mean"] * page_size if out["wss_pages_mean"] is not None else None

    # Worker state only: same windows, same useful bytes, the state pages' writes.
    out["state_pages"] = state_pages
    out["state_tracked_pages"] = state_tracked_pages
    state_sampled = sampled and "written_state_pages" in timeline and bool(state_tracked_pages)
    state_total = int(util["written_state_pages"].sum()) if state_sampled else 0
    out["state_page_utilization"] = useful_w / (state_total * page_size) if state_total else None
    if state_sampled:
        out["state_wss_pages_mean"] = float(full["written_state_pages"].mean())
    else:
        out["state_wss_pages_mean"] = None
    out["state_wss_bytes_mean"] = out["state_wss_pages_mean"] * page_size if out["state_wss_pages_mean"] is not None else None

    cold: dict[str, float | None] = {}
    for t in cold_thresholds:
        col = f"cold_pages_{_tkey(t)}"
        if sampled and col in timeline:
            rows = timeline[(timeline["t"] - timeline["t"].iloc[0] >= t) & (timeline["populated_pages"] > 0)]
            cold[_tkey(t)] = float((rows[col] / rows["populated_pages"]).mean()) if len(rows) else None
        else:
            cold[_tkey(t)] = None
    out["cold_fraction"] = cold

    minutes = (timeline["t"].iloc[-1] - timeline["t"].iloc[0]) / 60 if len(timeline) > 1 else 0.0
    out["duration_s"] = float(minutes * 60)
    if resident_sampled and minutes > 0:
        refaulted = int(windows["refaulted_pages"].sum())
        out["refaulted_pages"] = refaulted
        per_min = refaulted / minutes
        out["refaults_per_min"] = per_min
        wssm = out["wss_pages_mean"]
        out["refault_rate_pct_per_min"] = 100.0 * per_min / wssm if wssm else None
    else:
        out["refaulted_pages"] = None
        out["refaults_per_min"] = None
        out["refault_rate_pct_per_min"] = None
    if minutes > 0 and "major_faults" in timeline:
        out["major_faults_per_min"] = float(timeline["major_faults"].iloc[-1] - timeline["major_faults"].iloc[0]) / minutes
    else:
        out["major_faults_per_min"] = None
    if minutes > 0 and "minor_faults" in timeline:
        # Write tracking shows up here: one write-protect fault per page written per window.
        out["minor_faults_per_s"] = float(timeline["minor_faults"].iloc[-1] - timeline["minor_faults"].iloc[0]) / (minutes * 60)
    else:
        out["minor_faults_per_s"] = None
    out["swapped_pages_max"] = int(timeline["swapped_pages"].max()) if "swapped_pages" in timeline and len(timeline) else 0
    # Memory the policy moved out: swap of the child (smaps_rollup) per sample.
    out["memory_saved_bytes_mean"] = float(timeline["swap_bytes"].iloc[1:].mean()) if len(timeline) > 1 else 0.0

    lat = np.asarray(latencies_ns, dtype=np.float64)
    out["latency_p50_us"] = float(np.percentile(lat, 50) / 1e3) if lat.size else None
    out["latency_p99_us"] = float(np.percentile(lat, 99) / 1e3) if lat.size else None
    out["activations_per_s"] = acts / (step_ns / 1e9) if step_ns else None
    cpu_ns = int(child.get("step_cpu_ns", 0))
    # Per CPU second of the stepping thread (includes its kernel time, e.g. write-protect faults).
    out["activations_per_cpu_s"] = acts / (cpu_ns / 1e9) if cpu_ns else None
    out["relocation_ms_per_step"] = int(child.get("relocation_ns", 0)) / 1e6 / steps if steps else None

    def duty_pct(column: str) -> float | None:
        if not (resident_sampled and column in timeline and minutes > 0):
            return None
        return 100.0 * float(timeline[column].iloc[1:].sum() / 1e3) / (minutes * 60)

    out["sampler_overhead_pct"] = duty_pct("sample_ms")
    out["reclaim_overhead_pct"] = duty_pct("policy_ms")
    out["sampler_overhead_kind"] = OVERHEAD_KIND
    return out


# What the child owns: its private pages (USS). PSS also moves with whatever
# else maps the same files (423-746 B per worker over repeats of one config).
OWNED_KEYS = ("private_clean", "private_dirty")


def owned_bytes(rollup: Mapping[str, int] | None) -> int | None:
    """USS of a process from its smaps_rollup totals."""
    return None if rollup is None else sum(int(rollup[k]) for k in OWNED_KEYS)


def full_windows(timeline: pd.DataFrame, interval: float, steps_per_window: int | None = None) -> np.ndarray:
    """Row positions of the sample windows a mean WSS is taken over: with
    windows aligned to steps (config.window_steps), those of exactly that
    many steps; else every window after the first sample at least 0.9
    intervals long. All windows if none qualifies."""
    if len(timeline) < 2:
        return np.empty(0, np.int64)
    if steps_per_window and "step" in timeline:
        full = np.flatnonzero(np.diff(timeline["step"].to_numpy()) == steps_per_window) + 1
    else:
        t = timeline["t"].to_numpy(dtype=np.float64)
        full = np.flatnonzero(np.diff(t) >= 0.9 * interval) + 1
    return full if full.size else np.arange(1, len(timeline))


def _tkey(t: float) -> str:
    """Threshold as a JSON key: 5.0 -> '5', 0.5 -> '0.5'."""
    return f"{t:g}"
