"""`locality compare`: every layout on one workload, failures and Ctrl-C still give a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures_runs import make_run
from locality.cli import main
from locality.errors import Unsupported
from locality.experiment import compare as cmp
from locality.report.compare import write_compare_report

from test_report import table


def compare_and_report(layouts, *, out, **kw):
    """The layouts' runs (experiment.compare), then their report (report.compare), as `locality compare` does."""
    result = cmp.compare(layouts, **kw)
    rendered = write_compare_report(result, out)
    result.report, result.runs = rendered.report, rendered.runs
    return result


class FakeRunner:
    """Stands in for experiment.runner.run: stores a fixture run per layout, or fails as told."""

    def __init__(self, fail=(), refuse=(), interrupt=None):
        self.fail, self.refuse, self.interrupt = set(fail), set(refuse), interrupt
        self.configs = []

    def __call__(self, config, out, *, run_id=None, progress=True, **kw):
        from locality.experiment.runner import RunFailed

        self.configs.append(config)
        layout = config.layout
        if layout in self.refuse:
            raise Unsupported("reclaim", "no swap here", "locality swap on")
        cfg = config.model_dump(mode="json")
        if layout in self.fail:
            make_run(Path(out), run_id, layout, status="failed", error="child exited with status 1: MemoryError",
                     with_metrics=False, config=cfg)
            raise RunFailed(f"run {run_id} failed: child exited")
        if layout == self.interrupt:
            make_run(Path(out), run_id, layout, status="interrupted", config=cfg)
            raise KeyboardInterrupt
        bpw = {"objects": 1000.0, "slab": 100.0}.get(layout, 500.0)
        return make_run(Path(out), run_id, layout, bytes_per_worker=bpw, config=cfg)


@pytest.fixture
def fake(monkeypatch):
    def install(**kw):
        runner = FakeRunner(**kw)
        monkeypatch.setattr("locality.experiment.runner.run", runner)
        # No calibration runs through the fake runner: the memory check has its own tests (test_bad_inputs).
        monkeypatch.setattr("locality.experiment.estimate.check_memory", lambda *a, **k: None)
        # These tests are about the job, not the figures (test_report, test_figures): draw one, fast.
        monkeypatch.setattr("locality.report.figures.default_names", lambda runs: ["bytes_per_worker"])
        return runner
    return install


def test_same_workload_for_every_layout(fake, tmp_path):
    runner = fake()
    result = compare_and_report(["objects", "slab", "hot-cold"], workers=5000, pattern="zipf", steps=7,
                         runs=tmp_path / "runs", out=tmp_path / "c.html", progress=False)
    assert [c.layout for c in runner.configs] == ["objects", "slab", "hot-cold"]
    dumps = [c.model_dump(mode="json", exclude={"layout", "name"}) for c in runner.configs]
    assert dumps[0] == dumps[1] == dumps[2]
    assert dumps[0]["workers"] == 5000 and dumps[0]["steps"] == 7 and dumps[0]["pattern"]["name"] == "zipf"
    assert dumps[0]["seed"] == cmp.SEED and dumps[0]["reclaim"]["policy"] == "none"
    assert [p.name for p in sorted(result.run_root.iterdir())] == ["hot-cold", "objects", "slab"]
    rows = table(result.report.read_text())
    assert rows["slab"]["bytes / worker (B)"] == "100 0.1×"  # baseline: objects


