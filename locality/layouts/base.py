"""Arenas (mmap regions) and the Layout interface every allocation strategy shares.

A layout decides where worker i's 96-byte state record lives (docs/internals.md):

    hot  16 B  potential f4, count u4, last_step u4, flags u4   every activation
    cold 80 B  weights 16 x f4, neighbours 4 x i4                every COLD_EVERY-th

One activation of worker i at step s (identical in every strategy, so they are
comparable byte for byte):

    count += 1; potential = potential * DECAY + 1; last_step = s;
    flags = flags or s + 1            (flags keeps the first activation step + 1)
    if count % COLD_EVERY == 0:       weights = weights * 0.99 + 0.01 * potential,
                                      neighbours rewritten in place

so the cold part is touched by the activation that brings ``count`` to a
multiple of COLD_EVERY.  "Touched" is "written" here (neighbours are written
back), so the kernel's written-page instrument sees exactly the bytes the
layout says an activation touches: ``useful_bytes`` and ``expected_written``
are exact, not estimates.

Record-based layouts describe their placement with ``Region`` tables (where
each slot is, which worker owns it) so ``owners``, ``expected_written`` and the
hot/cold ranges are computed once, generically, from the same facts ``update``
uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Iterable

import numpy as np

from locality.errors import InvalidArgument
from locality.layouts.arena import PAGE_SIZE, ARENA_KINDS, Arena, ArenaError, round_up  # noqa: F401 (re-exported)

HOT_BYTES = 16
COLD_BYTES = 80
RECORD_BYTES = HOT_BYTES + COLD_BYTES
COLD_EVERY = 64
DECAY = 0.9
NEVER = 0xFFFFFFFF  # last_step of a worker never activated

HOT_WORDS = HOT_BYTES // 4
COLD_WORDS = COLD_BYTES // 4
RECORD_WORDS = RECORD_BYTES // 4

# u32 word offsets inside the hot part and inside the cold part
W_POTENTIAL, W_COUNT, W_LAST_STEP, W_FLAGS = 0, 1, 2, 3
W_WEIGHTS, N_WEIGHTS, W_NEIGHBOURS, N_NEIGHBOURS = 0, 16, 16, 4

HOT_DTYPE = np.dtype([("potential", "<f4"), ("count", "<u4"), ("last_step", "<u4"), ("flags", "<u4")])
COLD_DTYPE = np.dtype([("weights", "<f4", (N_WEIGHTS,)), ("neighbours", "<i4", (N_NEIGHBOURS,))])
RECORD_DTYPE = np.dtype(HOT_DTYPE.descr + COLD_DTYPE.descr)
assert HOT_DTYPE.itemsize == HOT_BYTES and COLD_DTYPE.itemsize == COLD_BYTES

def sheet_width(n: int) -> int:
    """Side of the sheet grid (population contract): worker i at (i % w, i // w)."""
    return max(1, int(np.ceil(np.sqrt(n))))


def sheet_neighbours(n: int) -> np.ndarray:
    """(n, 4) int32: left, right, up, down neighbour on the sheet, -1 off the sheet."""
    w = sheet_width(n)
    ids = np.arange(n, dtype=np.int64)
    x, y = ids % w, ids // w
    out = np.full((n, 4), -1, dtype=np.int32)
    out[:, 0] = np.where(x > 0, ids - 1, -1)
    out[:, 1] = np.where((x < w - 1) & (ids + 1 < n), ids + 1, -1)
    out[:, 2] = np.where(y > 0, ids - w, -1)
    out[:, 3] = np.where(ids + w < n, ids + w, -1)
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A stateless 64-bit hash (splitmix64 finaliser): per-worker values without a stream."""
    x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def initial_weights(n: int, seed: int = 0, ids: np.ndarray | None = None) -> np.ndarray:
    """(len(ids), 16) float32 in [0, 1): a pure function of (seed, worker, k), so a
    layout that materialises records lazily (isolated) gets the same values."""
    ids = np.arange(n, dtype=np.uint64) if ids is None else np.asarray(ids, dtype=np.uint64)
    key = (ids[:, None] * np.uint64(N_WEIGHTS) + np.arange(N_WEIGHTS, dtype=np.uint64)[None, :])
    h = _splitmix64(key ^ np.uint64((seed * 0xD1B54A32D192ED03) % 2**64))
    return ((h >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)).astype(np.float32)


def initial_counts(n: int, seed: int = 0, ids: np.ndarray | None = None, warm: bool = True) -> np.ndarray:
    """Activation count each worker starts with.

    ``warm=True`` (the default): a seeded phase in [0, COLD_EVERY), as after a
    long run, so cold parts are touched at the steady-state rate (1 activation
    in 64) from the first step instead of never within a short benchmark.
    ``warm=False``: 0 (a freshly built population).
    """
    ids = np.arange(n, dtype=np.uint64) if ids is None else np.asarray(ids, dtype=np.uint64)
    if not warm:
        return np.zeros(ids.size, dtype=np.uint32)
    h = _splitmix64(ids ^ np.uint64(((seed + 1) * 0x8CB92BA72F3D8DD7) % 2**64))
    return (h % np.uint64(COLD_EVERY)).astype(np.uint32)


def pages_of(offsets: np.ndarray, lengths: np.ndarray | int, n_pages: int) -> np.ndarray:
    """Bool page vector covering byte ranges [offset, offset + length)."""
    out = np.zeros(n_pages, dtype=bool)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size == 0:
        return out
    last = offsets + np.asarray(lengths, dtype=np.int64) - 1
    first_p, last_p = offsets // PAGE_SIZE, last // PAGE_SIZE
    out[first_p] = True
    out[last_p] = True
    # a range of more than two pages only occurs for page-sized records
    for a, b in zip(first_p[last_p - first_p > 1], last_p[last_p - first_p > 1]):
        out[a : b + 1] = True
    return out


@dataclass
class Region:
    """Slots of one kind laid out in an arena: slot k at base + k * stride.

    ``worker`` maps slot -> worker id (-1 empty); None means slot k is worker k.
    ``used`` bytes of each slot belong to the worker (the rest is padding).
    """

    arena: str
    kind: str  # "hot", "cold" or "record" (hot then cold in one slot)
    base: int
    stride: int
    used: int
    slots: int
    worker: np.ndarray | None = None

    def owner_of(self, offsets: np.ndarray) -> np.ndarray:
        rel = offsets - self.base
        slot = rel // self.stride
        ok = (rel >= 0) & (slot < self.slots) & (rel - slot * self.stride < self.used)
        out = np.full(offsets.shape, -1, dtype=np.int64)
        s = slot[ok]
        out[ok] = s if self.worker is None else self.worker[s]
        return out


class Layout:
    """Where each worker's state lives, and what one activation writes.

    Subclasses set ``arenas`` and implement ``update`` (hot path: no object
    created per call) plus ``_hot_state(ids)`` and ``_locate(ids)``.

    Driver protocol (population harness, benchmark):
      for each step s: for i in active ids: ``update(i, s)``
      (or ``update_group(g, ids_of_block, s)`` when ``group_size > 1``);
      then ``maintain(s, ids)`` lets moving strategies relocate (returns the
      seconds spent copying; 0.0 for static layouts).
    ``useful_bytes(ids, s)`` and ``expected_written(ids, s)`` are exact both
    before and after the activation of ``ids`` at step ``s``: a worker whose
    last_step is already ``s`` is taken as activated.
    """

    name: ClassVar[str] = "?"
    group_size: int = 1
    moves: ClassVar[bool] = False
    # (bytes a worker's hot part occupies as stored, bytes a cold touch adds elsewhere):
    # what the utilization ceiling packs per co-activation group (layouts/ceiling.py)
    PACKING: ClassVar[tuple[int, int] | None] = (HOT_BYTES, COLD_BYTES)

    def __init__(self, n: int) -> None:
        if int(n) <= 0:
            raise InvalidArgument(f"number of workers must be > 0, got {n}")
        self.n = int(n)
        self.arenas: dict[str, Arena] = {}
        self.relocation_seconds = 0.0
        self.relocated_records = 0

    # -- hot path ---------------------------------------------------------
    def update(self, i: int, step: int) -> None:
        raise NotImplementedError

    def update_group(self, g: int, ids: Iterable[int], step: int) -> None:
        upd = self.update
        for i in ids:
            upd(int(i), step)

    def maintain(self, step: int, ids: np.ndarray | None = None) -> float:
        """Called between steps; moving layouts relocate here. Returns seconds spent."""
        return 0.0

    def relocate(self, ids: np.ndarray) -> float:
        """Move these workers' state where the strategy wants it; returns copy seconds."""
        return 0.0

    # -- state (read without writing) -----------------------------------------
    def _hot_state(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(count, last_step) of ids, read from wherever the hot record is."""
        raise NotImplementedError

    def state(self, ids: np.ndarray) -> np.ndarray:
        """HOT_DTYPE + COLD_DTYPE records of ids (a copy), for tests and checks."""
        raise NotImplementedError

    # -- accounting ---------------------------------------------------------
    def cold_touched(self, ids: np.ndarray, step: int) -> np.ndarray:
        """Which of ids touch (or touched) their cold part when activated at ``step``."""
        ids = np.asarray(ids, dtype=np.int64)
        count, last = self._hot_state(ids)
        count = count + (last != step)  # the count after this step's activation (one temporary:
        count %= COLD_EVERY  # this runs in the measured child every step)
        return count == 0

    def useful_bytes(self, ids: np.ndarray, step: int) -> int:
        """Bytes the activation of ids at ``step`` really needs: 16 each, +80 per cold touch."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        return int(ids.size * HOT_BYTES + int(self.cold_touched(ids, step).sum()) * COLD_BYTES)

    def _locate(self, ids: np.ndarray) -> tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]]:
        """((hot arena, byte offsets), (cold arena, byte offsets)) of ids now."""
        raise NotImplementedError

    def expected_written(self, ids: np.ndarray, step: int | None = None) -> dict[str, np.ndarray]:
        """Pages of each arena that activating ids at ``step`` writes (exactly).

        ``step=None`` means "the next activation" (before it happens).
        """
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if step is None:
            cold = self._cold_due(ids)
        else:
            cold = self.cold_touched(ids, step)
        (hot_a, hot_off), (cold_a, cold_off) = self._locate(ids)
        out = {name: np.zeros(a.n_pages, dtype=bool) for name, a in self.arenas.items()}
        out[hot_a] |= pages_of(hot_off, HOT_BYTES, out[hot_a].size)
        out[cold_a] |= pages_of(cold_off[cold], COLD_BYTES, out[cold_a].size)
        return out

    def _cold_due(self, ids: np.ndarray) -> np.ndarray:
        count, _ = self._hot_state(ids)
        return (count.astype(np.int64) + 1) % COLD_EVERY == 0

    def regions(self) -> list[Region]:
        raise NotImplementedError

    def owners(self, addresses: np.ndarray) -> np.ndarray:
        """Worker id owning each byte address, -1 for none (padding, other memory)."""
        addresses = np.asarray(addresses, dtype=np.int64)
        out = np.full(addresses.shape, -1, dtype=np.int64)
        for r in self.regions():
            a = self.arenas[r.arena]
            inside = (addresses >= a.address) & (addresses < a.end)
            if not inside.any():
                continue
            got = r.owner_of(addresses[inside] - a.address)
            sub = out[inside]
            sub[got >= 0] = got[got >= 0]
            out[inside] = sub
        return out

    def _ranges(self, kinds: tuple[str, ...], part: str) -> np.ndarray:
        """(address, length) of the occupied slots' bytes, contiguous slots coalesced."""
        rows = []
        for r in self.regions():
            if r.kind not in kinds:
                continue
            base = self.arenas[r.arena].address + r.base
            occupied = np.ones(r.slots, dtype=bool) if r.worker is None else np.asarray(r.worker) >= 0
            if r.kind == "record":
                start = base + np.flatnonzero(occupied).astype(np.int64) * r.stride
                if part == "hot":
                    rows.append(np.stack([start, np.full_like(start, HOT_BYTES)], 1))
                else:
                    rows.append(np.stack([start + HOT_BYTES, np.full_like(start, COLD_BYTES)], 1))
            elif r.stride == r.used:
                edges = np.diff(np.concatenate([[0], occupied.astype(np.int8), [0]]))
                first = np.flatnonzero(edges == 1).astype(np.int64)
                end = np.flatnonzero(edges == -1).astype(np.int64)
                rows.append(np.stack([base + first * r.stride, (end - first) * r.stride], 1))
            else:
                start = base + np.flatnonzero(occupied).astype(np.int64) * r.stride
                rows.append(np.stack([start, np.full_like(start, r.used)], 1))
        return np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)

    def hot_ranges(self) -> np.ndarray:
        """(k, 2) int64 array of (address, length) byte ranges holding hot fields."""
        return self._ranges(("hot", "record"), "hot")

    def cold_ranges(self) -> np.ndarray:
        """(k, 2) int64 array of (address, length) byte ranges holding cold fields."""
        return self._ranges(("cold", "record"), "cold")

    def arena_bytes(self) -> int:
        return sum(a.length for a in self.arenas.values())

    def packing(self) -> tuple[int, int]:
        """(hot, cold) bytes per worker as this layout stores them (see layouts/ceiling.py)."""
        assert self.PACKING is not None
        return self.PACKING

    def unit_of(self, ids: np.ndarray) -> np.ndarray:
        """The unit (coroutine) each worker belongs to: itself, or its block when ``group_size > 1``."""
        return np.asarray(ids, dtype=np.int64) // self.group_size

    def unit_count(self) -> int:
        """How many units (coroutines) the population spawns for this layout."""
        return -(-self.n // self.group_size)

    def unit_members(self, units: np.ndarray) -> np.ndarray:
        """(len(units), group_size) worker ids of each unit, -1 where a unit has fewer."""
        units = np.asarray(units, dtype=np.int64)
        ids = units[:, None] * self.group_size + np.arange(self.group_size)[None, :]
        return np.where(ids < self.n, ids, -1)

    def spawn_order(self) -> np.ndarray:
        """Worker ids in the order their coroutines should be created: the order of
        the layout's state, so neighbours' frames share allocator pools as their
        records share pages (id order unless the layout says otherwise)."""
        return np.arange(self.n, dtype=np.int64)

    def bytes_per_worker(self) -> float:
        """Mapped state bytes per worker (what the layout reserves; RSS is measured separately)."""
        return self.arena_bytes() / self.n

    def page_sizes(self) -> dict[str, dict[str, int]]:
        return {name: a.page_sizes() for name, a in self.arenas.items()}

    def close(self) -> None:
        for a in self.arenas.values():
            a.close()
        self.arenas = {}

    def __enter__(self) -> "Layout":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} n={self.n}>"


