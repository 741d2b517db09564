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
    COLD_EVERY, DECAY, HOT_WORDS, N_NEIGHBOURS, N_WEIGHTS, PAGE_SIZE, RECORD_BYTES, RECORD_DTYPE, W_NEIGHBOURS,
    ArenaLayout, Region, initial_weights, sheet_neighbours, sheet_width, touch_cold,
)

PAGE_WORDS = PAGE_SIZE // 4


class IsolatedLayout(ArenaLayout):
    name = "isolated"
    hot_arena = cold_arena = "isolated"

    def __init__(self, n: int, **kw) -> None:
        super().__init__(n, **kw)
        self._width = sheet_width(self.n)
        self._rng_seed = self.seed
        try:
            self._arena("isolated", self.n * PAGE_SIZE)
        except BaseException:
            self._close_on_error()
            raise
        # zero-filled pages read as count 0, last_step 0: last_step is only
        # meaningful once count > 0, so "never" is count == 0 here.
        self._u = self.arenas["isolated"].words("I")
        self._f = self.arenas["isolated"].words("f")

    def hot_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * PAGE_WORDS

    def cold_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * PAGE_WORDS + HOT_WORDS

    def _materialise(self, i: int, b: int) -> None:
        w = self._initial_weights(np.array([i]))[0]
        f = self._f
        for k in range(N_WEIGHTS):
            f[b + HOT_WORDS + k] = float(w[k])
        u = self._u
        n = self.n
        width = self._width
        x = i % width
        nb = (i - 1 if x > 0 else -1, i + 1 if x < width - 1 and i + 1 < n else -1,
              i - width if i >= width else -1, i + width if i + width < n else -1)
        for k in range(N_NEIGHBOURS):
            u[b + HOT_WORDS + W_NEIGHBOURS + k] = nb[k] & 0xFFFFFFFF

    def _initial_weights(self, ids: np.ndarray) -> np.ndarray:
        # per-worker stream so a lazily built record equals an eager one
        out = np.empty((ids.size, N_WEIGHTS), dtype=np.float32)
        for j, i in enumerate(ids.tolist()):
            out[j] = np.random.default_rng((self.seed, i)).random(N_WEIGHTS, dtype=np.float32)
        return out

    def update(self, i: int, step: int) -> None:
        u = self._u
        f = self._f
        b = i * PAGE_WORDS
        c = u[b + 1] + 1
        if c == 1:
            self._materialise(i, b)
        u[b + 1] = c
        p = f[b] * DECAY + 1.0
        f[b] = p
        u[b + 2] = step
        u[b + 3] = u[b + 3] or step + 1
        if c % COLD_EVERY == 0:
            touch_cold(u, f, b + HOT_WORDS, p)

    def _hot_state(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count, last = super()._hot_state(ids)
        return count, np.where(count == 0, np.uint32(0xFFFFFFFF), last)

    def state(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = super().state(ids).copy()
        fresh = out["count"] == 0
        if fresh.any():
            out["last_step"][fresh] = 0xFFFFFFFF
            out["weights"][fresh] = self._initial_weights(ids[fresh])
            out["neighbours"][fresh] = sheet_neighbours(self.n)[ids[fresh]]
        return out

    def regions(self) -> list[Region]:
        return [Region("isolated", "record", 0, PAGE_SIZE, RECORD_BYTES, self.n)]
