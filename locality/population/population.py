"""A population of mostly idle workers driven by an activation pattern.

``Population(n, scheduler, pattern, seed, layout)``: ``spawn()`` creates the
workers (suspended), ``step()`` wakes the workers the pattern names for the
next step, ``run(steps)`` repeats that and summarises. A woken worker updates
its state through the layout (``layout.update(i, step)``) or, without a
layout, only counts its activations in its own frame.

Layouts with ``group_size`` K > 1 get one coroutine per block of K workers,
woken once per step with the ids of its block (``update_group``).

Frames follow state (``frames_order="layout"``, the default): coroutines are
allocated in the layout's locality order (``Layout.spawn_order``, e.g. the
Hilbert order of ``clustered``), so neighbours' frames share pymalloc pools
and pages as their records do; when a moving layout changes its order
(``order_generation``) every coroutine is re-created in the new order, the
time counted as relocation. ``frames_order="id"`` keeps id order.

Fan-out (``fanout=q``): each activated worker activates one of its four sheet
neighbours in the next step with probability q. The choice is drawn
vectorised from a generator seeded with ``seed``, so runs stay reproducible.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from locality.errors import InvalidArgument, LocalityError
from locality.kernel import PAGE_SIZE
from locality.population.attribution import RangeTable, csr_by_page
from locality.population.patterns import Pattern, make_pattern, sheet_width, unique_in_order
from locality.population.schedulers import SCHEDULERS, Scheduler, object_span

# "layout": coroutines allocated in the layout's locality order (Layout.spawn_order) and
# re-created when a moving layout changes it; "id": in id order, never moved (the reference)
FRAMES_ORDERS = ("layout", "id")
LATENCY_SAMPLE = 100_000
# Python objects and arena slots are at least 8-byte aligned and 8 bytes long,
# so probing every 8th byte of a page finds every owner with bytes on it.
_PROBE_STRIDE = 8


class PatternExhausted(LocalityError, StopIteration):
    """The pattern has no more steps (a replay file ended)."""


@dataclass(frozen=True)
class StepResult:
    step: int
    ids: np.ndarray  # workers woken, in wake order
    latency_ns: np.ndarray  # wake-to-done of the timed activations of this step
    relocation_ns: int = 0  # time the layout spent moving state after the step


@dataclass
class RunStats:
    steps: int
    activations: np.ndarray  # per step
    latency_ns: np.ndarray  # uniform sample (at most LATENCY_SAMPLE) of activation latencies
    elapsed_s: float  # wall time of the whole run, pattern generation included
    resume_s: float  # time spent waking and running workers
    timing_overhead_ns: float  # cost of one clock reading, included in every latency
    latency_every: int
    relocation_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def total_activations(self) -> int:
        return int(self.activations.sum())

    @property
    def activations_per_s(self) -> float:
        return self.total_activations / self.resume_s if self.resume_s > 0 else 0.0

    def latency_percentile(self, q: float) -> float:
        return float(np.percentile(self.latency_ns, q)) if self.latency_ns.size else float("nan")

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "activations": self.total_activations,
            "activations_per_s": self.activations_per_s,
            "latency_p50_ns": self.latency_percentile(50),
            "latency_p99_ns": self.latency_percentile(99),
            "elapsed_s": self.elapsed_s,
            "resume_s": self.resume_s,
            "timing_overhead_ns": self.timing_overhead_ns,
            "latency_every": self.latency_every,
            "relocation_s": self.relocation_s,
        }


def clock_cost_ns(samples: int = 2001) -> float:
    """Median cost of one perf_counter_ns reading, measured now."""
    pc = time.perf_counter_ns
    d = []
    for _ in range(samples):
        a = pc()
        d.append(pc() - a)
    return float(statistics.median(d))


class _Reservoir:
    """Uniform sample of at most ``size`` values from a stream (Algorithm R, vectorised)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seen = size, 0
        self.values = np.empty(size, dtype=np.int64)
        self.rng = np.random.default_rng([seed, 0x1A7E])

    def add(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.int64)
        free = max(0, min(self.size - self.seen, batch.size))
        self.values[self.seen : self.seen + free] = batch[:free]
        rest = batch[free:]
        if rest.size:
            t = np.arange(self.seen + free, self.seen + batch.size)
            j = self.rng.integers(0, t + 1)
            keep = j < self.size
            self.values[j[keep]] = rest[keep]
        self.seen += batch.size

    def sample(self) -> np.ndarray:
        return self.values[: min(self.seen, self.size)].copy()


