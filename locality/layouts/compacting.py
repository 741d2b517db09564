"""compacting: recently active workers' hot parts move into a dense region, in activation order.

A moving, generational idea.  The hot arena has a home region (16 B slots)
and a dense region after it; an indirection table ``slot[i]`` says where
worker i's hot part is now (``update`` reads it, never writes it).

The home region is in Hilbert order of the sheet grid, exactly as in
``clustered`` (``home[i]`` = worker i's home slot, holes included), and so
is the cold arena's home region (``cold_home[i]``): what the dense region
cannot predict -- a burst's first step, a travelling wave's new cells -- is
written at home, and there a radius-3 disc covers ~2 pages (16 x 16
Hilbert tiles) instead of 7 in id order.

Cold parts live in a cold arena (home region, Hilbert order), plus a small "due" region: a
cold part is touched by the activation that brings ``count`` to a multiple
of 64, so the layout knows which dense members' NEXT activation touches
their cold part (count % 64 == 63) and stages exactly those cold parts in
the due region, in dense order; after the touch they go home again.  Each
cold part moves twice per 64 activations, and a step's cold touches land
on a few dense pages instead of one page each.  (``stage_cold=False`` turns
this off: cold parts then never move.)

Every ``every`` steps, ``maintain(step, ids)`` rebuilds the dense region:
members activated at this step first (in their order), then newly activated
workers in the order they were activated, then members idle at this step
but activated within the last ``window`` steps; the rest are copied back
home.  Packing this step's workers first keeps a burst that has ended from
leaving gaps between the active ones (it drifts to the tail, whole pages of
it untouched).  The region holds at most ``capacity`` workers (idle ones
go first, then the oldest).  Then it restages the due cold parts.  The copy time is measured (``relocation_seconds``,
returned per call) and so is what it writes: the benchmark counts pages
written by relocation separately from pages written by activations.
"""

from __future__ import annotations

import time

import numpy as np

from locality.errors import InvalidArgument
from locality.layouts.base import (
    COLD_BYTES, COLD_EVERY, COLD_WORDS, HOT_BYTES, HOT_WORDS, NEVER, W_COUNT, W_LAST_STEP, ArenaLayout,
    Region, round_up, touch_cold, touch_hot,
)
from locality.layouts.clustered import hilbert_slots


