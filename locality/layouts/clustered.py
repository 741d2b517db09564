"""clustered: slots ordered so that workers which fire together share pages.

Both variants split hot and cold parts (as ``hot-cold``) and order BOTH
arenas by the same permutation ``pos`` (worker -> slot).  The split is what
makes clustering pay: a page then holds 256 hot parts, i.e. a 16 x 16 tile of
the sheet in Hilbert order, instead of 42 whole records (a 6 x 7 tile).

- ``clustered``: Hilbert order of the sheet grid (population contract:
  width = ceil(sqrt(n)), worker i at (i % width, i // width)).  Uses the
  geometry, nothing observed.
- ``clustered-learned``: no geometry.  Starts in id order; for the first
  ``warmup`` steps it only observes, through ``maintain(step, ids)``, the
  order in which workers are first activated (step, then position in the
  step's activation sequence: a burst's workers are woken one after the
  other); at the maintain call of step ``warmup - 1`` it sorts workers by
  that first-activation rank -- a one-dimensional co-activation embedding:
  workers first woken by the same burst or wave front sit together -- and
  moves every record once (copy time measured, in ``relocation_seconds``).
  Workers never seen keep id order after them.  Without ids, the record's
  own fields are used instead (``flags`` = first step + 1, then
  ``last_step``).
"""

from __future__ import annotations

import time

import numpy as np

from locality.layouts.base import (
    COLD_BYTES, COLD_WORDS, HOT_BYTES, HOT_WORDS, NEVER, W_FLAGS, W_LAST_STEP,
    ArenaLayout, Region, sheet_width, touch_cold, touch_hot,
)


