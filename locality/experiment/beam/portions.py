"""The VM's footprint by portion, the same kind of table a Python run has (issue 14).

A portion groups address classes (classes.py) by what the VM keeps there:
process memory (eheap_alloc heaps and fix_alloc process structs: OTP 25's
carriers have no addresses, and both allocators' carriers grow together at
spawn and merge into the same anonymous mappings, so no address tells them
apart; the VM's own block bytes split that portion in ``by_allocator``),
binaries (binary_alloc's carrier, found by a probe binary's address), code
(beam.smp, libraries and the JIT's dual-mapped code), stacks, and other
(the malloc heap, other allocators' carriers including ETS's, the process
table). Every mapping has a class, so the portions' resident bytes sum to the
VM's RSS exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

PROCESS_MEMORY = "process_heaps_and_structures"
PORTIONS = (PROCESS_MEMORY, "binaries", "code", "stacks", "other")


def portion_of(address_class: str) -> str:
    """The portion an address class (classes.classify) belongs to."""
    if address_class.startswith("process heaps and structs"):
        return PROCESS_MEMORY
    if address_class.startswith("binaries"):
        return "binaries"
    if address_class.startswith(("code", "JIT code", "file-backed data")):
        return "code"
    if address_class == "main stack":
        return "stacks"
    return "other"


def portions(last_vma_rows: list[Mapping[str, Any]], hot: Mapping[str, Mapping[str, Mapping[str, float]]],
             allocator_growth: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, Any]]:
    """name -> {resident_bytes, share_of_rss, wss_bytes (per window), cold_fraction (per window)}.

    ``last_vma_rows``: one sample's per-VMA rows (class, rss_bytes); ``hot``: the sampler's
    referenced and resident bytes per window and class (means over cycles).
    """
    rss = sum(int(r["rss_bytes"]) for r in last_vma_rows)
    out: dict[str, dict[str, Any]] = {
        name: {"resident_bytes": 0, "share_of_rss": 0.0, "wss_bytes": {}, "cold_fraction": {}} for name in PORTIONS
    }
    for r in last_vma_rows:
        out[portion_of(str(r["class"]))]["resident_bytes"] += int(r["rss_bytes"])
    for window, by_class in hot.items():
        sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in PORTIONS}
        for cls, figures in by_class.items():
            acc = sums[portion_of(cls)]
            acc[0] += figures["referenced_bytes"]
            acc[1] += figures["rss_bytes"]
        for name, (referenced, resident) in sums.items():
            out[name]["wss_bytes"][window] = referenced
            out[name]["cold_fraction"][window] = 1 - referenced / resident if resident else None
    for figures in out.values():
        figures["share_of_rss"] = figures["resident_bytes"] / rss if rss else 0.0
    blocks = {a: allocator_growth.get(a, {}).get("blocks_bytes", 0) for a in ("eheap_alloc", "fix_alloc")}
    total = sum(blocks.values())
    out[PROCESS_MEMORY]["by_allocator"] = {
        a: {"blocks_bytes_grown_at_spawn": b, "share": b / total if total else None} for a, b in blocks.items()
    }
    return out
