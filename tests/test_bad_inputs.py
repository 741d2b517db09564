"""Issue 12, "Bad input that is not refused": every case is one line on stderr, exit 2, no traceback, nothing created.

Configs are bounded before the child starts (strict types, finite floats,
bounds, a memory estimate); outputs are checked for writability before any
work; broken stored files give one line (or a warning and what is whole).
The memory cases never run what they refuse: `pattern.waves = 1e9` once
drove a child to 22.7 GiB.
"""

from __future__ import annotations

import json
import os
import tempfile
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, UNPRIVILEGED, run_cli
from fixtures_runs import make_run
from test_cli_errors import assert_nothing_written, assert_refused, run_main  # noqa: F401 (fixture)

from locality.cli import main

SMALL = """
workers = 1000
steps = 2
seed = 1
[pattern]
name = "sheet"
[sampling]
interval = 0
"""


@pytest.fixture
def elsewhere(tmp_path_factory) -> Path:
    """A directory for inputs, apart from the working directory that must stay empty."""
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture
def config(elsewhere) -> Path:
    p = elsewhere / "small.toml"
    p.write_text(SMALL)
    return p


# -- configs: strict types, finite numbers, bounds ----------------------------


@pytest.mark.parametrize("setting, needles", [
    ("workers=1e12", ["workers: must be an integer (got 1000000000000.0)"]),
    ("workers=true", ["workers: must be an integer (got true)"]),
    ("workers=1.0", ["workers: must be an integer"]),
    ("workers='1000'", ["workers: must be an integer"]),
    ("step_interval=inf", ["step_interval: must be a finite number (got inf)"]),
    ("step_interval=nan", ["step_interval: must be a finite number (got nan)"]),
    ("step_interval=1e300", ["step_interval: must be <= 604800"]),
    ("duration=inf", ["duration: must be a finite number (got inf)"]),
    ("pattern.radius=inf", ["pattern.radius: must be a finite number (got inf)"]),
    ("pattern.radius=nan", ["pattern.radius: must be a finite number (got nan)"]),
    ("pattern.radius=1e6", ["pattern.radius: must be <= 32, the sheet's width at 1,000 workers"]),
    ("pattern.waves=1e9", ["pattern.waves: must be an integer (got 1000000000.0)"]),
    ("pattern.waves=1000000000", ["pattern.waves: must be <= workers (1,000)"]),
    ("pattern.lifetime=true", ["pattern.lifetime: must be an integer (got true)"]),
    ("pattern.p=nan", ["pattern.p: must be a finite number (got nan)"]),
    ("pattern={name='zipf',s=inf}", ["pattern.s: must be a finite number (got inf)"]),
    ("pattern={name='bursty',p_on=nan}", ["pattern.p_on: must be a finite number (got nan)"]),
    ("seed=-1", ["seed: must be >= 0 (got -1)"]),
    ("seed=1.5", ["seed: must be an integer (got 1.5)"]),
    ("steps=2.0", ["steps: must be an integer (got 2.0)"]),
    ("hugepages=1", ["hugepages: must be true or false (got 1)"]),
    ("sampling.interval=inf", ["sampling.interval: must be a finite number (got inf)"]),
    ("sampling.cold_thresholds=[1, nan]", ["sampling.cold_thresholds[1]: must be a finite number (got nan)"]),
    ("sampling.cold_thresholds=[1e9]", ["sampling.cold_thresholds[0]: must be <= 604800"]),
    ("sampling.writes=0", ["sampling.writes: must be true or false (got 0)"]),
    ("reclaim={policy='cgroup',limit=1.5}", ["reclaim.limit: must be a size like 512M or a whole number of bytes (got 1.5)"]),
    ("reclaim={policy='pageout-idle',idle_seconds=inf}", ["reclaim.idle_seconds: must be a finite number (got inf)"]),
])
def test_config_values_are_bounded_before_anything_starts(run_main, config, setting, needles):
    rc, _, err = run_main("run", config, "--set", setting, "--out", "runs")
    assert_refused(rc, err, *needles)
    assert_nothing_written(Path.cwd())


@pytest.mark.parametrize("arena_dir, needle", [
    ("/nonexistent-locality", "arena_dir: '/nonexistent-locality' is not a directory"),
    ("/proc", "arena_dir: cannot create a file in '/proc'"),
])
def test_file_arena_directory_is_checked_before_any_child(run_main, config, arena_dir, needle):
    rc, _, err = run_main("run", config, "--set", "arena='file'", "--set", f"arena_dir='{arena_dir}'", "--out", "runs")
    assert_refused(rc, err, needle)
    assert_nothing_written(Path.cwd())


