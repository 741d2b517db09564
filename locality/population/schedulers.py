"""Schedulers: how idle workers wait and how the activated ones are resumed.

All schedulers share one interface. ``spawn(units, action)`` creates one
suspended worker per unit; ``resume(units, step)`` wakes exactly those units,
in that order, and returns their activation latencies. ``action(u, step)`` is
the worker's work (a layout update); ``action=None`` means an empty state: the
worker only counts its activations in a local of its own frame.

- ``asyncio``: one Task per worker awaiting its own asyncio.Event (the
  reference users know: Task + Event + a Future per wait).
- ``lean``: idle workers are suspended bare coroutines (generator-based,
  ``types.coroutine``) parked at a bare ``yield``; waking one is a single
  ``send(unit)``. No Task, Future or Event per worker, no allocation per
  suspension. Measured fastest of the alternatives (see ``lean-await``).
- ``lean-await``: the same scheduler with ``async def`` workers awaiting ONE
  shared zero-allocation awaitable (``__await__`` returns itself, ``send(v)``
  raises ``StopIteration(v)``; all three are C callables except ``send``).
  Kept as the measured alternative: the StopIteration raised per wake makes
  it slower than ``lean`` (``locality bench population`` prints both).
  Also measured and dropped: a generator ``__await__`` (one generator per
  await: about 400 B per idle worker) and ``__await__ = partial(iter, (None,))``
  (a tuple iterator per await: about 270 B).

Latency is wake-to-done per activation, measured the same way for every
scheduler: the interval between consecutive completions within one step
(workers run one at a time, so that interval is the time the scheduler spent
turning to, waking and running that worker); the first runs from the start
of the step's dispatch. One clock reading per activation. ``latency_every=k`` times
every k-th activation only (0: none) to keep the clock's cost small.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import types
from typing import Callable, ClassVar

import numpy as np

Action = Callable[[int, int], None]


class Clock:
    """The current step, shared by all workers (read on wake, never per worker)."""

    __slots__ = ("step",)

    def __init__(self) -> None:
        self.step = 0


def object_span(obj: object) -> tuple[int, int]:
    """[start, end) of an object's own contiguous bytes, GC header included.

    In CPython the GC header precedes the object (``id``): ``getsizeof`` counts
    it, ``__sizeof__`` does not. A coroutine's frame is embedded (3.11+).
    """
    head = sys.getsizeof(obj) - obj.__sizeof__()
    return id(obj) - head, id(obj) + obj.__sizeof__()


class Scheduler:
    name: ClassVar[str] = "?"

    def __init__(self, latency_every: int = 1) -> None:
        self.clock = Clock()
        self.latency_every = int(latency_every)
        self.units = 0

    def spawn(self, units: int, action: Action | None, order: np.ndarray | None = None) -> None:
        """Create ``units`` suspended workers; ``order`` (a permutation of the units) is the order
        their objects are allocated in, so units adjacent in it share allocator pools and pages."""
        raise NotImplementedError

    def respawn(self, order: np.ndarray) -> int:
        """Re-create the workers of these units, in this order (their objects allocated together);
        returns how many were re-created (0: this scheduler keeps its workers where they are).
        Only for workers that keep no state in their frame."""
        return 0

    def resume(self, units: list[int], step: int) -> np.ndarray:
        raise NotImplementedError

    def unit_objects(self, u: int) -> tuple[object, ...]:
        """The objects the scheduler allocated for unit u (each one contiguous in memory)."""
        raise NotImplementedError

    def activations(self, u: int) -> int:
        """Activations unit u counted in its own frame (only with action=None)."""
        raise NotImplementedError

    def spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, ends, unit) of every object of every unit, as arrays."""
        starts, ends, unit = [], [], []
        for u in range(self.units):
            for o in self.unit_objects(u):
                s, e = object_span(o)
                starts.append(s)
                ends.append(e)
                unit.append(u)
        return np.array(starts, np.int64), np.array(ends, np.int64), np.array(unit, np.int64)

    def close(self) -> None:
        pass


def _permutation(order: np.ndarray, units: int) -> np.ndarray:
    order = np.asarray(order, dtype=np.int64).ravel()
    if order.size != units or np.unique(order).size != units or (units and (order.min() < 0 or order.max() >= units)):
        raise ValueError(f"a spawn order must list each of the {units} units exactly once")
    return order


# -- lean ---------------------------------------------------------------------


@types.coroutine
def _counting_worker():
    count = 0
    while True:
        yield
        count += 1


