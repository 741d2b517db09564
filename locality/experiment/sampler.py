"""The sampler: watches a child's tracked pages from outside, at a fixed interval.

Per sample and tracked region it asks the kernel for the pages written since
the previous sample (PAGEMAP_SCAN through /proc/CHILD/pagemap, which also
re-protects them) and for residency (present / swapped bits of
/proc/CHILD/pagemap). Nothing runs inside the measured process; the child's
only cost is one minor write-protect fault per page and window, resolved in
the kernel.

Regions are added as the child registers them (arenas, anonymous VMAs, and
VMAs that appear later), so a page x time matrix has a column for every page
ever tracked; samples taken before a region existed read as zeros.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from locality.errors import LocalityError

# A page registered for write tracking but never populated holds a uffd-wp
# PTE marker, which /proc/PID/pagemap reports as "swapped" with swap type
# SWP_PTE_MARKER: always the last 5-bit type, 31 (include/linux/swap.h). It is
# not in swap; only real swap entries (types < MAX_SWAPFILES) count.
SWP_PTE_MARKER = 31

# Mappings that are the process's working memory, not code, files or kernel pages.
_ANON_PATHS = ("", "[heap]")


def anonymous_ranges(vmas: Iterable[Any], exclude: Sequence[tuple[int, int]] = ()) -> list[tuple[str, int, int]]:
    """Private writable anonymous VMAs (and [heap]) minus ``exclude`` ranges.

    Returns (name, start, length) triples; name is "[heap]" or "anon".
    """
    out = []
    for v in vmas:
        if v.path not in _ANON_PATHS or not v.perms.startswith("rw") or not v.perms.endswith("p"):
            continue
        for s, e in subtract((v.start, v.end), exclude):
            out.append((v.path or "anon", s, e - s))
    return out


def subtract(span: tuple[int, int], holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[start, end)`` minus the ``(start, length)`` holes, as [start, end) pieces."""
    pieces = [span]
    for hs, hl in holes:
        he = hs + hl
        nxt = []
        for s, e in pieces:
            if he <= s or hs >= e:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs))
            if he < e:
                nxt.append((he, e))
        pieces = nxt
    return pieces


@dataclass
class Region:
    """One tracked address range of the child and its per-page state."""

    index: int
    name: str
    start: int
    length: int
    first_sample: int  # index of the first sample that includes this region
    tracker: Any
    page_size: int
    added_at: float
    n_pages: int = 0
    last_written: np.ndarray = field(default=None)  # type: ignore[assignment]
    paged_out: np.ndarray = field(default=None)  # type: ignore[assignment]
    out_prev: np.ndarray = field(default=None)  # type: ignore[assignment]
    alive: bool = True
    error: str | None = None
    early_refaults: int = 0  # brought back between a sample and the re-read after pageout
    written_rows: list = field(default_factory=list)
    resident_rows: list = field(default_factory=list)
    swapped_rows: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n_pages = self.length // self.page_size
        # Never-written pages count as written when tracking began: a page is
        # not "cold for T seconds" before we have watched it for T seconds.
        self.last_written = np.full(self.n_pages, self.added_at, dtype=np.float64)
        self.paged_out = np.zeros(self.n_pages, dtype=bool)
        self.out_prev = np.zeros(self.n_pages, dtype=bool)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class Sample:
    t: float
    written_pages: int
    resident_pages: int
    swapped_pages: int
    populated_pages: int
    refaulted_pages: int
    paged_out_pages: int
    tracked_pages: int
    cold_pages: dict[float, int]
    sample_s: float


