"""Per-page state of any process: /proc/PID/pagemap, decoded with numpy.

Each virtual page has one little-endian u64 entry (pagemap.rst): bit 63
present, 62 swapped, 61 file-page or shared-anon, 57 uffd write-protected,
56 exclusively mapped, 55 soft-dirty, bits 0-54 the PFN when present (zero
without CAP_SYS_ADMIN) or, when swapped, swap type (bits 0-4) and offset
(bits 5-54). The kernel walk dominates the cost, so the file is read in a few
large preads straight into one numpy buffer and decoded with vectorised bit
operations on the top byte of each entry.

The PAGEMAP_SCAN ioctl on the same file (Linux >= 6.7) answers in runs of
pages with equal categories instead of one entry per page; ``residency``
uses it for present/swapped when nothing else is needed (much less kernel
work per page), and the write tracker uses it for written pages.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np

from locality.errors import InvalidArgument, NoSuchProcess, Unsupported
from locality.kernel._platform import (
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    PAGEMAP_SCAN,
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_EXCLUSIVE_BIT,
    PM_FILE_SHARED_BIT,
    PM_PFN_BITS,
    PM_PRESENT_BIT,
    PM_SOFT_DIRTY_BIT,
    PM_SWAP_TYPE_BITS,
    PM_SWAPPED_BIT,
    PM_UFFD_WP_BIT,
    PAGE_IS_WPALLOWED,
    check_pid,
    check_range,
    libc,
    open_proc,
    process_error,
)
from locality.kernel.markers import split_swapped

ENTRY_BYTES = 8
CHUNK_ENTRIES = 1 << 20  # 8 MiB per pread: few syscalls, bounded kernel buffer work
_PFN_MASK = np.uint64((1 << PM_PFN_BITS) - 1)


class PageMap:
    """One sample of ``[start, end)``: numpy arrays with one entry per page.

    Fields are decoded from the raw entries on first use and then kept, so a
    caller that needs only residency pays for one flag, not for all of them.
    """

    def __init__(self, start: int, end: int, page_size: int, raw: np.ndarray, pid: int | None = None,
                 held: np.ndarray | None = None) -> None:
        self.pid = pid  # None: this process
        self.held = held  # pages known to hold a page when last write-protected (markers.split_swapped)
        self.start = start
        self.end = end
        self.page_size = page_size
        self.raw = raw  # uint64 entries as the kernel wrote them
        # Bits 56-63 live in byte 7 of each little-endian entry: one strided copy
        # of that byte, then every flag is a cheap test on a contiguous uint8 array.
        self._top = raw.view(np.uint8)[7::8].copy()

    def __repr__(self) -> str:
        return f"PageMap(start={self.start:#x}, end={self.end:#x}, pages={len(self)})"

    def _flag(self, bit: int) -> np.ndarray:
        return (self._top & np.uint8(1 << (bit - 56))) != 0

    @cached_property
    def present(self) -> np.ndarray:
        """bool: in RAM."""
        return self._flag(PM_PRESENT_BIT)

    @cached_property
    def _swap_split(self) -> tuple[np.ndarray, np.ndarray]:
        return split_swapped(self.pid, self.start, self.raw, self.held)

    @property
    def swapped(self) -> np.ndarray:
        """bool: in swap for certain (uffd-wp markers of never-populated pages excluded)."""
        return self._swap_split[0]

    @property
    def unresolved(self) -> np.ndarray:
        """bool: in swap or a uffd-wp marker, which this reader cannot tell (kernel/markers.py).

        Always empty with CAP_SYS_ADMIN; without it, only where a VMA holds
        both write-protected pages in swap and markers.
        """
        return self._swap_split[1]

    @cached_property
    def pfn(self) -> np.ndarray:
        """uint64 physical frame number; 0 if not present or not root."""
        pfn = self.raw & _PFN_MASK
        pfn *= self.present  # when swapped, the low bits hold swap type/offset, not a PFN
        return pfn

    @cached_property
    def exclusive(self) -> np.ndarray:
        """bool: mapped by this process only."""
        return self._flag(PM_EXCLUSIVE_BIT)

    @cached_property
    def file_shared(self) -> np.ndarray:
        """bool: file page or shared anonymous."""
        return self._flag(PM_FILE_SHARED_BIT)

    @cached_property
    def uffd_wp(self) -> np.ndarray:
        """bool: write-protected by userfaultfd."""
        return self._flag(PM_UFFD_WP_BIT)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def addresses(self) -> np.ndarray:
        """Start address of each page (uint64)."""
        return np.arange(self.start, self.end, self.page_size, dtype=np.uint64)

    @property
    def uffd_marker(self) -> np.ndarray:
        """Pages holding a uffd-wp PTE marker for certain (reported as swapped by the kernel)."""
        return self._flag(PM_SWAPPED_BIT) & ~self.swapped & ~self.unresolved

    @property
    def soft_dirty(self) -> np.ndarray:
        return ((self.raw >> np.uint64(PM_SOFT_DIRTY_BIT)) & np.uint64(1)).astype(np.bool_)

    @property
    def swap_type(self) -> np.ndarray:
        """Swap device index per page (uint8); meaningful where ``swapped``."""
        t = (self.raw & np.uint64((1 << PM_SWAP_TYPE_BITS) - 1)).astype(np.uint8)
        t[~self.swapped] = 0
        return t

    @property
    def swap_offset(self) -> np.ndarray:
        """Page offset in the swap device (uint64); meaningful where ``swapped``."""
        off = (self.raw & _PFN_MASK) >> np.uint64(PM_SWAP_TYPE_BITS)
        off[~self.swapped] = 0
        return off


def _checked(pid: int | None, start: int, end: int, result_bytes_per_page: int) -> int:
    """Validate a pagemap request; returns the range's length rounded up to pages."""
    if not isinstance(start, int) or not isinstance(end, int):
        raise InvalidArgument(f"start and end must be integers, got {start!r}, {end!r}")
    if end <= start:
        raise InvalidArgument(f"empty or negative range: start {start:#x}, end {end:#x}")
    length = check_range(start, end - start, result_bytes_per_page)
    if pid is not None:
        check_pid(pid)
    return length