def test_a_failing_calibration_run_is_one_line_without_a_temporary_path(run_main, config, monkeypatch, elsewhere):
    from locality.experiment import runner

    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(elsewhere / "cache"))  # nothing calibrated yet

    def fail(cfg, out, **kw):
        raise runner.RunFailed("run calibration failed: the child failed: boom", "see /tmp/gone/manifest.json")

    monkeypatch.setattr(runner, "run", fail)
    rc, _, err = run_main("run", config, "--out", "runs")
    line = assert_refused(rc, err, "a calibration run of 1,000 workers (layout slab) failed: the child failed: boom")
    assert "/tmp/gone" not in line
    assert_nothing_written(Path.cwd())


def test_absurd_workers_refused_from_a_lower_bound_without_running_anything(run_main, config, monkeypatch):
    # Any calibration run here would be a bug: the lower bound alone exceeds memory.
    monkeypatch.setattr("locality.experiment.estimate.measured_footprint", lambda *a: pytest.fail("calibrated"))
    rc, _, err = run_main("run", config, "--set", "workers=1000000000000", "--out", "runs")
    line = assert_refused(rc, err, "this run needs at least", "1,000,000,000,000 workers x 8 B", "is available")
    assert "lower workers" in line
    # 10^9 waves on 10^9 workers: the wave arrays alone (10^9 x 512 B + cells) are refused.
    rc, _, err = run_main("run", config, "--set", "workers=1000000000", "--set", "pattern.waves=1000000000", "--out", "runs")
    assert_refused(rc, err, "needs at least", "of sheet pattern arrays", "is available")
    assert_nothing_written(Path.cwd())


def test_estimate_above_available_memory_is_refused_with_both_numbers(run_main, config, monkeypatch):
    from locality.experiment import estimate

    monkeypatch.setattr(estimate, "available_bytes", lambda: 1 << 20)
    monkeypatch.setattr(estimate, "lower_bound", lambda cfg: 0)
    rc, _, err = run_main("run", config, "--out", "runs")
    assert_refused(rc, err, "this run needs about", "1,000 workers x", "calibration run of 1,000 workers",
                   "but only 1.0 MiB is available")
    assert_nothing_written(Path.cwd())


def test_cgroup_limit_below_the_empty_child_is_refused(run_main, config):
    rc, _, err = run_main("run", config, "--set", "reclaim={policy='cgroup',limit=4096}", "--out", "runs")
    assert_refused(rc, err, "reclaim.limit 4.0 KiB is below the", "an empty child already uses")
    assert_nothing_written(Path.cwd())


def test_sweep_and_compare_check_memory_before_the_first_run(run_main, config):
    rc, _, err = run_main("sweep", config, "--grid", "workers=1000,1000000000000", "--out", "runs")
    assert_refused(rc, err, "sweep point workers=1000000000000-", "needs at least")
    rc, _, err = run_main("compare", "--workers", "1000000000000", "--layouts", "slab", "--steps", "1")
    assert_refused(rc, err, "layout slab needs at least")
    assert_nothing_written(Path.cwd())


def test_pattern_estimate_covers_the_measured_peak():
    """The sheet pattern's arrays, measured with tracemalloc, stay under their estimate (and near it)."""
    import tracemalloc

    from locality.experiment.config import validate
    from locality.experiment.estimate import pattern_bytes
    from locality.population.patterns import make_pattern

    for waves, radius in ((20_000, 3.0), (2, 60.0)):
        cfg = validate({"workers": 40_000, "steps": 1, "pattern": {"name": "sheet", "waves": waves, "radius": radius}})
        tracemalloc.start()
        steps = make_pattern("sheet", cfg.workers, seed=1, **cfg.pattern_params).steps()
        for _ in range(2):
            next(steps)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        est = pattern_bytes(cfg)
        assert peak <= est <= 4 * peak, (waves, radius, peak, est)


# -- outputs: checked for writability before any work --------------------------


def _experiment(tmp_path: Path) -> Path:
    return Path(shutil.copy(ROOT / "experiments" / "thesis.toml", tmp_path / "thesis.toml"))


