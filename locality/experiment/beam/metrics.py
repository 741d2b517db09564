"""What the processes cost at spawn, and the run's metrics from the VM's and the kernel's figures."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from locality import tempfiles
from locality.experiment import schema
from locality.experiment.beam.classes import _AddressClasses, grown_at_spawn
from locality.experiment.beam.config import DOCUMENTED_FRESH_PROCESS_BYTES, BeamConfig, harness_schedule
from locality.experiment.beam.portions import portions
from locality.experiment.beam.sampler import WindowSampler, _totals, drive_steps
from locality.experiment.beam.vm import BeamVM
from locality.kernel import smaps

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


@contextlib.contextmanager
def spawn_order(vm: BeamVM, cfg: BeamConfig) -> Iterator[None]:
    """Technique spawn-order: the columns' spawn order (the Hilbert order of the sheet that the
    Python `clustered` layout uses) in a file the VM reads during the spawn; removed afterwards."""
    if cfg.order != "hilbert":
        yield
        return
    from locality.layouts.clustered import hilbert_order

    with tempfile.NamedTemporaryFile(prefix=tempfiles.prefix("beam-order"), suffix=".u32") as f:
        order = hilbert_order(cfg.processes)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        # The ids in spawn order, then each id's position in it (the VM finds a column's process by it).
        f.write(order.astype("<u4").tobytes() + rank.astype("<u4").tobytes())
        f.flush()
        vm.send(f"order_file {f.name}")
        yield


def account_spawn(vm: BeamVM, cfg: BeamConfig, say: Callable[[str], None]) -> SpawnAccount:
    """Measure the empty VM, spawn the population, measure again: the difference
    is what the processes cost, in the VM's words and in resident pages."""
    n = cfg.processes
    smaps_before = smaps(vm.pid)
    alloc_before = vm.request("allocators", "allocators")
    say(f"spawning {n:,} processes in the Erlang VM (OS pid {vm.pid})")
    with spawn_order(vm, cfg):
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
    total_delta = mem["memory"]["total"] - ready["memory_before"]["total"]
    coordinator_delta = mem["coordinator_memory"] - ready["coordinator_memory_before"]
    # Per column (n): a process for every technique but grouped.
    bpp: dict[str, Any] = {
        "bytes_per_process_erlang": mem["workers_memory_sum"] / n,
        "bytes_per_process_vm": (processes_delta - coordinator_delta) / n,
        # Everything the VM allocated, also off the process heaps (the atomics of state-off-heap).
        "bytes_per_process_vm_total": (total_delta - coordinator_delta) / n,
        "bytes_per_process_memory_processes": mem["memory"]["processes"] / n,
        "bytes_per_process_rss": (after["rss_bytes"] - before["rss_bytes"]) / n,
        "bytes_per_process_pss": (after["pss_bytes"] - before["pss_bytes"]) / n,
        "pid_table_bytes_per_process": coordinator_delta / n,
    }
    for suffix, vm_key in (("", "bytes_per_process_vm"), ("_total", "bytes_per_process_vm_total")):
        ratio = bpp["bytes_per_process_rss"] / bpp[vm_key] if bpp[vm_key] else None
        bpp[f"rss_vs_vm{suffix}_ratio"] = ratio
        bpp[f"rss_vs_vm{suffix}_agree_15pct"] = ratio is not None and abs(ratio - 1) <= 0.15
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


@dataclass
class Measured:
    """What a run has measured so far. Filled as the run goes, so that an interrupted
    run writes every sample it took (``result(..., complete=False)``)."""

    hello: dict[str, Any]
    account: SpawnAccount | None = None
    sampler: WindowSampler | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[np.ndarray] = field(default_factory=list)
    migrations: list[dict[str, Any]] = field(default_factory=list)
    memory_end: dict[str, Any] | None = None


def measure(vm: BeamVM, cfg: BeamConfig, progress: bool, say: Callable[[str], None], out: Measured, *,
            stop: Callable[[], bool] | None = None) -> None:
    """Spawn, drive the steps while sampling, ask the VM for its final accounting; all into ``out``.
    ``stop()`` true ends it at the next wait or sample with channel.Interrupted."""
    out.account = account_spawn(vm, cfg, say)
    if cfg.schedule == "harness":
        # Queued before the first window opens, as a file the VM reads in one go: parsing
        # megabytes of id lines would leave freed-but-resident memory in the VM.
        with tempfile.NamedTemporaryFile(prefix=tempfiles.prefix("beam-ids"), suffix=".u32") as f:
            for ids in harness_schedule(cfg):
                f.write(np.asarray([ids.size, *ids.tolist()], "<u4").tobytes())
            f.flush()
            vm.send(f"ids_file {f.name}")
            vm.request("ping", "pong")
    out.sampler = WindowSampler(vm.pid, cfg, out.account)
    say(f"running {cfg.n_steps} steps of {cfg.pattern} activation, p={cfg.p}, every {cfg.interval:g} s")
    drive_steps(vm, out.sampler, progress, out, stop=stop)
    out.memory_end = vm.request("memory", "memory", timeout=_spawn_timeout(cfg.processes))


