"""The paging curve of one run, from its exact written-page trace (DESIGN.md "Paging").

A run stores which pages were written in each sample window (pages.npz) and
the times of the samples. That is enough to replay, for every idle threshold
T at once, what the ``pageout-idle T`` policy would have done (it acts right
after each sample, exactly as policies.PageoutIdle does):

- after sample k it holds out every page whose last write is at least T old:
  ``t[k] - t[last write window] >= T`` (pages not written since tracking
  began count from t[0], when spawning had written them all);
- a page written in window k (between samples k-1 and k) is brought back
  (a refault) iff it was held out after sample k-1, i.e.
  ``t[k-1] - t[last write before k] >= T``.

Everything reduces to two small matrices over sample pairs (k, j): how many
pages written in window k had last been written in window j, and how many
pages' last write as of sample k was in window j. One pass over the trace
builds them; each threshold is then a masked sum.

The oracle is the same replay over workers instead of pages: the pattern's
ids per step (replayed from the seed) give, per window, the workers woken
after at least T idle; their state records packed perfectly into pages are
the fewest pages any layout could bring back. A layout's refaults divided
by the oracle's is its refault amplification.

Write tracking does not see reads, so the simulated refaults are a lower
bound; ``readonly_refaults`` counts, in a run that really paged out, the
pages that came back from swap without being written (what the bound misses).

Conventions (so a simulated point and a measured run compare): memory saved
at T is the mean over samples taken at least T after the start; the refault
rate is refaults per minute over the part of the run after T, as % of the
mean working set (pages written per window).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

import numpy as np

IDLE_PROFILE_S = (1.0, 10.0, 60.0, 600.0)
REFAULT_BUDGET_PCT_PER_MIN = 0.2  # far-memory SLO: promotions held to 0.2% of the working set per minute
CURVE_POINTS = 24


def _unpack_row(packed: np.ndarray, k: int, n_pages: int) -> np.ndarray:
    return np.unpackbits(packed[k], count=n_pages).astype(bool)


def transition_counts(rows: Iterable[np.ndarray], n_samples: int, mask: np.ndarray,
                      populated: Iterable[np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, L): W[k, j] = pages of ``mask`` written in window k whose previous write was in window j;
    L[k, j] = pages of ``mask`` whose last write as of sample k was in window j.

    ``rows`` yields the written bool row of each sample (row 0 is the window
    before tracking began and only sets the start). ``populated`` (optional)
    yields, per sample, the pages present or swapped then: a write to a page
    that was not populated in the previous sample is a first touch (a zero
    fill), not a page coming back, and is left out of W.
    """
    mask = np.asarray(mask, dtype=bool)
    last = np.zeros(mask.size, dtype=np.int32)
    W = np.zeros((n_samples, n_samples), dtype=np.int64)
    L = np.zeros((n_samples, n_samples), dtype=np.int64)
    L[0, 0] = int(mask.sum())
    pops: Iterator[np.ndarray | None] = iter(populated) if populated is not None else iter(())
    prev_pop = next(pops, None)
    for k, row in enumerate(rows):
        if k == 0:
            continue
        written = np.asarray(row, dtype=bool) & mask
        events = written if prev_pop is None else written & prev_pop
        W[k] = np.bincount(last[events], minlength=n_samples)[:n_samples]
        last[written] = k
        L[k] = np.bincount(last[mask], minlength=n_samples)[:n_samples]
        prev_pop = next(pops, None)
    return W, L


def curve(t: np.ndarray, W: np.ndarray, L: np.ndarray, thresholds: np.ndarray, *, total: float,
          unit: float = 1.0) -> dict[str, np.ndarray]:
    """Per threshold: mean units held out (samples >= T after start), units brought back, refaults per minute.

    ``unit`` scales counts (a page count stays 1; a worker count becomes state bytes).
    ``total`` is the memory the fraction is taken of (same unit).
    """
    t = np.asarray(t, dtype=np.float64)
    S = t.size
    age = t[:, None] - t[None, :]  # age[k, j] = time since window j's writes, at sample k
    gap = np.full((S, S), -np.inf)
    gap[1:] = t[:-1, None] - t[None, :]  # gap[k, j]: idle at sample k-1 of a page last written in j
    held, saved, back, per_min = [], [], [], []
    end = t[-1] - t[0]
    for T in thresholds:
        rows = (t - t[0]) >= T
        h = (L * (age >= T)).sum(axis=1)[rows] * unit if rows.any() else np.empty(0)
        held.append(float(h.mean()) if h.size else math.nan)
        saved.append(held[-1] / total if total else math.nan)
        b = float((W * (gap >= T)).sum()) * unit
        back.append(b)
        span = end - T
        per_min.append(b / (span / 60.0) if span > 0 else math.nan)
    return {"held": np.asarray(held), "saved_fraction": np.asarray(saved), "refaults": np.asarray(back),
            "refaults_per_min": np.asarray(per_min)}


