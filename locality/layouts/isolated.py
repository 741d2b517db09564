"""isolated: one page per worker (record at the start of its own page).

The best paging granularity (one worker's page can be paged out alone) and
the worst footprint (4096 bytes mapped per 96 used).  A never-activated
worker's page stays unpopulated, as a page-per-object allocator would leave
it: its record is materialised by its first activation (in its own page, so
the pages written are the same as with an eager copy).  This keeps a million
isolated workers mappable within the 3 GiB process budget: only activated
workers cost a resident page.
"""

from __future__ import annotations

import numpy as np

from locality.layouts.base import (
    HOT_WORDS, N_NEIGHBOURS, N_WEIGHTS, NEVER, PAGE_SIZE, RECORD_BYTES, W_NEIGHBOURS, ArenaLayout,
    Region, initial_counts, initial_weights, sheet_neighbours, sheet_width, touch_cold, touch_hot,
)

PAGE_WORDS = PAGE_SIZE // 4


class IsolatedLayout(ArenaLayout):
    name = "isolated"
    hot_arena = cold_arena = "isolated"
    PACKING = (PAGE_SIZE, 0)

    def __init__(self, n: int, **kw) -> None:
        super().__init__(n, **kw)
        self._width = sheet_width(self.n)
        # A zero-filled page is a record never activated: flags (first
        # activation step + 1) is 0 exactly until the first activation.
        self._create_arenas({"isolated": self.n * PAGE_SIZE}, init_records=False)

    def hot_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * PAGE_WORDS

    def cold_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * PAGE_WORDS + HOT_WORDS

    def _materialise(self, i: int, b: int) -> None:
        """Write worker i's initial record into its (still untouched) page."""
        ids = np.array([i])
        u = self._hu
        f = self._hf
        u[b + 1] = int(initial_counts(self.n, self.seed, ids, self.warm)[0])
        u[b + 2] = NEVER
        w = initial_weights(self.n, self.seed, ids)[0].tolist()
        for k in range(N_WEIGHTS):
            f[b + HOT_WORDS + k] = w[k]
        n = self.n
        width = self._width
        x = i % width
        nb = (i - 1 if x > 0 else -1, i + 1 if x < width - 1 and i + 1 < n else -1,
              i - width if i >= width else -1, i + width if i + width < n else -1)
        for k in range(N_NEIGHBOURS):
            u[b + HOT_WORDS + W_NEIGHBOURS + k] = nb[k] & 0xFFFFFFFF

    def update(self, i: int, step: int) -> None:
        u = self._hu
        f = self._hf
        b = i * PAGE_WORDS
        if not u[b + 3]:
            self._materialise(i, b)
        p = touch_hot(u, f, b, step)
        if p:
            touch_cold(u, f, b + HOT_WORDS, p)

    def _hot_state(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        count, last = super()._hot_state(ids)
        fresh = self._u32("isolated")[self.hot_word(ids) + 3] == 0
        count = np.where(fresh, initial_counts(self.n, self.seed, ids, self.warm), count)
        return count, np.where(fresh, np.uint32(NEVER), last)

    def state(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = super().state(ids).copy()
        fresh = out["flags"] == 0
        if fresh.any():
            out["count"][fresh] = initial_counts(self.n, self.seed, ids[fresh], self.warm)
            out["last_step"][fresh] = NEVER
            out["weights"][fresh] = initial_weights(self.n, self.seed, ids[fresh])
            out["neighbours"][fresh] = sheet_neighbours(self.n)[ids[fresh]]
        return out

    def regions(self) -> list[Region]:
        return [Region("isolated", "record", 0, PAGE_SIZE, RECORD_BYTES, self.n)]
