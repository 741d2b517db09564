"""slab: one arena, one 96-byte record per worker, in id order.

The plain "array of structs": hot and cold fields of a worker sit together,
so an activation writes the page of its 16 hot bytes and, every 64th time,
the page(s) of the 80 cold bytes next to them.
"""

from __future__ import annotations

import numpy as np

from locality.layouts.base import (
    HOT_WORDS, RECORD_BYTES, RECORD_WORDS, ArenaLayout, Region, touch_cold, touch_hot,
)


class SlabLayout(ArenaLayout):
    name = "slab"
    hot_arena = cold_arena = "slab"
    PACKING = (RECORD_BYTES, 0)

    def __init__(self, n: int, **kw) -> None:
        super().__init__(n, **kw)
        self._create_arenas({"slab": self.n * RECORD_BYTES})

    def hot_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * RECORD_WORDS

    def cold_word(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) * RECORD_WORDS + HOT_WORDS

    def update(self, i: int, step: int) -> None:
        u = self._hu
        f = self._hf
        b = i * RECORD_WORDS
        p = touch_hot(u, f, b, step)
        if p:
            touch_cold(u, f, b + HOT_WORDS, p)

    def regions(self) -> list[Region]:
        return [Region("slab", "record", 0, RECORD_BYTES, RECORD_BYTES, self.n)]