def oracle_refault_pages(t: np.ndarray, Wo: np.ndarray, thresholds: np.ndarray, record_bytes: int, page_size: int) -> np.ndarray:
    """Per threshold: workers woken after >= T idle, their records packed perfectly, summed per window."""
    t = np.asarray(t, dtype=np.float64)
    S = t.size
    gap = np.full((S, S), -np.inf)
    gap[1:] = t[:-1, None] - t[None, :]
    out = []
    for T in thresholds:
        workers = (Wo * (gap >= T)).sum(axis=1)
        out.append(float(np.ceil(workers * record_bytes / page_size).sum()))
    return np.asarray(out)


def step_windows(step_col: np.ndarray, n_steps: int) -> np.ndarray:
    """Window index of each step: the first sample whose reported step count exceeds it."""
    done = np.maximum.accumulate(np.asarray(step_col, dtype=np.int64))
    return np.minimum(np.searchsorted(done, np.arange(n_steps), side="right"), done.size - 1).astype(np.int64)


def step_times(t: np.ndarray, step_col: np.ndarray, n_steps: int) -> np.ndarray:
    """Time of each step (s since start), interpolated from the samples' step counts."""
    done = np.maximum.accumulate(np.asarray(step_col, dtype=np.float64))
    if done.size < 2 or done[-1] <= done[0]:
        return np.zeros(n_steps)
    keep = np.concatenate(([True], np.diff(done) > 0))
    return np.interp(np.arange(1, n_steps + 1, dtype=np.float64), done[keep], np.asarray(t, dtype=np.float64)[keep])


def worker_trace(steps: Iterable[np.ndarray], n: int, windows: np.ndarray, times: np.ndarray, n_samples: int,
                 gap_edges: np.ndarray) -> dict[str, Any]:
    """One pass over the pattern's ids: the oracle's transition counts and the idle profile.

    Returns ``W`` (workers woken in window k, last woken in window j; all start
    at window 0), ``min_gap`` per worker (inf: woken fewer than twice) and a
    histogram of all gaps between consecutive activations over ``gap_edges``.
    """
    last_w = np.zeros(n, dtype=np.int32)
    last_t = np.full(n, np.nan)
    min_gap = np.full(n, np.inf)
    hist = np.zeros(gap_edges.size - 1, dtype=np.int64)
    W = np.zeros((n_samples, n_samples), dtype=np.int64)
    pending: list[np.ndarray] = []
    current = 0 if windows.size == 0 else int(windows[0])

    def flush(k: int) -> None:
        if not pending or k == 0:
            pending.clear()
            return
        ids = np.unique(np.concatenate(pending))
        W[k] = np.bincount(last_w[ids], minlength=n_samples)[:n_samples]
        last_w[ids] = k
        pending.clear()

    for s, ids in enumerate(steps):
        if s >= windows.size:
            break
        k = int(windows[s])
        if k != current:
            flush(current)
            current = k
        pending.append(ids)
        g = times[s] - last_t[ids]
        seen = ~np.isnan(g)
        if seen.any():
            np.minimum.at(min_gap, ids[seen], g[seen])
            hist += np.histogram(g[seen], bins=gap_edges)[0]
        last_t[ids] = times[s]
    flush(current)
    return {"W": W, "min_gap": min_gap, "gap_hist": hist}