def hilbert_index(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """Distance along the Hilbert curve of side 2**order for points (x, y) (vectorised)."""
    x = np.asarray(x, dtype=np.int64).copy()
    y = np.asarray(y, dtype=np.int64).copy()
    d = np.zeros_like(x)
    s = 1 << (order - 1) if order > 0 else 0
    while s > 0:
        rx = ((x & s) > 0).astype(np.int64)
        ry = ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        # rotate the quadrant so the sub-curve is in standard orientation
        flip = ry == 0
        swap_x = flip & (rx == 1)
        x = np.where(swap_x, s - 1 - x, x)
        y = np.where(swap_x, s - 1 - y, y)
        x, y = np.where(flip, y, x), np.where(flip, x, y)
        s >>= 1
    return d


def hilbert_order(n: int) -> np.ndarray:
    """Worker ids sorted along the Hilbert curve of the sheet grid."""
    w = sheet_width(n)
    order = max(1, int(np.ceil(np.log2(w))))
    ids = np.arange(n, dtype=np.int64)
    d = hilbert_index(ids % w, ids // w, order)
    return np.argsort(d, kind="stable")


def hilbert_slots(n: int) -> np.ndarray:
    """Hot slot -> worker, slot = Hilbert distance on the 2**k grid covering the sheet (-1: no worker).

    Keeping the holes (cells off the sheet) makes every 4 KiB page of 16-byte
    hot parts exactly one aligned 16 x 16 Hilbert block of the grid, instead
    of a block shifted by however many cells were skipped before it.
    The holes that cover whole pages are never touched, so never resident.
    """
    w = sheet_width(n)
    order = max(1, int(np.ceil(np.log2(w))))
    ids = np.arange(n, dtype=np.int64)
    d = hilbert_index(ids % w, ids // w, order)
    slots = np.full(1 << (2 * order), -1, dtype=np.int64)
    slots[d] = ids
    return slots


class _PermutedHotCold(ArenaLayout):
    """Hot and cold arenas in the order of permutations (slot -> worker, -1 = hole).

    ``hot_order`` may have holes (slots no worker uses); the cold order is
    ``hot_order`` without them unless given.
    """

    hot_arena = "hot"
    cold_arena = "cold"

    def __init__(self, n: int, hot_order: np.ndarray, cold_order: np.ndarray | None = None, **kw) -> None:
        super().__init__(n, **kw)
        self._set_order(hot_order, cold_order)
        self._create_arenas({"hot": self.hot_order.size * HOT_BYTES, "cold": self.n * COLD_BYTES})

    @property
    def order(self) -> np.ndarray:
        """Workers in hot-slot order (holes left out)."""
        return self.hot_order[self.hot_order >= 0]

    def _set_order(self, hot_order: np.ndarray, cold_order: np.ndarray | None = None) -> None:
        hot_order = np.asarray(hot_order, dtype=np.int64)
        cold_order = hot_order[hot_order >= 0] if cold_order is None else np.asarray(cold_order, dtype=np.int64)
        if cold_order.size != self.n or np.unique(cold_order).size != self.n:
            raise ValueError("a layout order must place every worker exactly once")
        self.hot_order = hot_order.astype(np.int32)  # hot slot -> worker (-1: hole)
        self.cold_order = cold_order.astype(np.int32)  # cold slot -> worker
        self.pos = np.empty(self.n, dtype=np.int32)  # worker -> hot slot
        used = np.flatnonzero(hot_order >= 0)
        self.pos[hot_order[used]] = used
        self.cold_pos = np.empty(self.n, dtype=np.int32)  # worker -> cold slot
        self.cold_pos[cold_order] = np.arange(self.n, dtype=np.int32)
        self._pos = memoryview(self.pos).cast("B").cast("i")
        self._cpos = memoryview(self.cold_pos).cast("B").cast("i")

    def hot_word(self, ids: np.ndarray) -> np.ndarray:
        return self.pos[np.asarray(ids, dtype=np.int64)].astype(np.int64) * HOT_WORDS

    def cold_word(self, ids: np.ndarray) -> np.ndarray:
        return self.cold_pos[np.asarray(ids, dtype=np.int64)].astype(np.int64) * COLD_WORDS

    def update(self, i: int, step: int) -> None:
        u = self._hu
        f = self._hf
        b = self._pos[i] * HOT_WORDS
        p = touch_hot(u, f, b, step)
        if p:
            touch_cold(self._cu, self._cf, self._cpos[i] * COLD_WORDS, p)

    def regions(self) -> list[Region]:
        return [Region("hot", "hot", 0, HOT_BYTES, HOT_BYTES, self.hot_order.size, self.hot_order),
                Region("cold", "cold", 0, COLD_BYTES, COLD_BYTES, self.n, self.cold_order)]

    def _permute(self, new_order: np.ndarray) -> float:
        """Move every record to the slot of ``new_order`` (compact, both arenas); returns copy seconds."""
        t0 = time.perf_counter()
        new_order = np.asarray(new_order, dtype=np.int64)
        for name, words, pos in (("hot", HOT_WORDS, self.pos), ("cold", COLD_WORDS, self.cold_pos)):
            a = self.arenas[name].u32[: self.n * words].reshape(self.n, words)
            a[:] = a[pos[new_order].astype(np.int64)]  # new slot k <- where its worker is now
        self._pos.release()
        self._cpos.release()
        self._set_order(new_order)
        dt = time.perf_counter() - t0
        self.relocation_seconds += dt
        self.relocated_records += self.n
        return dt


class ClusteredLayout(_PermutedHotCold):
    name = "clustered"

    def __init__(self, n: int, **kw) -> None:
        super().__init__(n, hilbert_slots(int(n)), **kw)


class ClusteredLearnedLayout(_PermutedHotCold):
    name = "clustered-learned"
    moves = True

    def __init__(self, n: int, *, warmup: int = 10, **kw) -> None:
        if warmup < 1:
            from locality.errors import InvalidArgument

            raise InvalidArgument(f"clustered-learned: warmup must be >= 1 step, got {warmup}")
        self.warmup = int(warmup)
        self.learned = False
        self.first_seen = np.full(int(n), np.iinfo(np.int64).max, dtype=np.int64)  # rank of first activation
        self._seen = 0
        super().__init__(n, np.arange(int(n)), **kw)

    def learned_order(self) -> np.ndarray:
        """Worker ids sorted by first-activation rank (observed), then id."""
        if self._seen:
            return np.lexsort((np.arange(self.n), self.first_seen))
        return self.order_from_records()

    def order_from_records(self) -> np.ndarray:
        """Worker ids sorted by (first activation step, latest activation step, id)."""
        hot = self.arenas["hot"].u32.reshape(-1, HOT_WORDS)[self.pos]
        first = hot[:, W_FLAGS].astype(np.int64)  # first step + 1; 0 = never
        last = hot[:, W_LAST_STEP].astype(np.int64)
        never = first == 0
        first = np.where(never, np.iinfo(np.int64).max, first)
        last = np.where(last == NEVER, np.iinfo(np.int64).max, last)
        return np.lexsort((np.arange(self.n), last, first))

    def maintain(self, step: int, ids: np.ndarray | None = None) -> float:
        if self.learned:
            return 0.0
        if ids is not None and len(ids):
            ids = np.asarray(ids, dtype=np.int64)
            _, first = np.unique(ids, return_index=True)
            ids = ids[np.sort(first)]
            new = ids[self.first_seen[ids] == np.iinfo(np.int64).max]
            self.first_seen[new] = self._seen + np.arange(new.size)
            self._seen += int(new.size)
        if step < self.warmup - 1:
            return 0.0
        self.learned = True
        return self._permute(self.learned_order())

    def relocate(self, ids: np.ndarray | None = None) -> float:
        """Re-learn the order now from what was observed (all workers move)."""
        self.learned = True
        return self._permute(self.learned_order())
