"""grouped: one coroutine per block of K workers, which owns a numpy block of their state.

The "columns as tensors" counterpoint: execution granularity changes, not
just placement.  Block g holds workers [g*K, (g+1)*K) (the population's
grouping), stored split as in ``hot-cold`` (hot arena, cold arena, id order),
and ``update_group(g, ids, step)`` applies the activation to all of ids at
once with numpy fancy indexing, which writes only the indexed fields -- so
the pages written are exactly those of ``hot-cold`` for the same ids.
``ids`` are global worker ids (all inside block g).
"""

from __future__ import annotations

import numpy as np

from locality.errors import InvalidArgument
from locality.layouts.base import COLD_EVERY, COLD_WORDS, DECAY, HOT_WORDS, N_WEIGHTS, W_NEIGHBOURS
from locality.layouts.hotcold import HotColdLayout


class GroupedLayout(HotColdLayout):
    """hot-cold's arenas and per-worker ``update``, plus a vectorised ``update_group``."""

    name = "grouped"

    def __init__(self, n: int, *, group_size: int = 256, **kw) -> None:
        if int(group_size) < 1:
            raise InvalidArgument(f"grouped: group_size must be >= 1, got {group_size}")
        super().__init__(n, **kw)
        self.group_size = int(group_size)
        self.n_groups = -(-self.n // self.group_size)
        hot_u = self.arenas["hot"].u32[: self.n * HOT_WORDS].reshape(self.n, HOT_WORDS)
        hot_f = hot_u.view(np.float32)
        cold_u = self.arenas["cold"].u32[: self.n * COLD_WORDS].reshape(self.n, COLD_WORDS)
        self._potential = hot_f[:, 0]
        self._count = hot_u[:, 1]
        self._last = hot_u[:, 2]
        self._flags = hot_u[:, 3]
        self._weights = cold_u.view(np.float32)[:, :N_WEIGHTS]
        self._neighbours = cold_u[:, W_NEIGHBOURS:]

    def block(self, g: int) -> slice:
        """Worker ids of block g, as a slice of the state arrays."""
        return slice(g * self.group_size, min(self.n, (g + 1) * self.group_size))

    def update_group(self, g: int, ids, step: int) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        c = self._count[ids] + np.uint32(1)
        self._count[ids] = c
        p = self._potential[ids] * np.float32(DECAY) + np.float32(1.0)
        self._potential[ids] = p
        self._last[ids] = step
        fl = self._flags[ids]
        self._flags[ids] = np.where(fl == 0, np.uint32(step + 1), fl)
        due = c % COLD_EVERY == 0
        if due.any():
            d = ids[due]
            self._weights[d] = self._weights[d] * np.float32(0.99) + np.float32(0.01) * p[due, None]
            self._neighbours[d] = self._neighbours[d]
