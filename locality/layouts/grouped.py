"""grouped: one coroutine per block of K workers, which owns a numpy block of their state.

The "columns as tensors" counterpoint: execution granularity changes, not
just placement.  State is split as in ``hot-cold`` (hot arena, cold arena),
and ``update_group(g, ids, step)`` applies the activation to all of ids at
once with numpy fancy indexing, which writes only the indexed fields -- so
the pages written are exactly those of the per-worker layout with the same
placement.  ``ids`` are global worker ids (all inside block g).

Blocks follow the placement (``blocks``):

- ``"hilbert"`` (default): slots in ``clustered``'s Hilbert order (holes
  kept), block g = the workers of hot slots [g*K, (g+1)*K): with K = 256 one
  block is one 16 x 16 tile of the sheet on one hot page, so a burst wakes
  a few tile coroutines and writes clustered's pages.  Blocks that fall in
  the holes off the sheet have no worker (``unit_count()`` counts them all).
- ``"id"``: id order, block g = workers [g*K, (g+1)*K) (as ``hot-cold``).

The population asks the layout which unit (block) a worker belongs to
(``unit_of``) and who the units' workers are (``unit_members``).
"""

from __future__ import annotations

import numpy as np

from locality.errors import InvalidArgument
from locality.layouts.base import COLD_EVERY, COLD_WORDS, DECAY, HOT_DTYPE, HOT_WORDS, N_WEIGHTS, W_NEIGHBOURS
from locality.layouts.clustered import _PermutedHotCold, hilbert_slots

BLOCKS = ("hilbert", "id")


class GroupedLayout(_PermutedHotCold):
    """Block placement and a vectorised ``update_group``; per-worker ``update`` as the permuted layouts."""

    name = "grouped"

    def __init__(self, n: int, *, group_size: int = 256, blocks: str = "hilbert", **kw) -> None:
        if int(group_size) < 1:
            raise InvalidArgument(f"grouped: group_size must be >= 1, got {group_size}")
        if blocks not in BLOCKS:
            raise InvalidArgument(f"grouped: unknown blocks {blocks!r}", f"use one of: {', '.join(BLOCKS)}")
        n = int(n)
        self.blocks = blocks
        super().__init__(n, hilbert_slots(n) if blocks == "hilbert" else np.arange(n), **kw)
        self.group_size = int(group_size)
        self.n_groups = -(-self.hot_order.size // self.group_size)
        hot_u = self.arenas["hot"].u32[: self.hot_order.size * HOT_WORDS].reshape(-1, HOT_WORDS)
        hot_f = hot_u.view(np.float32)
        cold_u = self.arenas["cold"].u32[: self.n * COLD_WORDS].reshape(self.n, COLD_WORDS)
        # slot-indexed field views: worker i's hot fields at row pos[i], cold ones at cold_pos[i]
        self._records = hot_u.reshape(-1).view(HOT_DTYPE)
        self._potential = hot_f[:, 0]
        self._count = hot_u[:, 1]
        self._last = hot_u[:, 2]
        self._flags = hot_u[:, 3]
        self._weights = cold_u.view(np.float32)[:, :N_WEIGHTS]
        self._neighbours = cold_u[:, W_NEIGHBOURS:]
        k = self.group_size
        self._slots_buf = np.empty(k, self.pos.dtype)
        self._records_buf = np.empty(k, HOT_DTYPE)
        self._count_buf = np.empty(k, np.uint32)
        self._mask_buf = np.empty(k, bool)

    def unit_count(self) -> int:
        return self.n_groups

    def unit_of(self, ids: np.ndarray) -> np.ndarray:
        """Block of each worker: its hot slot // K."""
        return (self.pos[np.asarray(ids, dtype=np.int64)] // self.group_size).astype(np.int64)

    def unit_members(self, units: np.ndarray) -> np.ndarray:
        """(len(units), K) worker ids of each block in slot order, -1 where a slot has no worker."""
        units = np.asarray(units, dtype=np.int64)
        slots = units[:, None] * self.group_size + np.arange(self.group_size)[None, :]
        inside = slots < self.hot_order.size
        out = np.full(slots.shape, -1, dtype=np.int64)
        out[inside] = self.hot_order[slots[inside]]
        return out

    def block(self, g: int) -> np.ndarray:
        """Worker ids of block g (slot order)."""
        m = self.unit_members(np.array([g]))[0]
        return m[m >= 0]

    def update_group(self, g: int, ids, step: int) -> None:
        # one gather and one scatter of whole 16-byte hot records, updated in place between them (the
        # same pages written as field by field: all four hot fields sit in one record), through
        # buffers made once: a block's temporaries are heap churn the whole-process WSS counts
        ids = np.asarray(ids, dtype=np.int64)
        m = ids.size
        h = self._slots_buf[:m]
        np.take(self.pos, ids, out=h, mode="clip")  # ids are valid; "clip" gathers straight into out
        r = self._records_buf[:m]
        np.take(self._records, h, out=r, mode="clip")
        c = r["count"]
        c += np.uint32(1)
        p = r["potential"]
        p *= np.float32(DECAY)
        p += np.float32(1.0)
        r["last_step"] = step
        fl = r["flags"]
        fl[np.equal(fl, 0, out=self._mask_buf[:m])] = step + 1
        self._records[h] = r
        due = np.equal(np.remainder(c, COLD_EVERY, out=self._count_buf[:m]), 0, out=self._mask_buf[:m])
        if due.any():
            d = self.cold_pos[ids[due]]
            self._weights[d] = self._weights[d] * np.float32(0.99) + np.float32(0.01) * p[due, None]
            self._neighbours[d] = self._neighbours[d]