class Population:
    """n workers as suspended coroutines; see the module docstring."""

    def __init__(
        self,
        n: int,
        scheduler: str = "lean",
        pattern: Pattern | str | None = None,
        seed: int = 0,
        layout: object | None = None,
        *,
        fanout: float = 0.0,
        latency_every: int = 1,
        freeze_gc: bool = True,
        frames_order: str = "layout",
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise InvalidArgument(f"number of workers must be a positive integer, got {n!r}")
        self.n = int(n)
        if scheduler not in SCHEDULERS:
            raise InvalidArgument(f"unknown scheduler {scheduler!r}", f"use one of: {', '.join(SCHEDULERS)}")
        if pattern is None:
            pattern = make_pattern("uniform", self.n, seed=seed)
        elif isinstance(pattern, str):
            pattern = make_pattern(pattern, self.n, seed=seed)
        if not isinstance(pattern, Pattern):
            raise InvalidArgument(f"pattern must be a Pattern or a pattern name, got {type(pattern).__name__}")
        if pattern.n != self.n:
            raise InvalidArgument(f"pattern is for {pattern.n} workers, the population has {self.n}")
        if layout is not None and getattr(layout, "n", self.n) != self.n:
            raise InvalidArgument(f"layout is for {layout.n} workers, the population has {self.n}")
        try:
            fanout = float(fanout)
        except (TypeError, ValueError):
            raise InvalidArgument(f"fanout={fanout!r} is not a number", "give a probability in [0, 1]") from None
        if not 0.0 <= fanout <= 1.0:
            raise InvalidArgument(f"fanout={fanout!r} is out of range", "give a probability in [0, 1]")
        if isinstance(latency_every, bool) or not isinstance(latency_every, int) or latency_every < 0:
            raise InvalidArgument(f"latency_every={latency_every!r}", "give an integer >= 0 (0: no latency timing)")
        if frames_order not in FRAMES_ORDERS:
            raise InvalidArgument(f"frames_order={frames_order!r}", f"use one of: {', '.join(FRAMES_ORDERS)}")
        self.frames_order = frames_order
        self.scheduler_name = scheduler
        self.pattern = pattern
        self.seed = int(seed)
        self.layout = layout
        self.fanout = fanout
        self.latency_every = latency_every
        self.freeze_gc = freeze_gc
        self.group_size = max(1, int(getattr(layout, "group_size", 1) or 1)) if layout is not None else 1
        self.units = int(layout.unit_count()) if self.group_size > 1 else self.n
        self._scheduler: Scheduler | None = None
        self._stream = None
        self._step = 0
        self._pending_fanout = np.empty(0, np.int64)
        self._fan_rng = np.random.default_rng([self.seed, 0xFA9])
        self._blocks: dict[int, np.ndarray] = {}
        self._table: RangeTable | None = None
        self._order_generation = getattr(layout, "order_generation", None)
        self.respawned_units = 0  # coroutines re-created to follow the layout's order
        self.last_resume_ns = 0  # time the scheduler spent in the last step
        self.timing_overhead_ns = clock_cost_ns()

    # -- life cycle -------------------------------------------------------
    def spawn(self) -> None:
        """Create every worker, suspended until its first activation."""
        if self._scheduler is not None:
            raise InvalidArgument("spawn() was already called for this population")
        sched = SCHEDULERS[self.scheduler_name](latency_every=self.latency_every)
        if self.layout is None:
            action = None
        elif self.group_size == 1:
            action = self.layout.update
        else:
            action = self._update_block
        order = self._unit_order()
        was_enabled = gc.isenabled()
        gc.disable()  # a collection during spawn would walk (and write) every new worker
        try:
            sched.spawn(self.units, action, order)
        finally:
            if self.freeze_gc:
                # Frozen objects are never traversed again, so a later collection
                # does not write the idle workers' pages.
                gc.freeze()
            if was_enabled:
                gc.enable()
        self._scheduler = sched
        self._stream = self.pattern.steps()

    def _unit_order(self) -> np.ndarray | None:
        """Units in the layout's locality order (``Layout.spawn_order``): neighbours' coroutines
        are allocated one after the other, so their frames share pools as their state shares
        pages. None (creation in id order) without a layout or when it is id order already."""
        spawn_order = getattr(self.layout, "spawn_order", None)
        if spawn_order is None or self.frames_order == "id":
            return None
        order = np.asarray(spawn_order(), dtype=np.int64)
        if self.group_size > 1:
            order = unique_in_order(self.layout.unit_of(order))
            missing = np.setdiff1d(np.arange(self.units), order)  # units with no worker (holes)
            order = np.concatenate([order, missing])
        if np.array_equal(order, np.arange(self.units)):
            return None
        return order

    def _follow_layout_order(self) -> int:
        """When the layout moved its records to a new order (``order_generation`` changed),
        re-create every coroutine in that order, so frames follow state; returns the ns spent
        (counted as relocation). Workers with no layout keep their frames (their count lives there)."""
        gen = getattr(self.layout, "order_generation", None)
        if gen is None or gen == self._order_generation:
            return 0
        self._order_generation = gen
        if self.frames_order == "id":
            return 0
        t0 = time.perf_counter_ns()
        order = self._unit_order()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._scheduler.respawn(np.arange(self.units) if order is None else order)
            self.respawned_units += self.units
        finally:
            if self.freeze_gc:
                gc.freeze()
            if was_enabled:
                gc.enable()
        self._table = None  # the frames moved: attribution ranges are rebuilt on demand
        return time.perf_counter_ns() - t0

    def _update_block(self, g: int, step: int) -> None:
        self.layout.update_group(g, self._blocks.pop(g), step)

    def close(self) -> None:
        """Stop the workers (the layout belongs to the caller, who closes it)."""
        if self._scheduler is not None:
            self._scheduler.close()
        self._table = None

    def __enter__(self) -> "Population":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driving ----------------------------------------------------------
    def step(self) -> StepResult:
        """Wake the workers of the next step; returns who woke and their latencies."""
        if self._scheduler is None:
            raise InvalidArgument("the population has no workers yet", "call spawn() first")
        try:
            ids = next(self._stream)
        except StopIteration:
            raise PatternExhausted(f"pattern {self.pattern.name!r} has no step {self._step}") from None
        if self._pending_fanout.size:
            ids = unique_in_order(np.concatenate([ids, self._pending_fanout]))
        return self._wake(ids)

    def activate(self, ids: np.ndarray | list[int]) -> StepResult:
        """Wake exactly these workers (distinct ids, in this order) as the next step,
        bypassing the pattern: for tests and interactive use."""
        if self._scheduler is None:
            raise InvalidArgument("the population has no workers yet", "call spawn() first")
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.n):
            raise InvalidArgument(f"worker ids must be in [0, {self.n})")
        if np.unique(ids).size != ids.size:
            raise InvalidArgument("a worker can be woken at most once per step")
        return self._wake(ids)

    def _wake(self, ids: np.ndarray) -> StepResult:
        step = self._step
        units = self._units_of(ids)
        t0 = time.perf_counter_ns()
        latency = self._scheduler.resume(units, step)
        self.last_resume_ns = time.perf_counter_ns() - t0
        relocation_ns = 0
        maintain = getattr(self.layout, "maintain", None)
        if maintain is not None:
            relocation_ns = int(round((maintain(step, ids) or 0.0) * 1e9))
            relocation_ns += self._follow_layout_order()
        if self.fanout > 0:
            self._pending_fanout = self._fan_out(ids)
        self._step += 1
        return StepResult(step, ids, latency, relocation_ns)

    def _units_of(self, ids: np.ndarray) -> list[int]:
        if self.group_size == 1:
            return ids.tolist()
        blocks = self.layout.unit_of(ids)
        order = np.argsort(blocks, kind="stable")
        g_sorted = blocks[order]
        # sorted already: block boundaries are where the block changes (np.unique would sort again),
        # and each block's ids one slice of one array (np.split makes two views a block)
        bounds = np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1
        units = g_sorted[np.concatenate(([0], bounds))].tolist() if g_sorted.size else []
        members = ids[order]
        edges = [0, *bounds.tolist(), ids.size]
        for g, a, b in zip(units, edges, edges[1:]):
            self._blocks[g] = members[a:b]
        return units

    def _fan_out(self, ids: np.ndarray) -> np.ndarray:
        rng = self._fan_rng
        fire = rng.random(ids.size) < self.fanout
        src = ids[fire]
        direction = rng.integers(0, 4, size=src.size)
        w = sheet_width(self.n)
        h = -(-self.n // w)
        x, y = src % w, src // w
        x = (x + np.array([-1, 1, 0, 0])[direction]) % w
        y = (y + np.array([0, 0, -1, 1])[direction]) % h
        dst = y * w + x
        return unique_in_order(dst[dst < self.n])

    def run(self, steps: int, on_step: Callable[[StepResult], None] | None = None) -> RunStats:
        """Run ``steps`` steps (fewer if the pattern ends first) and summarise them."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise InvalidArgument(f"steps={steps!r}", "give an integer >= 0")
        counts: list[int] = []
        reservoir = _Reservoir(LATENCY_SAMPLE, self.seed)
        resume_ns = relocation_ns = 0
        t_start = time.perf_counter_ns()
        pc = time.perf_counter_ns
        for _ in range(steps):
            try:
                r = self.step()
            except PatternExhausted:
                break
            resume_ns += self.last_resume_ns
            relocation_ns += r.relocation_ns
            counts.append(r.ids.size)
            reservoir.add(r.latency_ns)
            if on_step is not None:
                on_step(r)
        elapsed = (pc() - t_start) / 1e9
        return RunStats(
            steps=len(counts),
            activations=np.asarray(counts, dtype=np.int64),
            latency_ns=reservoir.sample(),
            elapsed_s=elapsed,
            resume_s=resume_ns / 1e9,
            timing_overhead_ns=self.timing_overhead_ns,
            latency_every=self.latency_every,
            relocation_s=relocation_ns / 1e9,
        )

    def set_latency_every(self, k: int) -> None:
        """Time every k-th activation from now on (0: none, 1: all)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidArgument(f"latency_every={k!r}", "give an integer >= 0 (0: no latency timing)")
        self.latency_every = k
        if self._scheduler is not None:
            self._scheduler.latency_every = k

    @property
    def steps_done(self) -> int:
        return self._step

    def activations_of(self, i: int) -> int:
        """Activations worker i counted in its own frame (layout=None only)."""
        if self.layout is not None:
            raise InvalidArgument("activation counts live in the layout's state when a layout is set")
        return self._sched().activations(int(i))

    def _sched(self) -> Scheduler:
        if self._scheduler is None:
            raise InvalidArgument("the population has no workers yet", "call spawn() first")
        return self._scheduler

    # -- attribution ------------------------------------------------------
    def worker_ranges(self, i: int) -> list[tuple[int, int]]:
        """Byte ranges [start, end) of the scheduler objects of worker i's coroutine
        (its coroutine with the embedded frame; Task and Event for asyncio)."""
        if not 0 <= i < self.n:
            raise InvalidArgument(f"worker {i} is outside the population [0, {self.n})")
        return [object_span(o) for o in self._sched().unit_objects(self._unit(int(i)))]

    def _unit(self, i: int) -> int:
        return i if self.group_size == 1 else int(self.layout.unit_of(np.array([i]))[0])

    def _ranges(self) -> RangeTable:
        if self._table is None:
            starts, ends, units = self._sched().spans()
            if self.group_size > 1:
                units = _first_member(self.layout.unit_members(units))
            self._table = RangeTable(starts, ends, units)
        return self._table

    def owners(self, addresses: np.ndarray) -> np.ndarray:
        """Worker owning each byte address (-1: none): its coroutine, frame and
        scheduler objects, or its state in the layout. A coroutine shared by a
        block of K workers (group layouts) maps to the block's first worker."""
        addresses = np.asarray(addresses, dtype=np.int64)
        out = self._ranges().owners(addresses)
        if self.layout is not None:
            free = out < 0
            if free.any():
                out[free] = np.asarray(self.layout.owners(addresses[free]), dtype=np.int64)
        return out

    def page_owners(self, page_addrs: np.ndarray, page_size: int = PAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Workers owning bytes on each page, CSR style: the workers of page j are
        ``workers[indptr[j]:indptr[j + 1]]`` (sorted, distinct). A block
        coroutine counts for all K workers of its block."""
        page_addrs = np.asarray(page_addrs, dtype=np.int64)
        if page_addrs.size and np.any(page_addrs % page_size):
            raise InvalidArgument("page addresses must be page-aligned")
        pages, owners = self._ranges().page_pairs(page_size)
        wanted = np.isin(pages, page_addrs)
        pages, owners = pages[wanted], owners[wanted]
        if self.group_size > 1:
            # the table's owner of a block coroutine is its first worker: expand to all its workers
            k = self.group_size
            members = self.layout.unit_members(self.layout.unit_of(np.maximum(owners, 0)))
            pages = np.repeat(pages, k)
            owners = np.where(np.repeat(owners >= 0, k), members.ravel(), -1)
            keep = owners >= 0
            pages, owners = pages[keep], owners[keep]
        parts_p, parts_o = [pages], [owners]
        if self.layout is not None:
            probe = np.arange(0, page_size, _PROBE_STRIDE, dtype=np.int64)
            for chunk in np.array_split(page_addrs, max(1, page_addrs.size // 1024)):
                addrs = (chunk[:, None] + probe[None, :]).ravel()
                who = np.asarray(self.layout.owners(addrs), dtype=np.int64)
                hit = who >= 0
                parts_p.append(np.repeat(chunk, probe.size)[hit])
                parts_o.append(who[hit])
        return csr_by_page(page_addrs, np.concatenate(parts_p), np.concatenate(parts_o))


def _first_member(members: np.ndarray) -> np.ndarray:
    """First worker of each row of unit_members (-1 for a unit with none)."""
    has = members >= 0
    first = np.argmax(has, axis=1)
    return np.where(has.any(axis=1), members[np.arange(members.shape[0]), first], -1)