UNWRITABLE = [
    # (command, args before the output option, option, value)
    ("report", ["RUN"], "-o", "afile/x.html"),
    ("report", ["RUN"], "-o", "/proc/x.html"),
    ("report", ["RUN"], "-o", "/sys/x.html"),
    ("figures", ["EXPERIMENT"], "-o", "afile/figs"),
    ("figures", ["EXPERIMENT"], "-o", "/proc/figs"),
    ("compare", ["--workers", "100", "--steps", "1", "--layouts", "slab"], "-o", "afile/c.html"),
    ("compare", ["--workers", "100", "--steps", "1", "--layouts", "slab"], "-o", "/proc/c.html"),
    ("compare", ["--workers", "100", "--steps", "1", "--layouts", "slab"], "--runs", "/sys/runs"),
    ("beam", ["-n", "10"], "--out", "afile/runs"),
    ("beam", ["-n", "10"], "--out", "/proc/runs"),
    ("run", ["CONFIG"], "--out", "/sys/runs"),
    ("sweep", ["CONFIG", "--grid", "seed=1,2"], "--out", "afile/runs"),
    ("probe", [str(os.getpid()), "--duration", "1s"], "--out", "/proc/probe"),
]


@pytest.mark.parametrize("command, args, option, value", UNWRITABLE)
def test_unwritable_output_is_refused_before_any_work(run_main, elsewhere, config, command, args, option, value):
    make_run(elsewhere / "runs", "r1")
    args = [str(elsewhere / "runs" / "r1") if a == "RUN" else str(_experiment(elsewhere)) if a == "EXPERIMENT"
            else str(config) if a == "CONFIG" else a for a in args]
    Path("afile").write_text("")
    rc, _, err = run_main(command, *args, option, value)
    assert_refused(rc, err, f"{'--out' if option == '-o' else option} {value!r}", "choose a path in a writable directory")
    assert os.listdir() == ["afile"]


def test_unwritable_directory_as_an_ordinary_user():
    # Under /tmp: pytest's own tmp_path is mode 700 all the way up.
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="locality-unwritable-"))
    try:
        make_run(top / "runs", "r1")
        locked = top / "locked"
        locked.mkdir()
        for d, _, files in os.walk(top):  # readable by nobody, writable by root only
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        rc, _, err = run_cli("report", top / "runs" / "r1", "-o", locked / "sub" / "r.html", cwd=top, prefix=UNPRIVILEGED)
        assert_refused(rc, err, "cannot create", "Permission denied")
        assert os.listdir(locked) == []
    finally:
        shutil.rmtree(top)


def test_existing_directory_where_a_file_is_expected(tmp_path):
    from locality.errors import InvalidArgument
    from locality.experiment.outputs import check_output_dir, check_output_file

    with pytest.raises(InvalidArgument, match="is a directory"):
        check_output_file(tmp_path, "--out")
    (tmp_path / "f").write_text("")
    with pytest.raises(InvalidArgument, match="is a file, not a directory"):
        check_output_dir(tmp_path / "f", "--out")
    # A writable path passes and the check leaves nothing behind.
    assert check_output_file(tmp_path / "a" / "b" / "r.html", "--out") == tmp_path / "a" / "b" / "r.html"
    assert sorted(os.listdir(tmp_path)) == ["f"]
    with pytest.raises(InvalidArgument, match="cannot create .*File name too long"):
        check_output_dir(tmp_path / "a" / ("x" * 300), "--out")


def test_a_check_of_a_new_directory_never_removes_it_under_another_command(tmp_path, monkeypatch):
    # Two commands given one new --out (two `sweep --resume`): while one checks, the other
    # creates the directory to write in it. The check must leave that directory alone.
    from locality.experiment import outputs

    out = tmp_path / "runs"
    real_mkstemp, real_mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

    def other_command_makes_out(real):
        def probe(*a, **kw):
            out.mkdir(exist_ok=True)
            return real(*a, **kw)
        return probe

    monkeypatch.setattr(outputs.tempfile, "mkstemp", other_command_makes_out(real_mkstemp))
    monkeypatch.setattr(outputs.tempfile, "mkdtemp", other_command_makes_out(real_mkdtemp))
    outputs.check_output_dir(out, "--out")
    (out / "manifest.json").write_text("{}")  # the other command goes on writing
    assert os.listdir(tmp_path) == ["runs"]


# -- broken stored files and odd names: one line, or what is whole -------------