def read_entries(pid: int | None, start: int, end: int) -> np.ndarray:
    """The raw pagemap entries of ``[start, end)`` of ``pid`` (None: this process)."""
    # 8 bytes of entries per page, and about as much again for decoded fields.
    length = _checked(pid, start, end, 2 * ENTRY_BYTES)
    n = length >> PAGE_SHIFT
    entries = np.empty(n, dtype="<u8")
    buf = memoryview(entries).cast("B")
    fd = open_proc(pid, "pagemap")
    who = os.getpid() if pid is None else pid
    try:
        done = 0
        total = n * ENTRY_BYTES
        offset = (start >> PAGE_SHIFT) * ENTRY_BYTES
        while done < total:
            want = min(total - done, CHUNK_ENTRIES * ENTRY_BYTES)
            try:
                got = os.preadv(fd, [buf[done : done + want]], offset + done)
            except OSError as e:
                raise process_error(e.errno, who, "pagemap") from None
            if got == 0:  # the process exited after open: its mm is gone
                raise NoSuchProcess(who)
            done += got
    finally:
        os.close(fd)
    return entries


def decode(start: int, entries: np.ndarray, pid: int | None = None, held: np.ndarray | None = None) -> PageMap:
    """Decode raw pagemap entries of ``pid``'s pages starting at ``start`` (fields on first use)."""
    return PageMap(start=start, end=start + len(entries) * PAGE_SIZE, page_size=PAGE_SIZE, raw=entries, pid=pid,
                   held=held)


def pagemap(pid: int | None, start: int, end: int, *, held: np.ndarray | None = None) -> PageMap:
    """Per-page state of ``[start, end)`` in process ``pid`` (``None``: this process).

    ``start`` must be page-aligned, ``end`` is rounded up to a page boundary.
    Unmapped pages in the range read as all-zero entries (not present, not
    swapped). PFNs are 0 unless the caller has CAP_SYS_ADMIN. ``held`` (bool
    per page, optional): pages known to hold a page when last write-protected,
    which lets a reader without CAP_SYS_ADMIN decide more uffd-wp markers.
    """
    entries = read_entries(pid, start, end)
    if held is not None and len(held) != len(entries):
        raise InvalidArgument(f"held has {len(held)} entries for a range of {len(entries)} pages")
    return decode(start, entries, pid, held)


# --- PAGEMAP_SCAN ----------------------------------------------------------------


