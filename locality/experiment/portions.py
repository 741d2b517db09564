"""Every page of a run in one portion, and per-portion figures (DESIGN.md "Portions").

The child reports, once after spawn, how many bytes of each page its known
portions hold (worker_state, coroutine_frames, scheduler) and where its
resident pymalloc pools are (``locality.population.portions.walk``). The
parent classifies everything else by VMA:

- anonymous private memory ([heap] included): inside a pymalloc pool
  ``runtime_heap``; else ``code`` in the anonymous VMA right after a
  library's data (its .bss), ``native_heap`` elsewhere (malloc, numpy
  buffers, Python objects over 512 bytes);
- file-backed mappings of a file that is mapped executable somewhere (the
  python binary, libraries, extension modules) and [vdso]: ``code``; other
  files and shared memory not reported by the child: ``other``;
- [stack] and the VMA holding another thread's stack pointer: ``stacks``;
- the child's own bookkeeping mapping (experiment/child.py Bookkeeping, not
  tracked): ``other``.

On each page, the bytes no reported range covers count for the VMA's
portion, except remainders under ALLOCATOR_SLACK bytes (a malloc chunk
header, a pool's header and tail: allocator bookkeeping, not a portion).
The page goes to the portion with the most bytes; it is *mixed* when two or
more portions have bytes on it.

Regions the sampler starts tracking later are classified by VMA alone (the
child is not walked again: that would cost it time per step).
"""

from __future__ import annotations

import os
import tempfile
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from locality import tempfiles
from locality.errors import LocalityError
from locality.population.portions import CODE, POOL_HEADER, POOL_SIZE, PORTIONS

ALLOCATOR_SLACK = 64
_ANON_PATHS = ("", "[heap]")
COUNT_FIELDS = ("written_pages", "resident_pages", "populated_pages", "swapped_pages", "paged_out_pages", "refaulted_pages",
                "tracked_pages")


class PortionError(LocalityError):
    """The child's portion walk could not be read."""


@dataclass
class ChildWalk:
    """What the child reported (population.portions.walk), as loaded by the parent."""

    page: np.ndarray  # uint64, sorted unique page addresses with known bytes
    known: np.ndarray  # (pages, len(PORTIONS)) int64 bytes of the known portions
    pools: np.ndarray  # (k, 2) int64: pool address, block size; sorted
    seconds: float

    @classmethod
    def load(cls, path: str | Path) -> "ChildWalk":
        try:
            with np.load(path, allow_pickle=False) as z:
                page, code, count = z["page"].astype(np.uint64), z["portion"].astype(np.int64), z["bytes"].astype(np.int64)
                pools, seconds = z["pools"].astype(np.int64).reshape(-1, 2), float(z["seconds"])
                names = tuple(str(n) for n in z["portion_names"])
        except (OSError, ValueError, KeyError) as e:
            raise PortionError(f"cannot read the child's portion walk {path}: {e}") from None
        if names != PORTIONS:
            raise PortionError(f"the child's portions {names} are not the parent's {PORTIONS}")
        uniq, inv = np.unique(page, return_inverse=True)
        known = np.zeros((uniq.size, len(PORTIONS)), np.int64)
        np.add.at(known, (inv, code), count)
        return cls(uniq, known, pools[np.argsort(pools[:, 0])] if pools.size else pools, seconds)