@types.coroutine
def _acting_worker(action: Action, clock: Clock):
    while True:
        # The unit id arrives with the wake and is not kept in a local: an idle
        # worker holds no per-activation object.
        action((yield), clock.step)


class _SharedWake:
    """One awaitable for every idle worker; no object is created per await.

    ``__await__`` returns the instance itself and ``__next__`` returns None,
    so awaiting it suspends the coroutine; ``send(v)`` ends the await with v.
    Both are C callables (no Python frame); only the StopIteration is allocated.
    """

    __slots__ = ()
    __next__ = itertools.repeat(None).__next__

    def send(self, value: object) -> None:
        raise StopIteration(value)


WAKE = _SharedWake()
_SharedWake.__await__ = itertools.repeat(WAKE).__next__  # type: ignore[attr-defined]


async def _counting_worker_await():
    count = 0
    while True:
        await WAKE
        count += 1


async def _acting_worker_await(action: Action, clock: Clock):
    while True:
        action(await WAKE, clock.step)


# CPython's small-object allocator (3.10+, 64-bit): 16 KiB pools of one size
# class each, the first block 48 bytes into the pool.
POOL_SIZE = 16384
POOL_FIRST_BLOCK = 48


def _fill_to_fresh_pool(make: Callable[[], object], limit: int = 1_000_000) -> list[object]:
    """Allocate never-started twins of a worker until one opens a fresh pool.

    pymalloc serves a size class from partly used pools first. Filling those
    holes before spawn puts the workers in pools of their own, and filling the
    last worker pool after spawn keeps later allocations of the harness off
    the workers' pages; otherwise their writes would be attributed to workers.
    The twins are kept (never freed), so the pools stay full.
    """
    pad: list[object] = []
    for _ in range(limit):
        obj = make()
        pad.append(obj)
        block = id(obj) - (sys.getsizeof(obj) - obj.__sizeof__())
        if block % POOL_SIZE == POOL_FIRST_BLOCK:
            break
    return pad


