"""Which technique wins each question, and at what cost: computed from the runs' metrics alone.

The questions are the thesis's: how small is the working set (referenced
memory of the whole VM in a 10-s window), how many bytes a column costs
(PSS growth at spawn, the project-wide bytes per worker), how fast an
activation is (p99), and how much stays out after a page-out (swap on).
Every figure here is read from metrics.json of a run of this comparison;
nothing is typed in. The baseline is `default` when it ran, else the first.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

MIB = 1 << 20
WSS_WINDOW = "10"  # the working-set question's window, seconds
# The targets (benchmarks, not tests): checked and shown, never enforced here.
TARGET_WSS_FACTOR = 5.0
TARGET_P99_FACTOR = 1.5
TARGET_BYTES_FACTOR = 2.5
AGREEMENT = 0.15


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def wss(m: Mapping[str, Any], window: str = WSS_WINDOW) -> float | None:
    return _num((m.get("wss_bytes_by_window") or {}).get(window))


def untouched_after_pageout(m: Mapping[str, Any], window: str = WSS_WINDOW) -> float | None:
    return _num((m.get("untouched_after_pageout") or {}).get(window))


def bytes_per_column(m: Mapping[str, Any]) -> float | None:
    return _num(m.get("bytes_per_worker"))


def p99(m: Mapping[str, Any]) -> float | None:
    return _num(m.get("latency_p99_us"))


def questions(window: str) -> list[tuple[str, Callable[[Mapping[str, Any]], float | None], bool, Callable[[float], str]]]:
    """(question, value, smaller is better, format), for the working-set window ``window``."""
    return [
        (f"smallest working set ({window}-s window, referenced memory of the whole VM)", lambda m: wss(m, window),
         True, lambda v: f"{v / MIB:,.1f} MiB"),
        ("fewest bytes per column (PSS growth at spawn / columns)", bytes_per_column, True, lambda v: f"{v:,.0f} B"),
        ("lowest activation latency (p99)", p99, True, lambda v: f"{v:,.0f} µs"),
        (f"most memory left out after a page-out (share not touched again within {window} s)",
         lambda m: untouched_after_pageout(m, window), False, lambda v: f"{100 * v:.1f}%"),
        ("highest throughput (activations per second of step time)", lambda m: _num(m.get("activations_per_s")),
         False, lambda v: f"{v:,.0f}/s"),
    ]


def _ratio(value: float | None, ref: float | None) -> float | None:
    return value / ref if value is not None and ref else None


def _cost(m: Mapping[str, Any], base: Mapping[str, Any], window: str) -> str:
    """What the winner pays, against the baseline: the other axes' ratios."""
    parts = []
    for label, get in (("p99", p99), ("bytes/column", bytes_per_column), (f"{window}-s WSS", lambda x: wss(x, window))):
        r = _ratio(get(m), get(base))
        if r is not None:
            parts.append(f"{label} {r:.2f}×")
    if _num(m.get("relocation_ms_per_step")) is not None:
        parts.append(f"relocation {m['relocation_ms_per_step']:.1f} ms/step")
    if _num(m.get("refault_rate_pct_per_min")) is not None:
        parts.append(f"refaults {m['refault_rate_pct_per_min']:.0f}% WSS/min")
    return ", ".join(parts) or "—"