def idle_profile(min_gap: np.ndarray, run_s: float, gap_hist: np.ndarray, gap_edges: np.ndarray,
                 thresholds: Iterable[float] = IDLE_PROFILE_S) -> dict[str, Any]:
    """Share of workers never woken twice within T (None where the run is shorter than T)."""
    n = max(1, min_gap.size)
    share = {f"{T:g}": (float(np.count_nonzero(min_gap >= T)) / n if T <= run_s + 1e-9 else None) for T in thresholds}
    return {
        "share_idle_at_least": share,
        "run_seconds": float(run_s),
        "workers_woken_twice_or_more": int(np.count_nonzero(np.isfinite(min_gap))),
        "workers": int(min_gap.size),
        "gap_histogram": {"edges_s": [float(e) for e in gap_edges], "counts": [int(c) for c in gap_hist]},
        "definition": "a worker is idle >= T when no two of its activations are closer than T "
                      "(workers woken at most once count as idle for every T up to the run length)",
    }


def threshold_grid(run_s: float, extra: Iterable[float] = (), points: int = CURVE_POINTS) -> np.ndarray:
    """1 s up to the run length, log-spaced, plus the thresholds a run asked for."""
    top = max(1.0, float(run_s))
    grid = np.geomspace(1.0, top, points) if top > 1.0 else np.array([1.0])
    return np.unique(np.round(np.concatenate([grid, [x for x in extra if 0 < x <= top]]), 3))


GAP_EDGES = np.concatenate(([0.0], np.geomspace(0.05, 3600.0, 25)))


