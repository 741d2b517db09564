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
    cold: dict[str, float] | None = None,
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
            "cold_fraction": cold if cold is not None else {"1 s": 0.5, "10 s": 0.25},
            "refault_rate_pct_per_min": refault_rate, "latency_p50_us": 50.5, "latency_p99_us": 99.01,
            "activations_per_s": 12345.0, "sampler_overhead_pct": 0.8, "relocation_ms_per_step": 0.0,
            "swapped_pages_max": 0,
            **({"portions": {name: {"resident_bytes": rb, "wss_bytes_mean": wss} for name, (rb, wss) in portions.items()},
                "mixed_pages": 3} if portions else {}),
        })
    store.write_manifest(run_dir, manifest)
    return run_dir


def make_probe(out: Path, run_id: str = "probe-1", pid: int = 4242, samples: int = 5, track_refs: bool = True,
               with_pages: bool = False) -> Path:
    """A `locality probe` run of a foreign PID: one timeline row per (sample, VMA).

    VMA i holds (i + 1) x (k + 1) x 100 resident pages at sample k, half of them
    referenced (from sample 1 on, with ``track_refs``); the anonymous VMA also has
    k x 10 pages swapped. With ``with_pages``, pages.npz holds the matching matrices.
    """
    run_dir = store.new_run_dir(out, "probe", run_id=run_id)
    manifest = store.start_manifest("probe", run_id, {"pid": pid, "interval": 1.0, "duration": samples,
                                                      "track_refs": track_refs})
    manifest["machine"]["page_size"] = PAGE
    manifest.update(status="complete", finished=store.utcnow())
    rows = []
    for k in range(samples):
        for i, (start, end, perms, path) in enumerate(PROBE_VMAS):
            rss = (i + 1) * (k + 1) * 100 * PAGE
            swap = k * 10 * PAGE if path == "" else 0
            rows.append({"t": float(k), "vma": i, "start": start, "end": end, "perms": perms, "path": path,
                         "rss_bytes": rss, "pss_bytes": rss, "swap_bytes": swap,
                         "referenced_bytes": rss // 2 if track_refs and k > 0 else None,
                         "resident_pages": rss // PAGE, "swapped_pages": swap // PAGE})
    store.atomic_write_csv(run_dir / "timeline.csv", pd.DataFrame(rows))
    if with_pages:
        # Each VMA's first 1,000 pages are tracked; resident: the (i + 1) x (k + 1) x 100 first.
        n_per = 1000
        resident = np.zeros((samples, n_per * len(PROBE_VMAS)), dtype=bool)
        swapped = np.zeros_like(resident)
        for k in range(samples):
            for i, (_, _, _, path) in enumerate(PROBE_VMAS):
                resident[k, i * n_per: i * n_per + (i + 1) * (k + 1) * 100] = True
                if path == "":
                    swapped[k, (i + 1) * n_per - k * 10: (i + 1) * n_per] = True
        store.atomic_write_npz(
            run_dir / "pages.npz", t=np.arange(samples, dtype=np.float64),
            page_addr=np.concatenate([np.uint64(s) + np.arange(n_per, dtype=np.uint64) * PAGE for s, *_ in PROBE_VMAS]),
            region=np.repeat(np.arange(len(PROBE_VMAS), dtype=np.int32), n_per),
            regions=np.array([f"{s:#x}-{e:#x} {perms} {path}".strip() for s, e, perms, path in PROBE_VMAS]),
            resident=store.pack_bits(resident), swapped=store.pack_bits(swapped), n_pages=np.int64(resident.shape[1]))
    store.write_manifest(run_dir, manifest)
    return run_dir


PROBE_VMAS = [
    (0x400000, 0x800000, "r-xp", "/usr/lib/erlang/erts/beam.smp"),
    (0x7F0000000000, 0x7F0004000000, "rw-p", ""),
    (0x7F1000000000, 0x7F1000100000, "rw-p", "[heap]"),
]

# The classes a VM run records (locality.experiment.beam.classify), long names included.
BEAM_CLASSES = [
    ("process heaps and structs (grew at spawn: eheap_alloc, fix_alloc)", 0x7F2000000000, 3000),
    ("other anonymous (allocator carriers, thread stacks, process table)", 0x7F3000000000, 1000),
    ("malloc heap (sys_alloc carriers)", 0x5600000000, 500),
]


def make_beam(out: Path, run_id: str = "beam-1", processes: int = 100_000, samples: int = 4) -> Path:
    """A `locality beam` run: vmas.csv with classes, pages.npz, and the VM's metrics."""
    run_dir = store.new_run_dir(out, "beam", run_id=run_id)
    manifest = store.start_manifest("beam", run_id, {"processes": processes, "pattern": "sheet", "p": 0.01,
                                                     "interval": 1.0, "track_refs": True, "pid": 777})
    manifest["machine"]["page_size"] = PAGE
    manifest.update(status="complete", finished=store.utcnow())
    rows, timeline = [], []
    for k in range(samples):
        for i, (cls, start, pages) in enumerate(BEAM_CLASSES):
            rows.append({"t": float(k), "vma": i, "start": start, "end": start + pages * PAGE, "perms": "rw-p",
                         "path": "[heap]" if cls.startswith("malloc") else "", "class": cls,
                         "rss_bytes": pages * PAGE, "pss_bytes": pages * PAGE, "swap_bytes": 0,
                         "referenced_bytes": pages * PAGE // (i + 2), "window_age_s": float(k),
                         "resident_pages": pages, "swapped_pages": 0})
        total = sum(p for _, _, p in BEAM_CLASSES)
        timeline.append({"t": float(k), "rss_bytes": total * PAGE, "pss_bytes": total * PAGE, "swap_bytes": 0,
                         "resident_pages": total, "swapped_pages": 0})
    store.atomic_write_csv(run_dir / "vmas.csv", pd.DataFrame(rows))
    store.atomic_write_csv(run_dir / "timeline.csv", pd.DataFrame(timeline))
    n = sum(p for _, _, p in BEAM_CLASSES)
    resident = np.ones((samples, n), dtype=bool)
    resident[:, :500] = False  # the first 500 pages of the process heaps are never resident
    store.atomic_write_npz(
        run_dir / "pages.npz", t=np.arange(samples, dtype=np.float64),
        page_addr=np.concatenate([np.uint64(s) + np.arange(p, dtype=np.uint64) * PAGE for _, s, p in BEAM_CLASSES]),
        region=np.repeat(np.arange(len(BEAM_CLASSES), dtype=np.int32), [p for *_, p in BEAM_CLASSES]),
        regions=np.array([f"{c} {s:#x}" for c, s, _ in BEAM_CLASSES]),
        resident=store.pack_bits(resident), swapped=store.pack_bits(np.zeros_like(resident)), n_pages=np.int64(n))
    store.atomic_write_csv(run_dir / "latency.csv", pd.DataFrame({"latency_ns": np.arange(1, 101) * 2000}))
    store.atomic_write_json(run_dir / "metrics.json", {
        "workers": processes, "layout": "beam", "scheduler": "beam", "pattern": "sheet",
        "bytes_per_worker": 2650.0, "bytes_per_process_erlang": 2704.0, "bytes_per_process_vm": 2690.0,
        "bytes_per_process_rss": 2612.0, "bytes_per_process_pss": 2650.0,
        "referenced_by_class": {"1": {c: {"referenced_bytes": p * PAGE // (i + 2), "rss_bytes": p * PAGE,
                                          "referenced_fraction": 1 / (i + 2)}
                                      for i, (c, _, p) in enumerate(BEAM_CLASSES)},
                                "10": {c: {"referenced_bytes": p * PAGE, "rss_bytes": p * PAGE, "referenced_fraction": 1.0}
                                       for c, _, p in BEAM_CLASSES}},
        "cold_fraction": {"1": 0.6, "10": 0.0}, "latency_p50_us": 101.0, "latency_p99_us": 199.0,
        "activations_per_s": 50000.0, "sampler_overhead_pct": 1.0, "refault_rate_pct_per_min": None,
    })
    store.write_manifest(run_dir, manifest)
    return run_dir

SWEEP_BYTES = {("sheet", "objects"): 1000.0, ("sheet", "slab"): 100.0, ("sheet", "clustered"): 50.0,
               ("uniform", "objects"): 2000.0, ("uniform", "slab"): 400.0, ("uniform", "clustered"): 200.0}


def sweep_config(layout: str, pattern: str, policy: str, workers: int = 1000) -> dict[str, Any]:
    """A worker run's config as the runner stores it (the fields the report groups by)."""
    params = {"sheet": {"name": "sheet", "p": 0.01, "radius": 3, "waves": 2}, "uniform": {"name": "uniform", "p": 0.01}}[pattern]
    reclaim = {"policy": policy, "idle_seconds": 5.0 if policy == "pageout-idle" else None, "limit": None}
    return {"workers": workers, "scheduler": "lean", "layout": layout, "arena": "anon", "pattern": params, "steps": 60,
            "step_interval": 0.05, "seed": 1, "out": "runs/thesis", "name": None, "sampling": {"interval": 0.5},
            "reclaim": reclaim}


def make_sweep(out: Path) -> list[Path]:
    """A 3 layouts x 2 patterns x 2 policies sweep, stored two levels deep (as under runs/), plus
    one directory that is not a run and one run whose metrics cannot be read."""
    dirs = []
    for policy in ("none", "pageout-idle"):
        for pattern in ("sheet", "uniform"):
            for layout in ("objects", "slab", "clustered"):
                point = f"layout={layout}+pattern.name={pattern}+reclaim.policy={policy}-0123abcd"
                dirs.append(make_run(out / "thesis" / policy, point, layout, config=sweep_config(layout, pattern, policy),
                                     bytes_per_worker=SWEEP_BYTES[pattern, layout],
                                     refault_rate=1.5 if policy == "pageout-idle" else 0.0,
                                     cold={"1": 0.5, "5": 0.4, "10": 0.25, "30": 0.125}))
    (out / "thesis" / "scratch").mkdir()
    (out / "thesis" / "scratch" / "notes.txt").write_text("not a run\n")
    broken = make_run(out / "thesis", "broken", "slab")
    (broken / "metrics.json").write_text("{not json")
    return dirs