def _latency(out: Measured) -> np.ndarray:
    return np.concatenate(out.latencies) if out.latencies else np.zeros(0, np.int64)


def result(out: Measured, cfg: BeamConfig, *, complete: bool = True) -> dict[str, Any] | None:
    """The run's files' contents from what was measured; None if nothing was (no spawn yet)."""
    account, sampler, steps = out.account, out.sampler, out.steps
    if account is None or sampler is None:
        return None
    n = cfg.processes
    lat = _latency(out)
    mem, ready = account.reports["memory_after_spawn"], account.reports["ready"]
    alloc_after = account.reports["allocators_after"]
    activations = sum(s["activated"] for s in steps)
    busy_s = sum(s["elapsed_us"] for s in steps) / 1e6
    wall = sampler.now()
    track, watch = cfg.track_refs, cfg.pageout_watch
    hot = sampler.hot_regions()
    wss_by_window = {k: sum(v["referenced_bytes"] for v in by_class.values()) for k, by_class in hot.items()
                     if sampler.window_age.get(k)} if track else {}
    wss_bytes = wss_by_window.get(f"{sampler.windows[0]:g}") if track else None
    rows = sampler.rows
    relocation_s = sum(m["elapsed_us"] for m in out.migrations) / 1e6
    metrics = {
        "workers": n, "layout": "beam", "scheduler": "beam", "pattern": cfg.pattern, "p": cfg.p,
        "technique": cfg.technique, "vm_flags": list(cfg.vm_flags), "processes": ready.get("processes", n),
        "group_size": cfg.group_size, "spawn_order": cfg.order, "state_store": cfg.state_store,
        "hibernate": cfg.hibernate, "min_heap_size": cfg.min_heap_size, "state_init": cfg.state_init,
        "schedule": cfg.schedule, "complete": complete,
        "otp_release": out.hello["otp_release"], "erts_version": out.hello["erts_version"],
        "bytes_per_worker": account.bytes_per_process["bytes_per_process_pss"],
        **account.bytes_per_process,
        "documented_fresh_process_bytes": DOCUMENTED_FRESH_PROCESS_BYTES,
        "workers_hibernated": mem["workers_hibernated"], "workers_heap_words_sum": mem["workers_heap_words_sum"],
        "spawn_s": ready["spawn_ms"] / 1000,
        "rss_before_spawn_bytes": account.totals_before["rss_bytes"], "rss_after_spawn_bytes": account.totals_after["rss_bytes"],
        "pss_before_spawn_bytes": account.totals_before["pss_bytes"], "pss_after_spawn_bytes": account.totals_after["pss_bytes"],
        "erlang_memory_before": ready["memory_before"], "erlang_memory_after_spawn": mem["memory"],
        "erlang_memory_end": out.memory_end["memory"] if out.memory_end else None,
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
        # Referenced bytes of the whole VM at each window's end (mean over cycles): its working set.
        "wss_bytes_by_window": wss_by_window,
        "step_elapsed_us_after_pageout": _median([s["elapsed_us"] for s in steps if s["after_pageout"]]),
        "step_elapsed_us_other": _median([s["elapsed_us"] for s in steps if not s["after_pageout"]]),
        "major_faults": rows[-1]["major_faults"] if rows else 0,
        "swapped_pages_max": max((r["swapped_pages"] for r in rows), default=0),
        "steps": len(steps), "activations": activations,
        "activations_per_s": activations / busy_s if busy_s > 0 else None,
        "latency_p50_us": float(np.percentile(lat, 50)) / 1000 if lat.size else None,
        "latency_p99_us": float(np.percentile(lat, 99)) / 1000 if lat.size else None,
        "migrations": out.migrations, "migrated_total": sum(m["migrated"] for m in out.migrations),
        "relocation_s": relocation_s,
        "relocation_ms_per_step": 1000 * relocation_s / len(steps) if cfg.migrate_every and steps else None,
        "sampler_overhead_pct": 100 * sampler.sampling_s / wall if wall > 0 else None,
        "tracked_pages": int(sampler.tracked.addr.size),
        # The footprint by portion at the last sample, and each portion's working set per window.
        "portions": portions([r for r in sampler.vma_rows if rows and r["t"] == rows[-1]["t"]], hot if track else {},
                             account.allocator_growth),
    }
    sizes = sorted({e.kernel_page_size for e in account.smaps_after if e.kernel_page_size} |
                   ({2 << 20} if any(e.anon_huge for e in account.smaps_after) else set()))
    return {
        "metrics": schema.check_metrics("beam", metrics), "timeline": pd.DataFrame(rows), "vmas": pd.DataFrame(sampler.vma_rows),
        "steps": steps, "latency_ns": lat, "page_sizes_seen": sizes or [sampler.tracked.page_size],
        "pages": sampler.pages(), "vm": {**account.reports, "memory_end": out.memory_end},
    }
