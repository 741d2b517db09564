"""The verdict from hand-built metrics: each answer's run, figure, ratio and limit."""

from __future__ import annotations

import pytest

from locality.experiment.verdict import best_paging, verdict

T = [1.0, 10.0, 30.0]


def run(layout, bpw, util, p99, saved, amp, pct, res=(0.01, 0.01, 0.01), reclaim="none"):
    return {"layout": layout, "reclaim": reclaim, "bytes_per_worker": bpw, "state_wss_bytes_mean": util * 2**20,
            "latency_p99_us": p99,
            "paging": {"thresholds_s": T, "page_size": 4096,
                       "state": {"pages": 1000, "saved_fraction": saved, "amplification": amp,
                                 "refault_pct_wss_per_min": pct, "refault_pct_resolution": list(res)}}}


METRICS = {
    "objects": run("objects", 1000.0, 30.0, 8.0, [0.97, 0.95, 0.91], [40.0, 40.0, 40.0], [900.0, 500.0, 400.0]),
    "clustered": run("clustered", 330.0, 1.5, 4.0, [0.98, 0.96, 0.93], [2.5, 1.9, 1.5], [600.0, 300.0, 0.1]),
    "slab": run("slab", 320.0, 6.0, 3.0, [0.95, 0.90, 0.85], [5.0, 5.0, 5.0], [500.0, 300.0, 0.05]),
    "waves-clustered": run("clustered", 300.0, 0.5, 1.0, [0.99] * 3, [1.0] * 3, [0.0] * 3),  # adversarial: not a candidate
    "clustered-pageout-idle-10s": {"layout": "clustered", "reclaim": "pageout-idle", "latency_p99_us": 6.0},
}


def test_each_answer_from_the_data():
    answers = {a["question"]: a for a in verdict(METRICS, "objects")}
    w = answers["smallest bytes per worker"]
    assert (w["run"], w["value"], w["ratio"]) == ("slab", 320.0, pytest.approx(0.32))
    d = answers["densest hot set"]
    assert d["run"] == "clustered" and d["value"] == pytest.approx(1.5) and d["ratio"] == pytest.approx(0.05)
    amp = answers["most memory paged out with refaults at most 2× the oracle's"]
    # clustered passes from 10 s on; the shortest passing threshold saves the most
    assert (amp["run"], amp["threshold_s"], amp["value"]) == ("clustered", 10.0, pytest.approx(96.0))
    slo = answers["most memory paged out within a refault budget of 0.2% of WSS per minute"]
    # at 30 s: clustered 0.1 + 0.01 and slab 0.05 + 0.01 both pass; clustered holds out more
    assert (slo["run"], slo["threshold_s"]) == ("clustered", 30.0)
    assert slo["value"] == pytest.approx(93.0) and slo["ratio"] is None  # objects never meets the budget
    lat = answers["smallest latency cost"]
    assert (lat["run"], lat["ratio"]) == ("slab", pytest.approx(3.0 / 8.0))
    cost = answers["latency cost of paging"]
    assert cost["run"] == "clustered-pageout-idle-10s" and cost["ratio_own"] == pytest.approx(1.5)


def test_a_rate_of_zero_over_an_unresolvable_span_does_not_pass_the_budget():
    m = {"slab": run("slab", 320.0, 6.0, 3.0, [0.95, 0.90, 0.85], [5.0] * 3, [500.0, 300.0, 0.0], res=(0.01, 0.01, 0.5))}
    assert best_paging(m, "refault_pct_wss_per_min", 0.2) is None
    (slo,) = [a for a in verdict(m, "slab") if "budget" in a["question"]]
    assert slo["run"] is None and slo["lowest"] == {"run": "slab", "value": 0.5, "threshold_s": 30.0}