class CompactingLayout(ArenaLayout):
    name = "compacting"
    hot_arena = "hot"
    cold_arena = "cold"
    moves = True

    def __init__(self, n: int, *, window: int = 4, every: int = 1, repack_every: int | None = None,
                 capacity: int | None = None, stage_cold: bool = True, **kw) -> None:
        if window < 1 or every < 1 or (repack_every is not None and repack_every < 1):
            raise InvalidArgument(f"compacting: window, every and repack_every must be >= 1, got window={window}, "
                                  f"every={every}, repack_every={repack_every}")
        super().__init__(n, **kw)
        self.window = int(window)
        self.every = int(every)
        self.repack_every = self.window if repack_every is None else int(repack_every)
        self._mark = np.zeros(self.n, dtype=bool)  # scratch: set and cleared per use (no O(n) work per step)
        self._index = np.zeros(self.n, dtype=np.int64)  # scratch: position of a worker in this step's ids
        self.capacity = int(capacity) if capacity else max(1, min(self.n, self.n // 8))
        if not 0 < self.capacity <= self.n:
            raise InvalidArgument(f"compacting: capacity must be in 1..{self.n}, got {capacity}")
        # home slot -> worker in Hilbert order (-1: a hole off the sheet, never touched)
        self.home_order = hilbert_slots(self.n).astype(np.int32)
        self.cold_home_order = self.home_order[self.home_order >= 0]  # cold home slot -> worker
        self.home = np.empty(self.n, dtype=np.int32)  # worker -> hot home slot
        used = np.flatnonzero(self.home_order >= 0).astype(np.int32)
        self.home[self.home_order[used]] = used
        self.cold_home = np.empty(self.n, dtype=np.int32)  # worker -> cold home slot
        self.cold_home[self.cold_home_order] = np.arange(self.n, dtype=np.int32)
        # dense region starts on its own page so home and dense never share one
        self.dense_base = round_up(self.home_order.size * HOT_BYTES) // HOT_BYTES
        self.stage_cold = bool(stage_cold)
        # the due region starts on a page of its own
        self.due_base = -(-round_up(self.n * COLD_BYTES) // COLD_BYTES)
        self.slot = self.home.copy()
        self.cold_slot = self.cold_home.copy()
        self.members = np.zeros(0, dtype=np.int64)  # dense slot k -> worker
        self.due = np.zeros(0, dtype=np.int64)  # due slot k -> worker
        self._create_arenas({
            "hot": (self.dense_base + self.capacity) * HOT_BYTES,
            "cold": (self.due_base + (self.capacity if self.stage_cold else 0)) * COLD_BYTES,
        })
        self._slot = memoryview(self.slot).cast("B").cast("i")
        self._cslot = memoryview(self.cold_slot).cast("B").cast("i")
        cold_u32 = self.arenas["cold"].u32
        self._cold_rows = cold_u32[: cold_u32.size // COLD_WORDS * COLD_WORDS].reshape(-1, COLD_WORDS)
        # the same slots as one opaque item each: a fancy-indexed copy of 16- or 80-byte items is
        # ~17x faster than of rows of 4-byte words (measured, 45k random 16 B moves: 0.65 vs 11 ms)
        self._cold_items = self._cold_rows.reshape(-1).view(f"V{COLD_BYTES}")
        self._hot_rows = self.arenas["hot"].u32.reshape(-1, HOT_WORDS)
        self._hot_items = self.arenas["hot"].u32.view(f"V{HOT_BYTES}")

    def spawn_order(self) -> np.ndarray:
        """Workers in home (Hilbert) order: their coroutines are allocated in the order of their state."""
        return self.cold_home_order.astype(np.int64)

    def hot_word(self, ids: np.ndarray) -> np.ndarray:
        return self.slot[np.asarray(ids, dtype=np.int64)].astype(np.int64) * HOT_WORDS

    def cold_word(self, ids: np.ndarray) -> np.ndarray:
        return self.cold_slot[np.asarray(ids, dtype=np.int64)].astype(np.int64) * COLD_WORDS

    def update(self, i: int, step: int) -> None:
        u = self._hu
        f = self._hf
        b = self._slot[i] * HOT_WORDS
        p = touch_hot(u, f, b, step)
        if p:
            touch_cold(self._cu, self._cf, self._cslot[i] * COLD_WORDS, p)

    def maintain(self, step: int, ids: np.ndarray | None = None) -> float:
        if (step + 1) % self.every:
            return 0.0
        t0 = time.perf_counter()
        if ids is not None and len(ids):
            fresh = np.asarray(ids, dtype=np.int64)  # activation order (a step's ids are distinct)
            fresh = fresh[self.slot[fresh] < self.dense_base]
            k = np.arange(fresh.size)
            self._index[fresh] = k
            if (self._index[fresh] != k).any():  # not distinct after all: each once, first position
                _, first = np.unique(fresh, return_index=True)
                fresh = fresh[np.sort(first)]
        else:
            fresh = np.zeros(0, dtype=np.int64)
        if (step + 1) % (self.every * self.repack_every) == 0 or self.members.size + fresh.size > self.capacity:
            self._repack(step, fresh)
            if self.stage_cold:
                self._stage_cold()
        else:
            # between repacks only the newly active move (appended in activation order): members keep
            # their slots, so a step costs copies of its fresh workers, not of the whole region
            self._append(fresh)
            if self.stage_cold:
                self._stage_cold(np.asarray(ids, dtype=np.int64) if ids is not None else None)
        dt = time.perf_counter() - t0
        self.relocation_seconds += dt
        return dt

    def _repack(self, step: int, fresh: np.ndarray) -> None:
        """Rebuild the dense region: members active at this step first (in their order), then the
        fresh workers, then members idle at this step but active within ``window`` steps; the rest
        go home. Packing this step's workers first keeps a burst that has ended from leaving gaps
        between the active ones (it drifts to the tail, whole pages of it untouched)."""
        members = self.members
        if members.size:
            last = self._hot_rows[self.slot[members], W_LAST_STEP].astype(np.int64)
            recent = (last != NEVER) & (last > step - self.window)
            now = recent & (last == step)
            active, idle = members[now], members[recent & ~now]
        else:
            active = idle = members
        order = np.concatenate([active, fresh])
        if order.size >= self.capacity:
            order = order[-self.capacity:]
        elif idle.size:
            order = np.concatenate([order, idle[-(self.capacity - order.size):]])
        self._move(order)

    def _append(self, fresh: np.ndarray) -> None:
        if not fresh.size:
            return
        base = self.dense_base + self.members.size
        new_slots = base + np.arange(fresh.size)
        self._hot_items[new_slots] = self._hot_items[self.slot[fresh]]
        self.slot[fresh] = new_slots
        self.members = np.concatenate([self.members, fresh])
        self.relocated_records += int(fresh.size)

    def relocate(self, ids: np.ndarray) -> float:
        """Make ``ids`` (in this order) the dense region's content; returns copy seconds."""
        t0 = time.perf_counter()
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size > self.capacity:
            raise InvalidArgument(f"compacting: {ids.size} workers do not fit the dense region of {self.capacity}")
        self._move(ids)
        dt = time.perf_counter() - t0
        self.relocation_seconds += dt
        return dt

    def _pack(self, rows: np.ndarray, slot: np.ndarray, home: np.ndarray, previous: np.ndarray,
              chosen: np.ndarray, base: int) -> None:
        """Put ``chosen``'s parts in region slots ``base, base+1, ...`` in that order and send
        ``previous`` occupants not chosen back home; only parts whose slot changes are copied."""
        records = rows[slot[chosen]]  # gather before anything is overwritten
        kept = self._mark
        kept[chosen] = True
        leaving = previous[~kept[previous]]
        kept[chosen] = False
        if leaving.size:
            rows[home[leaving]] = rows[slot[leaving]]
            slot[leaving] = home[leaving]
        new_slots = base + np.arange(chosen.size)
        moved = slot[chosen] != new_slots
        rows[new_slots[moved]] = records[moved]
        slot[chosen] = new_slots
        self.relocated_records += int(moved.sum() + leaving.size)

    def _move(self, order: np.ndarray) -> None:
        self._pack(self._hot_items, self.slot, self.home, self.members, order, self.dense_base)
        self.members = order

    def _stage_cold(self, ids: np.ndarray | None = None) -> None:
        """Due region := cold parts of dense members whose next activation touches them.

        With ``ids`` (a step between repacks) only those workers' counts changed, so the due set
        changes only by them: the due ones among them that were activated leave, and members among
        them now due join (appended after the others, which keep their slots)."""
        if ids is None:
            members = self.members
            count = self._hot_rows[self.slot[members], W_COUNT].astype(np.int64)
            due = members[(count + 1) % COLD_EVERY == 0]
        else:
            ids = ids[self.slot[ids] >= self.dense_base]  # members among them
            count = self._hot_rows[self.slot[ids], W_COUNT].astype(np.int64)
            mark = self._mark
            mark[ids] = True
            stay = self.due[~mark[self.due]]
            mark[ids] = False
            due = np.concatenate([stay, ids[(count + 1) % COLD_EVERY == 0]])
            if due.size == self.due.size and np.array_equal(due, self.due):
                return
        self._pack(self._cold_items, self.cold_slot, self.cold_home, self.due, due, self.due_base)
        self.due = due

    def regions(self) -> list[Region]:
        at_home = self.slot == self.home
        home_owner = np.where(self.home_order >= 0, self.home_order, 0)
        home_owner = np.where((self.home_order >= 0) & at_home[home_owner], home_owner, -1)
        dense_owner = np.full(self.capacity, -1, dtype=np.int64)
        dense_owner[: self.members.size] = self.members
        cold_at_home = self.cold_slot == self.cold_home
        cold_home = np.where(cold_at_home[self.cold_home_order], self.cold_home_order, -1)
        due_owner = np.full(self.capacity, -1, dtype=np.int64)
        due_owner[: self.due.size] = self.due
        regions = [Region("hot", "hot", 0, HOT_BYTES, HOT_BYTES, self.home_order.size, home_owner),
                   Region("hot", "hot", self.dense_base * HOT_BYTES, HOT_BYTES, HOT_BYTES, self.capacity, dense_owner),
                   Region("cold", "cold", 0, COLD_BYTES, COLD_BYTES, self.n, cold_home)]
        if self.stage_cold:
            regions.append(Region("cold", "cold", self.due_base * COLD_BYTES, COLD_BYTES, COLD_BYTES,
                                  self.capacity, due_owner))
        return regions

    def close(self) -> None:
        for mv in ("_slot", "_cslot"):
            try:
                getattr(self, mv).release()
            except (AttributeError, BufferError):
                pass
        super().close()