def touch_hot(u: memoryview, f: memoryview, b: int, step: int) -> float:
    """The hot part of an activation of the record whose hot part starts at word ``b``.

    Returns the new potential when this activation also touches the cold part
    (every COLD_EVERY-th), else 0.0 (a potential is always >= 1). The one
    definition of the record's semantics that every arena layout calls.
    """
    c = u[b + 1] + 1
    u[b + 1] = c
    p = f[b] * DECAY + 1.0
    f[b] = p
    u[b + 2] = step
    u[b + 3] = u[b + 3] or step + 1
    return p if c % COLD_EVERY == 0 else 0.0


def touch_cold(u: memoryview, f: memoryview, base: int, potential: float) -> None:
    """The cold part of an activation: weights decay toward potential, neighbours rewritten."""
    p = 0.01 * potential
    for k in range(base, base + N_WEIGHTS):
        f[k] = f[k] * 0.99 + p
    for k in range(base + W_NEIGHBOURS, base + W_NEIGHBOURS + N_NEIGHBOURS):
        u[k] = u[k]


class ArenaLayout(Layout):
    """A layout whose hot and cold parts are u32 words in its arenas.

    Subclasses create arenas, then set ``hot_arena``/``cold_arena`` names and
    implement ``hot_word(ids)`` / ``cold_word(ids)`` (u32 word index of the
    part's first field).  Everything else (initial state, reading state,
    expected pages) follows from those two maps.
    """

    hot_arena: str
    cold_arena: str

    def __init__(self, n: int, *, arena: str = "anon", directory: str | os.PathLike | None = None,
                 hugepages: bool = False, seed: int = 0, warm: bool = True) -> None:
        super().__init__(n)
        self.warm = bool(warm)
        self.arena_kind = arena
        self.directory = directory
        self.hugepages = hugepages
        self.seed = seed

    def _arena(self, name: str, length: int) -> Arena:
        a = Arena(name, length, kind=self.arena_kind, directory=self.directory, hugepages=self.hugepages)
        self.arenas[name] = a
        return a

    def _close_on_error(self) -> None:
        for a in self.arenas.values():
            a.close()

    def _create_arenas(self, lengths: dict[str, int], *, init_records: bool = True) -> None:
        """Map the named arenas, write every worker's initial record, and bind the
        u32/f32 word views of the hot and cold arenas (``_hu``, ``_hf``, ``_cu``,
        ``_cf``) that ``update`` writes through. Nothing stays mapped on error."""
        try:
            for name, length in lengths.items():
                self._arena(name, length)
            if init_records:
                self._init_records()
        except BaseException:
            self._close_on_error()
            raise
        self._hu = self.arenas[self.hot_arena].words("I")
        self._hf = self.arenas[self.hot_arena].words("f")
        self._cu = self.arenas[self.cold_arena].words("I")
        self._cf = self.arenas[self.cold_arena].words("f")

    def hot_word(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def cold_word(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _u32(self, name: str) -> np.ndarray:
        return self.arenas[name].u32

    def _init_records(self, ids: np.ndarray | None = None) -> None:
        """Write the initial record of ids (all workers by default)."""
        ids = np.arange(self.n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        hot = self._u32(self.hot_arena)
        cold = self._u32(self.cold_arena)
        h = self.hot_word(ids)
        c = self.cold_word(ids)
        hot[h + W_POTENTIAL] = 0
        hot[h + W_COUNT] = initial_counts(self.n, self.seed, ids, self.warm)
        hot[h + W_LAST_STEP] = NEVER
        hot[h + W_FLAGS] = 0
        weights = initial_weights(self.n, self.seed, ids).view(np.uint32)
        neighbours = sheet_neighbours(self.n)[ids].view(np.uint32)
        for k in range(N_WEIGHTS):
            cold[c + W_WEIGHTS + k] = weights[:, k]
        for k in range(N_NEIGHBOURS):
            cold[c + W_NEIGHBOURS + k] = neighbours[:, k]

    def _hot_state(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hot = self._u32(self.hot_arena)
        h = self.hot_word(np.asarray(ids, dtype=np.int64))
        return hot[h + W_COUNT], hot[h + W_LAST_STEP]

    def state(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        hot = self._u32(self.hot_arena)
        cold = self._u32(self.cold_arena)
        h = self.hot_word(ids)
        c = self.cold_word(ids)
        words = np.empty((ids.size, RECORD_WORDS), dtype=np.uint32)
        words[:, :HOT_WORDS] = hot[h[:, None] + np.arange(HOT_WORDS)]
        words[:, HOT_WORDS:] = cold[c[:, None] + np.arange(COLD_WORDS)]
        return words.view(RECORD_DTYPE).reshape(ids.size)

    def _locate(self, ids: np.ndarray):
        return (self.hot_arena, self.hot_word(ids) * 4), (self.cold_arena, self.cold_word(ids) * 4)
