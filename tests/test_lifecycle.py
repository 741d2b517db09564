"""The run lifecycle: exclusive run directories, safe ids, signals at any moment, crashed runners."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from locality.errors import InvalidArgument
from locality.experiment import load_run, store
from locality.experiment.lifecycle import RunLifecycle

CONFIG = 'workers = 2000\nsteps = 3\n[pattern]\nname = "uniform"\np = 0.1\n[sampling]\ninterval = 0.05\n'
LONG = 'workers = 20000\nduration = 3\nstep_interval = 0.01\n[pattern]\nname = "uniform"\n[sampling]\ninterval = 0.2\n'


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def files_parse(run_dir: Path) -> None:
    """Every file of a run is whole: JSON, CSV and npz all open."""
    json.loads((run_dir / "manifest.json").read_text())
    for csv in run_dir.glob("*.csv"):
        pd.read_csv(csv)
    if (run_dir / "metrics.json").exists():
        json.loads((run_dir / "metrics.json").read_text())
    if (run_dir / "pages.npz").exists():
        import numpy as np

        with np.load(run_dir / "pages.npz") as z:
            [z[k] for k in z.files]
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")], "temporary files left"


def test_existing_id_is_refused_and_replace_replaces(cli, tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    rc, _, err = cli("run", "c.toml", "--out", "runs", "--id", "a", "--json")
    assert rc == 0, err
    first = json.loads((tmp_path / "runs" / "a" / "manifest.json").read_text())
    rc, out, err = cli("run", "c.toml", "--out", "runs", "--id", "a", "--json")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        f"locality: error: run directory runs/a already exists (complete) (pass --replace to overwrite it, or choose another --id)"]
    assert json.loads((tmp_path / "runs" / "a" / "manifest.json").read_text()) == first  # untouched
    rc, _, err = cli("run", "c.toml", "--out", "runs", "--id", "a", "--replace", "--json")
    assert rc == 0, err
    second = json.loads((tmp_path / "runs" / "a" / "manifest.json").read_text())
    assert second["status"] == "complete" and second["created"] >= first["created"] and second["runner"] != first["runner"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["a"]  # no temporary directory left


@pytest.mark.parametrize("args", [["--id", "../x"], ["--id", "/abs"], ["--id", "."], ["--id", ".."], ["--id", ""],
                                  ["--id", "a/b"], ["--set", "name='../../x'"], ["--set", "name='/abs'"]])
def test_ids_and_names_that_are_not_one_directory_name_are_refused_writing_nothing(cli, tmp_path, args):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "c.toml").write_text(CONFIG)
    before = tree(tmp_path)
    rc, out, err = cli("run", "c.toml", "--out", "runs", *args, cwd=tmp_path / "work")
    assert rc == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "not a plain directory name" in err and "Traceback" not in err
    assert tree(tmp_path) == before
    assert not Path("/abs").exists()


def test_a_second_run_with_the_same_id_is_refused_while_the_first_runs(tmp_path):
    (tmp_path / "c.toml").write_text(LONG)
    first = subprocess.Popen([sys.executable, "-m", "locality", "run", "c.toml", "--out", "runs", "--id", "same", "--json"],
                             cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        manifest = tmp_path / "runs" / "same" / "manifest.json"
        deadline = time.monotonic() + 60
        while not manifest.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "locality", "run", "c.toml", "--out", "runs", "--id", "same",
                                 "--replace"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"its runner (PID {first.pid}) is still writing it" in second.stderr
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert json.loads(out)["run_dir"] == "runs/same"
    assert store.read_manifest(tmp_path / "runs" / "same")["status"] == "complete"


def test_sigkilled_runner_reads_as_crashed_and_its_child_dies(tmp_path):
    (tmp_path / "c.toml").write_text(LONG.replace("duration = 3", "duration = 60"))
    runner = subprocess.Popen([sys.executable, "-m", "locality", "run", "c.toml", "--out", "runs", "--id", "k"],
                              cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "k"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "child_pid" not in (store.read_manifest(run_dir) if (run_dir / "manifest.json").exists() else {}):
        time.sleep(0.05)
    child = store.read_manifest(run_dir)["child_pid"]
    assert store.effective_status(run_dir) == "running"  # its runner is alive
    runner.kill()
    runner.wait()
    assert store.read_manifest(run_dir)["status"] == "running"  # as stored
    assert store.effective_status(run_dir) == "crashed"
    assert load_run(run_dir).status == "crashed"
    from locality.report.data import load_run_data

    assert load_run_data(run_dir).status == "crashed"
    deadline = time.monotonic() + 10  # the population dies with its runner (parent-death signal)
    while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the child outlived its runner"
        time.sleep(0.05)
    # A crashed run is replaced by --replace (and re-run by sweep --resume).
    manifest = store.start_manifest("run", "k", {})
    assert store.claim_run_dir(tmp_path / "runs", "k", manifest, replace=True) == run_dir


def _interrupt_run(tmp_path: Path, run_id: str, when, sig: int = signal.SIGINT) -> tuple[str, int, str]:
    """Start `locality run` in its own session (as a terminal's foreground job), wait with ``when(run_dir)``, then
    SIGINT the whole process group, as Ctrl-C does. Returns (status or "none", exit status, stderr)."""
    proc = subprocess.Popen(["setsid", sys.executable, "-m", "locality", "run", "c.toml", "--out", "runs", "--id", run_id],
                            cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / run_id
    try:
        when(run_dir)
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    err = proc.communicate(timeout=60)[1]
    if not (run_dir / "manifest.json").exists():
        # Before the run directory existed: nothing was measured, nothing is left.
        assert proc.returncode in (130, -sig), err
        assert not run_dir.exists()
        return "none", proc.returncode, err
    manifest = store.read_manifest(run_dir)
    status = manifest["status"]
    assert status in ("interrupted", "complete"), (status, err)  # never failed
    assert proc.returncode == (130 if status == "interrupted" else 0), (status, err)
    files_parse(run_dir)
    child = manifest.get("child_pid")
    assert child is None or not Path(f"/proc/{child}").exists(), "the population outlived its run"
    if status == "interrupted":
        assert manifest["stop_reason"] == "interrupted"
        # Interrupted before the workers were spawned, or after.
        status += " after spawn" if "regions" in manifest else " before spawn"
    return status, proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_at_any_moment_never_fails_a_run(tmp_path, sig):
    (tmp_path / "c.toml").write_text(LONG.replace("20000", "100000"))

    def during_spawn(run_dir: Path) -> None:
        # The child exists (its pid is in the manifest) and is building 100k workers.
        deadline = time.monotonic() + 60
        while "child_pid" not in (store.read_manifest(run_dir) if (run_dir / "manifest.json").exists() else {}):
            assert time.monotonic() < deadline
            time.sleep(0.005)

    status, _, err = _interrupt_run(tmp_path, "spawn", during_spawn, sig)
    assert status == "interrupted before spawn", err
    rng = random.Random(12 + sig)
    seen = [_interrupt_run(tmp_path, f"r{i}", lambda _: time.sleep(delay), sig)[0]
            for i, delay in enumerate(sorted(rng.uniform(0.5, 4.5) for _ in range(3)))]
    assert "interrupted after spawn" in seen, seen


def test_lifecycle_records_runner_load_and_status(tmp_path):
    with RunLifecycle("probe", tmp_path, "x", {"pid": 1}) as life:
        assert store.read_manifest(life.dir)["status"] == "running"
        assert life.manifest["runner"]["pid"] == os.getpid()
    m = store.read_manifest(tmp_path / "x")
    assert m["status"] == "complete" and m["kind"] == "probe" and m["id"] == "x"
    assert len(m["load_average"]["start"]) == 3 and len(m["load_average"]["end"]) == 3
    with pytest.raises(KeyboardInterrupt):
        with RunLifecycle("probe", tmp_path, "y", {}) as life:
            os.kill(os.getpid(), signal.SIGTERM)  # held by the lifecycle: a flag, not an exception
            assert life.stopping
            life.cut()
    assert store.read_manifest(tmp_path / "y")["status"] == "interrupted"
    with pytest.raises(ZeroDivisionError):
        with RunLifecycle("probe", tmp_path, "z", {}):
            1 / 0
    z = store.read_manifest(tmp_path / "z")
    assert z["status"] == "failed" and z["error"] == "ZeroDivisionError: division by zero"


def test_resume_claims_skip_live_and_complete_runs_and_replace_the_rest(tmp_path):
    def stored(run_id, status, runner):
        store.claim_run_dir(tmp_path, run_id, {**store.start_manifest("run", run_id, {}), "status": status, "runner": runner})

    dead = {**store.runner_info(), "pid": 2**22 + 7}  # no such process
    stored("live", "running", store.runner_info())
    stored("dead", "running", dead)
    stored("done", "complete", store.runner_info())
    stored("bad", "failed", dead)
    new = store.start_manifest("run", "?", {})
    with pytest.raises(store.RunBusy):
        store.claim_run_dir(tmp_path, "live", new, resume=True)
    with pytest.raises(store.RunDone):
        store.claim_run_dir(tmp_path, "done", new, resume=True)
    for run_id in ("dead", "bad"):
        assert store.claim_run_dir(tmp_path, run_id, new, resume=True) == tmp_path / run_id
        assert store.read_manifest(tmp_path / run_id)["status"] == "running"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "dead", "done", "live"]


def test_a_signal_between_sweep_points_stops_the_sweep(tmp_path, monkeypatch):
    from locality.experiment.config import validate
    from locality.experiment.sweep import run_sweep

    ran = []

    def fake_run(config, out, *, run_id=None, progress=True, **kw):
        ran.append(run_id)
        with RunLifecycle("run", out, run_id, config.model_dump(mode="json")):
            pass
        os.kill(os.getpid(), signal.SIGINT)  # lands after the point, before the next one

    monkeypatch.setattr("locality.experiment.runner.run", fake_run)
    cfg = validate({"workers": 10, "steps": 1})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, {"seed": [1, 2, 3]}, tmp_path, progress=False, budget=False)
    assert len(ran) == 1
    assert [store.read_manifest(d)["status"] for d in tmp_path.iterdir()] == ["complete"]


def test_run_id_check():
    for good in ("a", "slab-sheet-1000-20261130T000000Z", "layout=slab+workers=1000-3f2a9c1d"):
        assert store.check_run_id(good) == good
    for bad in ("", ".", "..", "../x", "/abs", "a/b", ".hidden", " a", "a\0b", None):
        with pytest.raises(InvalidArgument):
            store.check_run_id(bad)


def test_resume_over_a_manifest_that_is_not_an_object_reruns_the_point(tmp_path, monkeypatch):
    from locality.experiment.config import validate
    from locality.experiment.sweep import points, run_sweep

    cfg = validate({"workers": 10, "steps": 1})
    (p,) = points(cfg, {"seed": [1]})
    (tmp_path / p.point_id).mkdir()
    (tmp_path / p.point_id / "manifest.json").write_text("[1, 2]")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text("[]")
    (tmp_path / "other" / "metrics.json").write_text("[]")

    def fake_run(config, out, *, run_id=None, progress=True, **kw):
        with RunLifecycle("run", out, run_id, config.model_dump(mode="json"), **kw):
            pass

    monkeypatch.setattr("locality.experiment.runner.run", fake_run)
    monkeypatch.setattr("locality.experiment.estimate.measured_footprint", lambda *a: (100.0, 1 << 20, "test"))
    run_sweep(cfg, {"seed": [1]}, tmp_path, resume=True, progress=False)
    assert store.read_manifest(tmp_path / p.point_id)["status"] == "complete"


def test_a_second_probe_into_the_same_out_is_refused(tmp_path):
    from childproc import Child
    from locality.experiment.probe import probe

    with Child(pages=4) as c:
        d = probe(c.pid, tmp_path / "p", interval=0.05, duration=0.1)
        first = store.read_manifest(d)
        with pytest.raises(InvalidArgument, match="already exists"):
            probe(c.pid, tmp_path / "p", interval=0.05, duration=0.1)
        assert store.read_manifest(d) == first
        assert probe(c.pid, tmp_path / "p", interval=0.05, duration=0.1, replace=True) == d
    assert store.read_manifest(d)["created"] >= first["created"] and store.read_manifest(d)["runner"] == first["runner"]


def _fake_compare(monkeypatch, after_layout=None, in_report=False):
    from fixtures_runs import make_run

    def fake_run(config, out, *, run_id=None, progress=True, **kw):
        d = make_run(Path(out), run_id, config.layout, config=config.model_dump(mode="json"))
        if config.layout == after_layout:
            os.kill(os.getpid(), signal.SIGINT)  # after this layout's run, before the next starts
        return d

    monkeypatch.setattr("locality.experiment.runner.run", fake_run)
    monkeypatch.setattr("locality.report.figures.default_names", lambda runs: ["bytes_per_worker"])
    monkeypatch.setattr("locality.experiment.estimate.check_memory", lambda *a, **k: None)  # fake runs: nothing to calibrate
    if in_report:
        import locality.report.html as html

        original = html.write_report

        def interrupted_report(*a, **kw):
            os.kill(os.getpid(), signal.SIGINT)  # while the report is being drawn
            return original(*a, **kw)

        monkeypatch.setattr(html, "write_report", interrupted_report)


@pytest.mark.parametrize("after_layout, in_report, finished", [("objects", False, ["objects"]),
                                                                 (None, True, ["objects", "slab", "isolated", "waves-objects"])])
def test_a_signal_between_layouts_or_in_the_report_phase_still_writes_the_report(
        tmp_path, monkeypatch, capsys, after_layout, in_report, finished):
    from locality.cli import main

    _fake_compare(monkeypatch, after_layout, in_report)
    with pytest.raises(SystemExit) as e:
        main(["compare", "--workers", "1000", "--layouts", "objects,slab,isolated", "--steps", "3",
              "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "c.html"), "--json"])
    assert e.value.code == 130
    out = json.loads(capsys.readouterr().out)
    assert list(out["runs"]) == finished and (tmp_path / "c.html").exists()
    if after_layout:
        assert out["interrupted_at"] == "slab" and out["not_run"] == ["slab", "isolated"]


def test_a_sigkilled_probe_keeps_its_timeline_and_reads_as_crashed(tmp_path):
    from childproc import Child

    with Child(pages=4) as c:
        c.touch([0, 1])
        proc = subprocess.Popen([sys.executable, "-m", "locality", "probe", str(c.pid), "--interval", "100ms",
                                 "--duration", "60s", "--out", str(tmp_path / "p"), "--json"],
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        timeline = tmp_path / "p" / "timeline.csv"
        deadline = time.monotonic() + 60
        # The timeline is appended every few seconds while sampling, then the manifest counts the samples;
        # kill it once a flush has stored at least 10 of them.
        while not (timeline.exists() and (store.read_manifest(tmp_path / "p").get("samples") or 0) >= 10):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    manifest = store.read_manifest(tmp_path / "p")
    assert manifest["status"] == "running" and store.effective_status(tmp_path / "p") == "crashed"
    rows = pd.read_csv(timeline)
    assert manifest["samples"] >= 10 and rows["sample"].nunique() == manifest["samples"]
    assert rows["sample"].tolist() == sorted(rows["sample"])


def test_an_unwritable_out_is_one_line(tmp_path, monkeypatch):
    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store, "claim_run_dir", denied)
    with pytest.raises(InvalidArgument, match="cannot create a run directory under .*: Permission denied .pass a writable --out."):
        with RunLifecycle("run", tmp_path / "ro", "x", {}):
            pass


def test_two_resumes_of_one_sweep_share_the_work(tmp_path):
    (tmp_path / "c.toml").write_text('workers = 20000\nduration = 1.5\nstep_interval = 0.01\n[pattern]\nname = "uniform"\n'
                                     '[sampling]\ninterval = 0.2\n')
    cmd = [sys.executable, "-m", "locality", "sweep", "c.toml", "--grid", "seed=1,2,3,4,5,6", "--out", "runs", "--resume", "--json"]
    sweeps = [subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in sweeps]
    assert [p.returncode for p in sweeps] == [0, 0], [err[-2000:] for _, err in outs]
    manifests = [store.read_manifest(d) for d in sorted((tmp_path / "runs").iterdir())]
    assert len(manifests) == 6 and all(m["status"] == "complete" for m in manifests)
    runners = {m["runner"]["pid"] for m in manifests}
    assert runners == {p.pid for p in sweeps}  # each ran some points, none ran one twice (a claim is exclusive)