class Sampler:
    """Samples the tracked regions of process ``pid``.

    ``cold_thresholds`` are the T values (s) for the cold-fraction counts;
    ``keep_pages`` stores the per-sample page bit vectors for pages.npz.
    """

    def __init__(self, pid: int, cold_thresholds: Iterable[float], *, keep_pages: bool = True) -> None:
        from locality.kernel import PAGE_SIZE

        self.pid = pid
        self.page_size = int(PAGE_SIZE)
        self.thresholds = sorted(float(t) for t in cold_thresholds)
        self.keep_pages = keep_pages
        self.regions: list[Region] = []
        self.times: list[float] = []
        self.pending: list[tuple[int, int]] = []  # ranges asked to be registered, not answered yet

    # -- regions ----------------------------------------------------------------
    def add_region(self, name: str, start: int, length: int, now: float) -> Region | None:
        """Start tracking a range the child registered; resets its written set."""
        from locality.kernel import WriteTracker

        if self.covers(start, length):
            return None
        tracker = WriteTracker(start, length, pid=self.pid)
        tracker.reset()
        region = Region(len(self.regions), name, start, length, len(self.times), tracker, self.page_size, now)
        self.regions.append(region)
        return region

    def covers(self, start: int, length: int) -> bool:
        return not subtract((start, start + length), [(r.start, r.length) for r in self.regions if r.alive] + self.pending)

    def untracked(self, vmas: Iterable[Any]) -> list[tuple[str, int, int]]:
        """Anonymous VMA pieces of the child not tracked (nor asked for) yet."""
        holes = [(r.start, r.length) for r in self.regions if r.alive] + self.pending
        return anonymous_ranges(vmas, exclude=holes)

    @property
    def tracked_pages(self) -> int:
        return sum(r.n_pages for r in self.regions if r.alive)

    # -- sampling ---------------------------------------------------------------
    def sample(self, now: float) -> Sample:
        """One sample at monotonic time ``now``: written (and re-protect), present, swapped."""
        from locality.kernel.pagemap import pagemap

        t0 = time.perf_counter()
        written = resident = swapped = populated = refaulted = paged_out = 0
        cold = dict.fromkeys(self.thresholds, 0)
        for r in self.regions:
            n = r.n_pages
            if r.alive:
                try:
                    w = r.tracker.written_and_reset()
                    pm = pagemap(self.pid, r.start, r.end)
                except LocalityError as e:
                    # The child unmapped (part of) the range: stop tracking it.
                    r.alive = False
                    r.error = str(e)
                    r.tracker.close()
            if not r.alive:
                if self.keep_pages:
                    z = np.zeros((n + 7) // 8, dtype=np.uint8)
                    r.written_rows.append(z)
                    r.resident_rows.append(z)
                    r.swapped_rows.append(z)
                continue
            present = np.asarray(pm.present, dtype=bool)
            swp = np.asarray(pm.swapped, dtype=bool) & (pm.swap_type != SWP_PTE_MARKER)
            r.last_written[w] = now
            # Out of memory: swapped, or a file page we paged out that is gone.
            out_now = swp | (r.paged_out & ~present)
            refault = r.out_prev & present
            refaulted += r.early_refaults
            r.early_refaults = 0
            r.paged_out &= ~present
            r.out_prev = out_now
            pop = present | swp | r.paged_out
            age = now - r.last_written
            for t in self.thresholds:
                cold[t] += int(np.count_nonzero(pop & (age >= t)))
            written += int(np.count_nonzero(w))
            resident += int(np.count_nonzero(present))
            swapped += int(np.count_nonzero(swp))
            populated += int(np.count_nonzero(pop))
            refaulted += int(np.count_nonzero(refault))
            paged_out += int(np.count_nonzero(r.paged_out))
            if self.keep_pages:
                r.written_rows.append(np.packbits(w))
                r.resident_rows.append(np.packbits(present))
                r.swapped_rows.append(np.packbits(swp))
            r._present = present  # for the reclaim policy of this sample
        self.times.append(now)
        return Sample(
            t=now,
            written_pages=written,
            resident_pages=resident,
            swapped_pages=swapped,
            populated_pages=populated,
            refaulted_pages=refaulted,
            paged_out_pages=paged_out,
            tracked_pages=self.tracked_pages,
            cold_pages=cold,
            sample_s=time.perf_counter() - t0,
        )

    def idle_ranges(self, now: float, idle_seconds: float) -> list[tuple[int, int]]:
        """Present pages not written for ``idle_seconds``, as (addr, length) runs; marks them paged out."""
        out = []
        ps = self.page_size
        for r in self.regions:
            if not r.alive or not hasattr(r, "_present"):
                continue
            idle = r._present & (now - r.last_written >= idle_seconds)
            if not idle.any():
                continue
            r.paged_out |= idle
            for first, last in runs(idle):
                out.append((r.start + first * ps, (last - first) * ps))
        return out

    def after_pageout(self) -> None:
        """Re-read residency of regions just paged out, so the next sample's
        refault count starts from what really left memory."""
        from locality.kernel.pagemap import pagemap

        for r in self.regions:
            if not r.alive or not r.paged_out.any():
                continue
            try:
                pm = pagemap(self.pid, r.start, r.end)
            except LocalityError:
                continue
            present = np.asarray(pm.present, dtype=bool)
            swp = np.asarray(pm.swapped, dtype=bool) & (pm.swap_type != SWP_PTE_MARKER)
            # Out at the sample, back already: a refault that happened while we paged out.
            r.early_refaults += int(np.count_nonzero(r.out_prev & present))
            r.paged_out &= ~present
            r.out_prev = swp | r.paged_out

    def close(self) -> None:
        for r in self.regions:
            if r.alive:
                r.tracker.close()

    # -- results ----------------------------------------------------------------
    def page_matrices(self) -> dict[str, np.ndarray]:
        """pages.npz arrays (docs/internals.md): t, page_addr, region, regions, written/resident/swapped packed."""
        n_samples = len(self.times)
        n_pages = sum(r.n_pages for r in self.regions)
        mats = {k: np.zeros((n_samples, n_pages), dtype=bool) for k in ("written", "resident", "swapped")}
        addr = np.zeros(n_pages, dtype=np.uint64)
        region = np.zeros(n_pages, dtype=np.int32)
        col = 0
        for r in self.regions:
            n = r.n_pages
            addr[col : col + n] = r.start + np.arange(n, dtype=np.uint64) * self.page_size
            region[col : col + n] = r.index
            for key, rows in (("written", r.written_rows), ("resident", r.resident_rows), ("swapped", r.swapped_rows)):
                if rows:
                    block = np.unpackbits(np.stack(rows), axis=1, count=n).astype(bool)
                    mats[key][r.first_sample : r.first_sample + len(rows), col : col + n] = block
            col += n
        t0 = self.times[0] if self.times else 0.0
        return {
            "t": np.asarray(self.times, dtype=np.float64) - t0,
            "page_addr": addr,
            "region": region,
            "regions": np.asarray([r.name for r in self.regions], dtype=str),
            "n_pages": np.asarray(n_pages),
            **{k: np.packbits(m, axis=1) for k, m in mats.items()},
        }


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a bool vector, as [first, last) index pairs."""
    m = np.concatenate(([False], np.asarray(mask, dtype=bool), [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))
