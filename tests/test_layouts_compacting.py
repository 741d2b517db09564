"""compacting's ring and promotion (issue 14: relocation work proportional to the step's activations)."""

from __future__ import annotations

import numpy as np

from locality.layouts import make_layout
from locality.layouts.measure import activate


def step(layout, ids, s):
    ids = np.asarray(ids, dtype=np.int64)
    activate(layout, ids, s)
    return layout.maintain(s, ids)


def test_promote_3_admits_at_the_third_activation_in_a_row():
    layout = make_layout("compacting", 10_000, window=2, capacity=100, promote=3)
    try:
        step(layout, [7, 8], 0)
        step(layout, [7], 1)
        assert layout.members.tolist() == []
        step(layout, [7, 8], 2)  # 7: third in a row; 8: two steps apart, outside window 2: a new streak
        assert layout.members.tolist() == [7]
        step(layout, [8], 5)  # more than window steps later: a new streak
        step(layout, [8], 6)
        assert layout.members.tolist() == [7]
        step(layout, [8], 7)
        assert layout.members.tolist() == [7, 8]
    finally:
        layout.close()


def test_auto_admits_on_first_activation_only_while_most_workers_recur():
    layout = make_layout("compacting", 10_000, window=4, capacity=1000)
    try:
        burst = np.arange(100, 140)
        step(layout, burst, 0)  # nothing recurs yet: reuse 0, promote 3
        assert layout.reuse == 0.0 and layout.members.size == 0
        step(layout, np.concatenate([burst, [5000]]), 1)  # 40 of 41 recur: first activations enter too
        assert layout.reuse == 40 / 41
        assert layout.members.tolist() == burst.tolist() + [5000]
        fresh = np.arange(2000, 2100)
        step(layout, np.concatenate([fresh, burst[:10]]), 2)  # 10 of 110 recur: only third-in-a-row enter
        assert layout.members.tolist() == burst.tolist() + [5000]
    finally:
        layout.close()


def test_the_ring_wraps_and_moves_keep_every_record():
    n = 10_000
    layout = make_layout("compacting", n, window=1, capacity=8, promote=1)
    ref = make_layout("hot-cold", n)
    try:
        rng = np.random.default_rng(1)
        for s in range(30):
            ids = rng.choice(n, 5, replace=False)
            step(layout, ids, s)
            activate(ref, ids, s)
            assert layout.members.size <= 8
            assert (layout.slot[layout.members] >= layout.dense_base).all()
        np.testing.assert_array_equal(layout.state(np.arange(n)), ref.state(np.arange(n)))
    finally:
        layout.close()
        ref.close()
