"""A run's page-utilization ceiling, against a window whose groups are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from locality.experiment import load_run
from locality.experiment.config import validate
from locality.experiment.runner import run

N, W = 10_000, 100  # a 100 x 100 sheet


def disc(cx: int, cy: int, r: int = 3) -> np.ndarray:
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dx * dx + dy * dy <= r * r
    return ((cy + dy[inside]) % W) * W + (cx + dx[inside]) % W


def test_run_reports_the_ceiling_of_its_window_and_the_state_share_of_it(tmp_path):
    # three groups in one window: two bursts (29 workers each) and a full row (100 workers),
    # the second burst activated twice (its useful bytes count twice, its pages once)
    steps = [disc(20, 20), disc(60, 40), 70 * W + np.arange(W), disc(60, 40)]
    replay = tmp_path / "replay.csv"
    replay.write_text("".join(f"{k},{i}\n" for k, ids in enumerate(steps) for i in ids))
    seed = 4
    cfg = {"workers": N, "layout": "hot-cold", "scheduler": "lean", "steps": len(steps), "step_interval": 0.0,
           "seed": seed, "pattern": {"name": "replay", "path": str(replay)},
           "sampling": {"interval": 600.0, "cold_thresholds": [1000.0]}}
    r = load_run(run(validate(cfg), tmp_path / "runs", run_id="c", progress=False))
    assert r.status == "complete" and len(r.timeline) == 2  # one window holding every step

    from locality.layouts import make_layout

    ref = make_layout("hot-cold", N, seed=seed)
    useful, cold = 0, set()
    for k, ids in enumerate(steps):
        touched = ids[ref.cold_touched(ids, k)]
        useful += ids.size * 16 + touched.size * 80
        cold |= set(touched.tolist())
        for i in ids:
            ref.update(int(i), k)
    ref.close()
    groups = [set(disc(20, 20).tolist()), set(disc(60, 40).tolist()), set((70 * W + np.arange(W)).tolist())]
    pages = sum(-(-len(g) * 16 // 4096) + -(-len(g & cold) * 80 // 4096) for g in groups)
    assert len(cold) == 2 and pages == 3 + 2  # seed 4: one cold touch in the row, one in the second burst
    m = r.metrics
    assert m["ceiling_useful_bytes"] == m["useful_bytes"] == useful
    assert m["ceiling_packing"] == [16, 80]
    assert m["page_utilization_ceiling"] == pytest.approx(m["useful_bytes"] / (pages * 4096))
    assert m["state_utilization_of_ceiling"] == pytest.approx(m["state_page_utilization"] / m["page_utilization_ceiling"])
    distinct = 158 * 16 + 80 * len(cold)
    assert m["page_utilization_packed"] == pytest.approx(m["useful_bytes"] / (-(-distinct // 4096) * 4096))


def test_window_useful_bytes_count_each_worker_once_per_window_and_reset_clears_the_marks():
    from locality.experiment.child import WindowUseful
    from locality.layouts import make_layout
    from locality.layouts.base import COLD_BYTES, HOT_BYTES

    n = 5_000
    layout = make_layout("hot-cold", n)
    try:
        wu = WindowUseful(n, layout)
        rng = np.random.default_rng(0)
        for window in range(3):
            hot: set[int] = set()
            cold: set[int] = set()
            for step in range(64 * window, 64 * window + 64):  # every worker's cold part falls due in 64 steps
                ids = rng.choice(n, size=300, replace=False)
                due = set(ids[layout.cold_touched(ids, step)].tolist())
                expected = len(set(ids.tolist()) - hot) * HOT_BYTES + len(due - cold) * COLD_BYTES
                assert wu.add(ids, step) == expected
                hot |= set(ids.tolist())
                cold |= due
            marked = {int(w) for w in np.flatnonzero(wu.hot)}
            assert marked == {i >> 6 for i in hot} and len(cold) > 0
            wu.reset()
            assert not wu.hot.any() and not wu.cold.any()
    finally:
        layout.close()
