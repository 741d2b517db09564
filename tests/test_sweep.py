"""Sweeps: stable point ids, resume after Ctrl-C runs only what is missing, memory guard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from locality.errors import ConfigError, InvalidArgument
from locality.experiment import load, store
from locality.experiment.config import validate
from locality.experiment.sweep import MemoryBudgetExceeded, parse_grid, pending, points, run_sweep

ROOT = Path(__file__).resolve().parent.parent
BASE = {"workers": 1000, "steps": 5, "pattern": {"name": "uniform", "p": 0.1}, "sampling": {"interval": 0.05}}


def test_parse_grid_values_are_toml():
    g = parse_grid(["workers=1000,2000", "layout=slab,objects", "sampling.cold_thresholds=[1, 2],[3]", 'pattern.name="sheet"'])
    assert g == {"workers": [1000, 2000], "layout": ["slab", "objects"], "sampling.cold_thresholds": [[1, 2], [3]],
                 "pattern.name": ["sheet"]}
    for bad in ("workers", "workers=", "=1,2"):
        with pytest.raises(InvalidArgument):
            parse_grid([bad])
    with pytest.raises(InvalidArgument, match="given twice"):
        parse_grid(["workers=1", "workers=2"])


def test_point_ids_are_stable_distinct_and_follow_the_config():
    cfg = validate(BASE)
    pts = points(cfg, {"workers": [100, 200], "layout": ["slab", "objects"]})
    ids = [p.point_id for p in pts]
    assert [i.rsplit("-", 1)[0] for i in ids] == [
        "workers=100+layout=slab", "workers=100+layout=objects", "workers=200+layout=slab", "workers=200+layout=objects"]
    assert len(set(ids)) == 4
    assert ids == [p.point_id for p in points(validate(BASE), {"workers": [100, 200], "layout": ["slab", "objects"]})]
    assert (pts[3].config.workers, pts[3].config.layout) == (200, "objects")
    # Another base config is another sweep: same grid values, other ids.
    other = points(validate({**BASE, "seed": 9}), {"workers": [100]})
    assert other[0].point_id.startswith("workers=100-") and other[0].point_id != points(cfg, {"workers": [100]})[0].point_id


def test_bad_point_is_named_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError) as e:
        run_sweep(validate(BASE), {"workers": [10, -1]}, tmp_path / "runs", progress=False)
    assert str(e.value) == "sweep point workers=-1: workers: must be > 0 (got -1)"
    assert not (tmp_path / "runs").exists()


def test_pending_skips_only_complete_runs(tmp_path):
    pts = points(validate(BASE), {"workers": [1, 2, 3, 4]})
    for p, status in zip(pts, ["complete", "failed", "interrupted"]):
        store.write_manifest(tmp_path / p.point_id, store.start_manifest("run", p.point_id, {}) | {"status": status})
    assert [p.point_id for p in pending(pts, tmp_path, resume=True)] == [p.point_id for p in pts[1:]]
    assert pending(pts, tmp_path, resume=False) == pts


def test_sweep_refuses_to_overwrite_without_resume(tmp_path):
    pts = points(validate(BASE), {"workers": [1]})
    store.write_manifest(tmp_path / pts[0].point_id, store.start_manifest("run", pts[0].point_id, {}) | {"status": "complete"})
    with pytest.raises(InvalidArgument, match="pass --resume"):
        run_sweep(validate(BASE), {"workers": [1]}, tmp_path, progress=False)


def test_memory_guard_names_both_numbers(tmp_path):
    with pytest.raises(MemoryBudgetExceeded) as e:
        run_sweep(validate(BASE), {"workers": [1000, 10**10]}, tmp_path / "runs", progress=False)
    msg = str(e.value)
    # Refused from the lower bound (8 B per worker) alone: no calibration run needed.
    assert msg.startswith("sweep point workers=10000000000-") and "needs at least" in msg and "is available" in msg
    assert "10,000,000,000 workers x 8 B" in msg
    assert not any((tmp_path / "runs").glob("workers=*"))  # nothing ran


def test_sweep_interrupted_then_resumed_runs_only_the_missing_points(tmp_path):
    (tmp_path / "c.toml").write_text(
        'workers = 2000\nduration = 1.5\nstep_interval = 0.01\n[pattern]\nname = "uniform"\n[sampling]\ninterval = 0.1\n'
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "locality", "sweep", "c.toml", "--grid", "seed=1,2,3", "--out", "runs"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ids = [pt.point_id for pt in points(validate({"workers": 2000, "duration": 1.5, "step_interval": 0.01,
                                                   "pattern": {"name": "uniform"}, "sampling": {"interval": 0.1}}),
                                        {"seed": [1, 2, 3]})]
    runs = tmp_path / "runs"
    second = runs / ids[1] / "timeline.csv"
    deadline = time.monotonic() + 90
    while not second.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    status = {i: json.loads((runs / i / "manifest.json").read_text())["status"] for i in ids if (runs / i).exists()}
    assert status == {ids[0]: "complete", ids[1]: "interrupted"}
    assert len(load(runs / ids[1])) >= 1
    first_created = json.loads((runs / ids[0] / "manifest.json").read_text())["created"]

    rc = subprocess.run(cmd + ["--resume", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr
    rows = [json.loads(line) for line in rc.stdout.splitlines()]
    assert [r["point_id"] for r in rows] == ids and {r["status"] for r in rows} == {"complete"}
    # Only the point that was complete before this sweep is reported as skipped.
    assert [r["skipped"] for r in rows] == [True, False, False]
    # The complete point was not run again.
    assert json.loads((runs / ids[0] / "manifest.json").read_text())["created"] == first_created
    assert all(json.loads((runs / i / "manifest.json").read_text())["status"] == "complete" for i in ids)


def test_experiment_file_grid_table(cli, tmp_path):
    from locality.experiment.config import load_config
    from locality.experiment.sweep import file_grid

    text = (
        'workers = 500\nsteps = 3\n[pattern]\nname = "uniform"\np = 0.1\n[sampling]\ninterval = 0.05\n'
        '[grid]\nseed = [1, 2]\n[figures]\nruns = "runs"\n'
    )
    (tmp_path / "e.toml").write_text(text)
    cfg = load_config(tmp_path / "e.toml")  # [grid] and [figures] are not run settings
    assert file_grid(tmp_path / "e.toml") == {"seed": [1, 2]}
    ids = [p.point_id for p in points(cfg, {"seed": [1, 2]})]
    rc, out, err = cli("sweep", "e.toml", "--out", "runs", "--json")
    assert rc == 0, err
    assert [json.loads(line)["point_id"] for line in out.splitlines()] == ids
    (tmp_path / "bad.toml").write_text(text.replace("seed = [1, 2]", "seed = 3"))
    rc, out, err = cli("sweep", "bad.toml")
    assert rc == 2 and err.strip() == "locality: error: grid.seed: must be a non-empty list of values (got 3)"
    (tmp_path / "none.toml").write_text(text.split("[grid]")[0])
    rc, out, err = cli("sweep", "none.toml")
    assert rc == 2 and "no --grid given and the config has no [grid] table" in err


def test_figures_set_finds_the_runs_of_sweep_set(cli, tmp_path):
    """`figures --set` derives the same run ids as `sweep --set`; without the --set they are missing."""
    (tmp_path / "e.toml").write_text(
        'workers = 500\nsteps = 3\n[pattern]\nname = "uniform"\np = 0.1\n[sampling]\ninterval = 0.05\n'
        '[grid]\nseed = [1, 2]\n[figures]\nruns = "runs"\nout = "figs"\n'
        '[[figures.figure]]\nname = "bytes_per_worker"\nfile = "bpw"\n'
    )
    rc, out, err = cli("sweep", "e.toml", "--set", "workers=300", "--out", "runs", "--json")
    assert rc == 0, err
    swept = [json.loads(line)["run_dir"] for line in out.splitlines()]
    assert len(swept) == 2
    rc, out, err = cli("figures", "e.toml", "--set", "workers=300", "--format", "svg", "--json")
    assert rc == 0, err
    drawn = json.loads(out)
    assert drawn["run_dirs"] == swept and drawn["files"] == ["figs/bpw.svg"]
    rc, out, err = cli("figures", "e.toml", "--format", "svg")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("locality: error: 2 of 2 runs missing in runs: ")
    # What producing them needs: no swap or root; time and memory from the 300-worker runs stored there.
    assert re.search(r"\(produce them with: locality sweep e.toml --out runs --resume; "
                     r"needs about \d+ s, about [\d.,]+ MiB at the largest point\)$", err.rstrip()), err
    # A sweep again with --resume: what it skipped it says it skipped, not "complete".
    rc, out, err = cli("sweep", "e.toml", "--set", "workers=300", "--out", "runs", "--resume")
    assert rc == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["skipped", "skipped"]
    assert err.splitlines()[0] == "grid: 2 points, 0 to run, 2 already complete"
