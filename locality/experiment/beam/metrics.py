"""What the processes cost at spawn, and the run's metrics from the VM's and the kernel's figures."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from locality.experiment.beam.classes import _AddressClasses, grown_at_spawn
from locality.experiment.beam.config import DOCUMENTED_FRESH_PROCESS_BYTES, BeamConfig, harness_schedule
from locality.experiment.beam.sampler import WindowSampler, _totals, drive_steps
from locality.experiment.beam.vm import BeamVM
from locality.kernel.procfs import smaps

def _spawn_timeout(n: int) -> float:
    return 60.0 + n / 5_000  # 1M processes: a few seconds here, generous for slow CI


@dataclass
class SpawnAccount:
    """What spawning the population cost, by the VM's accounting and by the kernel's."""

    bytes_per_process: dict[str, Any]
    smaps_after: list[Any]
    classes: "_AddressClasses"
    growth_by_class: dict[str, int]
    allocator_growth: dict[str, dict[str, int]]
    totals_before: dict[str, int]
    totals_after: dict[str, int]
    reports: dict[str, Any]  # the VM's raw answers


def account_spawn(vm: BeamVM, n: int, say: Callable[[str], None]) -> SpawnAccount:
    """Measure the empty VM, spawn ``n`` processes, measure again: the difference
    is what the processes cost, in the VM's words and in resident pages."""
    smaps_before = smaps(vm.pid)
    alloc_before = vm.request("allocators", "allocators")
    say(f"spawning {n:,} processes in the Erlang VM (OS pid {vm.pid})")
    ready = vm.request("spawn", "ready", timeout=_spawn_timeout(n))
    time.sleep(0.2)  # let the schedulers settle into idle
    smaps_after = smaps(vm.pid)
    mem = vm.request("memory", "memory", timeout=_spawn_timeout(n))
    alloc_after = vm.request("allocators", "allocators")
    binaries = vm.request("binaries", "binaries")["addresses"]
    before, after = _totals(smaps_before), _totals(smaps_after)

    classes = _AddressClasses(smaps_after, grown_at_spawn(smaps_before, smaps_after), binaries)
    growth_by_class: dict[str, int] = {}
    for sign, entries in ((1, smaps_after), (-1, smaps_before)):
        for e in entries:
            c = classes(e)
            growth_by_class[c] = growth_by_class.get(c, 0) + sign * e.rss

    # The coordinator's tuple of pids (8 bytes a process) is addressing, not the processes.
    processes_delta = mem["memory"]["processes"] - ready["memory_before"]["processes"]
    coordinator_delta = mem["coordinator_memory"] - ready["coordinator_memory_before"]
    bpp: dict[str, Any] = {
        "bytes_per_process_erlang": mem["workers_memory_sum"] / n,
        "bytes_per_process_vm": (processes_delta - coordinator_delta) / n,
        "bytes_per_process_memory_processes": mem["memory"]["processes"] / n,
        "bytes_per_process_rss": (after["rss_bytes"] - before["rss_bytes"]) / n,
        "bytes_per_process_pss": (after["pss_bytes"] - before["pss_bytes"]) / n,
        "pid_table_bytes_per_process": coordinator_delta / n,
    }
    ratio = bpp["bytes_per_process_rss"] / bpp["bytes_per_process_vm"] if bpp["bytes_per_process_vm"] else None
    bpp["rss_vs_vm_ratio"] = ratio
    bpp["rss_vs_vm_agree_15pct"] = ratio is not None and abs(ratio - 1) <= 0.15
    return SpawnAccount(
        bytes_per_process=bpp, smaps_after=smaps_after, classes=classes, growth_by_class=growth_by_class,
        allocator_growth={
            a: {k: alloc_after["allocators"][a][k] - alloc_before["allocators"].get(a, {}).get(k, 0)
                for k in ("carriers_bytes", "blocks_bytes")}
            for a in alloc_after["allocators"]
        },
        totals_before=before, totals_after=after,
        reports={"hello": vm.hello, "ready": ready, "memory_after_spawn": mem, "allocators_before": alloc_before,
                 "allocators_after": alloc_after, "binary_probe": binaries},
    )


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _measure(vm: BeamVM, cfg: BeamConfig, progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    n = cfg.processes
    account = account_spawn(vm, n, say)
    if cfg.schedule == "harness":
        # Queued before the first window opens, so parsing it is not counted as the VM's accesses.
        for ids in harness_schedule(cfg):
            vm.send("ids " + " ".join(map(str, ids.tolist())))
        vm.request("ping", "pong")
    sampler = WindowSampler(vm.pid, cfg, account)
    say(f"running {cfg.n_steps} steps of {cfg.pattern} activation, p={cfg.p}, every {cfg.interval:g} s")
    steps, lat = drive_steps(vm, sampler, progress)
    mem_end = vm.request("memory", "memory", timeout=_spawn_timeout(n))

    mem, ready = account.reports["memory_after_spawn"], account.reports["ready"]
    alloc_after = account.reports["allocators_after"]
    activations = sum(s["activated"] for s in steps)
    busy_s = sum(s["elapsed_us"] for s in steps) / 1e6
    wall = sampler.now()
    track, watch = cfg.track_refs, cfg.pageout_watch
    hot = sampler.hot_regions()
    shortest = hot.get(f"{sampler.windows[0]:g}", {})
    wss_bytes = sum(v["referenced_bytes"] for v in shortest.values()) if track else None
    rows = sampler.rows
    metrics = {
        "workers": n, "layout": "beam", "scheduler": "beam", "pattern": cfg.pattern, "p": cfg.p,
        "hibernate": cfg.hibernate, "min_heap_size": cfg.min_heap_size, "state_init": cfg.state_init,
        "schedule": cfg.schedule,
        "otp_release": vm.hello["otp_release"], "erts_version": vm.hello["erts_version"],
        "bytes_per_worker": account.bytes_per_process["bytes_per_process_pss"],
        **account.bytes_per_process,
        "documented_fresh_process_bytes": DOCUMENTED_FRESH_PROCESS_BYTES,
        "workers_hibernated": mem["workers_hibernated"], "workers_heap_words_sum": mem["workers_heap_words_sum"],
        "spawn_s": ready["spawn_ms"] / 1000,
        "rss_before_spawn_bytes": account.totals_before["rss_bytes"], "rss_after_spawn_bytes": account.totals_after["rss_bytes"],
        "pss_before_spawn_bytes": account.totals_before["pss_bytes"], "pss_after_spawn_bytes": account.totals_after["pss_bytes"],
        "erlang_memory_before": ready["memory_before"], "erlang_memory_after_spawn": mem["memory"],
        "erlang_memory_end": mem_end["memory"],
        "allocator_growth_at_spawn": account.allocator_growth,
        "allocators_after_spawn": alloc_after["allocators"], "carriers_after_spawn": alloc_after["carriers"],
        "mseg_after_spawn": alloc_after["mseg"],
        "rss_growth_at_spawn_by_class": account.growth_by_class,
        "cold_fraction": {k: _mean(v) for k, v in sampler.cold.items()} if track else {},
        "cold_fraction_anon": {k: _mean(v) for k, v in sampler.cold_anon.items()} if track else {},
        "cold_fraction_windows_measured": {k: len(v) for k, v in sampler.window_age.items()},
        "cold_fraction_window_age_s": {k: _mean(v) for k, v in sampler.window_age.items()},
        "referenced_by_class": hot if track else {},
        "untouched_after_pageout": {k: _mean(v) for k, v in sampler.untouched_after_pageout.items()} if watch else {},
        "refault_rate_pct_per_min": sampler.refault_rate_pct_per_min(),
        "pageouts": sampler.pageouts,
        "wss_bytes_mean": wss_bytes,
        "wss_pages_mean": wss_bytes // sampler.tracked.page_size if wss_bytes is not None else None,
        "step_elapsed_us_after_pageout": _median([s["elapsed_us"] for s in steps if s["after_pageout"]]),
        "step_elapsed_us_other": _median([s["elapsed_us"] for s in steps if not s["after_pageout"]]),
        "major_faults": rows[-1]["major_faults"] if rows else 0,
        "swapped_pages_max": max((r["swapped_pages"] for r in rows), default=0),
        "steps": len(steps), "activations": activations,
        "activations_per_s": activations / busy_s if busy_s > 0 else None,
        "latency_p50_us": float(np.percentile(lat, 50)) / 1000 if lat.size else None,
        "latency_p99_us": float(np.percentile(lat, 99)) / 1000 if lat.size else None,
        "sampler_overhead_pct": 100 * sampler.sampling_s / wall if wall > 0 else None,
        "tracked_pages": int(sampler.tracked.addr.size),
    }
    sizes = sorted({e.kernel_page_size for e in account.smaps_after if e.kernel_page_size} |
                   ({2 << 20} if any(e.anon_huge for e in account.smaps_after) else set()))
    return {
        "metrics": metrics, "timeline": pd.DataFrame(rows), "vmas": pd.DataFrame(sampler.vma_rows),
        "steps": steps, "latency_ns": lat, "page_sizes_seen": sizes or [sampler.tracked.page_size],
        "pages": sampler.pages(), "vm": {**account.reports, "memory_end": mem_end},
    }

