"""Address ranges: half-open ``[start, end)`` pieces with holes cut out of them."""

from __future__ import annotations

from typing import Iterable, Sequence


def subtract(pieces: Iterable[tuple[int, int]], holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[start, end)`` pieces minus the ``(start, length)`` holes, as ``[start, end)`` pieces in order."""
    out = list(pieces)
    for hs, hl in holes:
        he = hs + hl
        nxt = []
        for s, e in out:
            if he <= s or hs >= e:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs))
            if he < e:
                nxt.append((he, e))
        out = nxt
    return out