class LeanScheduler(Scheduler):
    name = "lean"
    _send = staticmethod(types.GeneratorType.send)

    def _make(self, action: Action | None):
        return _counting_worker() if action is None else _acting_worker(action, self.clock)

    def spawn(self, units: int, action: Action | None, order: np.ndarray | None = None) -> None:
        make = self._make
        padding = _fill_to_fresh_pool(lambda: make(action))
        if order is None:
            coros = [make(action) for _ in range(units)]
            created = coros
        else:
            order = _permutation(order, units)
            created = [make(action) for _ in range(units)]  # allocated in locality order
            coros = [None] * units
            for u, c in zip(order.tolist(), created):
                coros[u] = c
        send = self._send
        for c in created:
            send(c, None)  # run to the first suspension
        self._coros = coros
        self._action = action
        self._padding = padding + _fill_to_fresh_pool(lambda: make(action))
        self.units = units

    def respawn(self, order: np.ndarray) -> int:
        """New coroutines for ``order``'s units, allocated back to back in fresh pools, then the
        old ones closed (their pools empty out and go back to the allocator)."""
        if self._action is None:
            raise ValueError("counting workers keep their count in the frame: they cannot be re-created")
        order = np.asarray(order, dtype=np.int64)
        make, action, send, coros = self._make, self._action, self._send, self._coros
        pad = _fill_to_fresh_pool(lambda: make(action))
        created = [make(action) for _ in range(order.size)]
        for c in created:
            send(c, None)
        old = []
        for u, c in zip(order.tolist(), created):
            old.append(coros[u])
            coros[u] = c
        self._padding += pad + _fill_to_fresh_pool(lambda: make(action))
        for c in old:
            c.close()
        return len(created)

    def resume(self, units: list[int], step: int) -> np.ndarray:
        self.clock.step = step
        send, coros, every = self._send, self._coros, self.latency_every
        if every == 0:
            for u in units:
                send(coros[u], u)
            return np.empty(0, np.int64)
        pc = time.perf_counter_ns
        # A list, not array("q"): np.frombuffer of an array wraps it in a memoryview, whose size
        # class is a lean coroutine's, so each step wrote a slot among the workers' frames.
        lat = []
        record = lat.append
        if every == 1:
            # One clock reading per activation: each latency runs from the end of
            # the previous wake (the scheduler turning to this worker) to the end
            # of this one, the same definition as the asyncio scheduler's.
            t0 = pc()
            for u in units:
                send(coros[u], u)
                t1 = pc()
                record(t1 - t0)
                t0 = t1
        else:
            for start in range(0, len(units), every):
                u = units[start]
                t0 = pc()
                send(coros[u], u)
                record(pc() - t0)
                for u in units[start + 1 : start + every]:
                    send(coros[u], u)
        return np.asarray(lat, dtype=np.int64)

    def unit_objects(self, u: int) -> tuple[object, ...]:
        return (self._coros[u],)

    def spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # every worker is the same code object, hence the same size: one id() per worker
        coros = self._coros
        if not coros:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        start, end = object_span(coros[0])
        if any(sys.getsizeof(c) != sys.getsizeof(coros[0]) for c in (coros[-1], coros[len(coros) // 2])):
            return super().spans()
        ids = np.fromiter(map(id, coros), dtype=np.int64, count=len(coros))
        head = id(coros[0]) - start
        return ids - head, ids + (end - id(coros[0])), np.arange(len(coros), dtype=np.int64)

    def activations(self, u: int) -> int:
        c = self._coros[u]
        frame = getattr(c, "gi_frame", None) or getattr(c, "cr_frame", None)
        return int(frame.f_locals["count"])

    def close(self) -> None:
        for c in getattr(self, "_coros", ()):
            c.close()
        for c in getattr(self, "_padding", ()):
            c.close()  # never started: closing marks them done (no "never awaited" warning)
        self._coros = []
        self._padding = []


class LeanAwaitScheduler(LeanScheduler):
    name = "lean-await"
    _send = staticmethod(types.CoroutineType.send)

    def _make(self, action: Action | None):
        return _counting_worker_await() if action is None else _acting_worker_await(action, self.clock)


# -- asyncio ------------------------------------------------------------------


class _StepDone:
    """Counts completions of one step and records when each activation finished."""

    __slots__ = ("left", "future", "marks")

    def __init__(self) -> None:
        self.left = 0
        self.future: asyncio.Future | None = None
        self.marks: list[int] = []

    def done(self) -> None:
        self.marks.append(time.perf_counter_ns())
        self.left -= 1
        if self.left == 0:
            self.future.set_result(None)

    def fail(self, e: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(e)


async def _asyncio_worker(u: int, event: asyncio.Event, action: Action | None, clock: Clock, step_done: _StepDone):
    count = 0
    while True:
        await event.wait()
        event.clear()
        try:
            if action is None:
                count += 1
            else:
                action(u, clock.step)
        except Exception as e:  # a failing worker must not leave the step waiting forever
            step_done.fail(e)
            raise
        step_done.done()


class AsyncioScheduler(Scheduler):
    name = "asyncio"

    def spawn(self, units: int, action: Action | None, order: np.ndarray | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._done = _StepDone()
        create, clock, done = self.loop.create_task, self.clock, self._done
        order = np.arange(units) if order is None else _permutation(order, units)
        events: list = [None] * units
        tasks: list = [None] * units
        for u in order.tolist():  # allocated in locality order
            events[u] = ev = asyncio.Event()
            tasks[u] = create(_asyncio_worker(u, ev, action, clock, done))
        self._events, self._tasks = events, tasks
        self.loop.run_until_complete(asyncio.sleep(0))  # every task runs to its first wait
        self.units = units

    def resume(self, units: list[int], step: int) -> np.ndarray:
        self.clock.step = step
        if not units:
            return np.empty(0, np.int64)
        done = self._done
        done.left, done.marks = len(units), []
        done.future = self.loop.create_future()
        events = self._events
        for u in units:
            events[u].set()
        t0 = time.perf_counter_ns()
        self.loop.run_until_complete(done.future)
        if self.latency_every == 0:
            return np.empty(0, np.int64)
        # the reference scheduler is timed at every completion; subsampled like lean
        return np.diff(np.asarray(done.marks, dtype=np.int64), prepend=t0)[:: self.latency_every]

    def unit_objects(self, u: int) -> tuple[object, ...]:
        task = self._tasks[u]
        return (task.get_coro(), task, self._events[u])

    def activations(self, u: int) -> int:
        return int(self._tasks[u].get_coro().cr_frame.f_locals["count"])

    def close(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is None or loop.is_closed():
            return
        for t in self._tasks:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
        loop.close()
        self._tasks, self._events = [], []


SCHEDULERS: dict[str, type[Scheduler]] = {c.name: c for c in (LeanScheduler, AsyncioScheduler, LeanAwaitScheduler)}
