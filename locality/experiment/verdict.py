"""The verdict of a comparison, computed from the runs' metrics alone (no number is written by hand).

Each answer names the winning run, its figure, its ratio to the baseline
and the constraint that decided it. The report turns them into sentences.
Main runs are the ones without reclaim on the main workload; runs of the
adversarial workload and real page-outs are context, not candidates.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from locality.experiment.paging import REFAULT_BUDGET_PCT_PER_MIN

MAX_AMPLIFICATION = 2.0


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _bounded(st: Mapping[str, Any], key: str) -> list[Any]:
    """The curve of ``key``; refault rates as upper bounds: a short span after T sees no refault
    by chance, so one more than seen is counted and a threshold passes only if the run could tell."""
    values = list(st.get(key) or [])
    res = st.get("refault_pct_resolution")
    if key == "refault_pct_wss_per_min" and res:
        values = [None if b is None or r is None else b + r for b, r in zip(values, res)]
    return values


def best_under(paging: Mapping[str, Any], limit_key: str, limit: float) -> dict[str, Any] | None:
    """The threshold of the worker-state curve that saves the most while ``limit_key`` <= ``limit``."""
    st = paging.get("state") or {}
    saved, bound = st.get("saved_fraction") or [], _bounded(st, limit_key)
    best = None
    for i, T in enumerate(paging.get("thresholds_s") or []):
        s, b = _num(saved[i] if i < len(saved) else None), _num(bound[i] if i < len(bound) else None)
        if s is None or b is None or b > limit:
            continue
        if best is None or s > best["saved_fraction"]:
            best = {"threshold_s": float(T), "saved_fraction": s, limit_key: b,
                    "refault_pct_wss_per_min": _num(st["refault_pct_wss_per_min"][i]),
                    "amplification": _num((st.get("amplification") or [None] * (i + 1))[i]),
                    "saved_bytes": s * int(st.get("pages") or 0) * int(paging.get("page_size") or 4096)}
    return best


def _candidates(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {k: m for k, m in metrics.items() if m and m.get("reclaim", "none") == "none" and not k.startswith("waves-")}


def best_paging(metrics: Mapping[str, Mapping[str, Any]], limit_key: str = "amplification",
                limit: float = MAX_AMPLIFICATION) -> dict[str, Any] | None:
    """The run that pages out the largest share of its worker state within the limit (amplification or budget)."""
    best = None
    for run_id, m in _candidates(metrics).items():
        if not m.get("paging"):
            continue
        pick = best_under(m["paging"], limit_key, limit)
        if pick and (best is None or pick["saved_fraction"] > best["saved_fraction"]):
            best = {"run": run_id, "layout": m.get("layout", run_id), **pick}
    return best


def _extreme(metrics: Mapping[str, Mapping[str, Any]], key: str, largest: bool) -> tuple[str, float] | None:
    vals = [(k, _num(m.get(key))) for k, m in _candidates(metrics).items()]
    vals = [(k, v) for k, v in vals if v is not None]
    if not vals:
        return None
    return max(vals, key=lambda kv: kv[1]) if largest else min(vals, key=lambda kv: kv[1])


def verdict(metrics: Mapping[str, Mapping[str, Any]], baseline: str | None) -> list[dict[str, Any]]:
    """The answers, in order: bytes per worker, hot set density, paging at the SLO and at 2x oracle, latency."""
    base = metrics.get(baseline or "") or {}
    out: list[dict[str, Any]] = []

    def ratio(key: str, value: float) -> float | None:
        ref = _num(base.get(key))
        return value / ref if ref else None

    if (w := _extreme(metrics, "bytes_per_worker", largest=False)):
        out.append({"question": "smallest bytes per worker", "run": w[0], "value": w[1], "unit": "B",
                    "ratio": ratio("bytes_per_worker", w[1]),
                    "constraint": "PSS the population adds per worker after spawn"})
    # The same activations in every run, so the fewest worker-state bytes written per window is the
    # densest hot set (page utilization sums useful bytes per activation and exceeds 100% when a
    # worker wakes several times in a window, as in persistent patches).
    if (d := _extreme(metrics, "state_wss_bytes_mean", largest=False)):
        out.append({"question": "densest hot set", "run": d[0], "value": d[1] / 2**20, "unit": "MiB of worker state written per window",
                    "ratio": ratio("state_wss_bytes_mean", d[1]),
                    "constraint": "pages of worker state the same activations write per sample window"})
    for key, limit, what in (("refault_pct_wss_per_min", REFAULT_BUDGET_PCT_PER_MIN,
                              f"within a refault budget of {REFAULT_BUDGET_PCT_PER_MIN:g}% of WSS per minute"),
                             ("amplification", MAX_AMPLIFICATION, f"with refaults at most {MAX_AMPLIFICATION:g}× the oracle's")):
        pick = best_paging(metrics, key, limit)
        entry: dict[str, Any] = {"question": f"most memory paged out {what}", "limit_key": key, "limit": limit}
        if pick:
            bpick = best_under(base.get("paging") or {}, key, limit) if base.get("paging") else None
            entry.update(run=pick["run"], value=100 * pick["saved_fraction"], unit="% of worker-state memory",
                         threshold_s=pick["threshold_s"], pick=pick,
                         ratio=(pick["saved_fraction"] / bpick["saved_fraction"]) if bpick and bpick["saved_fraction"] else None,
                         constraint=f"{'refault rate' if key != 'amplification' else 'refault amplification'} at the "
                                    f"shortest threshold that stays within the limit")
        else:
            lowest = lowest_on_curve(metrics, key)
            entry.update(run=None, lowest=lowest,
                         constraint="pages woken after a long idle (new patches) come back at every threshold the run "
                                    "can tell apart" if key != "amplification" else
                                    "pages written after T idle hold more than twice the bytes of the workers woken")
        out.append(entry)
    if (lat := _extreme(metrics, "latency_p99_us", largest=False)):
        out.append({"question": "smallest latency cost", "run": lat[0], "value": lat[1], "unit": "µs p99",
                    "ratio": ratio("latency_p99_us", lat[1]), "constraint": "activation p99, wake to done, no reclaim"})
    measured = [(k, m) for k, m in metrics.items() if m and m.get("reclaim") in ("pageout-idle", "cgroup")]
    for k, m in measured:
        own = metrics.get(m.get("layout", "")) or {}
        p99, ref = _num(m.get("latency_p99_us")), _num(own.get("latency_p99_us"))
        if p99 is not None and ref:
            out.append({"question": "latency cost of paging", "run": k, "value": p99, "unit": "µs p99",
                        "ratio_own": p99 / ref, "reference": ref,
                        "constraint": "refaults on the wake path (target: at most 2x the layout's own p99 without reclaim)"})
    return out


def lowest_on_curve(metrics: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, Any] | None:
    """The closest any run came to the limit: its smallest value over the curve."""
    best = None
    for run_id, m in _candidates(metrics).items():
        st = (m.get("paging") or {}).get("state") or {}
        for i, v in enumerate(_bounded(st, key)):
            v = _num(v)
            if v is not None and (best is None or v < best["value"]):
                best = {"run": run_id, "value": v, "threshold_s": m["paging"]["thresholds_s"][i]}
    return best
