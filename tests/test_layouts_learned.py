"""clustered-learned never loses to the static clustered on the sheet it learns from (issue 14)."""

from __future__ import annotations

import itertools

import numpy as np

from locality.layouts import make_layout
from locality.layouts.clustered import hilbert_slots
from locality.layouts.measure import measure
from locality.population.patterns import make_pattern

N = 40_000


def sheet(steps: int, **params) -> list[np.ndarray]:
    pattern = make_pattern("sheet", N, 0, p=0.01, **params)
    return [np.asarray(a, dtype=np.int64) for a in itertools.islice(pattern.steps(), steps)]


def run(name: str, steps: list[np.ndarray], **kw):
    layout = make_layout(name, N, **kw)
    try:
        m = measure(layout, steps, warmup=20)
        return m, layout, layout.state(np.arange(N)).copy()
    finally:
        layout.close()


def test_on_the_travelling_sheet_it_keeps_clustered_order_and_writes_exactly_its_pages():
    steps = sheet(50)
    m_c, _, state_c = run("clustered", steps)
    m_l, learned, state_l = run("clustered-learned", steps)
    # the order learned from the first 10 steps did not write >= 10% fewer pages on both next windows
    # of 10 (measured at 40k, seed 0: 202 vs 237 pages, then 268 vs 255)
    assert learned.adopted is False
    assert len(learned.validation_pages) == 2
    assert any(candidate > 0.9 * prior for prior, candidate in learned.validation_pages)
    assert learned.hot_order.tolist() == hilbert_slots(N).tolist()
    assert [s.pages_written for s in m_l.steps] == [s.pages_written for s in m_c.steps]
    assert m_l.page_utilization == m_c.page_utilization
    np.testing.assert_array_equal(state_l, state_c)


def test_with_persistent_bursts_it_adopts_the_learned_order_and_beats_clustered():
    steps = sheet(50, waves=0, lifetime=64)
    m_c, _, state_c = run("clustered", steps)
    m_l, learned, state_l = run("clustered-learned", steps)
    assert learned.adopted is True
    assert all(candidate <= 0.9 * prior for prior, candidate in learned.validation_pages)
    # measured 7.4% vs 5.7% at 40k, seed 0 (27.0% vs 5.5% before the sheet spread its bursts' moves evenly
    # over the lifetime: with 10 bursts and lifetime 64 they all used to move within 10 steps, then hold)
    assert m_l.page_utilization > 1.2 * m_c.page_utilization
    np.testing.assert_array_equal(state_l, state_c)  # moving records changed no worker's state


def test_a_stale_learned_order_is_replaced_by_the_prior_once():
    # bursts live 64 steps, then move on: the order packing them goes stale
    steps = sheet(80, waves=0, lifetime=64)
    m_c, _, state_c = run("clustered", steps)
    m_l, learned, state_l = run("clustered-learned", steps)
    assert learned.adopted is True and learned.reverted is True
    prior, adopted = learned.watch_history[-1]
    assert prior < adopted
    assert all(p >= a for p, a in learned.watch_history[:-1])
    assert learned.hot_order.tolist() == hilbert_slots(N).tolist()
    assert learned.order_generation == 2
    np.testing.assert_array_equal(state_l, state_c)
    assert m_l.page_utilization > m_c.page_utilization  # measured 9.6% vs 5.7% at 40k, seed 0
