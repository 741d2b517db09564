"""Whole-process working set of the best layout against `objects` (issue 14), from real sampled runs."""

from __future__ import annotations

import pytest

from locality.experiment import load_run
from locality.experiment.config import validate
from locality.experiment.runner import run

N = 100_000


def wss(tmp_path, layout: str) -> float:
    cfg = {"workers": N, "layout": layout, "scheduler": "lean", "steps": 24, "step_interval": 0.05, "seed": 1,
           "pattern": {"name": "sheet", "p": 0.01}, "sampling": {"interval": 0.5, "cold_thresholds": [100.0]}}
    r = load_run(run(validate(cfg), tmp_path, run_id=layout, progress=False))
    assert r.status == "complete"
    return r.metrics["wss_pages_mean"]


@pytest.mark.xfail(strict=True, reason="grouped (4,096 tile coroutines, clustered's state) is the best layout: at 1M "
                   "(`locality compare`, sheet 1%, 1 s windows, three runs at load 3-8) its whole-process WSS is "
                   "0.104-0.132x objects (4,295 vs 41,374 pages in the best run), of which worker state alone is "
                   "2,655 pages (0.064x) at 61% of its ceiling; the rest is its block frames (221 pages per 8 steps "
                   "in-process) and the interpreter's per-step heap churn (glibc heap and pymalloc arenas, about "
                   "1,100 pages per 8 steps whatever the layout); at 100k, where that churn weighs more, 0.23x")
def test_target_best_whole_process_wss_is_a_tenth_of_objects(tmp_path):
    assert wss(tmp_path, "grouped") <= 0.1 * wss(tmp_path, "objects")
