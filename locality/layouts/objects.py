"""objects: plain Python objects per worker, the baseline every other row is compared to.

Worker i is a dict {"potential": float, "count": int, "last_step": int,
"flags": int, "weights": list of 16 floats, "neighbours": list of 4 ints}:
about 1.1 KB in some 25 heap blocks that pymalloc scatters over the heap.
An activation runs the same arithmetic as the arena layouts, the Python way:
every assignment of a new value allocates a float/int object and frees the
old one, and every access writes a reference count.

There is no arena.  What the benchmark measures for this layout (see
``heap_pages``): the pages of the process's anonymous memory that hold the
layout's objects -- the dict and its keys table, both lists and their item
arrays, and every float/int they reference (small ints, shared interpreter
singletons, excluded) -- GC headers included.  Those pages are computed from
``id()``, ``sys.getsizeof`` and the list/dict internals of CPython 3.11
(``ob_item`` at offset 24, ``ma_keys`` at offset 32).  Pages written by the
interpreter outside those pages (frames, the driver's own ints) are not
counted; writes the allocator makes inside them (free-list links, pool
headers) are, because that is the cost of this layout.
"""

from __future__ import annotations

import ctypes
import sys
from itertools import chain
from operator import itemgetter

import numpy as np

from locality.errors import InvalidArgument
from locality.layouts.base import (
    COLD_BYTES, COLD_EVERY, DECAY, HOT_BYTES, NEVER, PAGE_SIZE, RECORD_DTYPE, Layout, initial_counts, initial_weights,
    sheet_neighbours,
)
from locality.layouts.peek import dict_values, list_items, scalar_sizes, words_at

_GC_HEAD = 16
_DICT_BASIC = 48
_LIST_BASIC = 40
_EMPTY_DICT_SIZE = sys.getsizeof({})
_SMALL_INTS = range(-5, 257)
# CPython 3.11 keeps the small ints in one static array: [id(-5), id(256) + size)
_SMALL_LO = id(-5)
_SMALL_HI = id(256) + sys.getsizeof(256)
_SCALARS = ("potential", "count", "last_step", "flags")
_LISTS = ("weights", "neighbours")
_FIELDS = _SCALARS + _LISTS  # the order of the dict display in __init__


def _ptr(addr: int) -> int:
    return ctypes.c_void_p.from_address(addr).value or 0