def test_half_written_last_timeline_row_is_left_out_with_a_warning(run_main, elsewhere):
    run = make_run(elsewhere / "runs", "torn")
    whole = (run / "timeline.csv").read_text()
    rows = whole.count("\n") - 1
    (run / "timeline.csv").write_text(whole + whole.splitlines()[-1][:7])  # a crash mid-row
    from locality.experiment import load

    with pytest.warns(UserWarning, match="last row is incomplete"):
        assert len(load(run)) == rows
    rc, out, err = run_main("report", run, "-o", "r.html")
    assert rc == 0 and out.startswith("report: ") and os.listdir() == ["r.html"]
    assert err == f"locality: warning: {run / 'timeline.csv'}: the last row is incomplete (the run stopped while writing it); it is left out\n"


def test_latency_with_text_is_one_line(run_main, elsewhere):
    run = make_run(elsewhere / "runs", "lat")
    (run / "latency.csv").write_text("latency_ns\n100\nabc\n200\n")
    rc, _, err = run_main("report", run, "-o", "r.html")
    assert_refused(rc, err, "latency.csv: row 3, column latency_ns: 'abc' is not a number")
    assert os.listdir() == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_beam_interval_must_be_finite(run_main, value):
    rc, _, err = run_main("beam", "-n", "10", f"--interval={value}")
    assert_refused(rc, err, "--interval", "is not a duration")
    rc, _, err = run_main("beam", "-n", "10", f"--duration={value}")
    assert_refused(rc, err, "duration")
    assert os.listdir() == []


@pytest.mark.parametrize("manifest", ["[1, 2]", '"complete"', '{"status": 5}', '{"status": "compl', ""])
def test_sweep_resume_reruns_a_point_with_a_malformed_manifest(tmp_path, manifest):
    from locality.experiment.config import validate
    from locality.experiment.sweep import points, run_sweep

    base = validate({"workers": 200, "steps": 1, "sampling": {"interval": 0}})
    pts = points(base, {"seed": [1, 2]})
    bad = tmp_path / pts[0].point_id
    bad.mkdir()
    (bad / "manifest.json").write_text(manifest)
    run_sweep(base, {"seed": [1, 2]}, tmp_path, resume=True, progress=False)
    for p in pts:
        assert json.loads((tmp_path / p.point_id / "manifest.json").read_text())["status"] == "complete"


def test_dollar_signs_in_ids_and_vma_paths_are_text(tmp_path):
    """Run ids and VMA paths reach matplotlib as labels; '$\\frac{x}$' made mathtext raise."""
    from locality.report.figures import FIGURES, style
    from locality.report.html import write_report

    weird = "$\\frac{x}$"
    runs = [make_run(tmp_path / "runs", f"a{weird}", layout=f"slab{weird}", regions=((f"/tmp/m{weird}", 8), ("heap", 8))),
            make_run(tmp_path / "runs", "b", layout="objects")]
    assert write_report(runs, tmp_path / "r.html").exists()
    with style():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.set_title(f"VMA {weird}")
        fig.savefig(tmp_path / "t.svg")  # raised ValueError (mathtext) before text.parse_math: False
        plt.close(fig)
    assert FIGURES


@pytest.mark.parametrize("args, option", [
    (["compare", "--step-interval", "nan"], "--step-interval"),
    (["compare", "--interval", "inf"], "--interval"),
    (["beam", "-n", "10", "--p", "nan"], "--p"),
])
def test_float_options_must_be_finite(run_main, args, option):
    # click.FloatRange lets nan through: nan compares false with every bound.
    rc, _, err = run_main(*args)
    assert_refused(rc, err, f"Invalid value for '{option}'", "is not a finite number")
    assert os.listdir() == []


def test_calibration_is_measured_once_then_reused(run_main, config, monkeypatch, elsewhere):
    from locality.experiment import estimate, runner
    from locality.experiment.config import load_config

    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(elsewhere / "cache"))
    real, calls = runner.run, []
    monkeypatch.setattr(runner, "run", lambda *a, **k: calls.append(a[2] if len(a) > 2 else a[1]) or real(*a, **k))
    monkeypatch.setattr(estimate, "available_bytes", lambda: 1 << 20)  # refused: nothing is saved
    rc, _, err = run_main("run", config, "--out", "runs")
    assert_refused(rc, err, "calibration run of 1,000 workers")
    assert len(calls) == 1 and not (elsewhere / "cache").exists()
    monkeypatch.setattr(estimate, "available_bytes", lambda: 1 << 40)
    cfg = load_config(config)
    estimate.check_memory([("this run", cfg)], "runs")
    assert len(calls) == 2 and (elsewhere / "cache" / "calibration.json").exists()
    estimate.check_memory([("this run", cfg)], "runs")  # from the cache: no run
    assert len(calls) == 2
