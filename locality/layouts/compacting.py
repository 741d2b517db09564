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

The dense region is a ring of ``capacity`` slots.  Every ``every`` steps,
``maintain(step, ids)`` appends the workers activated since the last call
that are not yet in it and were already activated within the last
``window`` steps of each other ``promote`` times in a row (``promote=1``:
every activated worker; ``"auto"``, the default: 1 while at least half of a
step's workers were active within ``window`` steps, else 3), in activation
order, at its head (a burst's workers side by side).  On the travelling
sheet at 1M (22% reuse; 2-row wave fronts hit a cell on two steps in a row)
almost no worker is moved; with persistent bursts (94% reuse) a burst moves
in after its first step.  When it is full it evicts from its tail, oldest first: an
evicted worker activated within the last ``window`` steps is appended again
(it survives), the others are copied home.  So a step moves its own fresh
workers and about as many evicted ones: relocation work proportional to
the step's activations, never to the region's size (measured: rebuilding
the whole region every step cost 22-35% of the activations' time).  Cold
staging follows only the activated workers' counts.  The copy time is
measured (``relocation_seconds``, returned per call) and so is what it
writes: the benchmark counts pages written by relocation separately from
pages written by activations.
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
    REUSE_FIRST_TOUCH = 0.5  # promote="auto": above this reuse, a first activation is enough to enter
    hot_arena = "hot"
    cold_arena = "cold"
    moves = True

    def __init__(self, n: int, *, window: int = 4, every: int = 1, capacity: int | None = None,
                 stage_cold: bool = True, promote: int | str = "auto", **kw) -> None:
        if window < 1 or every < 1:
            raise InvalidArgument(f"compacting: window and every must be >= 1, got window={window}, every={every}")
        if promote != "auto" and (isinstance(promote, bool) or not isinstance(promote, int) or promote < 1):
            raise InvalidArgument(f"compacting: promote must be an integer >= 1 or 'auto', got {promote!r}")
        super().__init__(n, **kw)
        self.window = int(window)
        self.every = int(every)
        self.promote = promote
        self.reuse = float("nan")  # share of the last maintain's workers active within window before
        self._mark = np.zeros(self.n, dtype=bool)  # scratch: set and cleared per use (no O(n) work per step)
        self._pending: list[np.ndarray] = []  # ids of steps between maintain steps (every > 1)
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
        # per worker, in HOME slot order (so a burst's bookkeeping writes land on a few pages, as
        # its state does; indexed by id they wrote ~1,000 extra pages a step at 1M): the step of its
        # previous activation seen by maintain << 8 | how many activations in a row it had, each
        # within ``window`` steps of the one before (promote=k admits at the k-th)
        self._recent = np.full(self.home_order.size, np.iinfo(np.int32).min, dtype=np.int32)
        self.slot = self.home.copy()
        self.cold_slot = self.cold_home.copy()
        # dense slot k -> worker (-1 free), a ring: members are the _size slots before _head;
        # due slot k -> worker (-1: freed) for k < _due_top.  Buffers, not arrays rebuilt per step:
        # a step's relocation work is proportional to its own activations (issue 14)
        self._ring = np.full(self.capacity, -1, dtype=np.int64)
        self._head = 0
        self._size = 0
        self._due_buf = np.full(self.capacity, -1, dtype=np.int64)
        self._due_top = 0
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

    @property
    def members(self) -> np.ndarray:
        """Workers in the dense region, oldest first."""
        tail = (self._head - self._size) % self.capacity
        return self._ring[(tail + np.arange(self._size)) % self.capacity]

    @property
    def due(self) -> np.ndarray:
        """Workers whose cold part is staged in the due region, in slot order."""
        d = self._due_buf[: self._due_top]
        return d[d >= 0]

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
            if ids is not None and len(ids):
                self._pending.append(np.asarray(ids, dtype=np.int64))  # moved at the next maintain step
            return 0.0
        t0 = time.perf_counter()
        if ids is not None:
            self._pending.append(np.asarray(ids, dtype=np.int64))
        if len(self._pending) > 1:  # several steps: a worker may repeat (within one step ids are distinct)
            ids = self._distinct(np.concatenate(self._pending))
        else:
            ids = self._pending[0] if self._pending else np.zeros(0, dtype=np.int64)
        self._pending = []
        h = self.slot[ids]
        member = h >= self.dense_base
        take = ~member
        if self.promote != 1:
            # home slots: a worker outside the dense region is at home (slot == home), so only the
            # members' are gathered (a second random gather over all ids cost a quarter of maintain)
            h[member] = self.home[ids[member]]
            mark = self._recent[h]  # previous activation's step << 8 | streak
            recent = mark >= (step - self.window + 1) << 8  # that step within the window
            self.reuse = np.count_nonzero(recent) / ids.size if ids.size else float("nan")
            # the new mark in place, in as few passes as the policy allows (they are most of its cost):
            # streak = min(streak, 254) + 1 where it goes on, else 1 (this activation starts one)
            mark &= 0xFF
            np.minimum(mark, 254, out=mark)
            mark *= recent
            mark += (step << 8) | 1
            self._recent[h] = mark
            # auto: admit on the first activation while most of a step's workers recur (persistent
            # bursts), else on the third in a row (a 2-row travelling wave front hits a cell twice)
            k = self.promote if self.promote != "auto" else (1 if self.reuse >= self.REUSE_FIRST_TOUCH else 3)
            if k > 1:
                take &= mark >= (step << 8) + k
        fresh = ids[take]  # activation order
        self._admit(fresh, step)
        if self.stage_cold:
            self._stage_cold(np.concatenate([ids[member], fresh]))
        dt = time.perf_counter() - t0
        self.relocation_seconds += dt
        return dt

    @staticmethod
    def _distinct(ids: np.ndarray) -> np.ndarray:
        """ids with repeats dropped, each at its first position."""
        _, first = np.unique(ids, return_index=True)
        return ids[np.sort(first)]

    def _admit(self, fresh: np.ndarray, step: int) -> None:
        """Append ``fresh`` at the ring's head, evicting from its tail what does not fit (recently
        active evictees are appended again, before the fresh ones; the others go home)."""
        cap = self.capacity
        if fresh.size > cap:
            fresh = fresh[-cap:]
        survivors: list[np.ndarray] = []
        kept = 0
        scanned = 0
        while fresh.size + kept > cap - self._size and scanned < cap:
            # evict a batch from the tail: at least what is missing, at least 1/16 of the ring
            want = fresh.size + kept - (cap - self._size)
            e = min(self._size, max(want, cap // 16))
            if e == 0:
                break
            idx = (self._head - self._size + np.arange(e)) % cap
            ev = self._ring[idx]
            last = self._hot_rows[self.slot[ev], W_LAST_STEP].astype(np.int64)
            recent = (last != NEVER) & (last > step - self.window)
            gone, stay = ev[~recent], ev[recent]
            if gone.size:
                home = self.home[gone]
                self._hot_items[home] = self._hot_items[self.slot[gone]]
                self.slot[gone] = home
            survivors.append(stay)  # their records stay put until re-appended below
            kept += int(stay.size)
            self._ring[idx] = -1
            self._size -= e
            scanned += e
            self.relocated_records += int(gone.size)
        incoming = np.concatenate(survivors + [fresh]) if survivors else fresh
        if incoming.size > cap - self._size:  # the whole ring was recently active: the oldest go home
            drop, incoming = incoming[: incoming.size - (cap - self._size)], incoming[incoming.size - (cap - self._size):]
            home = self.home[drop]
            self._hot_items[home] = self._hot_items[self.slot[drop]]
            self.slot[drop] = home
        if not incoming.size:
            return
        records = self._hot_items[self.slot[incoming]]  # gather first: targets may be survivors' old slots
        ring_slots = (self._head + np.arange(incoming.size)) % cap
        self._hot_items[self.dense_base + ring_slots] = records
        self.slot[incoming] = self.dense_base + ring_slots
        self._ring[ring_slots] = incoming
        self._head = int((self._head + incoming.size) % cap)
        self._size += int(incoming.size)
        self.relocated_records += int(incoming.size)

    def relocate(self, ids: np.ndarray) -> float:
        """Make ``ids`` (in this order) the dense region's content; returns copy seconds."""
        t0 = time.perf_counter()
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size > self.capacity:
            raise InvalidArgument(f"compacting: {ids.size} workers do not fit the dense region of {self.capacity}")
        members = self.members
        home = self.home[members]
        self._hot_items[home] = self._hot_items[self.slot[members]]
        self.slot[members] = home
        self._ring[:] = -1
        self._head = self._size = 0
        self._admit(self._distinct(ids), 0)
        if self.stage_cold:
            self._stage_cold()
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

    def _stage_cold(self, ids: np.ndarray | None = None) -> None:
        """Due region := cold parts of dense members whose next activation touches them.

        Without ``ids`` (after ``relocate``, or when the due region is full) it is rebuilt from every
        member's count. With ``ids`` (a step's workers, all members now) only their counts changed: those
        that just touched their cold part (count % 64 == 0) and were staged go home, and those now
        due (count % 64 == 63) are appended; the others keep their slots."""
        if ids is None or self._due_top + ids.size > self.capacity:
            members = self.members
            count = self._hot_rows[self.slot[members], W_COUNT].astype(np.int64)
            due = members[(count + 1) % COLD_EVERY == 0]
            self._pack(self._cold_items, self.cold_slot, self.cold_home, self.due, due, self.due_base)
            self._due_buf[: due.size] = due
            self._due_buf[due.size : self._due_top] = -1
            self._due_top = int(due.size)
            return
        phase = self._hot_rows[self.slot[ids], W_COUNT] % COLD_EVERY
        touched = ids[phase == 0]
        leaving = touched[self.cold_slot[touched] >= self.due_base]
        if leaving.size:
            items, home = self._cold_items, self.cold_home[leaving]
            at = self.cold_slot[leaving]
            items[home] = items[at]
            self.cold_slot[leaving] = home
            self._due_buf[at - self.due_base] = -1
        joining = ids[phase == COLD_EVERY - 1]
        if joining.size:
            slots = self.due_base + self._due_top + np.arange(joining.size)
            self._cold_items[slots] = self._cold_items[self.cold_slot[joining]]
            self.cold_slot[joining] = slots
            self._due_buf[self._due_top : self._due_top + joining.size] = joining
            self._due_top += int(joining.size)
        self.relocated_records += int(leaving.size + joining.size)

    def regions(self) -> list[Region]:
        at_home = self.slot == self.home
        home_owner = np.where(self.home_order >= 0, self.home_order, 0)
        home_owner = np.where((self.home_order >= 0) & at_home[home_owner], home_owner, -1)
        dense_owner = self._ring.copy()
        cold_at_home = self.cold_slot == self.cold_home
        cold_home = np.where(cold_at_home[self.cold_home_order], self.cold_home_order, -1)
        due_owner = self._due_buf.copy()
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
