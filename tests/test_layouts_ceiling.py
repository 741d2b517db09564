"""The utilization ceiling against cases computed by hand (layouts/ceiling.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from locality.layouts import PAGE_SIZE, make_layout
from locality.layouts.ceiling import Ceiling, ColdTouches, ceiling, coactivation_groups
from locality.layouts.measure import measure
from locality.population.patterns import make_pattern

N = 10_000  # a 100 x 100 sheet
W = 100


def disc(cx: int, cy: int, r: int = 3) -> np.ndarray:
    """The sheet pattern's radius-r burst (wrapping), 29 cells for r = 3."""
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dx * dx + dy * dy <= r * r
    return ((cy + dy[inside]) % W) * W + (cx + dx[inside]) % W


def test_disc_is_29_workers_and_one_group():
    ids, label = coactivation_groups(disc(20, 20), N)
    assert ids.size == 29 and set(label.tolist()) == {0}


def test_groups_wrap_around_the_sheet_edge():
    d = disc(1, 50)  # spills over x = 0 onto x = 98, 99
    assert (d % W).max() == 99
    _, label = coactivation_groups(d, N)
    assert np.unique(label).size == 1


def test_separate_bursts_and_a_row_are_three_groups():
    ids = np.concatenate([disc(20, 20), disc(60, 40), 70 * W + np.arange(W)])
    _, label = coactivation_groups(ids, N)
    assert np.unique(label).size == 3


STEP = np.concatenate([disc(20, 20), disc(60, 40), 70 * W + np.arange(W)])  # 29 + 29 + 100 workers


@pytest.mark.parametrize("packing, pages", [
    ((16, 80), 1 + 1 + 1),       # split: 464 B, 464 B, 1600 B of hot parts -> one page each
    ((96, 0), 1 + 1 + 3),        # whole records: 2784 B, 2784 B, 9600 B -> 1, 1, 3 pages
    ((PAGE_SIZE, 0), 158),       # isolated: a page per worker
])
def test_ceiling_without_cold_touches(packing, pages):
    c = ceiling([[STEP]], N, packing, warm=False)  # counts start at 0: the first activation touches no cold part
    assert c.useful_bytes == 158 * 16
    assert c.pages == pages
    assert c.utilization == pytest.approx(158 * 16 / (pages * PAGE_SIZE))
    assert c.packed_pages == 1  # 2528 B fit one page


def test_radius_3_burst_alone_caps_near_11_percent():
    c = ceiling([[disc(50, 50)]], N, (16, 80), warm=False)
    assert c.utilization == pytest.approx(464 / 4096)  # 11.3%


@pytest.mark.parametrize("packing, pages", [
    ((16, 80), (1 + 1) + (1 + 1) + (1 + 2)),  # + cold parts: 29 x 80 = 2320 B (1 page), 100 x 80 = 8000 B (2 pages)
    ((96, 0), 1 + 1 + 3),                      # the cold part is inside the record
])
def test_ceiling_when_every_activation_touches_its_cold_part(packing, pages):
    # the 64th activation of a worker that starts at count 0 touches its cold part
    c = ceiling([[STEP]], N, packing, warm=False, skip=[STEP] * 63)
    assert c.useful_bytes == 158 * (16 + 80)
    assert c.pages == pages
    assert c.utilization == pytest.approx(158 * 96 / (pages * PAGE_SIZE))


def test_a_window_groups_the_union_of_its_steps_and_counts_each_worker_once():
    a, b = disc(20, 20), disc(21, 20)  # a burst moving one cell: 29 + 29 activations, 36 distinct workers
    c = ceiling([[a, b]], N, (16, 80), warm=False)
    assert c.useful_bytes == 36 * 16
    assert c.pages == 1 and c.groups == 1
    every = Ceiling(packing=(16, 80), once_per_window=False)  # windows of wall-clock time count activations
    touches = ColdTouches(N, warm=False)
    every.add_window([touches.step(ids) for ids in (a, b)], N)
    assert every.useful_bytes == 58 * 16 and every.pages == 1
    per_step = ceiling([[a], [b]], N, (16, 80), warm=False)
    assert per_step.pages == 2 and per_step.windows == 2


def test_ceiling_useful_bytes_equal_the_measured_ones():
    steps = [np.asarray(s) for s in itertools.islice(make_pattern("sheet", 40_000, 3, p=0.01).steps(), 70)]
    layout = make_layout("hot-cold", 40_000, seed=3)
    try:
        m = measure(layout, steps, warmup=5)
    finally:
        layout.close()
    c = ceiling([[s] for s in steps[5:]], 40_000, layout.packing(), seed=3, skip=steps[:5])
    assert c.useful_bytes == int(m.total("useful_bytes"))
    assert c.packed_pages == sum(-(-s.useful_bytes // PAGE_SIZE) for s in m.steps)
    assert int(m.total("cold_touches")) > 0


def _clustered_share_of_ceiling(n: int, **params) -> float:
    steps = [np.asarray(s) for s in itertools.islice(make_pattern("sheet", n, 0, p=0.01, **params).steps(), 20)]
    layout = make_layout("clustered", n)
    try:
        m = measure(layout, steps, warmup=10)
        c = ceiling([[s] for s in steps[10:]], n, layout.packing(), skip=steps[:10])
    finally:
        layout.close()
    return m.page_utilization / c.utilization


def test_clustered_is_a_fair_share_of_its_ceiling_on_bursts():
    # bursts only: a radius-3 disc falls on ~1.5 Hilbert 16 x 16 hot pages where its own page is the bound
    assert _clustered_share_of_ceiling(100_000, waves=0) >= 0.5  # measured 66.8% at 100k, seed 0


@pytest.mark.xfail(strict=True, reason="a static order cannot give both sheet shapes pages of their own: a "
                   "radius-3 burst straddles ~1.5 Hilbert 16x16 hot pages (66.8% of the ceiling with bursts only), "
                   "and a 1-row travelling wave crosses a 16-row Hilbert page every 16 cells (16 x 16 B of a page "
                   "written per page, where the ceiling packs the row into ceil(len x 16 / 4096) pages); measured "
                   "38.9% of the ceiling at 100k (14.7% ceiling, 5.7% clustered), seed 0")
def test_target_clustered_90_percent_of_its_ceiling():
    assert _clustered_share_of_ceiling(100_000) >= 0.9
