"""Sampling the VM from outside on our clock: smaps, pagemap, faults, windows of referenced memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from locality.errors import LocalityError
from locality.experiment import schema
from locality.experiment.beam.config import BeamConfig, BeamError
from locality.experiment.beam.vm import BeamVM, _alive
from locality.experiment.channel import Interrupted
from locality.kernel import PAGE_SIZE, clear_refs, faults, pagemap, process_pageout, smaps

if TYPE_CHECKING:
    from locality.experiment.beam.metrics import Measured, SpawnAccount

@dataclass
class Tracked:
    """A fixed set of the VM's anonymous pages, followed per sample in pagemap."""

    ranges: list[tuple[int, int]]  # [start, end)
    names: list[str]
    page_size: int = PAGE_SIZE
    addr: np.ndarray = field(init=False)  # uint64, one entry per page
    region: np.ndarray = field(init=False)  # int32 index into ranges/names

    def __post_init__(self) -> None:
        pages = [np.arange(s, e, self.page_size, dtype=np.uint64) for s, e in self.ranges]
        self.addr = np.concatenate(pages) if pages else np.zeros(0, np.uint64)
        self.region = np.repeat(np.arange(len(pages), dtype=np.int32), [p.size for p in pages])

    def read(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        """(present, swapped) bool vectors over the tracked pages now."""
        present, swapped = [], []
        for s, e in self.ranges:
            try:
                pm = pagemap(pid, s, e)
                present.append(np.asarray(pm.present, bool))
                swapped.append(np.asarray(pm.swapped, bool))
            except (LocalityError, OSError):
                if not _alive(pid):
                    raise
                # The mapping went away (a carrier was unmapped): neither present nor swapped.
                n = (e - s) // self.page_size
                present.append(np.zeros(n, bool))
                swapped.append(np.zeros(n, bool))
        if not present:
            return np.zeros(0, bool), np.zeros(0, bool)
        return np.concatenate(present), np.concatenate(swapped)



def _totals(entries: list[Any]) -> dict[str, int]:
    anon = [e for e in entries if e.is_anonymous]
    return {
        "rss_bytes": sum(e.rss for e in entries), "pss_bytes": sum(e.pss for e in entries),
        "swap_bytes": sum(e.swap for e in entries), "referenced_bytes": sum(e.referenced for e in entries),
        "anon_rss_bytes": sum(e.rss for e in anon), "anon_referenced_bytes": sum(e.referenced for e in anon),
    }


class WindowSampler:
    """Samples the VM on its own clock and reads untouched memory per window.

    A cycle starts with clear_refs (``track_refs``) and/or a pageout of the
    tracked pages (``pageout_watch``); each window T is read at the first
    sample at least T after that (Referenced only accumulates, so one clear
    serves every window), and the cycle restarts after the longest window.
    """

    def __init__(self, pid: int, cfg: BeamConfig, account: SpawnAccount) -> None:
        self.pid, self.cfg, self.classes = pid, cfg, account.classes
        # Pages followed in pagemap: the VM's private writable anonymous memory resident after spawn.
        entries = [e for e in account.smaps_after if e.is_anonymous and e.perms.startswith("rw") and e.rss > 0]
        self.tracked = Tracked([(e.start, e.end) for e in entries], [f"{self.classes(e)} {e.start:#x}" for e in entries])
        horizon = cfg.n_steps * cfg.interval
        self.windows = [w for w in sorted(cfg.windows) if w <= horizon + 1e-9] or [min(cfg.windows)]
        keys = [f"{w:g}" for w in self.windows]
        self.rows: list[dict[str, Any]] = []
        self.vma_rows: list[dict[str, Any]] = []
        # A VMA keeps its index while its identity holds, as in `locality probe`'s timeline.
        self.vma_index: dict[tuple, int] = {}
        self.t: list[float] = []
        self.bits: dict[str, list[np.ndarray]] = {"resident": [], "swapped": [], "accessed": []}
        self.cold: dict[str, list[float]] = {k: [] for k in keys}
        self.cold_anon: dict[str, list[float]] = {k: [] for k in keys}
        self.window_age: dict[str, list[float]] = {k: [] for k in keys}
        self.referenced_by_class: dict[str, dict[str, list[int]]] = {k: {} for k in keys}
        self.untouched_after_pageout: dict[str, list[float]] = {k: [] for k in keys}
        self.pageouts: list[dict[str, Any]] = []
        self.sampling_s = 0.0
        n_pages = self.tracked.addr.size
        self.paged = np.zeros(n_pages, bool)  # swapped right after this cycle's pageout
        self.accessed = np.zeros(n_pages, bool)  # of those, present again since
        self.after_pageout = False
        self.read_windows: set[str] = set()
        self.t0 = time.monotonic()
        self.start_cycle()
        self.minflt0, self.majflt0 = faults(pid)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start_cycle(self) -> None:
        self.read_windows = set()
        if self.cfg.track_refs:
            clear_refs(self.pid, 1)
        if self.cfg.pageout_watch:
            self._close_pageout_cycle()
            t0 = time.monotonic()
            advised = process_pageout(self.pid, [(s, e - s) for s, e in self.tracked.ranges])
            took = time.monotonic() - t0
            _, swapped = self.tracked.read(self.pid)
            self.paged = swapped
            self.accessed = np.zeros_like(swapped)
            self.after_pageout = True
            self.pageouts.append({"t": t0 - self.t0, "advised_bytes": advised,
                                  "paged_out_pages": int(swapped.sum()), "pageout_ms": took * 1000})
        # Windows run from the moment the bits were cleared / the pages paged out;
        # the sampling clock is realigned so each window is read right when it ends.
        self.cycle_start = self.now()
        self.next_sample = self.t0 + self.cycle_start + self.cfg.interval

    def _close_pageout_cycle(self) -> None:
        if self.pageouts:  # the cycle's working set, in pages
            self.pageouts[-1]["accessed_pages"] = int(self.accessed.sum())

    def sample(self, step_event: dict[str, Any] | None) -> None:
        s0 = time.monotonic()
        t = s0 - self.t0
        entries = smaps(self.pid)
        minflt, majflt = faults(self.pid)
        present, swapped = self.tracked.read(self.pid)
        totals = _totals(entries)
        came_back = self.paged & present & ~self.accessed  # all False without pageout
        self.accessed |= came_back
        age = t - self.cycle_start
        self.rows.append(schema.row("beam", {
            "t": t, **totals, "step": step_event["step"] if step_event else -1,
            "activations": step_event["activated"] if step_event else 0,
            "resident_pages": int(present.sum()), "swapped_pages": int(swapped.sum()),
            "major_faults": majflt - self.majflt0, "minor_faults": minflt - self.minflt0,
            "refaulted_pages": int(came_back.sum()),
            "accessed_pages": int(self.accessed.sum()) if self.cfg.pageout_watch else None,
            "window_age_s": age,
        }))
        page = self.tracked.page_size
        for e in entries:
            i = self.vma_index.setdefault((e.start, e.end, e.perms, e.offset, e.inode, e.path), len(self.vma_index))
            self.vma_rows.append({
                "t": t, "vma": i, "start": e.start, "end": e.end, "perms": e.perms, "path": e.path,
                "class": self.classes(e), "rss_bytes": e.rss, "pss_bytes": e.pss, "swap_bytes": e.swap,
                # Cumulative since the window began (clear_refs), window_age_s ago.
                "referenced_bytes": e.referenced if self.cfg.track_refs else None, "window_age_s": age,
                "resident_pages": e.rss // page, "swapped_pages": e.swap // page,
            })
        self.t.append(t)
        self.bits["resident"].append(np.packbits(present))
        self.bits["swapped"].append(np.packbits(swapped))
        self.bits["accessed"].append(np.packbits(came_back))
        self._read_windows(age, entries, totals)
        self.sampling_s += time.monotonic() - s0
        slack = 0.05 * self.cfg.interval
        if age >= max(self.windows) - slack and len(self.read_windows) == len(self.windows):
            self.start_cycle()
        elif self.next_sample <= time.monotonic():
            self.next_sample += self.cfg.interval

    def _read_windows(self, age: float, entries: list[Any], totals: dict[str, int]) -> None:
        for w in self.windows:
            key = f"{w:g}"
            if key in self.read_windows or age < w - 0.05 * self.cfg.interval:
                continue
            self.read_windows.add(key)
            self.window_age[key].append(age)
            if self.cfg.track_refs and totals["rss_bytes"]:
                self.cold[key].append(1 - totals["referenced_bytes"] / totals["rss_bytes"])
                if totals["anon_rss_bytes"]:
                    self.cold_anon[key].append(1 - totals["anon_referenced_bytes"] / totals["anon_rss_bytes"])
                by_class = self.referenced_by_class[key]
                for e in entries:
                    acc = by_class.setdefault(self.classes(e), [0, 0])
                    acc[0] += e.referenced
                    acc[1] += e.rss
            if self.cfg.pageout_watch and self.paged.any():
                self.untouched_after_pageout[key].append(1 - self.accessed.sum() / self.paged.sum())

    def hot_regions(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per window: referenced and resident bytes per region class (mean over cycles)."""
        out = {}
        for key, by_class in self.referenced_by_class.items():
            n = max(1, len(self.window_age[key]))
            out[key] = {c: {"referenced_bytes": ref // n, "rss_bytes": rss // n,
                            "referenced_fraction": ref / rss if rss else 0.0}
                        for c, (ref, rss) in sorted(by_class.items(), key=lambda kv: -kv[1][0])}
        return out

    def refault_rate_pct_per_min(self) -> float | None:
        """Pages brought back per minute as % of the working set (mean pages touched per cycle)."""
        if not self.cfg.pageout_watch or not self.rows:
            return None
        self._close_pageout_cycle()
        minutes = max(self.now() / 60, 1e-9)
        wss = max(1.0, float(np.mean([c["accessed_pages"] for c in self.pageouts])))
        return 100 * (sum(r["refaulted_pages"] for r in self.rows) / minutes) / wss

    def pages(self) -> dict[str, np.ndarray]:
        def stack(name: str) -> np.ndarray:
            return np.stack(self.bits[name]) if self.bits[name] else np.zeros((0, 0), np.uint8)

        tr = self.tracked
        return {
            "t": np.asarray(self.t, np.float64), "page_addr": tr.addr, "region": tr.region,
            "regions": np.asarray(tr.names, dtype=str), "n_pages": np.int64(tr.addr.size),
            "resident": stack("resident"), "swapped": stack("swapped"),
            **({"accessed": stack("accessed")} if self.cfg.pageout_watch else {}),
        }



def drive_steps(vm: BeamVM, sampler: WindowSampler, progress: bool, out: "Measured", *,
                stop: Callable[[], bool] | None = None) -> None:
    """Have the VM run its steps while sampling it on our clock; the steps, a latency sample and
    the migrations go to ``out`` as they arrive, so an interrupted run keeps them."""
    cfg = sampler.cfg
    n_steps = cfg.n_steps
    bar = None
    if progress:
        from locality.progress import progress as progress_bar

        bar = progress_bar(n_steps, "beam steps", "step", every=10.0, leave=False)
    give_up = n_steps * cfg.interval + 120 + 10 * cfg.interval
    vm.send(f"steps {n_steps}")
    last_step: dict[str, Any] | None = None
    try:
        while True:
            if stop is not None and stop():  # a whole sample is never cut: stop between two
                raise Interrupted
            event = vm.poll(min(0.2, max(0.0, sampler.next_sample - time.monotonic())))
            if event is None:
                if time.monotonic() < sampler.next_sample:
                    continue  # woke only to look at stop()
                sampler.sample(last_step)
                if sampler.now() > give_up:
                    raise BeamError("the Erlang VM stopped reporting steps", "try fewer --processes or a longer --interval")
            elif event.get("event") == "step":
                last_step = event
                step = {k: v for k, v in event.items() if k not in ("ids", "lat_sample_ns", "event")}
                # The first step after a pageout pays the refaults of the pages it needs.
                step["after_pageout"], sampler.after_pageout = sampler.after_pageout, False
                if cfg.report_ids:
                    step["ids"] = event.get("ids", [])
                out.steps.append(step)
                out.latencies.append(np.asarray(event.get("lat_sample_ns", []), np.int64))
                if bar is not None:
                    bar.update(1)
            elif event.get("event") == "migrate":
                out.migrations.append({k: v for k, v in event.items() if k != "event"} | {"t": sampler.now()})
            elif event.get("event") == "steps_done":
                break
        # One last sample, so the last step's effect and windows up to the end are read.
        sampler.sample(last_step)
    finally:
        if bar is not None:
            bar.close()