class PortionMap:
    """Classifies page addresses of one process: VMA rules plus the child's walk."""

    def __init__(self, vmas: list[Any], walk: ChildWalk, stack_pointers: Iterable[int], page_size: int,
                 other: Iterable[tuple[int, int]] = ()) -> None:
        self.walk = walk
        self.ps = int(page_size)
        self.stack_pointers = list(stack_pointers)
        # (start, length) ranges that are ``other`` whatever their VMA: the child's own bookkeeping
        # (an anonymous mapping the kernel may merge with a neighbour, so not a VMA rule)
        self.other = [(int(s), int(ln)) for s, ln in other]
        self.refresh(vmas)

    def refresh(self, vmas: list[Any]) -> None:
        """Classify by these VMAs from now on (the process maps more as it runs)."""
        self.vmas = sorted(vmas, key=lambda v: v.start)
        self.starts = [v.start for v in self.vmas]
        self.vstarts = np.array(self.starts, dtype=np.uint64)
        self.vends = np.array([v.end for v in self.vmas], dtype=np.uint64)
        executable = {v.path for v in self.vmas if "x" in v.perms and v.path.startswith("/")}
        self.vma_code = np.array([self._vma_portion(i, executable) for i in range(len(self.vmas))], dtype=np.int8)
        # Where a pymalloc pool header counts: private anonymous memory (mmap
        # puts arenas in the gaps between libraries, right after their .bss).
        self.vma_anon = np.array([v.path in _ANON_PATHS and v.perms.endswith("p") for v in self.vmas], dtype=bool)

    def _vma_portion(self, i: int, executable: set[str]) -> int:
        v = self.vmas[i]
        if v.path == "[stack]" or any(v.start <= sp < v.end for sp in self.stack_pointers):
            return CODE["stacks"]
        if v.path in ("[vdso]", "[vsyscall]") or v.path in executable:
            return CODE["code"]
        if v.path == "" and i > 0:
            prev = self.vmas[i - 1]
            if prev.end == v.start and prev.path in executable and prev.perms.startswith("rw"):
                return CODE["code"]  # a library's .bss
        if v.path in _ANON_PATHS and v.perms.endswith("p"):
            return CODE["native_heap"]  # runtime_heap where a pool is found (per page)
        return CODE["other"]

    def vma_portion(self, addr: int) -> int:
        """The VMA rule's portion for one address (``other`` outside every VMA)."""
        i = bisect_right(self.starts, addr) - 1
        if i < 0 or addr >= self.vmas[i].end:
            return int(CODE["other"])
        return int(self.vma_code[i])

    def classify(self, start: int, n_pages: int) -> tuple[np.ndarray, np.ndarray]:
        """(portion code, mixed) of the pages [start, start + n_pages * page size)."""
        ps = self.ps
        addr = np.uint64(start) + np.arange(n_pages, dtype=np.uint64) * np.uint64(ps)
        byte = np.zeros((n_pages, len(PORTIONS)), np.int64)
        lo, hi = np.searchsorted(self.walk.page, [addr[0], addr[-1] + np.uint64(1)]) if n_pages else (0, 0)
        idx = ((self.walk.page[lo:hi] - np.uint64(start)) // np.uint64(ps)).astype(np.int64)
        byte[idx] = self.walk.known[lo:hi]
        background = self._background(start, n_pages, addr)
        slack = self._pool_overhead(addr)
        rest = ps - byte.sum(axis=1) - slack
        rest[rest < ALLOCATOR_SLACK] = 0
        byte[np.arange(n_pages), background] += rest
        mixed = np.count_nonzero(byte, axis=1) >= 2
        code = np.where(byte.any(axis=1), np.argmax(byte, axis=1), background).astype(np.int8)
        return code, mixed

    def _background(self, start: int, n_pages: int, addr: np.ndarray) -> np.ndarray:
        """The VMA rule per page, with anonymous pages inside a pymalloc pool as runtime_heap."""
        out = np.empty(n_pages, np.int64)
        k = np.searchsorted(self.vstarts, addr, side="right") - 1
        inside = (k >= 0) & (addr < self.vends[np.maximum(k, 0)])
        out[:] = CODE["other"]
        out[inside] = self.vma_code[k[inside]]
        pools = self.walk.pools
        if pools.size:
            heap = inside & self.vma_anon[np.maximum(k, 0)]
            a = addr[heap].astype(np.int64)
            j = np.searchsorted(pools[:, 0], a, side="right") - 1
            in_pool = (j >= 0) & (a < pools[np.maximum(j, 0), 0] + POOL_SIZE)
            out[np.flatnonzero(heap)[in_pool]] = CODE["runtime_heap"]
        for s, ln in self.other:
            out[(addr >= np.uint64(s)) & (addr < np.uint64(s + ln))] = CODE["other"]
        return out

    def _pool_overhead(self, addr: np.ndarray) -> np.ndarray:
        """Bytes of pool header and tail on each page (no portion's)."""
        slack = np.zeros(addr.size, np.int64)
        pools = self.walk.pools
        if not pools.size:
            return slack
        a = addr.astype(np.int64)
        j = np.searchsorted(pools[:, 0], a, side="right") - 1
        ok = (j >= 0) & (a < pools[np.maximum(j, 0), 0] + POOL_SIZE)
        base, size = pools[np.maximum(j, 0), 0], pools[np.maximum(j, 0), 1]
        tail = (POOL_SIZE - POOL_HEADER) % size
        slack[ok & (a == base)] += POOL_HEADER
        last = ok & (a + self.ps == base + POOL_SIZE)
        slack[last] += tail[last]
        return slack


class PortionCounter:
    """Per-sample counts of the sampler's masks, per portion; one portion per column."""

    def __init__(self, sampler: Any, portion_map: PortionMap) -> None:
        self.sampler = sampler
        self.map = portion_map
        self.portion = np.empty(0, np.int8)
        self.mixed = np.empty(0, bool)
        self.seen_regions = 0
        self.rows: list[dict[str, Any]] = []
        self.per_region: dict[int, np.ndarray] = {}
        self.resident: dict[str, int] | None = None  # by finish()
        self.rss: int | None = None
        self.sync()

    def sync(self) -> None:
        """Classify the columns of regions the sampler added since the last call."""
        new = self.sampler.regions[self.seen_regions:]
        if any(self.map.vma_portion(r.start) == CODE["other"] for r in new):
            from locality.kernel import vmas

            try:
                self.map.refresh(vmas(self.sampler.pid))  # a region of a VMA mapped after the walk
            except LocalityError:
                pass
        for r in new:
            code, mixed = self.map.classify(r.start, r.n_pages)
            self.portion = np.concatenate([self.portion, code])
            self.mixed = np.concatenate([self.mixed, mixed])
        self.seen_regions = len(self.sampler.regions)

    def count(self, t: float) -> None:
        """One row per portion from the sampler's last sample (its masks as they were at the sample)."""
        self.sync()
        s = self.sampler
        p = len(PORTIONS)
        masks = {
            "written_pages": s.last_w, "resident_pages": s.present, "swapped_pages": s.last_swapped,
            "populated_pages": s.last_populated, "paged_out_pages": s.last_paged_out, "refaulted_pages": s.last_refaulted,
        }
        counts = {k: np.bincount(self.portion[m], minlength=p) for k, m in masks.items()}
        counts["tracked_pages"] = sum((self._region_counts(r) for r in s.regions if r.alive), np.zeros(p, np.int64))
        age = s.times[-1] - s.last_written
        for th in s.thresholds:
            counts[f"cold_pages_{th:g}"] = np.bincount(self.portion[s.last_populated & (age >= th)], minlength=p)
        for i, name in enumerate(PORTIONS):
            self.rows.append({"sample": len(s.times) - 1, "t": t, "portion": name, **{k: int(v[i]) for k, v in counts.items()}})

    def _region_counts(self, region: Any) -> np.ndarray:
        """Pages per portion of one region (fixed once classified)."""
        if region.index not in self.per_region:
            self.per_region[region.index] = np.bincount(self.portion[region.cols], minlength=len(PORTIONS))
        return self.per_region[region.index]

    def finish(self, pid: int) -> None:
        """After the last sample: resident bytes per portion, and the RSS they should add up to."""
        from locality.kernel import rollup

        self.sync()
        self.resident = resident_bytes(pid, self.sampler, self, self.map)
        self.rss = rollup(pid)["rss"]

    def metrics(self, timeline: pd.DataFrame, config: Any, useful_bytes: int) -> dict[str, Any]:
        """The metrics.json keys of this run's portions (``metrics`` below)."""
        return metrics(
            self.table(), timeline, interval=float(config.sampling.interval), page_size=self.map.ps,
            useful_bytes=useful_bytes, resident=self.resident, rss_bytes=self.rss,
            mixed_pages=int(np.count_nonzero(self.mixed)), walk_seconds=self.map.walk.seconds,
            cold_thresholds=list(config.sampling.cold_thresholds), reclaim=config.reclaim.policy != "none",
            steps_per_window=getattr(config, "window_steps", None),
        )

    def npz_arrays(self) -> dict[str, np.ndarray]:
        """pages.npz arrays: ``portion`` (int8 index into ``portion_names``) and
        ``portion_mixed`` (packed bits) per tracked page, in column order."""
        self.sync()
        return {"portion": self.portion, "portion_names": np.asarray(PORTIONS, dtype=str),
                "portion_mixed": np.packbits(self.mixed)}

    def table(self) -> pd.DataFrame:
        """portions.csv: one row per (sample, portion)."""
        return pd.DataFrame(self.rows, columns=None if self.rows else ["sample", "t", "portion", *COUNT_FIELDS])


def resident_bytes(pid: int, sampler: Any, counter: PortionCounter, portion_map: PortionMap) -> dict[str, int]:
    """Resident bytes per portion now: tracked pages as the sampler's last sample
    found them (call right after it), every other mapped page from
    /proc/PID/pagemap, by VMA rule."""
    from locality.experiment.sampler import subtract
    from locality.kernel import PAGE_SIZE, pagemap, vmas

    ps = int(PAGE_SIZE)
    out = np.zeros(len(PORTIONS), np.int64)
    present = sampler.present  # the last sample, taken just before
    alive = [r for r in sampler.regions if r.alive]
    for r in alive:
        out += np.bincount(counter.portion[r.cols][present[r.cols]], minlength=len(PORTIONS)) * ps
    holes = [(r.start, r.length) for r in alive]
    now = vmas(pid)
    portion_map.refresh(now)
    for v in now:
        if v.perms.startswith("---"):
            continue  # no access: never resident
        for s, e in subtract((v.start, v.end), holes):
            try:
                pres = pagemap(pid, s, e).present
            except LocalityError:
                continue  # [vsyscall] and ranges that vanished
            if not pres.any():
                continue
            code, _ = portion_map.classify(s, (e - s) // ps)
            out += np.bincount(code[pres], minlength=len(PORTIONS)) * ps
    return {name: int(out[i]) for i, name in enumerate(PORTIONS)}


def metrics(table: pd.DataFrame, timeline: pd.DataFrame, *, interval: float, page_size: int, useful_bytes: int,
            resident: Mapping[str, int] | None, rss_bytes: int | None, mixed_pages: int, walk_seconds: float,
            cold_thresholds: Iterable[float], reclaim: bool, steps_per_window: int | None = None) -> dict[str, Any]:
    """metrics.json keys ``portions`` (name -> figures), ``mixed_pages``, ``portions_rss_bytes``,
    ``portions_walk_s`` and ``portion_dominating_wss``.

    Same windows and definitions as the whole-process figures (metrics.py):
    WSS over the full windows, page utilization (worker_state only: the
    other portions have no useful bytes) over every window after the first
    sample, cold fraction over samples at least T s after the first.
    """
    from locality.experiment.metrics import full_windows

    full = set(full_windows(timeline, interval, steps_per_window).tolist())
    per: dict[str, Any] = {}
    for name in PORTIONS:
        rows = table[table["portion"] == name] if len(table) else pd.DataFrame(columns=["sample", "t", *COUNT_FIELDS])
        later = rows[rows["sample"] > rows["sample"].min()] if len(rows) else rows
        in_full = rows[rows["sample"].isin(full)]
        wss = float(in_full["written_pages"].mean()) if len(in_full) else None
        total = int(later["written_pages"].sum()) if len(later) else 0
        fig: dict[str, Any] = {
            "resident_bytes": None if resident is None else int(resident[name]),
            "share_of_rss": resident[name] / rss_bytes if resident is not None and rss_bytes else None,
            "tracked_pages": int(rows["tracked_pages"].iloc[-1]) if len(rows) else 0,
            "wss_pages_mean": wss,
            "wss_bytes_mean": wss * page_size if wss is not None else None,
            "page_utilization": useful_bytes / (total * page_size) if name == "worker_state" and total else None,
            "cold_fraction": {},
            "paged_out_pages_max": int(rows["paged_out_pages"].max()) if reclaim and len(rows) else None,
            "refaulted_pages": int(later["refaulted_pages"].sum()) if reclaim and len(rows) else None,
        }
        for th in cold_thresholds:
            col = f"cold_pages_{th:g}"
            ok = rows[(rows["t"] - rows["t"].min() >= th) & (rows["populated_pages"] > 0)] if len(rows) and col in rows else rows.iloc[0:0]
            fig["cold_fraction"][f"{th:g}"] = float((ok[col] / ok["populated_pages"]).mean()) if len(ok) else None
        per[name] = fig
    wss_by = {n: f["wss_bytes_mean"] for n, f in per.items() if f["wss_bytes_mean"]}
    return {
        "portions": per,
        "mixed_pages": int(mixed_pages),
        "portions_rss_bytes": rss_bytes,
        "portions_walk_s": walk_seconds,
        "portion_dominating_wss": max(wss_by, key=wss_by.get) if wss_by else None,
    }


def start(pid: int, sampler: Any, walk_path: str | Path) -> PortionCounter:
    """After the child saved its walk to ``walk_path``: classify every tracked column."""
    from locality.kernel import PAGE_SIZE, thread_stack_pointers, vmas

    walk = ChildWalk.load(walk_path)
    try:
        sps = thread_stack_pointers(pid)
    except LocalityError:
        sps = []
    return PortionCounter(sampler, PortionMap(vmas(pid), walk, sps, int(PAGE_SIZE), getattr(sampler, "ignored", ())))


def request(send: Callable[..., None], wait_for: Callable[[str, float], dict[str, Any]], pid: int, sampler: Any,
            timeout: float) -> tuple[PortionCounter, dict[str, Any]]:
    """Ask the child for its walk (child protocol ``portions``) and classify the
    tracked pages; returns the counter and the manifest's ``portions`` entry."""
    # Named for its owner: if the child writes it after we gave up waiting, leftovers removes it.
    fd, path = tempfile.mkstemp(prefix=tempfiles.prefix("portions"), suffix=".npz")
    os.close(fd)
    try:
        send("portions", path=path)
        m = wait_for("portions", timeout)
        return start(pid, sampler, path), {k: m.get(k) for k in ("seconds", "pages", "pools")}
    finally:
        os.unlink(path)
