"""The report in a real browser: headless Chromium opens it from file://."""

from __future__ import annotations

import pytest

from browser_check import open_report
from fixtures_runs import make_beam, make_probe, make_run, make_sweep
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
                                                "residency_map", "latency_cdf", "page_age", "vma_rss", "vma_referenced",
                                                "vma_class_memory", "referenced_per_interval"))
    # The probe stored no pages.npz: its residency over time is the one slot not drawn, and it says why.
    assert seen["figures"]["fig-residency_over_time"]["class"] == "omitted"
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


def test_sweep_report_groups_baselines_and_a_short_title(tmp_path):
    make_sweep(tmp_path / "runs")
    report = write_report([tmp_path / "runs"], tmp_path / "sweep.html")
    seen = open_report(report, tmp_path / "profile", "report-sweep.png")
    # The title names the experiment, the run count and the axes: not 12 point ids.
    assert seen["heading"]["text"] == "thesis: 12 runs, layout × pattern.name × reclaim.policy"
    assert seen["heading"]["height"] < 60
    assert seen["groups"] == [f"pattern.name = {p} · reclaim.policy = {r} (baseline: objects · {p} · {r})"
                              for r in ("none", "pageout-idle") for p in ("sheet", "uniform")]
    assert len(seen["rows"]) == 12
    assert sum("baseline" in c.split() for c in seen["rows"].values()) == 4
    # Every worker figure has data here, so every slot is drawn (none "Not drawn").
    assert {v["class"] for v in seen["figures"].values()} == {"drawn"}
    assert len(seen["figures"]) == 8
    # open_report checked that the main table (12 columns, 4 cold windows) fits 1400 px unscrolled.
    # The bar labels are ratios to each run's own group baseline: uniform slab 400 / uniform objects 2,000.
    ratios = sorted(t for t in seen["texts"]["fig-bytes_per_worker"] if t.endswith("×"))
    assert ratios == sorted(["1×", "0.05×", "0.1×", "1×", "0.1×", "0.2×"] * 2)


PROBE_FIGURES = ("vma_class_memory", "residency_over_time", "referenced_per_interval", "residency_map", "vma_rss",
                 "vma_referenced")


def test_probe_report_draws_its_own_figures(tmp_path):
    probe = make_probe(tmp_path / "runs", pid=4242, with_pages=True)
    report = write_report([probe], tmp_path / "probe.html")
    seen = open_report(report, tmp_path / "profile", "report-probe.png")
    # Every slot of a probe report is drawn: no worker-figure slot left empty.
    assert {k: v["class"] for k, v in seen["figures"].items()} == {f"fig-{n}": "drawn" for n in PROBE_FIGURES}
    classes = " ".join(seen["texts"]["fig-vma_class_memory"])
    for name in ("code (executable files)", "anonymous", "heap (brk)"):
        assert name in classes
    assert "beam.smp r-xp" in " ".join(seen["texts"]["fig-residency_map"])


BEAM_FIGURES = ("bytes_per_worker", "residency_map", "latency_cdf", "vma_class_memory", "residency_over_time",
                "bytes_per_process", "referenced_by_region", "vma_rss", "vma_referenced")


def test_vm_report_draws_its_own_figures_and_whole_labels(tmp_path):
    report = write_report([make_beam(tmp_path / "runs")], tmp_path / "beam.html")
    seen = open_report(report, tmp_path / "profile", "report-beam.png")
    drawn = {k for k, v in seen["figures"].items() if v["class"] == "drawn"}
    assert drawn == {f"fig-{n}" for n in BEAM_FIGURES}
    assert {k for k, v in seen["figures"].items() if v["class"] == "omitted"} == set()
    for fig in ("fig-residency_map", "fig-referenced_by_region"):
        words = " ".join(seen["texts"][fig])
        assert "other anonymous (allocator carriers, thread" in words, fig  # the start is never cut ...
        assert "rocess table)" not in words.replace("process table)", ""), fig
    bars = " ".join(seen["texts"]["fig-bytes_per_process"])
    for value in ("2,704", "2,690", "2,612", "2,650"):
        assert value in bars


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
