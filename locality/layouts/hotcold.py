"""hot-cold: structure splitting. Hot 16-byte parts in one arena, cold 80-byte parts in another.

256 hot parts share a page instead of 42 records, and the cold arena is
written only by the 1-in-64 activations that need it, so it can be paged
out as a whole (see the file-arena test).
"""

from __future__ import annotations

import numpy as np

from locality.layouts.base import (
    COLD_BYTES, COLD_WORDS, HOT_BYTES, HOT_WORDS, ArenaLayout, Region, touch_cold, touch_hot,
)


class HotColdLayout(ArenaLayout):
    name = "hot-cold"
    hot_arena = "hot"
    cold_arena = "cold"

    def __init__(self, n: int, **kw) -> None:
        super().__init__(n, **kw)
        self._create_arenas({"hot": self.n * HOT_BYTES, "cold": self.n * COLD_BYTES})

    def hot_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * HOT_WORDS

    def cold_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * COLD_WORDS

    def update(self, i: int, step: int) -> None:
        u = self._hu
        f = self._hf
        b = i * HOT_WORDS
        p = touch_hot(u, f, b, step)
        if p:
            touch_cold(self._cu, self._cf, i * COLD_WORDS, p)

    def regions(self) -> list[Region]:
        return [Region("hot", "hot", 0, HOT_BYTES, HOT_BYTES, self.n),
                Region("cold", "cold", 0, COLD_BYTES, COLD_BYTES, self.n)]
