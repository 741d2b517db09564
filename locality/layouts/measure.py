"""Measure a layout under a sequence of activations: pages written, utilization, working set.

Pages written come from the kernel's write tracker (userfaultfd WP_ASYNC +
PAGEMAP_SCAN), never from the layout's own prediction:

- arena layouts: one WriteTracker per arena, reset before a step's
  activations and read after them;
- ``objects``: trackers over the anonymous VMAs of this process that hold the
  layout's objects, and only pages holding some worker's object (computed
  from the objects before the run, see ``ObjectsLayout.heap_pages``) count.

Relocation (``maintain``) is measured apart: its time, and the pages it
writes (read from the trackers after maintain), so page utilization is the
activations' own and the moving strategies' extra cost stays visible.

Definitions (DESIGN.md "Metrics"):
  page utilization = useful bytes / (pages written x page size), summed over steps;
  WSS of a window   = distinct pages written in the window (activations only);
  minimum WSS       = ceil(distinct useful bytes of the window / page size),
  where distinct useful bytes = 16 x distinct workers activated + 80 x distinct
  workers whose cold part was touched.
This module is below the population layer: it takes the id arrays to activate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from locality.layouts.base import COLD_BYTES, HOT_BYTES, PAGE_SIZE, Layout


@dataclass
class StepRecord:
    step: int
    activations: int
    useful_bytes: int
    pages_written: int
    relocation_pages: int
    update_seconds: float
    relocation_seconds: float
    cold_touches: int


@dataclass
class Measurement:
    layout: str
    workers: int
    steps: list[StepRecord] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)  # (wss pages, minimum pages) per window
    window_steps: int = 10
    tracked_pages: int = 0
    heap_pages: np.ndarray | None = None  # objects: the page set measured (fixed before the run)

    def total(self, name: str) -> float:
        return float(sum(getattr(s, name) for s in self.steps))

    @property
    def page_utilization(self) -> float:
        pages = self.total("pages_written")
        return self.total("useful_bytes") / (pages * PAGE_SIZE) if pages else float("nan")

    @property
    def wss_pages_per_step(self) -> float:
        return self.total("pages_written") / max(1, len(self.steps))

    @property
    def wss_min_pages_per_step(self) -> float:
        return sum(-(-s.useful_bytes // PAGE_SIZE) for s in self.steps) / max(1, len(self.steps))

    @property
    def wss_window_ratio(self) -> float:
        """Mean over windows of WSS / minimum WSS."""
        if not self.windows:
            return float("nan")
        return float(np.mean([w / m for w, m in self.windows if m]))

    @property
    def activations_per_s(self) -> float:
        t = self.total("update_seconds")
        return self.total("activations") / t if t else float("nan")

    @property
    def relocation_ms_per_step(self) -> float:
        return 1e3 * self.total("relocation_seconds") / max(1, len(self.steps))

    @property
    def relocation_pct(self) -> float:
        """Relocation time as % of the run's (update + relocation) time."""
        t = self.total("update_seconds") + self.total("relocation_seconds")
        return 100.0 * self.total("relocation_seconds") / t if t else 0.0


