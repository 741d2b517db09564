"""The verdict at the top of a report: short sentences from experiment.verdict, every number from the runs."""

from __future__ import annotations

from typing import Any

from locality.experiment.verdict import verdict
from locality.report.data import RunData, baseline_index


def _n(v: float, digits: int = 3) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _ratio(r: float | None, base: str) -> str:
    return f" ({_n(r)}× {base})" if r is not None else ""


def verdict_lines(runs: list[RunData]) -> list[dict[str, str]]:
    """[{question, answer, constraint}] for the report; empty when no run has metrics."""
    usable = [r for r in runs if r.metrics and not r.failed]
    if not usable:
        return []
    base = runs[baseline_index(runs)]
    labels = {r.id: r.label for r in usable}
    metrics = {r.id: r.metrics for r in usable}
    lines = []
    for v in verdict(metrics, base.id):
        who = labels.get(v.get("run") or "", v.get("run"))
        q = v["question"]
        if q == "latency cost of paging":
            answer = (f"{who}: p99 {_n(v['value'])} µs with real page-out, {_n(v['ratio_own'])}× its own "
                      f"{_n(v['reference'])} µs without reclaim.")
        elif "paged out" in q and v.get("run") is None:
            low = v.get("lowest")
            answer = "No layout stays within it at any threshold."
            if low:
                unit = "× the oracle" if v["limit_key"] == "amplification" else "% of WSS per minute"
                answer += f" Closest: {labels.get(low['run'], low['run'])}, {_n(low['value'])}{unit} at {_n(low['threshold_s'])} s."
        elif "paged out" in q:
            p = v["pick"]
            extra = []
            if p.get("amplification") is not None:
                extra.append(f"{_n(p['amplification'])}× the oracle's refaults")
            if p.get("refault_pct_wss_per_min") is not None:
                extra.append(f"{_n(p['refault_pct_wss_per_min'])}% of WSS per minute")
            answer = (f"{who}: {_n(v['value'])}% of its worker state ({_n(p['saved_bytes'] / 2**20)} MiB) "
                      f"held out after {_n(v['threshold_s'])} s idle{_ratio(v.get('ratio'), base.label)}. "
                      f"It brings back {', '.join(extra)}.")
        else:
            answer = f"{who}: {_n(v['value'])} {v['unit']}{_ratio(v.get('ratio'), base.label)}."
        lines.append({"question": q[0].upper() + q[1:], "answer": answer, "constraint": v["constraint"] + "."})
    return lines


def paging_notes(runs: list[RunData]) -> list[str]:
    """Warnings: page-outs locality did not make (system DAMON), and how a real page-out compared."""
    notes = []
    for r in runs:
        m = r.metrics or {}
        kds = r.manifest.get("system_damon") or []
        swapped = m.get("swapped_pages_max") or 0
        if m.get("reclaim", "none") == "none" and swapped:
            who = "; ".join(f"kdamond {k.get('index')} ({', '.join(s.get('action') or '?' for c in k.get('contexts', []) for s in c.get('schemes', []))})"
                            for k in kds) or "something outside locality"
            notes.append(f"{r.label}: {swapped:,} pages were swapped out during a run without reclaim: page-outs "
                         f"locality did not make ({who}); its residency figures include them.")
        check = m.get("pageout_check") or {}
        st = check.get("state") or check.get("process")
        if st and st.get("simulated_refaults") is not None:
            sim, meas = st["simulated_refaults"], st["measured_refaults"]
            agree = abs(meas - sim) <= 0.25 * max(sim, 1)
            notes.append(f"{r.label}: real page-out after {check['idle_seconds']:g} s idle brought back {meas:,} "
                         f"worker-state pages; the written-page simulation of the same run predicts {sim:,.0f} "
                         f"({'within' if agree else 'outside'} 25%). {st['refaulted_readonly']:,} of the pages that came "
                         f"back were never written in their window (read-only refaults, invisible to write tracking).")
    return notes


IDLE_KEYS = ("1", "10", "60", "600")


def paging_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """Per run: its workload's idle-time profile and its curve at the longest cold threshold it measured."""
    from locality.experiment.paging import at

    rows = []
    for r in runs:
        m = r.metrics or {}
        prof = (m.get("idle_profile") or {}).get("share_idle_at_least") or {}
        p = m.get("paging")
        if not prof and not p:
            continue
        colds = [float(k) for k in (m.get("cold_fraction") or {})]
        T = max(colds) if colds else None
        cells = {"idle": [("—" if prof.get(k) is None else f"{100 * prof[k]:.1f}") for k in IDLE_KEYS],
                 "idle_at_T": "—" if T is None or prof.get(f"{T:g}") is None else f"{100 * prof[f'{T:g}']:.1f}"}
        for key, fmt in (("saved_fraction", lambda v: f"{100 * v:.1f}"), ("amplification", lambda v: f"{v:.3g}"),
                         ("refault_pct_wss_per_min", lambda v: f"{v:,.4g}")):
            v = at(p, "state", key, T) if p and T is not None else None
            cells[key] = "—" if v is None else fmt(v)
        o = at(p, "oracle", "saved_fraction", T) if p and T is not None else None
        cells["oracle_saved"] = "—" if o is None else f"{100 * o:.1f}"
        rows.append({"run": r.label, "threshold": "—" if T is None else f"{T:g}", **cells})
    return rows
