"""Sample any running process per VMA: the engine behind `locality probe PID`.

Every ``interval`` seconds, from outside the target:

- smaps: per VMA rss, pss, swap, anonymous, AnonHugePages (and Referenced);
- pagemap, page by page, of every VMA with resident or swapped pages:
  which pages are resident and which swapped; the per-page matrices go to
  ``pages.npz``. VMAs with neither (rss 0 and swap 0 in smaps) are not read,
  so a VM that maps GBs of address space but uses little stays cheap;
- /proc/PID/stat: minor and major faults;
- only with ``track_refs``: referenced bytes per VMA since the previous
  sample (clear_refs right after each smaps read, then smaps Referenced at
  the next). That writes the target's page-table accessed bits, so it is
  only done on request. The first sample has no referenced value.

Files (docs/internals.md): ``manifest.json`` (kind "probe"), ``timeline.csv``
with one row per (sample, VMA), and ``pages.npz``. VMAs that appear or
disappear between samples are handled by identity: a VMA is
(start, end, perms, offset, inode, path); a changed VMA is a new entry of
``regions`` and the ``vma`` column of the timeline is its index there. The
page matrices are over the union of pages seen resident or swapped in any
sample (``page_addr``, sorted); a page absent from a sample (unmapped, or
never touched yet) is 0 in both matrices; ``region`` gives the first region
each page was seen in. There is no ``written`` matrix: writes of a foreign
process are not observable without its cooperation.

Ctrl-C / SIGTERM stop after the current sample; every file is then written
whole (atomically), the run is marked ``interrupted`` and KeyboardInterrupt
is re-raised. A target that exits mid-probe ends the probe with status
``complete`` and a note in the manifest.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from locality.errors import InvalidArgument, NoSuchProcess
from locality.experiment import store
from locality.experiment.lifecycle import RunLifecycle
from locality.experiment.schema import TIMELINE
from locality.kernel import PAGE_SIZE, check_pid, clear_refs, faults, pagemap, rollup, smaps
from locality.units import parse_duration

TIMELINE_COLUMNS = [f.name for f in TIMELINE["probe"]]


@dataclass
class ProbeSample:
    """Totals of one sample, handed to ``on_sample`` (the CLI's live line)."""

    sample: int
    t: float
    vmas: int
    vmas_read: int  # VMAs whose pagemap was read (resident or swapped pages)
    rss_bytes: int
    pss_bytes: int
    swap_bytes: int
    referenced_bytes: int | None  # None without track_refs, and at the first sample
    resident_pages: int
    swapped_pages: int
    minor_faults: int
    major_faults: int
    sample_ms: float  # time the sampler spent on this sample


_MERGE_GAP = 256 * PAGE_SIZE  # read across gaps up to 1 MiB (2 KiB of pagemap)
# pagemap covers the user address space only ([vsyscall] lies above it); the
# bound is the largest x86_64/aarch64 user address with 5-level page tables.
_USER_END = 1 << 56


def check_ranges(ranges: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """Validate [start, end) address ranges: non-negative, page-aligned, non-empty."""
    if ranges is None:
        return None
    out = []
    for start, end in ranges:
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"range {name} must be an integer address, not {value!r}")
            if value < 0:
                raise InvalidArgument(f"range {name} {value:#x} is negative", "addresses are >= 0")
            if value % PAGE_SIZE:
                raise InvalidArgument(f"range {name} {value:#x} is not page-aligned", f"page size is {PAGE_SIZE} bytes")
        if end <= start:
            raise InvalidArgument(f"range {start:#x}-{end:#x} is empty or reversed", "give START-END with START < END")
        out.append((start, end))
    return sorted(out)


def _clip(start: int, end: int, ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if ranges is None:
        return [(start, end)]
    return [(max(start, a), min(end, b)) for a, b in ranges if a < end and b > start]


def _identity(pid: int) -> tuple[str | None, list[str] | None]:
    """The target's name and command line, for the manifest (None where unreadable)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.name(), proc.cmdline()
    except psutil.Error:
        return None, None


def preflight(pid: int, *, interval: float, duration: float, track_refs: bool,
              ranges: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]] | None:
    """Every check that can refuse a probe, done before anything is written.

    Raises InvalidArgument, NoSuchProcess, AccessDenied. With ``track_refs``
    it clears the target's referenced bits once (the write permission check).
    """
    check_pid(pid)
    interval = parse_duration(interval, "--interval")
    duration = parse_duration(duration, "--duration")
    if duration < interval:
        raise InvalidArgument(f"--duration {duration:g}s is shorter than --interval {interval:g}s",
                              "the probe needs at least two samples: make the duration at least one interval")
    ranges = check_ranges(ranges)
    entries = smaps(pid)
    if not entries:
        raise InvalidArgument(f"PID {pid} has no user memory (a kernel thread or a zombie)")
    if ranges is not None and not any(_clip(e.start, e.end, ranges) for e in entries):
        raise InvalidArgument(f"no VMA of PID {pid} intersects the given range(s)", f"see /proc/{pid}/maps")
    first = entries[0]
    pagemap(pid, first.start, first.start + PAGE_SIZE)  # permission to read pagemap
    faults(pid)
    if track_refs:
        clear_refs(pid)
    return ranges


def probe(pid: int, out: str | os.PathLike, *, interval: float = 1.0, duration: float = 30.0,
          track_refs: bool = False, on_sample: Callable[[ProbeSample], None] | None = None,
          ranges: Sequence[tuple[int, int]] | None = None, replace: bool = False) -> Path:
    """Sample process ``pid`` every ``interval`` s for ``duration`` s into the run directory ``out``.

    ``out`` is the run directory itself (created; must not exist or be empty,
    unless ``replace``: a finished probe there is replaced).
    Samples are taken at t = 0, interval, 2 interval, ... <= duration.
    ``ranges``: optional [(start, end)] page-aligned address ranges; only VMAs
    that intersect them are recorded, and their pages only inside them
    (smaps counters stay per whole VMA). Returns the run directory.
    """
    out = Path(out)
    if not replace and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgument(f"{out} already exists and is not an empty directory",
                              "choose a new --out directory, or pass --replace")
    ranges = preflight(pid, interval=interval, duration=duration, track_refs=track_refs, ranges=ranges)
    interval, duration = float(interval), float(duration)

    from locality.kernel import capabilities

    caps = capabilities()
    comm, cmdline = _identity(pid)
    config = {
        "pid": pid, "comm": comm, "cmdline": cmdline, "interval": interval, "duration": duration,
        "track_refs": track_refs, "ranges": [[a, b] for a, b in ranges] if ranges else None,
    }
    # From here on, Ctrl-C leaves a whole (interrupted) run, never a half one.
    life = RunLifecycle("probe", out.parent, out.name, config, capabilities=caps, replace=replace)
    life.manifest.update(samples=0, note=None, page_sizes_seen=[])
    with life:
        _Probe(pid, life, interval, duration, track_refs, ranges, on_sample).execute()
    assert life.dir is not None
    return life.dir


class _Probe:
    def __init__(self, pid: int, life: RunLifecycle, interval: float, duration: float,
                 track_refs: bool, ranges: list[tuple[int, int]] | None,
                 on_sample: Callable[[ProbeSample], None] | None) -> None:
        assert life.dir is not None
        self.pid, self.life, self.out, self.manifest = pid, life, life.dir, life.manifest
        self.interval, self.duration, self.track_refs, self.ranges = interval, duration, track_refs, ranges
        self.on_sample = on_sample
        # Timeline, columnar: per sample one int64 block (VMAs x _BLOCK_COLUMNS)
        # and its scalars; VMA strings live once in ``regions``. A long probe of
        # a process with thousands of VMAs stays tens of MB, not a dict per row.
        self.blocks: list[np.ndarray] = []
        self.sample_meta: list[tuple[float, int, int, int, float]] = []  # t, sample, minflt, majflt, ms
        self.times: list[float] = []
        self.pages = _PageHistory()
        self.regions: dict[tuple, int] = {}
        self.region_bounds: list[tuple[int, int]] = []
        self.page_sizes: set[int] = set()
        self.note: str | None = None

    def execute(self) -> None:
        try:
            self._loop()
            if self.life.stopping:
                self.life.cut()
        finally:
            self._write()

    def _wait_until(self, deadline: float) -> None:
        while True:
            self.life.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def _loop(self) -> None:
        n_samples = int(math.floor(self.duration / self.interval + 1e-9)) + 1
        t0 = time.monotonic()
        for k in range(n_samples):
            self._wait_until(t0 + k * self.interval)
            started = time.monotonic()
            try:
                summary = self._sample(k, started - t0)
            except NoSuchProcess:
                summary = None
            if summary is None:
                self.note = (f"target PID {self.pid} exited at t={time.monotonic() - t0:.2f}s; "
                             f"{len(self.times)} samples kept")
                return
            if self.on_sample is not None:
                self.on_sample(summary)

    def _region(self, e: Any) -> int:
        key = (e.start, e.end, e.perms, e.offset, e.inode, e.path)
        index = self.regions.get(key)
        if index is None:
            index = self.regions[key] = len(self.regions)
            self.region_bounds.append((e.start, e.end))
        return index

    def _sample(self, k: int, t: float) -> ProbeSample | None:
        started = time.perf_counter()
        entries = smaps(self.pid)
        # Whole-process totals from smaps_rollup: it sums exact page shares and rounds to kB
        # once, where a sum of per-VMA kB values reads PSS up to 0.9% low. Before clear_refs.
        whole = rollup(self.pid) if self.ranges is None and entries else None
        if self.track_refs:
            # Right after reading Referenced, so the next sample's value covers one interval.
            clear_refs(self.pid)
        if not entries:  # a zombie: its memory is gone
            return None
        minflt, majflt = faults(self.pid)
        block, resident, swapped = [], [], []
        totals = dict(rss=0, pss=0, swap=0, referenced=0, resident=0, swapped=0, read=0)
        counts = self._read_pages(entries, resident, swapped)
        with_refs = self.track_refs and k > 0
        for i, e in enumerate(entries):
            if not _clip(e.start, e.end, self.ranges):
                continue
            n_resident, n_swapped = counts.get(i, (0, 0))
            if i in counts:
                totals["read"] += 1
            if e.rss:
                self.page_sizes.add(e.kernel_page_size)
            if e.anon_huge:
                self.page_sizes.add(2 << 20)
            block.append((self._region(e), e.rss, e.pss, e.swap, e.referenced if with_refs else -1,
                          e.anonymous, e.anon_huge, n_resident, n_swapped))
            totals["rss"] += e.rss
            totals["pss"] += e.pss
            totals["swap"] += e.swap
            totals["referenced"] += e.referenced
            totals["resident"] += n_resident
            totals["swapped"] += n_swapped
        if whole is not None:
            totals.update(rss=whole.get("rss", 0), pss=whole.get("pss", 0), swap=whole.get("swap", 0),
                          referenced=whole.get("referenced", 0))
        self.pages.add(_concat(resident), _concat(swapped))
        sample_ms = (time.perf_counter() - started) * 1e3
        self.blocks.append(np.array(block, dtype=np.int64).reshape(len(block), len(_BLOCK_COLUMNS)))
        self.sample_meta.append((round(t, 6), k, minflt, majflt, round(sample_ms, 3)))
        self.times.append(t)
        return ProbeSample(
            sample=k, t=t, vmas=len(block), vmas_read=totals["read"], rss_bytes=totals["rss"],
            pss_bytes=totals["pss"], swap_bytes=totals["swap"],
            referenced_bytes=totals["referenced"] if with_refs else None,
            resident_pages=totals["resident"], swapped_pages=totals["swapped"],
            minor_faults=minflt, major_faults=majflt, sample_ms=sample_ms,
        )

    def _read_pages(self, entries: list, resident: list[np.ndarray], swapped: list[np.ndarray]) -> dict[int, tuple[int, int]]:
        """pagemap of every VMA with resident or swapped pages (smaps says which):
        entry index -> (resident pages, swapped pages); page addresses appended.

        Neighbouring VMAs (a library's text, data and bss; heap arenas) are
        read in one pagemap call when the gap between them is small: one call
        per VMA costs more in decoding than the few extra entries."""
        parts = [(lo, hi, i) for i, e in enumerate(entries) if e.rss or e.swap
                 for lo, hi in _clip(e.start, e.end, self.ranges) if lo < _USER_END]
        groups: list[list[tuple[int, int, int]]] = []
        for part in parts:
            if groups and part[0] - groups[-1][-1][1] <= _MERGE_GAP and part[0] >= groups[-1][-1][1]:
                groups[-1].append(part)
            else:
                groups.append([part])
        counts: dict[int, tuple[int, int]] = {}
        for group in groups:
            g_lo, g_hi = group[0][0], group[-1][1]
            pm = pagemap(self.pid, g_lo, g_hi)
            wanted = np.zeros(len(pm.present), dtype=bool)
            for lo, hi, i in group:
                a, b = (lo - g_lo) // PAGE_SIZE, (hi - g_lo) // PAGE_SIZE
                wanted[a:b] = True
                r, s = counts.get(i, (0, 0))
                counts[i] = (r + int(np.count_nonzero(pm.present[a:b])), s + int(np.count_nonzero(pm.swapped[a:b])))
            addrs = pm.addresses
            resident.append(addrs[pm.present & wanted])
            swapped.append(addrs[pm.swapped & wanted])
        return counts

    # -- files
    def _timeline(self) -> "Any":
        import pandas as pd

        if not self.blocks:
            return pd.DataFrame(columns=TIMELINE_COLUMNS)
        data = np.concatenate(self.blocks)
        per_sample = [len(b) for b in self.blocks]
        meta = list(zip(*self.sample_meta))
        keys = list(self.regions)
        vma = data[:, 0]
        columns: dict[str, Any] = {
            "t": np.repeat(np.asarray(meta[0], dtype=np.float64), per_sample),
            "sample": np.repeat(np.asarray(meta[1], dtype=np.int64), per_sample),
            "vma": vma,
            "start": np.asarray([keys[v][0] for v in vma], dtype=np.uint64),
            "end": np.asarray([keys[v][1] for v in vma], dtype=np.uint64),
            "perms": [keys[v][2] for v in vma],
            "path": [keys[v][5] for v in vma],
        }
        for j, name in enumerate(_BLOCK_COLUMNS[1:], start=1):
            columns[name] = data[:, j]
        referenced = data[:, _BLOCK_COLUMNS.index("referenced_bytes")].astype(np.float64)
        referenced[referenced < 0] = np.nan  # not measured: no --track-refs, or the first sample
        columns["referenced_bytes"] = referenced
        columns["minor_faults"] = np.repeat(np.asarray(meta[2], dtype=np.int64), per_sample)
        columns["major_faults"] = np.repeat(np.asarray(meta[3], dtype=np.int64), per_sample)
        columns["sample_ms"] = np.repeat(np.asarray(meta[4], dtype=np.float64), per_sample)
        return pd.DataFrame(columns, columns=TIMELINE_COLUMNS)

    def _pages(self) -> dict[str, np.ndarray]:
        page_addr, resident, swapped = self.pages.matrices()
        region = np.full(len(page_addr), -1, dtype=np.int32)
        for index, (start, end) in enumerate(self.region_bounds):  # first region seen holding the page
            lo, hi = np.searchsorted(page_addr, [start, end])
            block = region[lo:hi]
            block[block < 0] = index
        names = [f"{start:#x}-{end:#x} {perms} {path}".rstrip()
                 for (start, end, perms, _offset, _inode, path) in self.regions]
        return {
            "t": np.asarray(self.times, dtype=np.float64),
            "page_addr": page_addr,
            "region": region,
            "regions": np.asarray(names, dtype=str),
            "resident": resident,
            "swapped": swapped,
            "n_pages": np.int64(len(page_addr)),
        }

    def _write(self) -> None:
        store.atomic_write_csv(self.out / "timeline.csv", self._timeline())
        store.atomic_write_npz(self.out / "pages.npz", **self._pages())
        self.manifest.update(samples=len(self.times), note=self.note, page_sizes_seen=sorted(self.page_sizes))


_BLOCK_COLUMNS = ["vma", "rss_bytes", "pss_bytes", "swap_bytes", "referenced_bytes", "anonymous_bytes",
                  "anon_huge_bytes", "resident_pages", "swapped_pages"]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    # Parts come in address order and do not overlap: the result is sorted.
    return np.concatenate(parts).astype(np.uint64, copy=False) if parts else np.empty(0, dtype=np.uint64)


class _PageHistory:
    """Per-sample sets of resident and swapped pages, as bit rows over the
    pages seen so far, numbered in order of first appearance: a new page gets
    the next number, so earlier rows stay valid as the set grows and memory is
    one bit per page and sample (identical consecutive rows are shared)."""

    def __init__(self) -> None:
        self.n = 0
        self.sorted = np.empty(0, dtype=np.uint64)  # every page seen, by address
        self.slot = np.empty(0, dtype=np.int64)  # its number (order of first appearance)
        self.rows: list[tuple[int, np.ndarray, np.ndarray]] = []

    def _slots(self, pages: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.sorted, pages)
        hit = idx < len(self.sorted)
        hit[hit] = self.sorted[idx[hit]] == pages[hit]
        if not hit.all():
            new = pages[~hit]
            merged = np.concatenate([self.sorted, new])
            slots = np.concatenate([self.slot, np.arange(self.n, self.n + len(new), dtype=np.int64)])
            order = np.argsort(merged, kind="stable")
            self.sorted, self.slot = merged[order], slots[order]
            self.n += len(new)
            idx = np.searchsorted(self.sorted, pages)
        return self.slot[idx]

    def add(self, resident: np.ndarray, swapped: np.ndarray) -> None:
        slots = [self._slots(resident), self._slots(swapped)]  # may number new pages
        rows = []
        for numbers in slots:
            bits = np.zeros(self.n, dtype=bool)
            bits[numbers] = True
            rows.append(np.packbits(bits))
        if self.rows and self.rows[-1][0] == self.n:
            last = self.rows[-1]
            rows = [old if np.array_equal(old, new) else new for old, new in zip(last[1:], rows)]
        self.rows.append((self.n, rows[0], rows[1]))

    def matrices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(page addresses sorted, resident, swapped): samples x pages, packed bits."""
        n_pages = self.n
        by_address = np.empty(n_pages, dtype=np.int64)
        by_address[self.slot] = np.arange(n_pages)
        out = [np.zeros((len(self.rows), (n_pages + 7) // 8), dtype=np.uint8) for _ in range(2)]
        row = np.zeros(n_pages, dtype=bool)
        for i, (n, *packed) in enumerate(self.rows):
            for matrix, bits in zip(out, packed):
                row[:] = False
                row[by_address[:n][np.unpackbits(bits, count=n).astype(bool)]] = True
                matrix[i] = np.packbits(row)
        return self.sorted.copy(), out[0], out[1]


def summary_line(s: ProbeSample) -> str:
    """One line per sample for a terminal."""
    mib = 1 << 20
    ref = "" if s.referenced_bytes is None else f"  referenced {s.referenced_bytes / mib:8.2f} MiB"
    return (f"t={s.t:7.2f}s  VMAs {s.vmas:5d} ({s.vmas_read} read)  rss {s.rss_bytes / mib:8.2f} MiB  "
            f"pss {s.pss_bytes / mib:8.2f} MiB  swap {s.swap_bytes / mib:7.2f} MiB  "
            f"resident {s.resident_pages} pages  swapped {s.swapped_pages}{ref}  "
            f"faults {s.minor_faults}/{s.major_faults}  ({s.sample_ms:.1f} ms)")


def sample_dict(s: ProbeSample) -> dict[str, Any]:
    return asdict(s)
