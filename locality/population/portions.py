"""The portions of a population's footprint the process itself can name.

Every page of a run belongs to one portion (PORTIONS). The parent can tell
code, stacks and heaps apart by their VMAs, but only the process knows
which of its objects are the workers' coroutines, which are the scheduler's
tables and where the layout keeps worker state. ``walk`` goes over
those once after spawn -- ``id()`` is an address, sizes come from
``sys.getsizeof`` or from one object of a kind all share -- and returns, per
page, the bytes each portion has on it. ``pymalloc_pools`` finds the
resident pymalloc pools by their headers, so the parent can tell Python's
small-object heap (runtime_heap) from malloc's (native_heap).

The walk reads CPython 3.11 internals through ctypes (a list's ``ob_item``
and ``allocated`` at offsets 24 and 32, a deque's first block at 24, a
pymalloc pool header); other interpreters report what ``id()`` and
``getsizeof`` give and no pools.
"""

from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter, is_not, methodcaller
from typing import Any, Iterable

import numpy as np

from locality.layouts.peek import list_items, words_at

PORTIONS: tuple[str, ...] = (
    "worker_state", "coroutine_frames", "scheduler", "runtime_heap", "native_heap", "code", "stacks", "other",
)
CODE = {name: np.int8(i) for i, name in enumerate(PORTIONS)}

# CPython's small-object allocator (3.10+, 64-bit): 16 KiB pools, a 48-byte
# header, size classes of 16 bytes up to 512.
POOL_SIZE = 16384
POOL_HEADER = 48
POOL_ALIGN = 16
SMALL_MAX = 512  # larger requests go to malloc
POOL_CLASSES = SMALL_MAX // POOL_ALIGN
_CPYTHON = sys.implementation.name == "cpython"
OBJECT_CHUNK = 8192  # workers of the objects layout walked at a time


