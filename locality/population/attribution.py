"""Per-worker footprint attribution: which byte ranges belong to which worker.

A range table (sorted, disjoint ``[start, end)`` byte ranges, one owner each)
answers "who owns this byte" for millions of addresses with one
``searchsorted``, and "which workers own bytes on this page" as CSR arrays,
so a page the kernel reports as touched maps back to its workers.
"""

from __future__ import annotations

import numpy as np

from locality.errors import InvalidArgument


class RangeTable:
    """Disjoint byte ranges with one owner (worker id) each."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, owners: np.ndarray) -> None:
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        owners = np.asarray(owners, dtype=np.int64)
        if not starts.shape == ends.shape == owners.shape:
            raise InvalidArgument("range table: starts, ends and owners differ in length")
        order = np.argsort(starts, kind="stable")
        self.starts, self.ends, self.owner = starts[order], ends[order], owners[order]
        if np.any(self.ends <= self.starts):
            raise InvalidArgument("range table: an empty or negative range")
        if np.any(self.starts[1:] < self.ends[:-1]):
            k = int(np.flatnonzero(self.starts[1:] < self.ends[:-1])[0])
            raise InvalidArgument(
                f"range table: ranges of workers {self.owner[k]} and {self.owner[k + 1]} overlap "
                f"at {self.starts[k + 1]:#x}"
            )

    def __len__(self) -> int:
        return len(self.starts)

    def owners(self, addresses: np.ndarray) -> np.ndarray:
        """Owner of each byte address, -1 where no range covers it."""
        addresses = np.asarray(addresses, dtype=np.int64)
        k = np.searchsorted(self.starts, addresses, side="right") - 1
        ok = k >= 0
        ok[ok] = addresses[ok] < self.ends[k[ok]]
        out = np.full(addresses.shape, -1, dtype=np.int64)
        out[ok] = self.owner[k[ok]]
        return out

    def page_pairs(self, page_size: int) -> tuple[np.ndarray, np.ndarray]:
        """All (page address, owner) pairs: a range spanning several pages yields one per page."""
        first = self.starts // page_size
        last = (self.ends - 1) // page_size
        span = last - first + 1
        idx = np.repeat(np.arange(len(first)), span)
        offset = np.arange(idx.size) - np.repeat(np.cumsum(span) - span, span)
        return (first[idx] + offset) * page_size, self.owner[idx]


def csr_by_page(page_addrs: np.ndarray, pair_pages: np.ndarray, pair_owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group (page, owner) pairs by the queried pages: workers of page j are
    ``workers[indptr[j]:indptr[j + 1]]`` (sorted, distinct)."""
    page_addrs = np.asarray(page_addrs, dtype=np.int64)
    if pair_pages.size:
        pairs = np.unique(np.stack([pair_pages, pair_owners], axis=1), axis=0)
        pair_pages, pair_owners = pairs[:, 0], pairs[:, 1]
    lo = np.searchsorted(pair_pages, page_addrs, side="left")
    hi = np.searchsorted(pair_pages, page_addrs, side="right")
    counts = hi - lo
    indptr = np.zeros(len(page_addrs) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx = np.repeat(lo, counts) + (np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts))
    return indptr, pair_owners[idx].astype(np.int64, copy=False)
