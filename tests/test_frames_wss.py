"""Whole-process working set of the best layout against `objects` (issue 14), from real sampled runs."""

from __future__ import annotations

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


def test_best_whole_process_wss_stays_a_small_share_of_objects(tmp_path):
    # The target (<= 0.1x) is for 1M workers, a benchmark: `locality compare --workers 1000000
    # --layouts objects,grouped --pattern sheet --reclaim none` measured 0.094x at 10 steps/s (4,856 vs
    # 51,857 pages; grouped's native heap 621 pages a window, 1,138 before the child's bookkeeping left
    # the tracked heap and its step lost most temporaries), 0.080x at 20 and 0.111x at 5 steps/s.
    # At 100k the step's fixed churn (pattern, scheduler: ~900 pages a window) weighs 10x more
    # against the state: measured 0.19x here (0.23x before), so this guards that churn.
    assert wss(tmp_path, "grouped") <= 0.25 * wss(tmp_path, "objects")
