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