def compute(*, t: np.ndarray, step_col: np.ndarray, written_packed: np.ndarray, n_pages: int,
            state: np.ndarray | None, populated_packed: tuple[np.ndarray, np.ndarray] | None,
            steps: Iterable[np.ndarray], n_steps: int, workers: int, record_bytes: int, page_size: int,
            extra_thresholds: Iterable[float] = (), exact_thresholds: Iterable[float] = ()) -> dict[str, Any]:
    """The run's idle profile and paging curves (worker state, whole process, oracle); JSON-ready."""
    t = np.asarray(t, dtype=np.float64)
    S = t.size
    run_s = float(t[-1] - t[0]) if S else 0.0
    windows = step_windows(step_col, n_steps)
    times = step_times(t, step_col, n_steps)
    trace = worker_trace(steps, workers, windows, times, S, GAP_EDGES)
    profile_T = sorted({*IDLE_PROFILE_S, *[float(x) for x in extra_thresholds]})
    out: dict[str, Any] = {"idle_profile": idle_profile(trace["min_gap"], run_s, trace["gap_hist"], GAP_EDGES, profile_T)}
    if S < 3:
        out["paging"] = None
        return out
    # The last two sample intervals are left out: a refault rate over one window is noise.
    grid = threshold_grid(run_s - 2 * float(np.median(np.diff(t))), extra_thresholds)
    exact = [x for x in exact_thresholds if 0 < x < run_s]  # a real page-out's own T is always on the curve
    grid = np.unique(np.concatenate([grid, np.round(exact, 3)])) if exact else grid

    def rows(packed: np.ndarray) -> Iterator[np.ndarray]:
        for k in range(S):
            yield _unpack_row(packed, k, n_pages)

    def pops() -> Iterator[np.ndarray] | None:
        if populated_packed is None:
            return None
        res, swp = populated_packed
        return (_unpack_row(res, k, n_pages) | _unpack_row(swp, k, n_pages) for k in range(S))

    ever = np.zeros(n_pages, dtype=bool)
    if populated_packed is not None:
        for m in populated_packed:
            ever |= np.unpackbits(np.bitwise_or.reduce(m, axis=0), count=n_pages).astype(bool)
    else:
        ever[:] = True
    paging: dict[str, Any] = {"thresholds_s": grid.tolist(), "record_bytes": record_bytes, "page_size": page_size,
                              "budget_pct_wss_per_min": REFAULT_BUDGET_PCT_PER_MIN}
    # Whole process: only pages that exist (a page the heap grows into is a first touch, not
    # a refault). Worker state: every state page, as the oracle counts every worker's record;
    # a layout that leaves a record's page unpopulated until its worker wakes (isolated)
    # holds it out for free and pays a fault when it wakes, like any refault.
    parts = {"process": (ever, True)}
    if state is not None:
        parts["state"] = (np.asarray(state, dtype=bool), False)
    for name, (mask, only_populated) in parts.items():
        W, L = transition_counts(rows(written_packed), S, mask, pops() if only_populated else None)
        c = curve(t, W, L, grid, total=float(mask.sum()))
        written_per_window = _written_per_window(rows(written_packed), mask)
        paging[name] = {
            "pages": int(mask.sum()),
            "wss_pages_mean": written_per_window,
            "saved_fraction": _clean(c["saved_fraction"]),
            "held_pages": _clean(c["held"]),
            "refault_pages": _clean(c["refaults"]),
            "refaults_per_min": _clean(c["refaults_per_min"]),
            "refault_pct_wss_per_min": _clean(100.0 * c["refaults_per_min"] / written_per_window
                                              if written_per_window else np.full(grid.size, np.nan)),
            # One page over the span after T, as a rate: a rate of 0 only means "below this".
            "refault_pct_resolution": _clean(100.0 * 60.0 / np.maximum(run_s - grid, 1e-9) / written_per_window
                                             if written_per_window else np.full(grid.size, np.nan)),
        }
    o_pages = oracle_refault_pages(t, trace["W"], grid, record_bytes, page_size)
    co = curve(t, trace["W"], _worker_last(trace["W"], workers), grid, total=float(workers))
    paging["oracle"] = {"refault_pages": _clean(o_pages), "saved_fraction": _clean(co["saved_fraction"]),
                        "refault_workers": _clean(co["refaults"])}
    if "state" in paging:
        st = np.asarray(paging["state"]["refault_pages"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            amp = np.where(o_pages > 0, st / o_pages, np.where(st > 0, np.inf, np.nan))
        paging["state"]["amplification"] = _clean(amp)
    out["paging"] = paging
    return out


def _worker_last(Wo: np.ndarray, workers: int) -> np.ndarray:
    """L for workers from W: every worker starts last-woken in window 0, each wake moves it to window k."""
    S = Wo.shape[0]
    L = np.zeros_like(Wo)
    L[0, 0] = workers
    for k in range(1, S):
        L[k] = L[k - 1] - Wo[k]  # the woken left their previous window ...
        L[k, k] += Wo[k].sum()  # ... and now sit in window k
    return L


def _written_per_window(rows: Iterable[np.ndarray], mask: np.ndarray) -> float:
    counts = [int(np.count_nonzero(r & mask)) for k, r in enumerate(rows) if k > 0]
    return float(np.mean(counts)) if counts else 0.0


def _clean(a: Any) -> list[float | None]:
    """JSON has no NaN/inf: not measured -> None."""
    return [float(x) if math.isfinite(float(x)) else None for x in np.asarray(a, dtype=np.float64)]


def measured_refaults(t: np.ndarray, written_packed: np.ndarray, resident_packed: np.ndarray,
                      swapped_packed: np.ndarray, n_pages: int, idle_seconds: float,
                      mask: np.ndarray | None = None, pageable: np.ndarray | None = None) -> dict[str, int]:
    """In a run that really paged out after each sample: pages that came back, written or only read.

    The matrices hold residency as sampled, before the policy acted, so what
    was out after sample k-1 is rebuilt: swapped then, or present and idle
    for ``idle_seconds`` (what the policy advised; only ``pageable`` pages if given). Of those, the pages
    present at sample k came back; the ones not written in window k were
    brought back by reads, which write tracking cannot see: the part of a
    real refault count the simulated curve misses.
    """
    t = np.asarray(t, dtype=np.float64)
    S = t.size
    m = np.ones(n_pages, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    last = np.full(n_pages, t[0] if S else 0.0)
    written_back = read_back = 0
    out_prev = None
    held = []
    for k in range(S):
        w = _unpack_row(written_packed, k, n_pages)
        present = _unpack_row(resident_packed, k, n_pages)
        if out_prev is not None:
            back = out_prev & present & m
            written_back += int(np.count_nonzero(back & w))
            read_back += int(np.count_nonzero(back & ~w))
        if k > 0:
            last[w] = t[k]
        swapped = _unpack_row(swapped_packed, k, n_pages)
        idle = present & (t[k] - last >= idle_seconds)
        out_prev = swapped | (idle if pageable is None else idle & pageable)
        if t[k] - t[0] >= idle_seconds:
            held.append(int(np.count_nonzero(out_prev & m)))
    total = int(np.count_nonzero(m))
    return {"refaulted_written": written_back, "refaulted_readonly": read_back,
            "saved_fraction": float(np.mean(held)) / total if held and total else None}


def at(paging: dict[str, Any], part: str, key: str, threshold: float) -> float | None:
    """One curve value at the grid threshold closest to ``threshold``."""
    grid = np.asarray(paging["thresholds_s"], dtype=np.float64)
    if not grid.size or part not in paging:
        return None
    i = int(np.argmin(np.abs(grid - threshold)))
    v = paging[part].get(key)
    return None if v is None else v[i]


def run_metrics(config: Any, timeline: Any, matrices: dict[str, np.ndarray], page_size: int) -> dict[str, Any]:
    """The metrics.json keys of this module for one run: ``idle_profile``, ``paging``, ``pageout_check``.

    ``matrices`` are the pages.npz arrays (packed). The pattern is replayed
    from the run's seed, so the oracle and the idle profile see exactly the
    ids the child woke. Runs that sampled no writes get None.
    """
    from locality.layouts.base import RECORD_BYTES
    from locality.population import make_pattern

    out_empty: dict[str, Any] = {"idle_profile": None, "paging": None, "pageout_check": None}
    if "step" not in timeline or len(timeline) < 2:
        return out_empty
    pattern = make_pattern(config.pattern.name, int(config.workers), seed=int(config.seed), **config.pattern_params)
    policy_T = [float(config.reclaim.idle_seconds)] if config.reclaim.policy == "pageout-idle" else []
    extra = [*policy_T, *[float(x) for x in config.sampling.cold_thresholds]]
    traced = "written" in matrices and config.sampling.writes and matrices["written"].shape[0] == len(matrices["t"])
    if not traced:  # no page trace (writes not sampled, or sampling.pages = false): the idle profile alone
        t = timeline["t"].to_numpy(dtype=np.float64)
        step_col = timeline["step"].to_numpy()
        n_steps = int(step_col.max())
        tr = worker_trace(pattern.steps(), int(config.workers), step_windows(step_col, n_steps),
                          step_times(t, step_col, n_steps), t.size, GAP_EDGES)
        profile_T = sorted({*IDLE_PROFILE_S, *extra})
        return {**out_empty, "idle_profile": idle_profile(tr["min_gap"], float(t[-1] - t[0]), tr["gap_hist"],
                                                          GAP_EDGES, profile_T)}
    n_pages = int(matrices["n_pages"])
    t = np.asarray(matrices["t"], dtype=np.float64)
    step_col = timeline["step"].to_numpy()[: t.size]
    n_steps = int(step_col.max()) if step_col.size else 0
    state = np.unpackbits(matrices["state"], count=n_pages).astype(bool) if "state" in matrices else None
    out = compute(t=t, step_col=step_col, written_packed=matrices["written"], n_pages=n_pages, state=state,
                  populated_packed=(matrices["resident"], matrices["swapped"]), steps=pattern.steps(),
                  n_steps=n_steps, workers=int(config.workers), record_bytes=RECORD_BYTES, page_size=page_size,
                  extra_thresholds=extra, exact_thresholds=policy_T)
    out["pageout_check"] = None
    if policy_T and out.get("paging"):
        T = policy_T[0]
        check: dict[str, Any] = {"idle_seconds": T, "scope": config.reclaim.scope}
        for part, mask in (("process", None), ("state", state)):
            if part == "state" and mask is None:
                continue
            pageable = state if config.reclaim.scope == "state" else None
            m = measured_refaults(t, matrices["written"], matrices["resident"], matrices["swapped"], n_pages, T, mask,
                                  pageable)
            measured = m["refaulted_written"] + m["refaulted_readonly"]
            wss = out["paging"][part]["wss_pages_mean"]
            span_min = (t[-1] - t[0] - T) / 60.0
            check[part] = {**m, "simulated_refaults": at(out["paging"], part, "refault_pages", T),
                           "measured_refaults": measured,
                           "measured_refault_pct_wss_per_min": 100.0 * measured / span_min / wss if wss and span_min > 0 else None}
        if "refaulted_pages" in timeline:
            check["timeline_refaulted_pages"] = int(timeline["refaulted_pages"].iloc[1:].sum())
        out["pageout_check"] = check
    return out