class ObjectsLayout(Layout):
    name = "objects"
    PACKING = None  # its objects' bytes per worker, measured (packing())

    def __init__(self, n: int, *, arena: str = "anon", seed: int = 0, warm: bool = True, **ignored) -> None:
        if arena != "anon":
            raise InvalidArgument("the objects layout has no arena: its state is the Python heap",
                                  "use --arena anon with objects, or another layout")
        super().__init__(n)
        self.seed = seed
        weights = initial_weights(self.n, seed)
        nbs = sheet_neighbours(self.n)
        counts = initial_counts(self.n, seed, warm=warm).tolist()
        # distinct float/int objects per worker, as a real program would have
        self.workers: list[dict] = [
            {"potential": 0.0, "count": c, "last_step": NEVER, "flags": 0, "weights": w, "neighbours": nb}
            for c, w, nb in zip(counts, weights.tolist(), nbs.tolist())
        ]
        self._owner_index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def update(self, i: int, step: int) -> None:
        w = self.workers[i]
        c = w["count"] + 1
        w["count"] = c
        p = w["potential"] * DECAY + 1.0
        w["potential"] = p
        w["last_step"] = step
        if not w["flags"]:
            w["flags"] = step + 1
        if c % COLD_EVERY == 0:
            ws = w["weights"]
            q = 0.01 * p
            for k in range(len(ws)):
                ws[k] = ws[k] * 0.99 + q
            nb = w["neighbours"]
            for k in range(len(nb)):
                nb[k] = nb[k]

    # -- state ------------------------------------------------------------
    def _hot_state(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ws = self.workers
        ids = np.asarray(ids, dtype=np.int64).tolist()
        count = np.fromiter((ws[i]["count"] for i in ids), dtype=np.int64, count=len(ids))
        last = np.fromiter((ws[i]["last_step"] for i in ids), dtype=np.int64, count=len(ids))
        return count, last

    def state(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(ids.size, dtype=RECORD_DTYPE)
        for j, i in enumerate(ids.tolist()):
            w = self.workers[i]
            out[j] = (w["potential"], w["count"], w["last_step"], w["flags"], w["weights"], w["neighbours"])
        return out

    # -- where the objects are -------------------------------------------------
    def object_ranges(self, ids: np.ndarray | None = None, *,
                      owners: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(start, length, owner) of every heap block owned by workers ``ids`` (all by default);
        owner None with ``owners=False`` (the portion walk needs none: a pass less over 28M blocks).

        Read from the objects' headers in numpy gathers (layouts.peek): the
        dicts from the workers list's item array, their values from their
        entry tables, sizes from the value headers; a Python call per worker
        only where a dict is not laid out as the constructor made it. A million
        workers (28M blocks) take well under a second.
        """
        ids = np.arange(self.n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        k = ids.size
        starts: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        owned: list[np.ndarray] = []

        def add(addr: np.ndarray, size: np.ndarray, owner: np.ndarray) -> None:
            keep = (addr < _SMALL_LO) | (addr >= _SMALL_HI)  # small ints belong to the interpreter
            starts.append(addr[keep])
            lengths.append(np.broadcast_to(size, addr.shape)[keep])
            if owners:
                owned.append(np.broadcast_to(owner, addr.shape)[keep])

        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64) if owners else None
        dicts = list_items(self.workers, ids)
        values = dict_values(dicts, _FIELDS)
        table = words_at(dicts + 32)  # ma_keys
        add(dicts - _GC_HEAD, np.int64(_GC_HEAD + _DICT_BASIC), ids)
        if values is None:
            ws = [self.workers[i] for i in ids.tolist()]
            values = np.fromiter(map(id, chain.from_iterable(map(itemgetter(*_FIELDS), ws))), np.int64,
                                 k * len(_FIELDS)).reshape(k, len(_FIELDS))
            add(table, np.fromiter(map(sys.getsizeof, ws), np.int64, k) - _EMPTY_DICT_SIZE, ids)
        else:
            add(table, self._table_sizes(ids, table), ids)
        ns = len(_SCALARS)
        scalars = values[:, :ns].ravel()
        add(scalars, scalar_sizes(scalars), np.repeat(ids, ns) if owners else ids)
        for j in range(ns, len(_FIELDS)):
            heads = values[:, j]
            add(heads - _GC_HEAD, np.int64(_GC_HEAD + _LIST_BASIC), ids)
            items, lens, allocated = words_at(heads + 24), words_at(heads + 16), words_at(heads + 32)
            add(items, 8 * allocated, ids)
            first = np.repeat(np.cumsum(lens) - lens, lens)
            elems = words_at(np.repeat(items, lens) + 8 * (np.arange(first.size) - first))
            add(elems, scalar_sizes(elems), np.repeat(ids, lens) if owners else ids)
        return np.concatenate(starts), np.concatenate(lengths), np.concatenate(owned) if owners else None

    def _table_sizes(self, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        """The keys table's bytes of each combined dict (sys.getsizeof(d) - getsizeof({})): a
        function of its size, index width and kind alone, so one getsizeof per distinct triple."""
        shape = words_at(table + 8) & 0xFFFFFF
        shared = words_at(table) != 1  # a table with other owners is not counted by getsizeof
        uniq, first, inv = np.unique(np.where(shared, -1 - np.arange(ids.size), shape), return_index=True,
                                     return_inverse=True)
        per = np.fromiter((sys.getsizeof(self.workers[i]) for i in ids[first].tolist()), np.int64, uniq.size)
        return per[inv.ravel()] - _EMPTY_DICT_SIZE

    def heap_pages(self, chunk: int = 65536) -> np.ndarray:
        """Sorted unique page addresses holding any of the layout's objects."""
        pages = []
        for lo in range(0, self.n, chunk):
            s, ln, _ = self.object_ranges(np.arange(lo, min(self.n, lo + chunk)), owners=False)
            p = np.concatenate([s // PAGE_SIZE, (s + ln - 1) // PAGE_SIZE])
            pages.append(np.unique(p))
        return np.unique(np.concatenate(pages)) * PAGE_SIZE

    def heap_bytes(self) -> int:
        """Bytes of the heap blocks the objects occupy (sum of their sizes)."""
        total = 0
        for lo in range(0, self.n, 65536):
            _, ln, _ = self.object_ranges(np.arange(lo, min(self.n, lo + 65536)), owners=False)
            total += int(ln.sum())
        return total

    def bytes_per_worker(self) -> float:
        return self.heap_bytes() / self.n

    def packing(self) -> tuple[int, int]:
        """A worker's objects packed back to back (their heap bytes, measured), cold part inside."""
        if getattr(self, "_packing", None) is None:
            self._packing = (max(HOT_BYTES, round(self.bytes_per_worker())), 0)
        return self._packing

    def arena_bytes(self) -> int:
        return self.heap_bytes()

    def owners(self, addresses: np.ndarray) -> np.ndarray:
        """Worker owning each address (index built once from the current objects; O(objects) memory)."""
        s, ln, own = self.object_ranges()
        order = np.argsort(s, kind="stable")
        s, ln, own = s[order], ln[order], own[order]
        addresses = np.asarray(addresses, dtype=np.int64)
        k = np.searchsorted(s, addresses, side="right") - 1
        ok = (k >= 0) & (addresses < s[np.maximum(k, 0)] + ln[np.maximum(k, 0)])
        return np.where(ok, own[np.maximum(k, 0)], -1)

    def hot_ranges(self) -> np.ndarray:
        """Dicts, keys tables and their scalar values (what every activation writes)."""
        rows: list[tuple[int, int]] = []
        for w in self.workers:
            st: list[int] = []
            ln: list[int] = []
            d = id(w)
            st += [d - _GC_HEAD, _ptr(d + 32)]
            ln += [_GC_HEAD + _DICT_BASIC, sys.getsizeof(w) - _EMPTY_DICT_SIZE]
            for key in ("potential", "count", "last_step", "flags"):
                v = w[key]
                if not (type(v) is int and v in _SMALL_INTS):
                    st.append(id(v))
                    ln.append(sys.getsizeof(v))
            rows.extend(zip(st, ln))
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def cold_ranges(self) -> np.ndarray:
        """Both lists, their item arrays and their elements."""
        rows: list[tuple[int, int]] = []
        for w in self.workers:
            st: list[int] = []
            ln: list[int] = []
            for key in ("weights", "neighbours"):
                v = w[key]
                a = id(v)
                st += [a - _GC_HEAD, _ptr(a + 24)]
                ln += [_GC_HEAD + _LIST_BASIC, 8 * ctypes.c_ssize_t.from_address(a + 32).value]
                for x in v:
                    if not (type(x) is int and x in _SMALL_INTS):
                        st.append(id(x))
                        ln.append(sys.getsizeof(x))
            rows.extend(zip(st, ln))
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def expected_written(self, ids: np.ndarray, step: int | None = None) -> dict[str, np.ndarray]:
        """A LOWER BOUND, as sorted page addresses under key "heap": the bytes this
        layout's own code certainly writes -- each activated dict's reference
        count and version tag, the value slots of count/potential/last_step (and
        flags on a first activation) in its keys table, and for a cold touch both
        lists' reference counts and item arrays.  The allocator writes more
        (new value objects, freed blocks, pool headers): the cost of this layout.
        """
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        cold = self._cold_due(ids) if step is None else self.cold_touched(ids, step)
        points: list[int] = []
        for i, c in zip(ids.tolist(), cold.tolist()):
            w = self.workers[i]
            d = id(w)
            keys = _ptr(d + 32)
            entries = keys + 32 + (1 << ctypes.c_uint8.from_address(keys + 9).value)
            first = w["flags"] == 0 if step is None else w["flags"] == step + 1
            points += [d, d + 24] + [entries + 16 * k + 8 for k in range(4 if first else 3)]
            if c:
                for key in _LISTS:
                    a = id(w[key])
                    item = _ptr(a + 24)
                    points += [a, item, item + 8 * len(w[key]) - 1]
        return {"heap": np.unique(np.array(points, dtype=np.int64) // PAGE_SIZE) * PAGE_SIZE}

    def useful_bytes(self, ids: np.ndarray, step: int) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        return int(ids.size * HOT_BYTES + int(self.cold_touched(ids, step).sum()) * COLD_BYTES)

    def page_sizes(self) -> dict[str, dict[str, int]]:
        return {}

    def close(self) -> None:
        self.workers = []
