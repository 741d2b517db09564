"""Figures: the drawn data equal the stored data; labels carry units; `locality figures` is reproducible."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures_runs import PAGE, make_beam, make_probe, make_run
from locality.cli import main
from locality.report import figures as figs
from locality.report import foreign
from locality.report.data import load_runs
from locality.report.thesis import MissingRuns, load_figure_set, write_figures

UNIT = re.compile(r"\(([^()]+)\)$")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    dirs = [
        make_run(d, "objects", "objects", bytes_per_worker=1000.0, page_utilization=0.016, refault_rate=0.0),
        make_run(d, "slab", "slab", bytes_per_worker=120.0, page_utilization=0.3, refault_rate=3.0,
                 portions={"worker_state": (1 << 20, 4096.0), "runtime_heap": (3 << 20, 8192.0)}),
        make_probe(d, pid=99),
    ]
    return load_runs(dirs)


@pytest.fixture(scope="module")
def vm_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("vm")
    return load_runs([make_probe(d, pid=98, with_pages=True), make_beam(d)])


@pytest.mark.parametrize("name", list(figs.FIGURES))
def test_every_axis_has_a_label_with_a_unit(runs, vm_runs, name):
    with figs.style():
        fig = figs.render(name, vm_runs if figs.FIGURES[name].probe_only else runs).figure
    assert fig.axes
    for ax in fig.axes:
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            if ax.get_label() == "<colorbar>" and not label:
                continue  # a colorbar labels only its long axis
            assert label, f"{name}: unlabelled axis"
            assert label in figs.CATEGORICAL_LABELS or UNIT.search(label), f"{name}: {label!r} has no unit"
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    for cb in colorbars:
        assert UNIT.search(cb.get_ylabel() or cb.get_xlabel())


def test_bars_are_the_stored_metrics(runs):
    with figs.style():
        fig = figs.render("bytes_per_worker", runs).figure
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert widths == [1000.0, 120.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["objects", "slab"]
    assert sorted(t.get_text() for t in ax.texts) == [" 0.12×", " 1×"]


def test_heatmap_image_is_the_written_matrix(tmp_path):
    written = np.zeros((3, 16), dtype=bool)
    written[0, :4] = True   # sample 0: pages 0-3
    written[2, 8:] = True   # sample 2: pages 8-15
    run = load_runs([make_run(tmp_path, "h", "slab", samples=3, regions=(("arena", 16),), written=written)])
    with figs.style():
        fig = figs.render("heatmap", run).figure
    image = fig.axes[0].get_images()[0].get_array()
    # 16 pages fit in the 400 bins: one page per row, rows = pages, columns = samples, in %.
    assert np.array_equal(np.asarray(image), written.T * 100.0)
    assert fig.axes[0].get_images()[0].get_extent()[3] == pytest.approx(16 * PAGE / 2**20)


def test_residency_map_rows_are_the_last_sample(runs):
    # Fixture: regions arena (48 pages) then heap (16); pages 0..31 resident.
    with figs.style():
        fig = figs.render("residency_map", runs[:1]).figure
    ax = fig.axes[0]
    rows = np.asarray(ax.get_images()[0].get_array())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["arena (0.188 MiB)", "heap (0.0625 MiB)"]
    page_of_bin = np.arange(200) * 48 // 200
    assert np.array_equal(rows[0], np.where(page_of_bin < 32, 100.0, 0.0))
    assert not rows[1].any()


def test_region_labels_of_probe_vmas():
    assert figs.region_label("0x7f0000-0x7f1000 r-xp /usr/lib/x86_64-linux-gnu/libc.so.6") == "libc.so.6 r-xp"
    assert figs.region_label("0x7f0000-0x7f1000 rw-p") == "anon 0x7f0000 rw-p"
    assert figs.region_label("arena") == "arena"


def test_binning_averages_contiguous_pages():
    m = np.array([[1, 1, 0, 0, 1, 0]], dtype=bool)
    assert figs._bin_columns(m, 3).tolist() == [[1.0, 0.0, 0.5]]
    assert figs._bin_columns(m, 2).tolist() == [[2 / 3, 1 / 3]]


def test_page_ages_exact(runs):
    # Fixture: sample k (t = 0.5 k) writes pages k..k+7; pages 0..31 resident.
    ages, never = figs.page_ages(runs[0])
    assert never == 32 - 13  # pages 13..31 resident, never written
    assert sorted(ages.tolist()) == [0.0] * 8 + [0.5, 1.0, 1.5, 2.0, 2.5]


def test_memory_saved_from_resident_pages(tmp_path):
    resident = np.zeros((4, 10), dtype=bool)
    resident[0, :4] = True
    resident[1, :8] = True   # peak 8
    resident[2, :4] = True   # 50% saved
    resident[3, :2] = True   # 75% saved
    run = load_runs([make_run(tmp_path, "p", "slab", samples=4, regions=(("arena", 10),), resident=resident)])[0]
    assert figs.memory_saved_pct(run) == pytest.approx((0 + 50 + 75) / 3)


def test_pareto_with_more_runs_than_colours_keeps_every_entry_distinct_and_off_the_data(tmp_path):
    # The thesis Pareto figure has 14 runs (7 layouts x 2 policies); the palette has 8 colours.
    paths = [make_run(tmp_path, f"r{k}", f"layout{k}", samples=4, regions=(("arena", 10),), refault_rate=float(k))
             for k in range(14)]
    with figs.style():
        fig = figs.render("pareto", load_runs(paths)).figure
    ax = fig.axes[0]
    keys = {(tuple(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes()) for c in ax.collections}
    assert len(ax.collections) == 14 and len(keys) == 14
    assert ax.get_legend() is None and len(fig.legends) == 1
    assert len(fig.legends[0].get_texts()) == 14


def test_latency_cdf_is_the_stored_sample(runs):
    with figs.style():
        fig = figs.render("latency_cdf", runs).figure
    x, y = fig.axes[0].lines[0].get_data()
    assert np.array_equal(x, np.arange(1, 101, dtype=float))  # 1..100 µs stored as ns
    assert y[-1] == 100.0 and y[0] == 1.0


def test_probe_vma_series_sum_to_rss(runs):
    t, names, values = foreign._vma_series(runs[2], "rss_bytes", top=2)
    assert names == ["[heap]", "anon 0x7f0000000000", "other (1 VMAs)"]
    # Fixture: VMA i at sample k has (i+1)(k+1)*100 pages.
    assert values.sum(axis=0).tolist() == [(k + 1) * 600 * PAGE for k in range(5)]


# --- locality figures ---------------------------------------------------------


BASE = 'workers = 1000\nlayout = "slab"\nsteps = 10\n\n[pattern]\nname = "sheet"\n\n[grid]\nlayout = ["objects", "slab"]\n'


def experiment(tmp_path: Path, runs_dir: Path, figures: str = "", run_ids: list[str] | None = None) -> Path:
    path = tmp_path / "exp.toml"
    ids = "" if run_ids is None else "run_ids = [" + ", ".join(f'"{r}"' for r in run_ids) + "]\n"
    path.write_text(f'{BASE}\n[figures]\nruns = "{runs_dir}"\n{ids}format = ["svg"]\n{figures}')
    return path


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The runs of BASE's grid, stored under the sweep's point ids with the sweep's configs."""
    from locality.experiment.sweep import points

    d = tmp_path_factory.mktemp("stored")
    exp = experiment(d, d)
    config = load_config_without_tables(exp)
    for point, bpw in zip(points(config, {"layout": ["objects", "slab"]}), (900.0, 100.0)):
        make_run(d, point.point_id, point.config.layout, bytes_per_worker=bpw, config=point.config.model_dump(mode="json"))
    return d