@dataclass
class Ranges:
    """Bytes per (page, known portion) of the byte ranges added, summed as they
    come: the objects layout has 28M heap blocks at 1M workers, and holding
    them all before summing would grow the measured process by gigabytes."""

    page_size: int
    keys: list[np.ndarray] = field(default_factory=list)  # page number * len(PORTIONS) + portion code
    counts: list[np.ndarray] = field(default_factory=list)

    def add(self, portion: str, starts: Any, lengths: Any) -> None:
        """Byte ranges [start, start + length) of one portion."""
        s = np.atleast_1d(np.asarray(starts, dtype=np.int64))
        ln = np.broadcast_to(np.asarray(lengths, dtype=np.int64), s.shape)
        # A small object owns its whole pymalloc block: the size rounded up to 16.
        if _CPYTHON:
            ln = np.where(ln <= SMALL_MAX, (ln + POOL_ALIGN - 1) & -POOL_ALIGN, ln)
        keep = (s > 0) & (ln > 0)
        if keep.all():
            page, count = _sum_by_page(*_split_by_page(s, ln, self.page_size))
        elif keep.any():
            page, count = _sum_by_page(*_split_by_page(s[keep], ln[keep], self.page_size))
        else:
            return
        self.keys.append(page * len(PORTIONS) + CODE[portion])
        self.counts.append(count)

    def add_objects(self, portion: str, objs: Iterable[object], *, basic: bool = False) -> None:
        """Objects, each contiguous. One getsizeof serves all when a sample of them
        shares type and size (instances walked here do); ``basic``: the fixed
        part only (a deque's blocks are separate heap blocks)."""
        objs = objs if type(objs) is list else list(objs)
        if not objs:
            return
        ids = list_items(objs)
        sample = objs[:: max(1, len(objs) // 64)] + objs[-1:]
        if basic or len({(type(o), sys.getsizeof(o)) for o in sample}) == 1:
            head, size = _span(objs[0], basic)
            self.add(portion, ids - head, size)
        else:
            spans = np.array([_span(o) for o in objs], dtype=np.int64).reshape(-1, 2)
            self.add(portion, ids - spans[:, 0], spans[:, 1])

    def add_list(self, portion: str, lst: list) -> None:
        """A list object and its item array (a separate heap block)."""
        self.add_objects(portion, [lst], basic=True)  # getsizeof(list) counts the item array too
        if _CPYTHON and isinstance(lst, list):
            items, allocated = ctypes.c_void_p.from_address(id(lst) + 24).value, ctypes.c_ssize_t.from_address(id(lst) + 32).value
            if items and allocated > 0:
                self.add(portion, items, 8 * allocated)


def _span(obj: object, basic: bool = False) -> tuple[int, int]:
    """(bytes before id(obj), total bytes): the GC header precedes the object."""
    head = sys.getsizeof(obj) - obj.__sizeof__()
    return head, head + (type(obj).__basicsize__ if basic else obj.__sizeof__())


def population_ranges(pop: Any, layout: Any, page_size: int) -> Ranges:
    """What the process knows of its population: the layout's state, the
    workers' coroutines with their frames, and the scheduler's structures."""
    out = Ranges(page_size)
    _layout_ranges(out, layout)
    sched = getattr(pop, "_scheduler", None)
    if sched is not None:
        _scheduler_ranges(out, sched)
        out.add_objects("scheduler", [sched, sched.clock])
    return out


def _layout_ranges(out: Ranges, layout: Any) -> None:
    if layout is None:
        return
    arenas = getattr(layout, "arenas", None) or {}
    for a in (arenas.values() if isinstance(arenas, dict) else arenas):
        if a is not None and getattr(a, "length", 0) > 0:
            out.add("worker_state", int(a.address), int(a.length))
    object_ranges = getattr(layout, "object_ranges", None)
    if not arenas and object_ranges is not None:
        n = int(getattr(layout, "n", 0))
        for lo in range(0, n, OBJECT_CHUNK):  # small chunks: their temporaries are reused, not kept
            s, ln, _ = object_ranges(np.arange(lo, min(n, lo + OBJECT_CHUNK)), owners=False)
            out.add("worker_state", s, ln)
        workers = getattr(layout, "workers", None)
        if isinstance(workers, list):
            out.add_list("worker_state", workers)  # the layout's index of its records


def _scheduler_ranges(out: Ranges, sched: Any) -> None:
    coros = getattr(sched, "_coros", None)
    if coros is not None:  # lean, lean-await: bare coroutines with embedded frames
        starts, ends, _ = sched.spans()
        out.add("coroutine_frames", starts, ends - starts)
        padding = getattr(sched, "_padding", [])
        out.add_objects("coroutine_frames", padding)
        out.add_list("scheduler", coros)
        out.add_list("scheduler", padding)
        return
    tasks = getattr(sched, "_tasks", None)
    if tasks is None:
        return
    # asyncio: Task -> coroutine (awaiting Event.wait's coroutine) -> Future in
    # the Event's deque of waiters.
    # map/filter over C callables: a million tasks cost a Python call less each than a comprehension
    coros = list(map(methodcaller("get_coro"), tasks))
    out.add_objects("coroutine_frames", coros)
    waits = list(filter(_is_not_none, map(attrgetter("cr_await"), coros)))
    out.add_objects("coroutine_frames", waits)
    out.add_objects("scheduler", tasks)
    events = getattr(sched, "_events", [])
    out.add_objects("scheduler", events)
    futures = list(filter(_is_not_none, map(attrgetter("_fut_waiter"), tasks)))
    out.add_objects("scheduler", futures)
    deques = list(map(attrgetter("_waiters"), events))
    out.add_objects("scheduler", deques, basic=True)
    if _CPYTHON and deques:
        blocks = words_at(list_items(deques) + 24)  # each deque's first block
        out.add("scheduler", blocks, 8 * 64 + 16)  # one 64-slot block per idle deque
    for lst in (tasks, events):
        out.add_list("scheduler", lst)


_is_not_none = partial(is_not, None)


def page_bytes(ranges: Ranges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(page address, portion code, bytes) for every page a known portion has bytes on."""
    if not ranges.keys:
        return np.empty(0, np.uint64), np.empty(0, np.int8), np.empty(0, np.int64)
    key, total = _sum_by_key(np.concatenate(ranges.keys), np.concatenate(ranges.counts))
    return (key // len(PORTIONS) * ranges.page_size).astype(np.uint64), (key % len(PORTIONS)).astype(np.int8), total


def _sum_by_page(page: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bytes per distinct page. Pieces that fall on a span of pages not much wider than their
    number (a chunk of a layout's objects, an arena) are counted in an array over that span;
    scattered ones by hash (_sum_by_key)."""
    lo, hi = int(page.min()), int(page.max())
    if hi - lo < max(4 * page.size, 1 << 16):
        total = np.bincount(page - lo, weights=count, minlength=hi - lo + 1)
        at = np.flatnonzero(total)
        return at + lo, total[at].astype(np.int64)
    return _sum_by_key(page, count)


def _sum_by_key(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd  # the child has it loaded already (locality.experiment)

    # A hash table, not a sort: linear in the number of pieces.
    index, uniq = pd.factorize(keys, sort=False)
    return np.asarray(uniq, dtype=np.int64), np.bincount(index, weights=counts).astype(np.int64)


def _split_by_page(starts: np.ndarray, lengths: np.ndarray, page_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranges cut at page boundaries: (page number, bytes on it) per piece.

    Most ranges are small objects on one page: only those that cross a
    boundary are cut, and only their part after the first page is expanded."""
    ends = starts + lengths
    shift = page_size.bit_length() - 1  # page sizes are powers of two: shifts, not divisions
    first = starts >> shift
    on_first = np.minimum(ends, (first + 1) << shift)
    on_first -= starts
    cross = np.flatnonzero(on_first < lengths)
    if cross.size == 0:
        return first, lengths
    rest = (first[cross] + 1) * page_size
    page, count = _expand_pages(rest, ends[cross], page_size)
    return np.concatenate([first, page]), np.concatenate([on_first, count])


def _expand_pages(starts: np.ndarray, ends: np.ndarray, page_size: int) -> tuple[np.ndarray, np.ndarray]:
    first, last = starts // page_size, (ends - 1) // page_size
    span = last - first + 1
    idx = np.repeat(np.arange(starts.size), span)
    page = first[idx] + (np.arange(idx.size) - np.repeat(np.cumsum(span) - span, span))
    lo = np.maximum(starts[idx], page * page_size)
    hi = np.minimum(ends[idx], (page + 1) * page_size)
    return page, hi - lo


def pymalloc_pools(ranges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Addresses of the resident pymalloc pools in these (start, length) ranges of
    this process, recognised by a consistent pool header; sorted, with their
    block size in a second column ((k, 2) int64)."""
    if not _CPYTHON:
        return np.empty((0, 2), np.int64)
    from locality.kernel import PAGE_SIZE, mincore

    ps = int(PAGE_SIZE)
    found = []
    for start, length in ranges:
        first = -(-start // POOL_SIZE) * POOL_SIZE
        if first + POOL_HEADER > start + length:
            continue
        try:
            resident = mincore(start, length)
        except Exception:  # the range went away since it was listed
            continue
        cand = np.arange(first, start + length - POOL_SIZE + 1, POOL_SIZE, dtype=np.int64)
        cand = cand[resident[(cand - start) // ps]]
        if cand.size == 0:
            continue
        # Only the header words are read: one strided gather over the range.
        words = np.frombuffer((ctypes.c_uint32 * (length // 4)).from_address(start), dtype=np.uint32)
        base = (cand - start) // 4
        count, szidx = words[base], words[base + 9]
        nextoff, maxnext = words[base + 10], words[base + 11]
        size = (szidx.astype(np.int64) + 1) * POOL_ALIGN
        ok = (szidx < POOL_CLASSES) & (maxnext == POOL_SIZE - size) & (nextoff <= maxnext + size) \
            & (nextoff >= POOL_HEADER) & (count <= (POOL_SIZE - POOL_HEADER) // size)
        found.append(np.stack([cand[ok], size[ok]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def walk(pop: Any, layout: Any, anon_ranges: Iterable[tuple[int, int]], page_size: int) -> dict[str, np.ndarray]:
    """Everything the child reports, as arrays for np.savez, plus ``seconds`` (the walk's cost)."""
    t0 = time.perf_counter()
    page, code, count = page_bytes(population_ranges(pop, layout, page_size))
    pools = pymalloc_pools(anon_ranges)
    return {
        "page": page, "portion": code, "bytes": count, "pools": pools,
        "portion_names": np.asarray(PORTIONS, dtype=str), "seconds": np.asarray(time.perf_counter() - t0),
    }