class PageMeter:
    """Written-page counter over the memory a layout's state occupies."""

    def __init__(self, layout: Layout) -> None:
        from locality.kernel import WriteTracker, vmas

        self.layout = layout
        self._trackers = []
        self._filters: list[np.ndarray | None] = []
        self.heap_pages: np.ndarray | None = None
        if layout.arenas:
            for a in layout.arenas.values():
                self._trackers.append(WriteTracker(a.address, a.length))
                self._filters.append(None)
        else:
            pages = self.heap_pages = layout.heap_pages()  # type: ignore[attr-defined]
            for v in vmas(os.getpid()):
                if not v.is_anonymous or "w" not in v.perms:
                    continue
                lo = np.searchsorted(pages, v.start)
                hi = np.searchsorted(pages, v.end)
                if hi == lo:
                    continue
                keep = np.zeros((v.end - v.start) // PAGE_SIZE, dtype=bool)
                keep[(pages[lo:hi] - v.start) // PAGE_SIZE] = True
                self._trackers.append(WriteTracker(v.start, v.end - v.start))
                self._filters.append(keep)
        self.tracked_pages = sum(t.n_pages for t in self._trackers)
        self._window: list[np.ndarray] | None = None

    def reset(self) -> None:
        for t in self._trackers:
            t.reset()

    def written(self, reset: bool = True) -> list[np.ndarray]:
        out = []
        for t, keep in zip(self._trackers, self._filters):
            w = t.written_and_reset() if reset else t.written()
            out.append(w if keep is None else w & keep)
        return out

    def close(self) -> None:
        for t in self._trackers:
            t.close()
        self._trackers = []


def activate(layout: Layout, ids: np.ndarray, step: int) -> None:
    """One step's activations, the way the population drives a layout."""
    k = layout.group_size
    if k > 1:
        blocks = layout.unit_of(ids)
        order = np.argsort(blocks, kind="stable")
        ids, blocks = ids[order], blocks[order]
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        for part in np.split(ids, cuts):
            layout.update_group(int(part[0] // k), part, step)
    else:
        update = layout.update
        for i in ids.tolist():
            update(i, step)


def measure(
    layout: Layout,
    steps: Iterable[np.ndarray],
    *,
    window: int = 10,
    step_fn=None,
    n_steps: int | None = None,
    maintain=None,
    warmup: int = 0,
    progress=None,
) -> Measurement:
    """Run ``steps`` (id arrays) through ``layout``, measuring every step.

    ``step_fn(step) -> ids`` replaces the direct driver when a population
    drives the layout (it must run the activations of one step and return
    their ids; ``steps`` is then only used for its length unless ``n_steps``
    is given); otherwise ``activate`` is used.  ``maintain`` replaces
    ``layout.maintain`` (a driver that already calls it inside its step is
    given a no-op there, and the real one here, so relocation pages are
    counted apart from activation pages).  The first ``warmup`` steps run
    the same way but are left out of the records (moving and learning
    layouts need them to reach their steady state).
    """
    meter = PageMeter(layout)
    m = Measurement(layout.name, layout.n, window_steps=window, tracked_pages=meter.tracked_pages,
                    heap_pages=meter.heap_pages)
    maintain = layout.maintain if maintain is None else maintain
    win_pages: list[np.ndarray] | None = None
    win_cold_ids: list[np.ndarray] = []
    win_ids: list[np.ndarray] = []
    try:
        meter.reset()
        it: Iterator = iter(steps)
        if step_fn is not None and n_steps is None:
            n_steps = len(steps)  # type: ignore[arg-type]
        step = 0
        while n_steps is None or step < n_steps:
            if step_fn is None:
                try:
                    ids = np.asarray(next(it), dtype=np.int64)
                except StopIteration:
                    break
                t0 = time.perf_counter()
                activate(layout, ids, step)
                t_upd = time.perf_counter() - t0
            else:
                try:
                    t0 = time.perf_counter()
                    ids = np.asarray(step_fn(step), dtype=np.int64)
                    t_upd = time.perf_counter() - t0
                except StopIteration:
                    break
            written = meter.written()
            ids_u = np.unique(ids)
            cold = layout.cold_touched(ids_u, step)
            useful = int(ids_u.size * HOT_BYTES + int(cold.sum()) * COLD_BYTES)
            t_rel = maintain(step, ids)
            reloc_pages = sum(int(w.sum()) for w in meter.written()) if layout.moves else 0
            step += 1
            if progress is not None:
                progress(1)
            if step <= warmup:
                continue
            m.steps.append(StepRecord(step - 1, int(ids_u.size), useful, sum(int(w.sum()) for w in written),
                                      reloc_pages, t_upd, t_rel, int(cold.sum())))
            win_pages = written if win_pages is None else [a | b for a, b in zip(win_pages, written)]
            win_ids.append(ids_u)
            win_cold_ids.append(ids_u[cold])
            if len(m.steps) % window == 0:
                distinct = np.unique(np.concatenate(win_ids)).size * HOT_BYTES
                distinct += np.unique(np.concatenate(win_cold_ids)).size * COLD_BYTES
                m.windows.append((sum(int(w.sum()) for w in win_pages), -(-distinct // PAGE_SIZE)))
                win_pages, win_ids, win_cold_ids = None, [], []
    finally:
        meter.close()
    return m