def load_config_without_tables(path: Path):
    import tomllib

    from locality.experiment.config import validate

    data = tomllib.loads(path.read_text())
    return validate({k: v for k, v in data.items() if k not in ("grid", "figures")})


def test_figures_twice_give_identical_svg(stored, tmp_path):
    exp = experiment(tmp_path, stored, figures=(
        '[[figures.figure]]\nname = "bytes_per_worker"\n'
        '[[figures.figure]]\nname = "heatmap"\nfile = "writes"\nwhere = { layout = "slab" }\n'
        '[[figures.figure]]\nname = "page_age"\nlabel = "{layout} ({workers})"\n'))
    outs = [tmp_path / "out0", tmp_path / "out1"]
    with pytest.raises(SystemExit) as e:
        main(["figures", str(exp), "--out", str(outs[0]), "--format", "svg"])
    assert e.value.code == 0
    # The second time in a fresh interpreter with another hash seed: no set or dict order may leak in.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-m", "locality", "figures", str(exp), "--out", str(outs[1]), "--format", "svg"],
                   check=True, env=env, capture_output=True)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == ["bytes_per_worker.svg", "page_age.svg", "writes.svg"]
    for n in names:
        assert (outs[0] / n).read_bytes() == (outs[1] / n).read_bytes(), n
    svg = (outs[0] / "page_age.svg").read_text()
    assert "<dc:date>" not in svg


