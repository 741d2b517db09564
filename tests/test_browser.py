"""The report in a real browser: headless Chromium opens it from file://."""

from __future__ import annotations

import pytest

from browser_check import open_report
from fixtures_runs import make_probe, make_run
from locality.report.html import write_report

pytestmark = pytest.mark.browser


def test_report_renders_offline_without_errors(tmp_path):
    runs = [
        make_run(tmp_path / "runs", "objects", "objects", bytes_per_worker=1000.0, page_utilization=0.016),
        make_run(tmp_path / "runs", "slab", "slab", bytes_per_worker=120.0, page_utilization=0.3, refault_rate=2.0),
        make_run(tmp_path / "runs", "evil", "<script>alert('x')</script>", status="failed", error="<img src=x onerror=alert(1)>",
                 with_metrics=False),
        make_probe(tmp_path / "runs", pid=4242),
    ]
    report = write_report(runs, tmp_path / "report.html")
    seen = open_report(report, tmp_path / "profile", "report-fixture.png")
    drawn = sorted(k for k, v in seen["figures"].items() if v["class"] == "drawn")
    assert drawn == sorted(f"fig-{n}" for n in ("bytes_per_worker", "page_utilization", "wss_over_time", "pareto", "heatmap",
                                                "residency_map", "latency_cdf", "page_age", "vma_rss", "vma_referenced"))
    assert seen["rows"]["evil"].split() == ["failed"]
    assert seen["rows"]["objects"].split() == ["baseline", "complete"]
    # The injected img was text, not an element: no request for "x", no alert.
    assert not any(u.endswith("/x") for u in seen["requests"])


def test_report_with_missing_figures_still_clean(tmp_path):
    run = make_run(tmp_path / "runs", "bare", "slab", with_pages=False, with_latency=False)
    report = write_report([run], tmp_path / "report.html")
    seen = open_report(report, tmp_path / "profile", "report-missing-data.png")
    omitted = sorted(k for k, v in seen["figures"].items() if v["class"] == "omitted")
    assert omitted == ["fig-heatmap", "fig-latency_cdf", "fig-page_age", "fig-residency_map"]


# The stacked bars' segments, by fill colour, and the verdict's text.
PORTION_SCRIPT = """
const out = {};
for (const id of ['fig-portion_resident', 'fig-portion_wss']) {
  const fills = {};
  for (const p of document.querySelectorAll('#' + id + ' svg g[id^="patch"] path')) {
    const m = /fill:\\s*(#[0-9a-f]{6})/.exec(p.getAttribute('style') || '');
    const b = p.getBBox();
    if (m && b.width > 0.5 && b.height > 0.5) fills[m[1]] = (fills[m[1]] || 0) + 1;
  }
  out[id] = fills;
}
out.table = Array.from(document.querySelectorAll('#portions-table tbody tr')).map(
  tr => tr.dataset.run + ' ' + tr.dataset.portion);
out.verdicts = Array.from(document.querySelectorAll('#portion-verdicts li')).map(li => li.textContent);
return out;
"""


def test_portion_stacked_bars_show_each_portion_of_each_run(tmp_path):
    from locality.report.portions import COLORS

    mib = 1 << 20
    runs = [
        make_run(tmp_path / "runs", "objects", "objects", portions={
            "worker_state": (40 * mib, 6.0 * mib), "coroutine_frames": (20 * mib, 9.0 * mib), "code": (30 * mib, 0.0)}),
        make_run(tmp_path / "runs", "clustered", "clustered", portions={
            "worker_state": (10 * mib, 1.0 * mib), "coroutine_frames": (20 * mib, 3.0 * mib), "native_heap": (5 * mib, 0.5 * mib)}),
    ]
    report = write_report(runs, tmp_path / "report.html")
    seen = open_report(report, tmp_path / "profile", "report-portions.png", script=PORTION_SCRIPT)
    for fig in ("fig-portion_resident", "fig-portion_wss"):
        assert seen["figures"][fig]["class"] == "drawn"
    color = dict(zip(("worker_state", "coroutine_frames", "native_heap", "code"), (COLORS[0], COLORS[1], COLORS[4], COLORS[5])))
    # One segment per run with bytes in that portion (plus its legend patch).
    resident = seen["script"]["fig-portion_resident"]
    assert {c: resident.get(c) for c in color.values()} == {COLORS[0]: 3, COLORS[1]: 3, COLORS[4]: 2, COLORS[5]: 2}
    wss = seen["script"]["fig-portion_wss"]
    assert {c: wss.get(c) for c in color.values()} == {COLORS[0]: 3, COLORS[1]: 3, COLORS[4]: 2, COLORS[5]: 1}
    assert seen["script"]["verdicts"] == [
        "Across 2 runs the working set is dominated by coroutine_frames in 2 (objects, clustered).",
        "objects: coroutine_frames dominates the working set, 9 MiB of the 15 MiB written per sample window (60%); "
        "the largest resident portion is worker_state (44% of RSS); 3 tracked pages hold more than one portion.",
        "clustered: coroutine_frames dominates the working set, 3 MiB of the 4.5 MiB written per sample window (67%); "
        "the largest resident portion is coroutine_frames (57% of RSS); 3 tracked pages hold more than one portion.",
    ]
    assert seen["script"]["table"] == ["objects worker_state", "objects coroutine_frames", "objects code",
                                       "clustered worker_state", "clustered coroutine_frames", "clustered native_heap"]
    assert seen["figures"]["fig-heatmap"]["class"] == "drawn"