def test_failed_and_refused_layouts_are_failed_rows(fake, tmp_path, capsys):
    fake(fail={"isolated"}, refuse={"grouped"})
    with pytest.raises(SystemExit) as e:
        main(["compare", "--workers", "1000", "--layouts", "objects,isolated,grouped,slab", "--steps", "3",
              "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "c.html"), "--json"])
    assert e.value.code == 1
    out = json.loads(capsys.readouterr().out)
    # the default workload adds the adversarial wave sheet for the baseline (and the best pager, none here)
    assert {k: v["status"] for k, v in out["runs"].items()} == {
        "objects": "complete", "isolated": "failed", "grouped": "failed", "slab": "complete", "waves-objects": "complete"}
    # One JSON shape across commands: run_dirs names the run directories.
    assert [Path(d).name for d in out["run_dirs"]] == ["objects", "isolated", "grouped", "slab", "waves-objects"]
    html = (tmp_path / "c.html").read_text()
    rows = table(html)
    assert rows["isolated"]["status"] == "failed child exited with status 1: MemoryError"
    assert rows["grouped"]["status"].startswith("failed reclaim is not available: no swap here")
    assert rows["slab"]["status"] == "complete"


def test_ctrl_c_keeps_finished_runs_and_reports_them(fake, tmp_path, capsys):
    fake(interrupt="slab")
    with pytest.raises(SystemExit) as e:
        main(["compare", "--workers", "1000", "--layouts", "objects,hot-cold,slab,isolated", "--steps", "3",
              "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "c.html")])
    assert e.value.code == 130
    captured = capsys.readouterr()
    assert f"report: {tmp_path / 'c.html'}" in captured.out
    assert "interrupted during slab" in captured.err
    html = (tmp_path / "c.html").read_text()
    assert set(table(html)) == {"objects", "hot-cold"}
    assert "Interrupted (Ctrl-C) during slab" in html and "Not run: isolated." in html
    (root,) = (tmp_path / "runs").iterdir()
    statuses = {p.name: json.loads((p / "manifest.json").read_text())["status"] for p in root.iterdir()}
    assert statuses == {"objects": "complete", "hot-cold": "complete", "slab": "interrupted"}


def test_ctrl_c_before_any_run_finished(fake, tmp_path, capsys):
    fake(interrupt="objects")
    with pytest.raises(SystemExit) as e:
        main(["compare", "--workers", "1000", "--layouts", "objects,slab", "--runs", str(tmp_path / "runs"),
              "--out", str(tmp_path / "c.html")])
    assert e.value.code == 130
    assert "interrupted during objects before any run finished" in capsys.readouterr().err
    assert not (tmp_path / "c.html").exists()


def test_two_compares_do_not_mix_runs(fake, tmp_path):
    fake()
    a = compare_and_report(["slab"], workers=100, steps=1, runs=tmp_path, out=tmp_path / "a.html", progress=False)
    b = compare_and_report(["slab"], workers=100, steps=1, runs=tmp_path, out=tmp_path / "b.html", progress=False)
    assert a.run_root != b.run_root and a.run_root.parent == b.run_root.parent == tmp_path


@pytest.mark.parametrize("args, message", [
    (["--layouts", "slab,nope"], "--layouts: unknown nope"),
    (["--layouts", "slab,slab"], "named twice"),
    (["--workers", "0"], "--workers"),
    (["--pattern", "spiral"], "--pattern"),
])
def test_bad_arguments_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", *args, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "c.html")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "c.html").exists()


def test_all_layouts_is_the_registry():
    from locality.layouts import LAYOUTS

    assert cmp.parse_layouts("all") == list(LAYOUTS)


@pytest.mark.browser
def test_small_compare_end_to_end_in_browser(tmp_path):
    from browser_check import open_report

    result = compare_and_report(["objects", "slab", "clustered"], workers=20_000, pattern="sheet", steps=20, interval=0.2,
                         step_interval=0.05, runs=tmp_path / "runs", out=tmp_path / "compare.html", progress=False)
    assert [r.status for r in result.runs] == ["complete"] * 3
    metrics = {r.label: r.metrics for r in result.runs}
    rows = table(result.report.read_text())
    base = metrics["objects"]["bytes_per_worker"]
    for layout in ("slab", "clustered"):
        value = metrics[layout]["bytes_per_worker"]
        assert rows[layout]["bytes / worker (B)"].endswith(f"{value / base:.3g}×")
    seen = open_report(result.report, tmp_path / "profile", "compare-small.png")
    drawn = {k for k, v in seen["figures"].items() if v["class"] == "drawn"}
    assert {"fig-bytes_per_worker", "fig-page_utilization", "fig-wss_over_time", "fig-heatmap", "fig-residency_map",
            "fig-latency_cdf", "fig-page_age"} <= drawn
    # the paging verdict and its curves (test_compare_paging.py tests how they are computed)
    questions = [row[0] for row in seen["verdict"]]
    assert questions[:2] == ["Smallest bytes per worker", "Densest hot set"]
    assert any(q.startswith("Most memory paged out within a refault budget of 0.2%") for q in questions)
    assert any(q.startswith("Most memory paged out with refaults at most 2×") for q in questions)
    assert all(row[1] and row[2] for row in seen["verdict"])
    pareto = seen["figures"]["fig-pareto"]
    # the simulated curves, the Pareto front and the budget line (each with its legend handle)
    assert "drawn" in pareto["class"] and pareto["marks"] >= 4


def test_ctrl_c_on_a_real_compare(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: finished runs stay, their report is written."""
    import glob
    import os
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "locality", "compare", "--workers", "20000", "--layouts", "slab,objects,clustered",
         "--steps", "60", "--step-interval", "0.05", "--interval", "0.5", "--runs", str(runs),
         "--out", str(tmp_path / "c.html")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(str(runs / "*" / "objects" / "manifest.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "compare ended before the second layout started"
            time.sleep(0.1)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert f"report: {tmp_path / 'c.html'}" in out
    (root,) = runs.iterdir()
    statuses = {p.name: json.loads((p / "manifest.json").read_text())["status"] for p in root.iterdir()}
    assert statuses == {"slab": "complete", "objects": "interrupted"}
    html = (tmp_path / "c.html").read_text()
    assert set(table(html)) == {"slab"}
    assert "Interrupted (Ctrl-C) during objects" in html and "Not run: clustered." in html
