"""The paging curve from a written-page trace, against a hand-built trace with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from locality.experiment import paging

T6 = np.arange(6, dtype=np.float64)  # samples at 0..5 s


def packed(rows: list[list[int]]) -> np.ndarray:
    return np.packbits(np.array(rows, dtype=bool), axis=1)


# Pages A, B, C. A is written in windows 1 and 2, B only in window 4, C never.
WRITTEN = [[1, 1, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]]
ALL = [[1, 1, 1]] * 6
NONE = [[0, 0, 0]] * 6


def _curve(T: float) -> dict:
    W, L = paging.transition_counts(iter(np.array(WRITTEN, dtype=bool)), 6, np.ones(3, bool))
    return paging.curve(T6, W, L, np.array([T]), total=3.0)


def test_held_out_and_refaults_at_2s():
    c = _curve(2.0)
    # from t = 2 s on, two of the three pages are idle >= 2 s at every sample (B and C, then A and C)
    assert c["held"][0] == 2.0 and c["saved_fraction"][0] == pytest.approx(2 / 3)
    # B, written in window 4 after 3 s idle (t[3] - t[0]), is the one refault; A is never idle >= 2 s when written
    assert c["refaults"][0] == 1.0
    assert c["refaults_per_min"][0] == pytest.approx(1 / (3 / 60))  # over the 3 s after T


def test_longer_threshold_than_any_gap_has_no_refaults():
    c = _curve(4.0)
    assert c["held"][0] == 1.0  # only C from t = 4 s on
    assert c["refaults"][0] == 0.0


def test_first_touch_of_an_unpopulated_page_is_not_a_refault():
    pop = [[1, 0, 1]] * 4 + [[1, 1, 1]] * 2  # B populated only from sample 4 (its first write)
    W, L = paging.transition_counts(iter(np.array(WRITTEN, bool)), 6, np.ones(3, bool), iter(np.array(pop, bool)))
    assert paging.curve(T6, W, L, np.array([2.0]), total=3.0)["refaults"][0] == 0.0


def test_oracle_and_idle_profile_from_the_pattern_ids():
    steps = [np.array([0]), np.array([0]), np.array([], np.int64), np.array([1]), np.array([], np.int64)]
    step_col = np.arange(6)  # one step per window: step s lands in window s + 1
    windows = paging.step_windows(step_col, 5)
    assert windows.tolist() == [1, 2, 3, 4, 5]
    times = paging.step_times(T6, step_col, 5)
    assert times.tolist() == [1, 2, 3, 4, 5]
    tr = paging.worker_trace(iter(steps), 3, windows, times, 6, paging.GAP_EDGES)
    # worker 1 is woken in window 4 after idling since the start: the oracle's only refault at T = 2 s
    assert paging.oracle_refault_pages(T6, tr["W"], np.array([2.0, 4.0]), 96, 4096).tolist() == [1.0, 0.0]
    assert tr["min_gap"].tolist() == [1.0, np.inf, np.inf]
    prof = paging.idle_profile(tr["min_gap"], 5.0, tr["gap_hist"], paging.GAP_EDGES, (1.0, 2.0, 10.0))
    assert prof["share_idle_at_least"] == {"1": 1.0, "2": pytest.approx(2 / 3), "10": None}
    assert sum(prof["gap_histogram"]["counts"]) == 1  # one gap: worker 0, 1 s


def test_compute_gives_amplification_against_the_oracle():
    steps = [np.array([0]), np.array([0]), np.array([], np.int64), np.array([1]), np.array([], np.int64)]
    out = paging.compute(t=T6, step_col=np.arange(6), written_packed=packed(WRITTEN), n_pages=3,
                         state=np.ones(3, bool), populated_packed=(packed(ALL), packed(NONE)), steps=iter(steps),
                         n_steps=5, workers=3, record_bytes=96, page_size=4096, exact_thresholds=[2.0])
    p = out["paging"]
    assert 2.0 in p["thresholds_s"]
    i = p["thresholds_s"].index(2.0)
    assert p["state"]["refault_pages"][i] == 1.0 and p["oracle"]["refault_pages"][i] == 1.0
    assert p["state"]["amplification"][i] == 1.0
    assert p["state"]["saved_fraction"][i] == pytest.approx(2 / 3)
    assert p["state"]["wss_pages_mean"] == pytest.approx(3 / 5)  # 1 + 1 + 0 + 1 + 0 pages over 5 windows


def test_measured_refaults_split_written_and_read_only():
    # A real page-out at 2 s: B and C go out after sample 2; B comes back written in window 4,
    # C comes back in window 5 without a write (a read); A goes out after sample 4.
    present = [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 1, 1]]
    swapped = [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]]
    m = paging.measured_refaults(T6, packed(WRITTEN), packed(present), packed(swapped), 3, 2.0)
    assert (m["refaulted_written"], m["refaulted_readonly"]) == (1, 1)
