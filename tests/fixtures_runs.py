"""Run directories in the exact store format (docs/internals.md), built with the
store's own writers, so the report layer is tested without running anything.

Every value is chosen here, so tests can check the report against it exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from locality.experiment import store

PAGE = 4096
PORTION_NAMES = ("worker_state", "coroutine_frames", "scheduler", "runtime_heap", "native_heap", "code", "stacks", "other")


def make_run(
    out: Path,
    run_id: str,
    layout: str = "slab",
    *,
    workers: int = 1000,
    bytes_per_worker: float = 100.0,
    page_utilization: float = 0.5,
    refault_rate: float = 0.0,
    samples: int = 6,
    interval: float = 0.5,
    regions: tuple[tuple[str, int], ...] = (("arena", 48), ("heap", 16)),
    written: np.ndarray | None = None,
    resident: np.ndarray | None = None,
    with_pages: bool = True,
    with_latency: bool = True,
    with_timeline: bool = True,
    with_metrics: bool = True,
    status: str = "complete",
    error: str | None = None,
    config: dict[str, Any] | None = None,
    portions: dict[str, tuple[int, float]] | None = None,
) -> Path:
    run_dir = store.new_run_dir(out, "run", run_id=run_id)
    cfg = config if config is not None else {
        "workers": workers, "layout": layout, "scheduler": "lean",
        "pattern": {"name": "sheet", "p": 0.01}, "steps": samples * 10, "seed": 1,
    }
    manifest = store.start_manifest("run", run_id, cfg, capabilities={
        "mincore": {"available": True, "reason": "", "hint": ""},
        "swap": {"available": False, "reason": "no swap device is active", "hint": "locality swap on"},
    })
    manifest["machine"]["page_size"] = PAGE
    manifest["page_sizes_seen"] = [PAGE]
    manifest.update(status=status, error=error, finished=store.utcnow())
    n_pages = sum(n for _, n in regions)
    t = np.arange(samples, dtype=np.float64) * interval
    if written is None:
        # Sample k writes pages [k, k + 8): a sliding window, so ages are known.
        written = np.zeros((samples, n_pages), dtype=bool)
        for k in range(samples):
            written[k, k : k + 8] = True
    if resident is None:
        resident = np.zeros((samples, n_pages), dtype=bool)
        resident[:, : n_pages // 2] = True
    if with_timeline:
        resident_pages = resident.sum(axis=1)
        store.atomic_write_csv(run_dir / "timeline.csv", pd.DataFrame({
            "t": t, "rss_bytes": resident_pages * PAGE, "pss_bytes": resident_pages * PAGE, "swap_bytes": 0,
            "step": np.arange(samples) * 10, "activations": 10 * workers // 100,
            "written_pages": written.sum(axis=1), "resident_pages": resident_pages, "swapped_pages": 0,
            "major_faults": 0, "minor_faults": 0, "refaulted_pages": 0,
        }))
    if with_pages:
        region_index = np.concatenate([np.full(n, i, dtype=np.int32) for i, (_, n) in enumerate(regions)])
        store.atomic_write_npz(
            run_dir / "pages.npz",
            t=t,
            page_addr=(0x7F0000000000 + np.arange(n_pages, dtype=np.uint64) * PAGE).astype(np.uint64),
            region=region_index,
            regions=np.array([name for name, _ in regions]),
            written=store.pack_bits(written),
            resident=store.pack_bits(resident),
            swapped=store.pack_bits(np.zeros_like(resident)),
            n_pages=np.int64(n_pages),
            # With portions: the first region's pages are worker state, the others runtime heap.
            **({"portion": np.where(region_index == 0, 0, 3).astype(np.int8),
                "portion_names": np.array(PORTION_NAMES)} if portions else {}),
        )
    if with_latency:
        store.atomic_write_csv(run_dir / "latency.csv", pd.DataFrame({"latency_ns": np.arange(1, 101) * 1000}))
    if with_metrics:
        store.atomic_write_json(run_dir / "metrics.json", {
            "workers": workers, "layout": layout, "scheduler": "lean", "pattern": "sheet",
            "bytes_per_worker": bytes_per_worker, "page_utilization": page_utilization,
            "wss_pages_mean": float(written.sum(axis=1).mean()),
            "wss_bytes_mean": float(written.sum(axis=1).mean() * PAGE),
            "cold_fraction": {"1 s": 0.5, "10 s": 0.25},
            "refault_rate_pct_per_min": refault_rate, "latency_p50_us": 50.5, "latency_p99_us": 99.01,
            "activations_per_s": 12345.0, "sampler_overhead_pct": 0.8, "relocation_ms_per_step": 0.0,
            "swapped_pages_max": 0,
            **({"portions": {name: {"resident_bytes": rb, "wss_bytes_mean": wss} for name, (rb, wss) in portions.items()},
                "mixed_pages": 3} if portions else {}),
        })
    store.write_manifest(run_dir, manifest)
    return run_dir


def make_probe(out: Path, run_id: str = "probe-1", pid: int = 4242, samples: int = 5) -> Path:
    """A `locality probe` run of a foreign PID: one timeline row per (sample, VMA)."""
    run_dir = store.new_run_dir(out, "probe", run_id=run_id)
    manifest = store.start_manifest("probe", run_id, {"pid": pid, "interval": 1.0, "duration": samples})
    manifest.update(status="complete", finished=store.utcnow())
    vmas = [
        (0x400000, 0x800000, "r-xp", "/usr/lib/erlang/erts/beam.smp"),
        (0x7F0000000000, 0x7F0004000000, "rw-p", ""),
        (0x7F1000000000, 0x7F1000100000, "rw-p", "[heap]"),
    ]
    rows = []
    for k in range(samples):
        for i, (start, end, perms, path) in enumerate(vmas):
            rss = (i + 1) * (k + 1) * 100 * PAGE
            rows.append({"t": float(k), "vma": i, "start": start, "end": end, "perms": perms, "path": path,
                         "rss_bytes": rss, "pss_bytes": rss, "swap_bytes": 0, "referenced_bytes": rss // 2,
                         "resident_pages": rss // PAGE, "swapped_pages": 0})
    store.atomic_write_csv(run_dir / "timeline.csv", pd.DataFrame(rows))
    store.write_manifest(run_dir, manifest)
    return run_dir