def window_of(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The working-set window the verdict uses: 10 s, or the longest any run measured if none has 10 s."""
    seen = {k for m in metrics.values() for k in (m.get("wss_bytes_by_window") or {})}
    if WSS_WINDOW in seen or not seen:
        return WSS_WINDOW
    return max(seen, key=float)


def verdict(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{baseline, window, questions: [{question, winner, value, versus_baseline, cost}], targets, table}."""
    if not metrics:
        return {}
    window = window_of(metrics)
    baseline = "default" if "default" in metrics else next(iter(metrics))
    base = metrics[baseline]
    rows = []
    for question, get, smaller, fmt in questions(window):
        values = {name: get(m) for name, m in metrics.items() if get(m) is not None}
        if not values:
            rows.append({"question": question, "winner": "—", "value": "not measured",
                         "versus_baseline": "no run has this figure" + (" (page-outs need --swap SIZE)" if "page-out" in question else ""),
                         "cost": ""})
            continue
        winner = (min if smaller else max)(values, key=lambda name: values[name])
        r = _ratio(values[winner], get(base))
        rows.append({
            "question": question, "winner": winner, "value": fmt(values[winner]),
            "versus_baseline": f"{r:.3g}× {baseline}" if r is not None else "",
            "cost": _cost(metrics[winner], base, window) if winner != baseline else "— (the baseline)",
        })
    return {"baseline": baseline, "window": window, "questions": rows,
            "targets": targets(metrics, baseline, window), "table": table(metrics)}


def targets(metrics: Mapping[str, Mapping[str, Any]], baseline: str, window: str = WSS_WINDOW) -> list[dict[str, Any]]:
    """The issue's targets, checked against these runs: met or not, with the numbers."""
    base = metrics[baseline]
    out = []
    base_wss, base_p99 = wss(base, window), p99(base)
    if base_wss and base_p99:
        fast = {n: wss(m, window) for n, m in metrics.items()
                if wss(m, window) and p99(m) is not None and p99(m) <= TARGET_P99_FACTOR * base_p99}
        if fast:
            best = min(fast, key=lambda n: fast[n])
            factor = base_wss / fast[best]
            out.append({"target": f"{window}-s working set ≥ {TARGET_WSS_FACTOR:g}× smaller than {baseline} "
                                  f"at p99 ≤ {TARGET_P99_FACTOR:g}× {baseline}'s",
                        "met": factor >= TARGET_WSS_FACTOR,
                        "measured": f"{best}: {factor:.2f}× smaller ({fast[best] / MIB:,.1f} vs "
                                    f"{base_wss / MIB:,.1f} MiB), p99 {p99(metrics[best]) / base_p99:.2f}×"})
    base_bytes = bytes_per_column(base)
    values = {n: bytes_per_column(m) for n, m in metrics.items() if bytes_per_column(m)}
    if base_bytes and values:
        best = min(values, key=lambda n: values[n])
        factor = base_bytes / values[best]
        out.append({"target": f"bytes per column ≥ {TARGET_BYTES_FACTOR:g}× fewer than {baseline}",
                    "met": factor >= TARGET_BYTES_FACTOR,
                    "measured": f"{best}: {values[best]:,.0f} vs {base_bytes:,.0f} B ({factor:.2f}× fewer)"})
    ratios = {n: _num(m.get("rss_vs_vm_total_ratio")) for n, m in metrics.items()}
    off = {n: r for n, r in ratios.items() if r is not None and abs(r - 1) > AGREEMENT}
    out.append({"target": f"RSS growth and erlang:memory(total) growth agree within {AGREEMENT:.0%} for every technique",
                "met": not off and any(r is not None for r in ratios.values()),
                "measured": ", ".join(f"{n} {r:.3f}" for n, r in ratios.items() if r is not None)})
    return out


TABLE: list[tuple[str, Callable[[Mapping[str, Any]], float | None], Callable[[float], str]]] = [
    ("bytes/column, PSS", bytes_per_column, lambda v: f"{v:,.0f}"),
    ("bytes/column, erlang:memory(total)", lambda m: _num(m.get("bytes_per_process_vm_total")), lambda v: f"{v:,.0f}"),
    ("RSS / erlang:memory", lambda m: _num(m.get("rss_vs_vm_total_ratio")), lambda v: f"{v:.3f}"),
    ("processes", lambda m: _num(m.get("processes")), lambda v: f"{v:,.0f}"),
    ("WSS 1 s (MiB)", lambda m: wss(m, "1"), lambda v: f"{v / MIB:,.1f}"),
    ("WSS 10 s (MiB)", lambda m: wss(m, "10"), lambda v: f"{v / MIB:,.1f}"),
    ("WSS 60 s (MiB)", lambda m: wss(m, "60"), lambda v: f"{v / MIB:,.1f}"),
    ("latency p50 (µs)", lambda m: _num(m.get("latency_p50_us")), lambda v: f"{v:,.0f}"),
    ("latency p99 (µs)", p99, lambda v: f"{v:,.0f}"),
    ("activations/s", lambda m: _num(m.get("activations_per_s")), lambda v: f"{v:,.0f}"),
    ("relocation (ms/step)", lambda m: _num(m.get("relocation_ms_per_step")), lambda v: f"{v:,.2f}"),
    ("untouched 10 s after page-out", untouched_after_pageout, lambda v: f"{100 * v:.1f}%"),
    ("refault rate (% WSS/min)", lambda m: _num(m.get("refault_rate_pct_per_min")), lambda v: f"{v:,.0f}"),
]


def table(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    rows = []
    for name, m in metrics.items():
        cells = []
        for _, get, fmt in TABLE:
            v = get(m)
            cells.append(fmt(v) if v is not None else "—")
        rows.append({"technique": name, "cells": cells})
    return {"headings": [h for h, _, _ in TABLE], "rows": rows}
