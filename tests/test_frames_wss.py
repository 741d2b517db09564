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
                   "(`locality compare`, sheet 1%, 1 s windows, four runs at load 0.2-8) its whole-process WSS is "
                   "0.104-0.132x objects; at load 0.2-0.9, 4,958 vs 43,755 pages, by portion: worker state 3,295 "
                   "(0.075x alone, at 64% of its ceiling), native heap 1,138 (numpy/glibc churn of each step), "
                   "runtime heap 283, frames 221; at 100k, where that churn weighs more, 0.23x")
def test_target_best_whole_process_wss_is_a_tenth_of_objects(tmp_path):
    assert wss(tmp_path, "grouped") <= 0.1 * wss(tmp_path, "objects")
