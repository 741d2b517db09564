"""Address classes: which part of the VM a mapping holds, from its address, name and history."""

from __future__ import annotations

import bisect
from typing import Any

def classify(entry: Any, grown: set[tuple[int, int]], binary_addrs: list[int]) -> str:
    """Which part of the VM a mapping holds, as far as its address and name tell.

    OTP 25 reports allocator carriers by size only (instrument:carriers has no
    addresses), so anonymous mappings are told apart by what happened to them:
    those that grew while the processes were spawned hold process heaps and
    structs (eheap_alloc, fix_alloc carriers, which are mseg mmaps); the one
    holding a fresh refc binary holds binary_alloc's carrier.
    """
    path = entry.path
    if any(entry.start <= a < entry.end for a in binary_addrs):
        return "binaries (binary_alloc)" + (" in [heap]" if path == "[heap]" else "")
    if path == "[heap]":
        return "malloc heap (sys_alloc carriers)"
    if path.startswith("[stack") or path == "[stack]":
        return "main stack"
    if path.startswith("["):
        return f"kernel {path}"
    if "memfd:vmem" in path or "jit" in path.lower():
        # OTP's JIT maps its code twice from one memfd: writable and executable views.
        return "JIT code (memfd, dual-mapped)"
    if path.startswith("/"):
        if "x" in entry.perms:
            return "code (beam.smp, shared libraries)"
        return "file-backed data"
    if "x" in entry.perms:
        return "code (beam.smp, shared libraries)"
    if (entry.start, entry.end) in grown:
        return "process heaps and structs (grew at spawn: eheap_alloc, fix_alloc)"
    return "other anonymous (allocator carriers, thread stacks, process table)"


def grown_at_spawn(before: list[Any], after: list[Any]) -> set[tuple[int, int]]:
    """Anonymous mappings after spawn whose resident bytes grew by more than 1 MiB
    or more than half (new mappings count from zero)."""
    grown = set()
    for a in after:
        if a.path or not a.perms.startswith("rw"):
            continue
        # Resident bytes the old mappings had inside this one's range (pro rata).
        prior = 0
        for b in before:
            overlap = min(a.end, b.end) - max(a.start, b.start)
            if overlap > 0 and not b.path:
                prior += b.rss * overlap // max(1, b.size)
        if a.rss - prior > max(1 << 20, prior // 2):
            grown.add((a.start, a.end))
    return grown


class _AddressClasses:
    """Classes of the mappings seen after spawn, looked up by address later, when
    mappings have merged or split (a carrier mapped next to another)."""

    def __init__(self, entries: list[Any], grown: set[tuple[int, int]], binary_addrs: list[int]) -> None:
        self._grown, self._binaries = grown, binary_addrs
        self._spans = sorted((e.start, e.end, e.path, classify(e, grown, binary_addrs)) for e in entries)
        self._starts = [span[0] for span in self._spans]

    def __call__(self, entry: Any) -> str:
        best, best_overlap = None, 0
        i = bisect.bisect_left(self._starts, entry.end) - 1
        while i >= 0 and self._spans[i][1] > entry.start:
            start, end, path, cls = self._spans[i]
            overlap = min(end, entry.end) - max(start, entry.start)
            if path == entry.path and overlap > best_overlap:
                best, best_overlap = cls, overlap
            i -= 1
        return best if best is not None else classify(entry, self._grown, self._binaries)

