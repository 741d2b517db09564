"""The page-utilization ceiling a pattern and a record layout allow.

Page utilization (useful bytes / bytes of the pages written) is judged
against the best any placement of the same records could reach on the same
activations, not against `objects`.  The bound here is the one DESIGN.md
names: a radius-3 sheet burst activates 29 workers x 16 hot bytes = 464 B,
so even a layout that gives the burst exactly one page of its own reaches
464 / 4096 = 11%.

Definition, per window of steps (one step for ``locality bench layouts``,
one sampling window for a run):

- co-activation groups: the connected components of the window's distinct
  activated workers on the sheet grid (population contract: worker i at
  (i % w, i // w), w = ceil(sqrt(n)); 8-neighbour, wrapping around the edges
  as the sheet pattern does).  A burst is one group, a wave front another.
- a group of ``a`` workers, ``c`` of which touched their cold part, needs at
  least ``ceil(a * hot / P) + ceil(c * cold / P)`` pages, where ``(hot, cold)``
  is the layout's packing (``Layout.packing``): bytes each worker's hot part
  occupies as the layout stores it (16 split, 96 whole records, 4096 isolated)
  and bytes a cold touch adds in a separate arena (80 split, 0 when the cold
  part is inside the record).
- ceiling = useful bytes of every activation of the window / (pages of all
  its groups x P), summed over windows exactly as page utilization is.

It is the bound for a layout that keeps each group's records together on
pages of their own.  Independent groups can share a page only by chance (two
bursts landing on one tile), so where activation is dense and random (uniform
at a high rate: groups of one) a layout may exceed it; the "packed" figure
beside it (the window's distinct useful bytes packed into ceil(bytes / P)
pages, what only a layout that moves every step could reach) is a bound for
every placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from locality.layouts.base import COLD_BYTES, COLD_EVERY, HOT_BYTES, PAGE_SIZE, initial_counts, sheet_width


def coactivation_groups(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct ids sorted, group label of each): 8-neighbour components on the wrapped sheet grid."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if ids.size == 0:
        return ids, np.zeros(0, dtype=np.int64)
    w = sheet_width(n)
    h = -(-n // w)
    x, y = ids % w, ids // w
    us, vs = [], []
    for dx, dy in ((1, 0), (0, 1), (1, 1), (-1, 1)):
        nb = ((y + dy) % h) * w + (x + dx) % w
        k = np.minimum(np.searchsorted(ids, nb), ids.size - 1)
        hit = ids[k] == nb
        us.append(np.flatnonzero(hit))
        vs.append(k[hit])
    u, v = np.concatenate(us), np.concatenate(vs)
    lab = np.arange(ids.size, dtype=np.int64)
    # hook each edge's larger root under the smaller, then compress to roots, until no edge spans two labels
    while True:
        lu, lv = lab[u], lab[v]
        diff = lu != lv
        if not diff.any():
            break
        lo, hi = np.minimum(lu[diff], lv[diff]), np.maximum(lu[diff], lv[diff])
        np.minimum.at(lab, hi, lo)
        while True:
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt
    _, label = np.unique(lab, return_inverse=True)
    return ids, label.astype(np.int64)


class ColdTouches:
    """Which activations touch their cold part, replayed from the record's rule alone.

    Counts start where every layout starts them (``initial_counts``, seeded
    phase unless ``warm=False``) and the activation bringing a count to a
    multiple of COLD_EVERY touches the cold part, so no layout is needed.
    """

    def __init__(self, n: int, seed: int = 0, warm: bool = True) -> None:
        self.count = initial_counts(n, seed, warm=warm).astype(np.int64)

    def step(self, ids: np.ndarray) -> np.ndarray:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        self.count[ids] += 1
        return ids, self.count[ids] % COLD_EVERY == 0


@dataclass
class Ceiling:
    """Sums over windows; utilizations are useful bytes over pages x page size."""

    useful_bytes: int = 0
    pages: int = 0  # group bound
    packed_pages: int = 0  # every window's distinct useful bytes packed tight
    groups: int = 0
    windows: int = 0
    packing: tuple[int, int] = (HOT_BYTES, COLD_BYTES)
    # Each worker's bytes once per window (as a run with windows aligned to steps counts them), or once
    # per activation (a run with windows of wall-clock time, whose child cannot tell where a window ends).
    once_per_window: bool = True
    per_window: list[tuple[int, int]] = field(default_factory=list)  # (useful bytes, group pages)

    @property
    def utilization(self) -> float:
        return self.useful_bytes / (self.pages * PAGE_SIZE) if self.pages else float("nan")

    @property
    def packed_utilization(self) -> float:
        return self.useful_bytes / (self.packed_pages * PAGE_SIZE) if self.packed_pages else float("nan")

    def add_window(self, steps: Sequence[tuple[np.ndarray, np.ndarray]], n: int) -> None:
        """One window: its steps as (distinct ids, cold-touch mask) pairs."""
        steps = [(np.asarray(i, dtype=np.int64), np.asarray(c, dtype=bool)) for i, c in steps]
        if not steps:
            return
        ids, label = coactivation_groups(np.concatenate([i for i, _ in steps]), n)
        cold_ids = np.unique(np.concatenate([i[c] for i, c in steps]))
        hot, cold = self.packing
        a = np.bincount(label, minlength=label.max() + 1 if label.size else 0)
        c = np.bincount(label[np.isin(ids, cold_ids)], minlength=a.size)
        pages = int(np.sum(-(-a * hot // PAGE_SIZE)))
        if cold:
            pages += int(np.sum(-(-c * cold // PAGE_SIZE)))
        distinct = ids.size * HOT_BYTES + cold_ids.size * COLD_BYTES
        useful = distinct if self.once_per_window else sum(i.size * HOT_BYTES + int(c.sum()) * COLD_BYTES for i, c in steps)
        self.useful_bytes += useful
        self.pages += pages
        self.packed_pages += -(-distinct // PAGE_SIZE)
        self.groups += int(a.size)
        self.windows += 1
        self.per_window.append((useful, pages))


def ceiling(windows: Iterable[Iterable[np.ndarray]], n: int, packing: tuple[int, int], *, seed: int = 0,
            warm: bool = True, skip: Iterable[np.ndarray] = ()) -> Ceiling:
    """The ceiling of ``windows`` (each an iterable of one step's ids).

    ``skip``: the steps before the first window (warm-up), replayed only to
    advance the activation counts, so cold touches match the run's.
    """
    touches = ColdTouches(n, seed, warm)
    for ids in skip:
        touches.step(ids)
    out = Ceiling(packing=(int(packing[0]), int(packing[1])))
    for window in windows:
        out.add_window([touches.step(ids) for ids in window], n)
    return out