def test_figures_all_formats(stored, tmp_path, capsys):
    exp = experiment(tmp_path, stored, figures='[[figures.figure]]\nname = "wss_over_time"\n')
    with pytest.raises(SystemExit) as e:
        main(["figures", str(exp), "--out", str(tmp_path / "o"), "--format", "pdf,svg,png", "--json"])
    assert e.value.code == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert sorted(Path(f).name for f in files) == ["wss_over_time.pdf", "wss_over_time.png", "wss_over_time.svg"]
    assert (tmp_path / "o" / "wss_over_time.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "o" / "wss_over_time.png").read_bytes().startswith(b"\x89PNG")


def test_missing_runs_named_with_sweep_command_exit_2(stored, tmp_path, capsys):
    exp = experiment(tmp_path, tmp_path / "empty")
    with pytest.raises(SystemExit) as e:
        main(["figures", str(exp), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    ids = sorted(p.name for p in stored.iterdir() if (p / "manifest.json").exists())
    assert f"2 of 2 runs missing in {tmp_path / 'empty'}: " in err
    assert all(i in err for i in ids)  # the ids the sweep gives these points
    assert f"locality sweep {exp} --out {tmp_path / 'empty'} --resume" in err
    assert not (tmp_path / "o").exists()


def test_missing_listed_runs_named(stored, tmp_path, capsys):
    exp = experiment(tmp_path, stored, run_ids=["zz-missing", "yy-missing"])
    with pytest.raises(MissingRuns, match="2 of 2 runs missing .*zz-missing, yy-missing"):
        write_figures(load_figure_set(exp))


def test_incomplete_run_counts_as_missing(tmp_path):
    make_run(tmp_path / "r", "half", "slab", status="interrupted")
    fs = load_figure_set(experiment(tmp_path, tmp_path / "r", run_ids=["half"]))
    with pytest.raises(MissingRuns, match=r"half \(interrupted\)"):
        write_figures(fs)


@pytest.mark.parametrize("body, message", [
    ('[[figures.figure]]\nname = "nope"\n', "figures.figure[0].name: unknown 'nope'"),
    ('[[figures.figure]]\nname = "heatmap"\nfile = "../x"\n', "must be a plain file stem"),
    ('colour = 1\n', "unknown key 'figures.colour'"),
])
def test_bad_experiment_file(stored, tmp_path, body, message, capsys):
    exp = experiment(tmp_path, stored, figures=body)
    with pytest.raises(SystemExit) as e:
        main(["figures", str(exp)])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_thesis_experiment_file_is_one_file_for_sweep_and_figures():
    from locality.experiment.config import load_config
    from locality.experiment.sweep import file_grid, points

    thesis = Path(__file__).resolve().parent.parent / "experiments" / "thesis.toml"
    fs = load_figure_set(thesis)
    config = load_config(thesis)  # what `locality sweep` reads
    assert fs.run_ids == [p.point_id for p in points(config, file_grid(thesis))]
    assert len(fs.run_ids) == len(set(fs.run_ids)) == 7 * 3 * 2
    assert fs.runs_dir == Path(config.out)
    assert len(fs.requests) == 12  # 10 figures and the two portion figures
    assert fs.out == Path("reports") and [r.file for r in fs.reports] == ["main-job"]
    # At 100k: the ids `locality sweep thesis.toml --set workers=100000` gives, none of the 1M ones.
    small = load_figure_set(thesis, overrides=["workers=100000"])
    assert small.run_ids == [p.point_id for p in points(load_config(thesis, ["workers=100000"]), file_grid(thesis))]
    assert not set(small.run_ids) & set(fs.run_ids)
    assert all(p.config.workers == 100_000 for p in small.points)


def test_figures_from_a_real_sweep(tmp_path):
    """The run ids `locality figures` derives are the ones a real sweep stores."""
    from locality.experiment.sweep import run_sweep

    runs_dir = tmp_path / "runs"
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'workers = 4000\nlayout = "slab"\nsteps = 15\nstep_interval = 0.02\n\n[pattern]\nname = "sheet"\n\n'
        '[sampling]\ninterval = 0.1\ncold_thresholds = [0.1]\n\n'
        '[grid]\nlayout = ["objects", "slab"]\n\n'
        f'[figures]\nruns = "{runs_dir}"\nformat = ["svg"]\n'
        '[[figures.figure]]\nname = "page_utilization"\n'
        '[[figures.figure]]\nname = "heatmap"\nwhere = { layout = "slab" }\n')
    config = load_config_without_tables(exp)
    dirs = run_sweep(config, {"layout": ["objects", "slab"]}, runs_dir, progress=False, budget=False)
    assert [json.loads((d / "manifest.json").read_text())["status"] for d in dirs] == ["complete", "complete"]
    written, notes = write_figures(load_figure_set(exp, out=tmp_path / "fig"))
    assert sorted(p.name for p in written) == ["heatmap.svg", "page_utilization.svg"]
    assert notes == []
    with figs.style():
        fig = figs.render("page_utilization", load_runs(dirs)).figure
    metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    state_panel, whole_panel = fig.axes[0], fig.axes[1]
    assert [p.get_width() for p in state_panel.patches] == [m["state_page_utilization"] * 100 for m in metrics]
    assert [p.get_width() for p in whole_panel.patches] == [m["page_utilization"] * 100 for m in metrics]


def test_figure_without_data_writes_nothing(stored, tmp_path, capsys):
    make_run(tmp_path / "r", "nolat", "slab", with_latency=False)
    exp = experiment(tmp_path, tmp_path / "r", run_ids=["nolat"], figures=(
        '[[figures.figure]]\nname = "bytes_per_worker"\n[[figures.figure]]\nname = "latency_cdf"\n'))
    with pytest.raises(SystemExit) as e:
        main(["figures", str(exp), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "figure latency_cdf: no run has latency.csv" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # bytes_per_worker was drawn first, but not written