class PmScanArg(ctypes.Structure):
    """struct pm_scan_arg (include/uapi/linux/fs.h), 12 x u64 = 96 bytes."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
            "category_inverted", "category_mask", "category_anyof_mask", "return_mask",
        )
    ]


assert ctypes.sizeof(PmScanArg) == 96
PAGE_REGION = np.dtype([("start", "<u8"), ("end", "<u8"), ("categories", "<u8")])  # struct page_region
DEFAULT_MAX_REGIONS = 1 << 16  # 1.5 MiB buffer; longer answers take several ioctls


def pm_scan_ioctl(fd: int, arg: PmScanArg) -> int:
    """One PAGEMAP_SCAN ioctl; returns the number of regions written, or raises OSError."""
    rv = libc.ioctl(fd, PAGEMAP_SCAN, ctypes.addressof(arg))
    if rv < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rv


def scan_regions(fd: int, arg: PmScanArg, start: int, end: int, regions: np.ndarray | None) -> Iterator[np.ndarray]:
    """Walk ``[start, end)`` with PAGEMAP_SCAN (flags and masks already set in ``arg``).

    Yields each ioctl's regions (a view into ``regions``, valid until the next
    step). ``regions=None``: no output, one walk (e.g. write-protect only).
    """
    arg.size = ctypes.sizeof(PmScanArg)
    arg.end = end
    arg.vec = 0 if regions is None else regions.ctypes.data
    arg.vec_len = 0 if regions is None else len(regions)
    while True:
        arg.start = start
        arg.walk_end = 0
        n = pm_scan_ioctl(fd, arg)
        if n:
            yield regions[:n]
        # Kernel 6.18: once its internal 512-region buffer has filled, walk_end can
        # stay below end after a complete walk. A short answer means the walk is done.
        if regions is None or n < arg.vec_len or arg.walk_end >= end or arg.walk_end <= start:
            return
        start = arg.walk_end


def mark_regions(out: np.ndarray, regions: np.ndarray, base: int) -> None:
    """Set ``out[i]`` for every page i (counted from ``base``) inside any of ``regions``.

    Regions are page-aligned [start, end) runs, clipped to ``out``. Marking is
    idempotent, so a region reported twice cannot count twice.
    """
    n = len(out)
    limit = base + n * PAGE_SIZE
    first = ((np.clip(regions["start"], base, limit) - np.uint64(base)) >> np.uint64(PAGE_SHIFT)).astype(np.int64)
    last = ((np.clip(regions["end"], base, limit) - np.uint64(base)) >> np.uint64(PAGE_SHIFT)).astype(np.int64)
    lengths = last - first
    total = int(lengths.sum())
    if total <= 0:
        return
    if total < n // 8:  # sparse: index the marked pages directly
        offsets = np.repeat(first - (np.cumsum(lengths) - lengths), lengths)
        out[np.arange(total) + offsets] = True
    else:  # dense: +1 at each start, -1 at each end, running sum
        delta = np.zeros(n + 1, dtype=np.int8)
        delta[first] += 1
        delta[last] -= 1
        out |= np.cumsum(delta[:-1], dtype=np.int8) > 0


def scan_error(err: int, pid: int, what: str = "PAGEMAP_SCAN of pagemap") -> Exception:
    if err == errno.ENOTTY:
        return Unsupported(
            "PAGEMAP_SCAN", "the pagemap ioctl is missing (kernel older than 6.7)", "see `locality doctor`"
        )
    if err == errno.EINVAL:
        return InvalidArgument(f"PAGEMAP_SCAN rejected the range of PID {pid}")
    return process_error(err, pid, what)


@dataclass(frozen=True, eq=False)
class Residency:
    """Present and swapped pages of ``[start, end)``, one bool per page."""

    start: int
    end: int
    page_size: int
    present: np.ndarray
    swapped: np.ndarray
    unresolved: np.ndarray  # in swap or a uffd-wp marker: not decidable by this reader (PageMap.unresolved)


def residency(pid: int | None, start: int, end: int, *, max_regions: int = DEFAULT_MAX_REGIONS) -> Residency:
    """Which pages of ``[start, end)`` of ``pid`` are present, and which swapped (PAGEMAP_SCAN).

    The same answer as ``pagemap(...).present`` / ``.swapped``, from runs of
    pages instead of one 8-byte entry per page: far less kernel work when
    only residency is needed. Needs Linux >= 6.7; no registration needed.
    """
    length = _checked(pid, start, end, 12)  # four bools, and entries where markers may hide
    if max_regions < 1:
        raise InvalidArgument(f"max_regions must be >= 1, got {max_regions}")
    n = length >> PAGE_SHIFT
    end = start + length
    present = np.zeros(n, dtype=np.bool_)
    swapped = np.zeros(n, dtype=np.bool_)
    regions = np.empty(max(1, min(max_regions, n)), dtype=PAGE_REGION)
    wanted = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
    arg = PmScanArg(category_anyof_mask=wanted, return_mask=wanted | PAGE_IS_WPALLOWED)
    # In write-tracked VMAs a "swapped" run may be uffd-wp markers of never-populated
    # pages; PAGEMAP_SCAN cannot tell them apart, the pagemap entries can.
    ambiguous = np.zeros(n, dtype=np.bool_)
    who = os.getpid() if pid is None else pid
    fd = open_proc(pid, "pagemap")
    try:
        for batch in scan_regions(fd, arg, start, end, regions):
            categories = batch["categories"]
            mark_regions(present, batch[(categories & PAGE_IS_PRESENT) != 0], start)
            is_swapped = (categories & PAGE_IS_SWAPPED) != 0
            tracked = (categories & PAGE_IS_WPALLOWED) != 0
            mark_regions(swapped, batch[is_swapped & ~tracked], start)
            mark_regions(ambiguous, batch[is_swapped & tracked], start)
    except OSError as e:
        raise scan_error(e.errno, who) from None
    finally:
        os.close(fd)
    unresolved = np.zeros(n, dtype=np.bool_)
    if ambiguous.any():
        idx = np.flatnonzero(ambiguous)
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        entries = read_entries(pid, start + lo * PAGE_SIZE, start + hi * PAGE_SIZE)
        real, unknown = split_swapped(pid, start + lo * PAGE_SIZE, entries)
        swapped[lo:hi] |= ambiguous[lo:hi] & real
        unresolved[lo:hi] = ambiguous[lo:hi] & unknown
    return Residency(start=start, end=end, page_size=PAGE_SIZE, present=present, swapped=swapped, unresolved=unresolved)


