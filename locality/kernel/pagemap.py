"""Per-page state of any process: /proc/PID/pagemap, decoded with numpy.

Each virtual page has one little-endian u64 entry (pagemap.rst): bit 63
present, 62 swapped, 61 file-page or shared-anon, 57 uffd write-protected,
56 exclusively mapped, 55 soft-dirty, bits 0-54 the PFN when present (zero
without CAP_SYS_ADMIN) or, when swapped, swap type (bits 0-4) and offset
(bits 5-54). The kernel walk dominates the cost, so the file is read in a few
large preads straight into one numpy buffer and decoded with vectorised bit
operations on the top byte of each entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from locality.errors import InvalidArgument, NoSuchProcess
from locality.kernel._platform import (
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
    check_pid,
    check_range,
    open_proc,
    process_error,
)

ENTRY_BYTES = 8
CHUNK_ENTRIES = 1 << 20  # 8 MiB per pread: few syscalls, bounded kernel buffer work
_PFN_MASK = np.uint64((1 << PM_PFN_BITS) - 1)


@dataclass(frozen=True, eq=False)
class PageMap:
    """One sample of ``[start, end)``: numpy arrays with one entry per page."""

    start: int
    end: int
    page_size: int
    present: np.ndarray  # bool
    swapped: np.ndarray  # bool
    pfn: np.ndarray  # uint64, 0 if not present or not root
    exclusive: np.ndarray  # bool: mapped by this process only
    file_shared: np.ndarray  # bool: file page or shared anonymous
    uffd_wp: np.ndarray  # bool: write-protected by userfaultfd
    raw: np.ndarray = field(repr=False)  # uint64 entries as the kernel wrote them

    def __len__(self) -> int:
        return len(self.present)

    @property
    def addresses(self) -> np.ndarray:
        """Start address of each page (uint64)."""
        return np.arange(self.start, self.end, self.page_size, dtype=np.uint64)

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


def read_entries(pid: int | None, start: int, end: int) -> np.ndarray:
    """The raw pagemap entries of ``[start, end)`` of ``pid`` (None: this process)."""
    if not isinstance(start, int) or not isinstance(end, int):
        raise InvalidArgument(f"start and end must be integers, got {start!r}, {end!r}")
    if end <= start:
        raise InvalidArgument(f"empty or negative range: start {start:#x}, end {end:#x}")
    length = check_range(start, end - start)
    if pid is not None:
        check_pid(pid)
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


def decode(start: int, entries: np.ndarray) -> PageMap:
    """Decode raw pagemap entries of pages starting at ``start``."""
    # Bits 56-63 live in byte 7 of each little-endian entry: one strided copy of that
    # byte, then every flag is a cheap test on a contiguous uint8 array.
    top = entries.view(np.uint8)[7::8].copy()

    def flag(bit: int) -> np.ndarray:
        return (top & np.uint8(1 << (bit - 56))) != 0

    present = flag(PM_PRESENT_BIT)
    pfn = entries & _PFN_MASK
    pfn *= present  # when swapped, the low bits hold swap type/offset, not a PFN
    return PageMap(
        start=start,
        end=start + len(entries) * PAGE_SIZE,
        page_size=PAGE_SIZE,
        present=present,
        swapped=flag(PM_SWAPPED_BIT),
        pfn=pfn,
        exclusive=flag(PM_EXCLUSIVE_BIT),
        file_shared=flag(PM_FILE_SHARED_BIT),
        uffd_wp=flag(PM_UFFD_WP_BIT),
        raw=entries,
    )


def pagemap(pid: int | None, start: int, end: int) -> PageMap:
    """Per-page state of ``[start, end)`` in process ``pid`` (``None``: this process).

    ``start`` must be page-aligned, ``end`` is rounded up to a page boundary.
    Unmapped pages in the range read as all-zero entries (not present, not
    swapped). PFNs are 0 unless the caller has CAP_SYS_ADMIN.
    """
    return decode(start, read_entries(pid, start, end))
