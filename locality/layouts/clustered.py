"""clustered: slots ordered so that workers which fire together share pages.

Both variants split hot and cold parts (as ``hot-cold``) and order BOTH
arenas by the same permutation ``pos`` (worker -> slot).  The split is what
makes clustering pay: a page then holds 256 hot parts, i.e. a 16 x 16 tile of
the sheet in Hilbert order, instead of 42 whole records (a 6 x 7 tile).

- ``clustered``: Hilbert order of the sheet grid (population contract:
  width = ceil(sqrt(n)), worker i at (i % width, i // width)).  Uses the
  geometry, nothing observed.
- ``clustered-learned``: learns from observed co-activation, starting from a
  prior order (``prior="hilbert"``, the default: clustered's order; ``"id"``:
  id order, no geometry at all).  For the first ``warmup`` steps it observes,
  through ``maintain(step, ids)``, the order in which workers are first
  activated (step, then position in the step's activation sequence: a
  burst's workers are woken one after the other) and sorts workers by that
  first-activation rank -- a one-dimensional co-activation embedding: workers
  first woken by the same burst or wave front sit together; workers never
  seen keep the prior order after them.  The next two windows of ``validate``
  steps (default ``warmup``) are held out: the learned order is adopted
  (every record moved once, copy time in ``relocation_seconds``) only if it
  writes at least 10% fewer hot pages than the current order on each of
  them.  After adoption the replaced order is watched (hot pages it would
  have written, per window of ``validate`` steps) and restored, once, as soon
  as it would have written fewer: a learned order goes stale when the
  co-activations it packed do not recur.  Measured why (sheet, 1M, 1% per
  step, lifetime 1): bursts land at new random centres each step, so an
  order packing the bursts already seen helps no later step, and adopting it
  unconditionally wrote 2.2x the pages of clustered (4.8% vs 10.6% state page
  utilization in the main job, prior = id order); with persistent bursts
  (lifetime 16+) it wins and is adopted.  ``validate=0`` adopts unconditionally.
  Without ids, the record's own fields are used instead (``flags`` = first
  step + 1, then ``last_step``).
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

    def spawn_order(self) -> np.ndarray:
        """Workers in hot-slot order: their coroutines are allocated in the order of their state."""
        return self.order.astype(np.int64)

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

    def _permute(self, new_order: np.ndarray, account: bool = True) -> float:
        """Move every record to the slot ``new_order`` gives it (slot -> worker, -1: a hole; the
        cold arena takes the same order without holes); returns copy seconds.

        Records are gathered from wherever they are (the current order may have holes too),
        then written to their new slots.
        """
        t0 = time.perf_counter()
        new_order = np.asarray(new_order, dtype=np.int64)
        cold_order = new_order[new_order >= 0]
        for name, words, pos, order in (("hot", HOT_WORDS, self.pos, new_order),
                                        ("cold", COLD_WORDS, self.cold_pos, cold_order)):
            u32 = self.arenas[name].u32
            items = u32[: u32.size // words * words].view(f"V{words * 4}")  # one opaque item per slot: a fast gather
            used = np.flatnonzero(order >= 0)
            items[used] = items[pos[order[used]].astype(np.int64)]  # new slot <- where its worker is now
        self._pos.release()
        self._cpos.release()
        self._set_order(new_order)
        dt = time.perf_counter() - t0
        if account:
            self.relocation_seconds += dt
        self.relocated_records += self.n
        return dt


class ClusteredLayout(_PermutedHotCold):
    name = "clustered"

    def __init__(self, n: int, **kw) -> None:
        super().__init__(n, hilbert_slots(int(n)), **kw)


class ClusteredLearnedLayout(_PermutedHotCold):
    """See the module docstring: a learned order, adopted only when it beats the prior on new steps."""

    name = "clustered-learned"
    moves = True
    PRIORS = ("hilbert", "id")
    MARGIN = 0.1  # the learned order must write >= 10% fewer held-out pages to be adopted

    def __init__(self, n: int, *, warmup: int = 10, validate: int | None = None, prior: str = "hilbert",
                 **kw) -> None:
        from locality.errors import InvalidArgument

        if warmup < 1:
            raise InvalidArgument(f"clustered-learned: warmup must be >= 1 step, got {warmup}")
        if validate is not None and validate < 0:
            raise InvalidArgument(f"clustered-learned: validate must be >= 0 steps, got {validate}")
        if prior not in self.PRIORS:
            raise InvalidArgument(f"clustered-learned: unknown prior {prior!r}", f"use one of: {', '.join(self.PRIORS)}")
        self.warmup = int(warmup)
        self.validate = self.warmup if validate is None else int(validate)
        self.prior = prior
        self.learned = False  # True once the decision is made (adopted or not)
        self.adopted: bool | None = None
        self.validation_pages: list[tuple[int, int]] | None = None  # (current, learned) pages per held-out window
        self.order_generation = 0  # bumped whenever records move (the population re-creates frames then)
        self.reverted = False
        self._watching = False
        self._watch_pages, self._watch_steps = [0, 0], 0
        self.watch_history: list[tuple[int, int]] = []  # (replaced order, adopted order) hot pages per window
        self._first_rank: np.ndarray | None = None  # rank of first activation, per hot slot (set below)
        self._seen = 0
        self._calls = 0
        self._candidate: np.ndarray | None = None
        self._held: list[np.ndarray] = []
        super().__init__(n, hilbert_slots(int(n)) if prior == "hilbert" else np.arange(int(n)), **kw)
        self._first_rank = np.full(self.hot_order.size, np.iinfo(np.int64).max, dtype=np.int64)

    def _permute(self, new_order: np.ndarray, account: bool = True) -> float:
        ranks = self.first_seen  # per worker, carried to the new slots
        dt = super()._permute(new_order, account)
        self._first_rank = np.full(self.hot_order.size, np.iinfo(np.int64).max, dtype=np.int64)
        self._first_rank[self.pos] = ranks
        return dt

    @property
    def first_seen(self) -> np.ndarray:
        """Rank of each worker's first activation while learning (int64 max: not seen)."""
        return self._first_rank[self.pos]

    def learned_order(self) -> np.ndarray:
        """Worker ids sorted by first-activation rank (observed); workers never seen keep the
        current order after them."""
        if self._seen:
            # no sort of all n: the seen ones by rank, then the rest as they are now
            never = np.iinfo(np.int64).max
            slots = np.flatnonzero(self._first_rank != never)
            seen = self.hot_order[slots[np.argsort(self._first_rank[slots], kind="stable")]].astype(np.int64)
            order = self.order
            return np.concatenate([seen, order[self._first_rank[self.pos[order]] == never]])
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

    def hot_pages_written(self, order: np.ndarray | None, steps: list[np.ndarray]) -> int:
        """Hot pages the steps would write with workers in ``order`` (None: the current slots)."""
        if order is None:
            pos = self.pos
        else:
            pos = np.empty(self.n, dtype=np.int32)
            pos[np.asarray(order, dtype=np.int64)] = np.arange(self.n, dtype=np.int32)
        per_page = 4096 // HOT_BYTES
        return int(sum(np.unique(pos[ids] // per_page).size for ids in steps))

    def maintain(self, step: int, ids: np.ndarray | None = None) -> float:
        if self.learned:
            return self._watch(ids) if self._watching else 0.0
        t0 = time.perf_counter()
        call = self._calls
        self._calls += 1
        if call < self.warmup:
            if ids is not None and len(ids):
                # ranks are kept per slot (burst-local writes, as the state's), ids are distinct per step
                slots = self.pos[np.asarray(ids, dtype=np.int64)]
                new = slots[self._first_rank[slots] == np.iinfo(np.int64).max]
                self._first_rank[new] = self._seen + np.arange(new.size)
                self._seen += int(new.size)
            if call < self.warmup - 1:
                return self._spent(t0)
            self._candidate = self.learned_order()
            if self.validate:
                return self._spent(t0)
        elif ids is not None:
            self._held.append(np.asarray(ids, dtype=np.int64))
            if call < self.warmup + 2 * self.validate - 1:
                return self._spent(t0)
        # the learned order is adopted only if it writes fewer pages than the current one on
        # steps it did not learn from: a pattern with no temporal reuse (sheet bursts at new
        # centres every step) keeps the prior instead of paying for a worse order
        held, self._held = self._held, []
        candidate, self._candidate = self._candidate, None
        self.learned = True
        if held:
            # two held-out windows, each must be won by the margin: one lucky window is not enough
            halves = (held[: len(held) // 2], held[len(held) // 2 :])
            self.validation_pages = [(self.hot_pages_written(None, h), self.hot_pages_written(candidate, h))
                                     for h in halves]
            self.adopted = all(c <= (1 - self.MARGIN) * p for p, c in self.validation_pages)
        else:
            self.adopted = True
        if self.adopted:
            self._prior_order = self.hot_order.copy()  # to watch the order it replaced
            self._prior_pos = self.pos.astype(np.int64)
            self._permute(candidate, account=False)
            self.order_generation += 1
            self._watching = bool(held)
        dt = time.perf_counter() - t0
        self.relocation_seconds += dt
        return dt

    def _spent(self, t0: float) -> float:
        """Seconds since t0, counted as relocation (learning is part of what this layout costs)."""
        dt = time.perf_counter() - t0
        self.relocation_seconds += dt
        return dt

    def _watch(self, ids: np.ndarray | None) -> float:
        """After adoption: hot pages of the adopted and the replaced order on the same steps; if the
        replaced one would have written fewer over ``validate`` steps, go back to it, once (a learned
        order goes stale when the co-activations it packed do not recur, e.g. bursts that move on)."""
        t0 = time.perf_counter()
        if ids is not None and len(ids):
            ids = np.asarray(ids, dtype=np.int64)
            per_page = 4096 // HOT_BYTES
            self._watch_pages[0] += np.unique(self._prior_pos[ids] // per_page).size
            self._watch_pages[1] += np.unique(self.pos[ids] // per_page).size
        self._watch_steps += 1
        if self._watch_steps >= self.validate:
            prior, now = self._watch_pages
            self.watch_history.append((prior, now))
            self._watch_pages, self._watch_steps = [0, 0], 0
            if prior < now:
                self._permute(self._prior_order, account=False)
                self.order_generation += 1
                self.reverted = True
                self._watching = False
        dt = time.perf_counter() - t0
        self.relocation_seconds += dt
        return dt

    def relocate(self, ids: np.ndarray | None = None) -> float:
        """Re-learn the order now from what was observed (all workers move)."""
        self.learned = True
        self.adopted = True
        dt = self._permute(self.learned_order())
        self.order_generation += 1
        return dt
