"""Which "swapped" pagemap entries are in swap, and which are uffd-wp markers.

A page registered for write tracking but never populated (or populated and
then dropped before the last reset) holds a uffd-wp PTE marker. pagemap
reports it exactly like a write-protected page in swap: bits 62 (swapped)
and 57 (uffd-wp) set, and PAGEMAP_SCAN puts both in PAGE_IS_SWAPPED. Only
the swap type tells them apart (SWP_PTE_MARKER, offset 1), and the kernel
zeroes type and offset for a reader without CAP_SYS_ADMIN.

Checked on Linux 6.18 as root and as nobody: a marker reads 0x84 in the top
byte with type 31 / offset 1 for root and 0 for nobody; a tracked page paged
out after a reset reads 0x84 too, with a real type and offset for root and 0
for nobody; a paged-out page written since the reset has no uffd-wp bit.

So for an unprivileged reader an entry is decided as follows:
- swap type and offset visible (never both 0 for a real entry: offset 0 is
  the swap header): marker iff the type is SWP_PTE_MARKER;
- hidden and no uffd-wp bit: in swap (markers always carry the bit);
- hidden with the uffd-wp bit: ambiguous. If the caller knows the page
  held a page when it was last write-protected (a sampler that saw it
  present or in swap and has not seen it dropped since), it is in swap:
  markers are only placed on empty PTEs. With no swap device configured
  none can be in swap. Otherwise smaps counts the real swap entries of each
  VMA (markers are not counted): if the VMA's certain swap entries already
  account for its Swap, the ambiguous ones are markers; if they account for
  none of it, all are in swap. Shared mappings never hold swap PTEs (their
  pages swap through the page cache), so there they are markers. What is
  left (some but not all of a VMA's ambiguous pages are in swap) cannot be
  decided per page: it is reported as unresolved, never as swapped.
  pagemap and smaps are two reads; counts that do not add up (the process
  swapped between them) leave the pages unresolved too.
"""

from __future__ import annotations

import os

import numpy as np

from locality.kernel._platform import PAGE_SHIFT, PAGE_SIZE, PM_PFN_BITS, PM_SWAP_TYPE_BITS, PM_SWAPPED_BIT, PM_UFFD_WP_BIT, SWP_PTE_MARKER

_FRAME = np.uint64((1 << PM_PFN_BITS) - 1)
_TYPE = np.uint64((1 << PM_SWAP_TYPE_BITS) - 1)


def _bit(top: np.ndarray, bit: int) -> np.ndarray:
    return (top & np.uint8(1 << (bit - 56))) != 0


def swap_configured() -> bool:
    """Whether any swap device or file is on (/proc/meminfo SwapTotal > 0)."""
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"SwapTotal:"):
                return int(line.split()[1]) > 0
    return True  # unknown: assume swap may hold pages


def _classify(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices of entries with the swapped bit, which of them are surely in swap, which ambiguous)."""
    top = entries.view(np.uint8)[7::8]
    idx = np.flatnonzero(_bit(top, PM_SWAPPED_BIT))
    raw = entries[idx]
    hidden = (raw & _FRAME) == 0
    ambiguous = hidden & _bit(top[idx], PM_UFFD_WP_BIT)
    sure = np.where(hidden, ~ambiguous, (raw & _TYPE) != SWP_PTE_MARKER)
    return idx, sure, ambiguous


def split_swapped(pid: int | None, start: int, entries: np.ndarray,
                  held: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(swapped, unresolved) per page of raw pagemap ``entries`` of ``pid`` starting at ``start``.

    ``swapped``: in swap for certain. ``unresolved``: a swap entry or a uffd-wp
    marker that this reader cannot tell apart (always empty for CAP_SYS_ADMIN).
    ``held``: pages the caller knows held a page (present or in swap) when
    they were last write-protected: such a page cannot hold a marker (markers
    are placed only on empty PTEs), so an ambiguous entry there is in swap.
    It must be knowledge, not a guess: smaps' count catches a wrong hint only
    when the counts do not add up (then those pages are unresolved).
    """
    swapped = np.zeros(len(entries), dtype=np.bool_)
    unresolved = np.zeros(len(entries), dtype=np.bool_)
    hinted = np.zeros(len(entries), dtype=np.bool_)  # decided by ``held``: checked against smaps below
    idx, sure, ambiguous = _classify(entries)
    if held is not None and ambiguous.any():
        known = ambiguous & held[idx]
        hinted[idx[known]] = True
        sure, ambiguous = sure | known, ambiguous & ~known
    swapped[idx[sure]] = True
    if not (ambiguous.any() or hinted.any()):
        return swapped, unresolved
    if not swap_configured():  # nothing can be in swap: every ambiguous entry is a marker
        swapped &= ~hinted
        return swapped, unresolved
    unresolved[idx[ambiguous]] = True
    _resolve_by_vma(os.getpid() if pid is None else pid, start, entries, swapped, unresolved, hinted)
    return swapped, unresolved


def _resolve_by_vma(pid: int, start: int, entries: np.ndarray, swapped: np.ndarray, unresolved: np.ndarray,
                    hinted: np.ndarray) -> None:
    """Decide ambiguous pages per VMA from smaps' Swap count, and check the ``held`` hints (in place)."""
    from locality.kernel.pagemap import read_entries
    from locality.kernel.procfs import smaps

    end = start + len(entries) * PAGE_SIZE
    for vma in smaps(pid):
        if vma.end <= start or vma.start >= end:
            continue
        lo = (max(vma.start, start) - start) >> PAGE_SHIFT
        hi = (min(vma.end, end) - start) >> PAGE_SHIFT
        if not (unresolved[lo:hi].any() or hinted[lo:hi].any()):
            continue
        if vma.perms.endswith("s") or vma.swap == 0:  # no swap PTE here: markers
            swapped[lo:hi] &= ~hinted[lo:hi]
            unresolved[lo:hi] = False
            continue
        # smaps counts the whole VMA: count its entries beyond our range too.
        sure, maybe = int(np.count_nonzero(swapped[lo:hi])), int(np.count_nonzero(unresolved[lo:hi]))
        for s, e in ((vma.start, max(vma.start, start)), (min(vma.end, end), vma.end)):
            if e > s:
                _, more_sure, more_maybe = _classify(read_entries(pid, s, e))
                sure += int(np.count_nonzero(more_sure))
                maybe += int(np.count_nonzero(more_maybe))
        in_swap = vma.swap // PAGE_SIZE - sure  # how many ambiguous entries are in swap
        if in_swap < 0:  # more certain entries than smaps counts: a hint was wrong (or a race)
            unresolved[lo:hi] |= hinted[lo:hi]
            swapped[lo:hi] &= ~hinted[lo:hi]
        elif in_swap == 0:
            unresolved[lo:hi] = False
        elif in_swap == maybe:
            swapped[lo:hi] |= unresolved[lo:hi]
            unresolved[lo:hi] = False
        # else some are in swap and some are markers (or the process changed between the reads): unresolved
