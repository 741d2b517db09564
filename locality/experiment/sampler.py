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
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from locality import ranges
from locality.errors import LocalityError

SPAN_GAP = 256  # pages: regions closer than this share one pagemap read

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
    return ranges.subtract([span], holes)


@dataclass
class Region:
    """One tracked address range of the child: columns [col, col + n_pages) of the page state."""

    index: int
    name: str
    start: int
    length: int
    col: int
    tracker: Any
    n_pages: int
    alive: bool = True
    error: str | None = None

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def cols(self) -> slice:
        return slice(self.col, self.col + self.n_pages)


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
    written_state_pages: int | None = None  # written pages holding worker state (None: state unknown)
    discarded_pages: int = 0  # read as written but dropped since the last sample (MADV_DONTNEED): not in written_pages
    unresolved_pages: int = 0  # in swap or a uffd-wp marker, undecidable without CAP_SYS_ADMIN: neither resident nor swapped


class Sampler:
    """Samples the tracked regions of process ``pid``.

    Per-page state lives in flat arrays, one column per tracked page (regions
    appended as they are added), so a sample is a few vector operations
    whatever the number of VMAs. ``cold_thresholds`` are the T values (s) for
    the cold-fraction counts; ``keep_pages`` stores the per-sample bit rows
    for pages.npz.
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
        self.refused: list[tuple[int, int]] = []  # ranges the child could not register
        self.ignored: list[tuple[int, int]] = []  # ranges never to track: the child's own bookkeeping
        self.n_cols = 0
        # Never-written pages count as written when tracking began: a page is
        # not "cold for T seconds" before we have watched it for T seconds.
        self.last_written = np.empty(0, dtype=np.float64)
        self.paged_out = np.empty(0, dtype=bool)  # we paged it out and it has not come back
        self.out_prev = np.empty(0, dtype=bool)  # out of memory at the previous look
        self.present = np.empty(0, dtype=bool)  # at the last sample (for the reclaim policy)
        self.early_refaults = 0  # brought back between a sample and the re-read after pageout
        self.rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (n_cols, written, resident, swapped) packed
        # Worker state: sorted page addresses the child said hold it (None:
        # not told), and per column whether the page is one of them.
        self.state_addrs: np.ndarray | None = None
        self.state = np.empty(0, dtype=bool)
        # The last sample's page masks, kept for per-portion counts (experiment/portions.py).
        self.last_w = self.last_swapped = self.last_populated = self.last_refaulted = np.empty(0, dtype=bool)
        self.last_paged_out = np.empty(0, dtype=bool)
        self._early_mask: np.ndarray | None = None
        self.unresolved = 0  # pages of the last residency read that pagemap leaves undecided
        # Present or in swap at the last read and not seen dropped since: such a page held
        # a page at the last reset, so it holds no uffd-wp marker (kernel/markers.py).
        self.held = np.empty(0, dtype=bool)

    # -- regions ----------------------------------------------------------------
    def add_region(self, name: str, start: int, length: int, now: float, *, writes: bool = True) -> Region | None:
        """Start watching a range of the child; with ``writes`` (the child registered
        it for write tracking) its written set is reset, else residency only."""
        from locality.kernel import WriteTracker

        if self.covers(start, length):
            return None
        tracker = None
        if writes:
            tracker = WriteTracker(start, length, pid=self.pid)
            tracker.reset()
        n = length // self.page_size
        region = Region(len(self.regions), name, start, length, self.n_cols, tracker, n)
        self.regions.append(region)
        self.n_cols += n
        self.last_written = np.concatenate([self.last_written, np.full(n, now)])
        self.paged_out = np.concatenate([self.paged_out, np.zeros(n, bool)])
        self.out_prev = np.concatenate([self.out_prev, np.zeros(n, bool)])
        self.present = np.concatenate([self.present, np.zeros(n, bool)])
        self.held = np.concatenate([self.held, np.zeros(n, bool)])
        self.state = np.concatenate([self.state, self._state_mask(start, n)])
        return region

    def set_state_pages(self, addrs: np.ndarray) -> None:
        """Mark the columns of the pages holding worker state (page addresses, any order).

        Pages of ranges added later are marked as they are added; addresses
        outside every tracked range are not measured (``state_tracked_pages``).
        """
        self.state_addrs = np.unique(np.asarray(addrs, dtype=np.uint64))
        self.state = np.zeros(self.n_cols, dtype=bool)
        for r in self.regions:
            self.state[r.cols] = self._state_mask(r.start, r.n_pages)

    def _state_mask(self, start: int, n_pages: int) -> np.ndarray:
        mask = np.zeros(n_pages, dtype=bool)
        if self.state_addrs is not None and n_pages:
            ps = np.uint64(self.page_size)
            lo, hi = np.searchsorted(self.state_addrs, [np.uint64(start), np.uint64(start) + np.uint64(n_pages) * ps])
            mask[((self.state_addrs[lo:hi] - np.uint64(start)) // ps).astype(np.int64)] = True
        return mask

    @property
    def state_tracked_pages(self) -> int:
        """Pages holding worker state that are tracked (alive regions)."""
        return sum(int(np.count_nonzero(self.state[r.cols])) for r in self.regions if r.alive)

    def covers(self, start: int, length: int) -> bool:
        return not subtract((start, start + length), [(r.start, r.length) for r in self.regions if r.alive] + self.pending)

    def untracked(self, vmas: Iterable[Any]) -> list[tuple[str, int, int]]:
        """Anonymous VMA pieces of the child not tracked (nor asked for) yet."""
        holes = [(r.start, r.length) for r in self.regions if r.alive] + self.pending + self.refused + self.ignored
        return anonymous_ranges(vmas, exclude=holes)

    @property
    def tracked_pages(self) -> int:
        return sum(r.n_pages for r in self.regions if r.alive)

    def _drop(self, r: Region, error: Exception) -> None:
        # The child unmapped (part of) the range: stop tracking it.
        r.alive = False
        r.error = str(error)
        if r.tracker is not None:
            r.tracker.close()
        self.paged_out[r.cols] = False
        self.out_prev[r.cols] = False

    # -- sampling ---------------------------------------------------------------
    def _spans(self) -> list[tuple[int, int, list[Region]]]:
        """Alive regions grouped into address spans read with one pagemap pread each.

        Regions closer than SPAN_GAP pages share a read (the gap's entries are
        cheap zeros): a heap of many small VMAs costs a few syscalls, not one each.
        """
        alive = sorted((r for r in self.regions if r.alive), key=lambda r: r.start)
        spans: list[tuple[int, int, list[Region]]] = []
        for r in alive:
            if spans and r.start - spans[-1][1] <= SPAN_GAP * self.page_size:
                s, e, regs = spans[-1]
                spans[-1] = (s, max(e, r.end), regs + [r])
            else:
                spans.append((r.start, r.end, [r]))
        return spans

    def _residency(self) -> tuple[np.ndarray, np.ndarray]:
        """(present, swapped) per column from /proc/PID/pagemap, read span by span; updates ``held``."""
        from locality.kernel import pagemap

        present = np.zeros(self.n_cols, dtype=bool)
        swapped = np.zeros(self.n_cols, dtype=bool)
        self.unresolved = 0
        for start, end, regs in self._spans():
            try:
                pm = pagemap(self.pid, start, end, held=self._held_span(start, end, regs))
                p, w, u = pm.present, pm.swapped, pm.unresolved  # uffd-wp markers are none of them
            except LocalityError:
                # Region by region, so one vanished range does not hide the rest.
                for r in regs:
                    try:
                        pm = pagemap(self.pid, r.start, r.end, held=self.held[r.cols])
                        present[r.cols], swapped[r.cols] = pm.present, pm.swapped
                        self.unresolved += int(np.count_nonzero(pm.unresolved))
                    except LocalityError as e:
                        self._drop(r, e)
                continue
            for r in regs:
                a = (r.start - start) // self.page_size
                present[r.cols] = p[a : a + r.n_pages]
                swapped[r.cols] = w[a : a + r.n_pages]
                self.unresolved += int(np.count_nonzero(u[a : a + r.n_pages]))
        self.held = present | swapped
        return present, swapped

    def _held_span(self, start: int, end: int, regs: list[Region]) -> np.ndarray:
        held = np.zeros((end - start) // self.page_size, dtype=bool)
        for r in regs:
            a = (r.start - start) // self.page_size
            held[a : a + r.n_pages] = self.held[r.cols]
        return held

    def sample(self, now: float) -> Sample:
        """One sample at monotonic time ``now``: written (and re-protect), present, swapped."""
        t0 = time.perf_counter()
        w = np.zeros(self.n_cols, dtype=bool)
        discarded = 0
        for r in self.regions:
            if r.alive and r.tracker is not None:
                try:
                    w[r.cols], d = r.tracker.scan(reset=True)
                    discarded += int(np.count_nonzero(d))
                    self.held[r.cols] &= ~d  # dropped before this reset: may hold a marker now
                except LocalityError as e:
                    self._drop(r, e)
        present, swp = self._residency()
        self.last_written[w] = now
        # Out of memory: swapped, or a page we paged out that is gone (file pages).
        out_now = swp | (self.paged_out & ~present)
        back = self.out_prev & present
        refaulted = int(np.count_nonzero(back)) + self.early_refaults
        self.early_refaults = 0
        if self._early_mask is not None and self._early_mask.size == back.size:
            back |= self._early_mask
        self._early_mask = None
        self.paged_out &= ~present
        self.out_prev = out_now
        self.present = present
        pop = present | swp | self.paged_out
        age = now - self.last_written
        cold = {t: int(np.count_nonzero(pop & (age >= t))) for t in self.thresholds}
        self.last_w, self.last_swapped, self.last_populated, self.last_refaulted = w, swp, pop, back
        self.last_paged_out = self.paged_out.copy()  # the reclaim policy adds to paged_out after the sample
        if self.keep_pages:
            self.rows.append((self.n_cols, np.packbits(w), np.packbits(present), np.packbits(swp)))
        self.times.append(now)
        return Sample(
            t=now,
            written_pages=int(np.count_nonzero(w)),
            resident_pages=int(np.count_nonzero(present)),
            swapped_pages=int(np.count_nonzero(swp)),
            populated_pages=int(np.count_nonzero(pop)),
            refaulted_pages=refaulted,
            paged_out_pages=int(np.count_nonzero(self.paged_out)),
            tracked_pages=self.tracked_pages,
            cold_pages=cold,
            sample_s=time.perf_counter() - t0,
            written_state_pages=int(np.count_nonzero(w & self.state)) if self.state_addrs is not None else None,
            discarded_pages=discarded,
            unresolved_pages=self.unresolved,
        )

    def idle_ranges(self, now: float, idle_seconds: float, *, state_only: bool = False) -> list[tuple[int, int]]:
        """Present pages not written for ``idle_seconds``, as (addr, length) runs; marks them paged out.

        ``state_only``: only pages holding worker state (none if the child did not say which).
        """
        idle = self.present & (now - self.last_written >= idle_seconds)
        if state_only:
            idle &= self.state if self.state_addrs is not None else False
        if not idle.any():
            return []
        self.paged_out |= idle
        out = []
        ps = self.page_size
        for r in self.regions:
            if r.alive and idle[r.cols].any():
                out += [(r.start + first * ps, (last - first) * ps) for first, last in runs(idle[r.cols])]
        return out

    def after_pageout(self) -> None:
        """Re-read residency after a pageout, so the next sample's refault
        count starts from what really left memory."""
        present, swp = self._residency()
        # Out at the sample, back already: refaults that happened while we paged out.
        early = self.out_prev & present
        self.early_refaults += int(np.count_nonzero(early))
        self._early_mask = early if self._early_mask is None or self._early_mask.size != early.size else self._early_mask | early
        self.paged_out &= ~present
        self.out_prev = swp | self.paged_out

    def close(self) -> None:
        for r in self.regions:
            if r.alive and r.tracker is not None:
                r.tracker.close()

    # -- results ----------------------------------------------------------------
    def page_matrices(self, start: int = 0) -> dict[str, np.ndarray]:
        """pages.npz arrays (docs/internals.md): t, page_addr, region, regions, written/resident/swapped packed, state.

        Columns of regions added after a sample read as zeros in that sample.
        ``start``: only the samples from that one on (a chunk of appendstore).
        """
        n = self.n_cols
        width = (n + 7) // 8
        rows = self.rows[start:]
        mats = {k: np.zeros((len(rows), width), dtype=np.uint8) for k in ("written", "resident", "swapped")}
        for i, (_, w, p, sw) in enumerate(rows):
            # Columns only ever grow at the end, so an older row is a prefix of the matrix row.
            mats["written"][i, : len(w)] = w
            mats["resident"][i, : len(p)] = p
            mats["swapped"][i, : len(sw)] = sw
        addr = np.zeros(n, dtype=np.uint64)
        region = np.zeros(n, dtype=np.int32)
        for r in self.regions:
            addr[r.cols] = r.start + np.arange(r.n_pages, dtype=np.uint64) * self.page_size
            region[r.cols] = r.index
        t0 = self.times[0] if self.times else 0.0
        return {
            "t": np.asarray(self.times[start:], dtype=np.float64) - t0,
            "page_addr": addr,
            "region": region,
            "regions": np.asarray([r.name for r in self.regions], dtype=str),
            "n_pages": np.asarray(n),
            **mats,
            # Which columns hold worker state (packed like a matrix row); absent if the child did not say.
            **({"state": np.packbits(self.state)} if self.state_addrs is not None else {}),
        }


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a bool vector, as [first, last) index pairs."""
    m = np.concatenate(([False], np.asarray(mask, dtype=bool), [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))
