"""The issue's page-utilization targets, measured at a scale that runs in seconds (250k workers).

Same workload as `locality bench layouts`: the seeded `sheet` pattern, 1% of
workers per step, pages written counted by the kernel's write tracker.  The
ratios that hold at this scale are asserted; the ones that do not are strict
xfails carrying the measured reason, so the day a change reaches them the
suite says so.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from locality.layouts import PAGE_SIZE, make_layout
from locality.layouts.base import COLD_BYTES, HOT_BYTES
from locality.layouts.measure import activate, measure
from locality.population.patterns import make_pattern

N = 250_000
SMALL = 100_000  # for the checks that are not the targets
STEPS = 10


def _sheet_steps(n: int = N, steps: int = STEPS, seed: int = 0, **params) -> list[np.ndarray]:
    pattern = make_pattern("sheet", n, seed, p=0.01, **params)
    return [np.asarray(a, dtype=np.int64) for a in itertools.islice(pattern.steps(), steps)]


@pytest.fixture(scope="module")
def results() -> dict:
    steps = _sheet_steps()
    out = {}
    for name in ("objects", "slab", "hot-cold", "clustered", "compacting"):
        layout = make_layout(name, N)
        try:
            out[name] = measure(layout, steps, window=5)
        finally:
            layout.close()
    return out


def test_measurement_is_consistent(results):
    for name, m in results.items():
        assert len(m.steps) == STEPS
        for s in m.steps:
            # at least the pages the useful bytes need, at most one per activation touch
            assert s.pages_written >= -(-s.useful_bytes // PAGE_SIZE), name
            assert s.useful_bytes == s.activations * HOT_BYTES + s.cold_touches * COLD_BYTES
        assert 0 < m.page_utilization <= 1


def test_arena_layouts_write_exactly_their_predicted_pages_per_step():
    steps = _sheet_steps(SMALL, steps=3)
    for name in ("slab", "hot-cold", "clustered"):
        layout = make_layout(name, SMALL)
        try:
            predicted = []
            for step, ids in enumerate(steps):
                exp = layout.expected_written(ids)
                predicted.append(sum(int(v.sum()) for v in exp.values()))
                activate(layout, ids, step)
        finally:
            layout.close()
        layout = make_layout(name, SMALL)
        try:
            m = measure(layout, steps)
        finally:
            layout.close()
        assert [s.pages_written for s in m.steps] == predicted, name


def test_utilization_ranks_as_designed(results):
    u = {k: m.page_utilization for k, m in results.items()}
    assert u["objects"] < u["slab"] < u["hot-cold"] < u["clustered"]


def test_clustered_beats_objects_by_more_than_ten_times(results):
    ratio = results["clustered"].page_utilization / results["objects"].page_utilization
    assert ratio >= 10  # measured 14.5x at 250k, seed 0


def test_best_working_set_is_under_a_tenth_of_objects(results):
    best = min(m.wss_pages_per_step for k, m in results.items() if k != "objects")
    assert best <= results["objects"].wss_pages_per_step / 10


@pytest.mark.xfail(strict=True, reason="sheet radius 3: a burst's 29 workers x 16 B = 464 B, so even one page "
                   "per burst caps utilization near 11%; a burst straddles ~2 Hilbert 16x16 pages and 1-row waves "
                   "cross 16-row pages; measured ~15x")
def test_target_clustered_20x_objects(results):
    assert results["clustered"].page_utilization >= 20 * results["objects"].page_utilization


@pytest.mark.xfail(strict=True, reason="sheet bursts and vertical waves touch one page per grid row in id "
                   "order whatever the record size; measured ~1.5x")
def test_target_hot_cold_2x_slab(results):
    assert results["hot-cold"].page_utilization >= 2 * results["slab"].page_utilization


@pytest.mark.xfail(strict=True, reason="sheet bursts land at new random centres each step: ~16% of a step's "
                   "workers were active in the previous 10 steps, so recency compaction cannot predict them and "
                   "they are written at their Hilbert-ordered home slots as in clustered; measured 5.7% at 250k")
def test_target_compacting_50_percent(results):
    assert results["compacting"].page_utilization >= 0.5


def _utilization(names: tuple[str, ...], steps: list[np.ndarray]) -> dict[str, float]:
    """Page utilization of each layout (at SMALL) over the same steps."""
    util = {}
    for name in names:
        layout = make_layout(name, SMALL)
        try:
            util[name] = measure(layout, steps).page_utilization
        finally:
            layout.close()
    return util


def test_clustering_wins_more_with_larger_bursts():
    steps = _sheet_steps(SMALL, radius=16, waves=0, steps=5)
    util = _utilization(("hot-cold", "clustered"), steps)
    assert util["clustered"] >= 2 * util["hot-cold"]  # measured 2.6x (radius 3 with waves: ~3.8x on fewer pages)


def test_compacting_wins_when_the_active_set_persists():
    pattern = make_pattern("bursty", SMALL, 0, p_on=0.0001, p_off=0.01)
    steps = [np.asarray(a, dtype=np.int64) for a in itertools.islice(pattern.steps(), 12)]
    util = _utilization(("hot-cold", "compacting"), steps)
    assert util["compacting"] >= 4 * util["hot-cold"]


def _measure_persistent(name: str, lifetime: int, **params):
    """SMALL workers, sheet with bursts that stay ``lifetime`` steps at their centre; 10 warm-up + 20 measured steps."""
    steps = _sheet_steps(SMALL, steps=30, lifetime=lifetime, **params)
    layout = make_layout(name, SMALL)
    try:
        return measure(layout, steps, window=10, warmup=10)
    finally:
        layout.close()


def test_compacting_wins_when_sheet_bursts_persist():
    # bursts only (waves=0): with lifetime 16, 94% of a step's workers were active the step before
    util = {(lt, name): _measure_persistent(name, lt, waves=0).page_utilization
            for lt in (1, 16) for name in ("hot-cold", "clustered", "compacting")}
    # measured at 100k, seed 0 (dense ring, issue 14): lifetime 16: compacting 35.8%, clustered 5.8%,
    # hot-cold 2.1%; lifetime 1: compacting 5.7%, clustered 5.8%, hot-cold 2.1%
    assert util[16, "compacting"] >= 5 * util[16, "hot-cold"]
    assert util[16, "compacting"] >= 5 * util[16, "clustered"]
    assert util[16, "compacting"] >= 5 * util[1, "compacting"]
    # nothing persists, so moving gains nothing over the same (Hilbert) home order without moves ...
    assert util[1, "compacting"] < 1.5 * util[1, "clustered"]
    # ... and the home order alone is what beats id order (hot-cold), as clustered does
    assert util[1, "compacting"] >= 2 * util[1, "hot-cold"]


@pytest.mark.xfail(strict=True, reason="recency compaction writes a burst's first step at its home slots: with "
                   "lifetime 16 about 1/16 of the bursts are new each step and a radius-3 disc covers ~1.9 Hilbert "
                   "16x16 home pages plus ~0.45 cold home pages, whatever the order (1M, waves=0: 38.5 home hot + "
                   "9.3 home cold + 38.5 dense + 3.5 due pages/step for 42 useful: ~47% is this design's ceiling "
                   "without predicting where bursts start); travelling waves (waves=2) reach new cells every step, "
                   "at home too; measured at 100k 42.2% (waves=0) and 10.0% (waves=2), at 1M 46.8% and 19.6% "
                   "(bench, before the dense region became a ring appended to in activation order: 35.8% and 8.7% at 100k now, "
                   "its relocation work proportional to the step's activations)")
@pytest.mark.parametrize("waves", [2, 0])
def test_target_compacting_50_percent_with_persistent_bursts(waves):
    assert _measure_persistent("compacting", 16, waves=waves).page_utilization >= 0.5


def test_compacting_reaches_50_percent_when_bursts_live_64_steps():
    # N, not SMALL: at 100k there are 34 bursts, so with lifetime 64 none moves in 20 steps and the figure flatters
    steps = _sheet_steps(N, steps=30, waves=0, lifetime=64)
    layout = make_layout("compacting", N)
    try:
        m = measure(layout, steps, window=10, warmup=10)
    finally:
        layout.close()
    moved = sum(np.setdiff1d(b, a).size for a, b in zip(steps[10:], steps[11:]))
    assert moved > 15 * 29  # bursts did move in the measured steps: one new burst (29 workers) per step, measured 549
    assert m.page_utilization >= 0.5  # measured 67.1% at 250k (ring; 78.4% when the region was rebuilt every step)
    # and the working set is within the target 1.5x of the minimum: measured 1.41x at 250k (1.21x rebuilt every step)
    assert m.wss_pages_per_step <= 1.5 * m.wss_min_pages_per_step
