"""Dask executor for sweeps: runs stored like local ones, lost workers, isolation records.

Networking only on 127.0.0.1. Every cluster and client is closed by a
fixture finalizer, and every process a test starts is checked to be gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import distributed  # noqa: F401  (a test dependency: missing means failing, not skipping)
import psutil
import pytest

from locality import tempfiles
from locality.experiment import distributed as dist
from locality.experiment.config import ExperimentConfig, with_overrides
from locality.experiment.sweep import SweepPoint, pending

SMALL = {
    "workers": 20_000,  # large enough that PSS noise of a few pages stays well under 10% per worker
    "layout": "slab",
    "steps": 20,
    "step_interval": 0.005,
    "pattern": {"name": "uniform", "p": 0.02},
    "sampling": {"interval": 0.05},
}


def _point(point_id: str, **overrides) -> SweepPoint:
    return SweepPoint(point_id, with_overrides(ExperimentConfig.model_validate(SMALL), overrides.items()))


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def _cmdline(p: "psutil.Process") -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie
        return ""


def _descendants() -> set[int]:
    """Live descendants of this process (zombies have exited; their parent reaps them later)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            # The resource tracker of this process lives as long as it does.
            if p.status() != psutil.STATUS_ZOMBIE and "multiprocessing.resource_tracker" not in _cmdline(p):
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


RUN_CMDLINES = ("_point_process_main", "locality.experiment.child")


def _wait_gone(pids: set[int], timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while (left := pids & _descendants()) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = []
    for pid in left:
        try:
            p = psutil.Process(pid)
            described.append((pid, p.cmdline()))
            p.kill()
        except psutil.Error:
            pass
    return described


def _run_processes() -> set[int]:
    out = set()
    for pid in _descendants():
        try:
            if any(c in _cmdline(psutil.Process(pid)) for c in RUN_CMDLINES):
                out.add(pid)
        except psutil.Error:
            pass
    return out


@pytest.fixture
def no_leftover_processes():
    """Every process started during the test is gone after it."""
    before = _descendants()
    yield
    deadline = time.monotonic() + 15
    while (_descendants() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _wait_gone(_descendants() - before, 0)
    assert not left, f"processes left behind: {left}"


# Workers and point processes of these tests keep their temporary run
# directories here (TMPDIR), so a leftover is ours, not another user's sweep.
POINT_TMP = Path(tempfile.gettempdir()) / f"locality-test-distributed-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def point_tmpdir():
    POINT_TMP.mkdir()
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(POINT_TMP)  # inherited by workers the nanny (re)starts, and the CLI
    yield POINT_TMP
    if old is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = old
    shutil.rmtree(POINT_TMP, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(point_tmpdir):
    """A LocalCluster as run_points makes it: 2 single-threaded worker processes, node=1 each."""
    before = _descendants()
    c = dist.make_cluster("local", runs_per_node=2)
    scratch = Path(c.locality_scratch)
    assert scratch.is_dir() and scratch.name.startswith(tempfiles.prefix("dask"))
    yield c
    dist.close_cluster(c)
    assert not scratch.exists()  # not /tmp/dask-scratch-space, left behind with its lock files
    deadline = time.monotonic() + 15
    while (_descendants() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _wait_gone(_descendants() - before, 0)
    assert not left, f"cluster processes left behind: {left}"


def _point_temp_dirs() -> set[Path]:
    return set(POINT_TMP.glob("locality-point-*"))


@pytest.fixture(autouse=True)
def no_run_processes_left():
    """No point process or population child outlives a test, nor its temporary run directory."""
    temp_before = _point_temp_dirs()
    yield
    left = _wait_gone(_run_processes())
    assert not left, f"run processes left behind: {left}"
    new = _point_temp_dirs() - temp_before
    assert not new, [sorted(str(f.relative_to(d)) for f in d.rglob("*")) for d in new]


@pytest.fixture
def client(cluster):
    from distributed import Client

    cl = Client(cluster, set_as_default=False)
    yield cl
    cl.close()


def test_four_point_sweep_is_stored_like_local_runs(tmp_path, cluster):
    from locality.experiment import load
    from locality.experiment.runner import run

    points = [_point(f"seed{s}-p{p}", seed=s, **{"pattern.p": p}) for s in (1, 2) for p in (0.02, 0.05)]
    out = tmp_path / "dask"
    dirs = dist.run_points(points, out, scheduler=cluster.scheduler_address, progress=False, shared_out=False)

    assert dirs == [out / p.point_id for p in points]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.point_id for p in points)  # no staging or marker left
    local_dir = run(points[0].config, tmp_path / "local", run_id=points[0].point_id, progress=False)
    local = _manifest(local_dir)
    hosts = set()
    for d, p in zip(dirs, points):
        m = _manifest(d)
        assert m["status"] == "complete", m["error"]
        assert m["id"] == p.point_id
        assert _files(d) == _files(local_dir)
        assert set(m) == set(local) | {"node", "shared_node_with"}
        assert m["node"]["hostname"] == m["machine"]["hostname"]
        assert m["node"]["kernel"] == m["machine"]["kernel"]
        assert m["node"]["runs_per_node"] == 1 and isinstance(m["node"]["runs_per_node"], int)
        assert m["node"]["start_time"] < m["node"]["end_time"]
        assert set(m["capabilities"]) == set(local["capabilities"])  # values change as other tests turn swap on and off
        assert len(load(d)) > 1
        hosts.add(m["node"]["worker"])
    assert len(hosts) == 2  # both workers ran points

    # Two workers on one machine: every overlap is recorded, symmetrically.
    intervals = {p.point_id: (_manifest(d)["node"]["hostname"], _manifest(d)["node"]["start_time"], _manifest(d)["node"]["end_time"]) for d, p in zip(dirs, points)}
    for d, p in zip(dirs, points):
        assert _manifest(d)["shared_node_with"] == dist.shared_node_with(p.point_id, intervals)
    assert any(_manifest(d)["shared_node_with"] for d in dirs)

    # Same seeded point, run locally: deterministic counts exactly, memory within 10%.
    dm = json.loads((dirs[0] / "metrics.json").read_text())
    lm = json.loads((local_dir / "metrics.json").read_text())
    for key in ("workers", "steps", "activations", "useful_bytes"):
        assert dm[key] == lm[key], key
    assert dm["activations"] / dm["steps"] == lm["activations"] / lm["steps"]
    for key in ("bytes_per_worker", "pss_spawned_bytes"):
        assert dm[key] == pytest.approx(lm[key], rel=0.10), key


def _wait_for_point_process(client, key_prefix: str, timeout: float = 30.0) -> tuple[str, psutil.Process]:
    """The worker running the task whose key starts with key_prefix, once its run's child exists."""
    deadline = time.monotonic() + timeout
    pids = client.run(os.getpid)
    while time.monotonic() < deadline:
        for addr, keys in client.processing().items():
            if any(str(k).startswith(key_prefix) for k in keys):
                worker = psutil.Process(pids[addr])
                # worker -> point process -> population child: the run is under way.
                point_procs = [c for c in worker.children() if "_point_process_main" in _cmdline(c)]
                if any(c.children() for c in point_procs):
                    return addr, worker
        time.sleep(0.1)
    raise AssertionError(f"no worker started {key_prefix} within {timeout} s")


def test_lost_worker_fails_its_point_others_complete_and_resume_finishes(tmp_path, cluster, client):
    long_point = _point("long", steps=1_000_000, step_interval=0.01)
    points = [long_point, _point("p1", seed=1)]
    result: dict = {}

    def sweep():
        try:
            result["dirs"] = dist.run_points(points, tmp_path, scheduler=cluster.scheduler_address, progress=False)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        addr, worker = _wait_for_point_process(client, "locality-point-long-")
        run_procs = worker.children(recursive=True)
        worker.send_signal(signal.SIGKILL)
        # The point process dies with its worker and stops the population child.
        gone, alive = psutil.wait_procs(run_procs, timeout=20)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        thread.join(60)
    assert "error" not in result, result.get("error")

    statuses = {d.name: _manifest(d)["status"] for d in result["dirs"]}
    assert statuses == {"long": "failed", "p1": "complete"}
    failed = _manifest(tmp_path / "long")
    assert "was lost while running this point" in failed["error"]
    assert addr in failed["error"]
    assert failed["node"]["worker"] == addr
    assert failed["config"] == long_point.config.model_dump(mode="json")
    # out is shared with the workers here (detected): no staging dir or marker is left.
    assert {p.name for p in tmp_path.iterdir()} == {"p1", "long"}

    # Resume re-runs only the failed point (a short version of it, to keep the test fast).
    short = _point("long", steps=5)
    redo = pending([short, points[1]], tmp_path, True)
    assert [p.point_id for p in redo] == ["long"]
    before = (tmp_path / "p1" / "manifest.json").stat().st_mtime_ns
    dist.run_points(redo, tmp_path, scheduler=cluster.scheduler_address, progress=False)
    assert _manifest(tmp_path / "long")["status"] == "complete"
    assert _manifest(tmp_path / "long")["error"] is None
    assert (tmp_path / "p1" / "manifest.json").stat().st_mtime_ns == before


def test_point_whose_retries_run_out_is_stored_failed_like_a_run(tmp_path, client):
    # Dask gives up on a task after allowed-failures lost workers (KilledWorker).
    from distributed import KilledWorker

    point = _point("gone")
    sweep = dist._Sweep(client, [point], tmp_path, "token", tmp_path / ".marker", None, None, False)
    sweep._store_failure("gone", KilledWorker("locality-point-gone-token", None, 3))
    m = _manifest(tmp_path / "gone")
    assert m["status"] == "failed" and "was lost while running this point" in m["error"]
    assert m["config"] == point.config.model_dump(mode="json")
    assert m["id"] == "gone" and m["kind"] == "run" and m["finished"]
    assert m["shared_node_with"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["gone"]


def _swap_capability() -> dict:
    from locality.kernel.capabilities import capabilities

    return capabilities()["swap"]


def _pretend_no_swap() -> None:
    """On a worker: make this node look like one without swap (the rest of the doctor's answer is real)."""
    import importlib

    module = importlib.import_module("locality.kernel.capabilities")
    real = module.__dict__.setdefault("_real_capabilities", module.capabilities)

    def capabilities() -> dict:
        caps = dict(real())
        caps["swap"] = {"available": False, "reason": "no active swap device (simulated node without swap)", "hint": "locality swap on"}
        return caps

    module.capabilities = capabilities


def _forget_pretence() -> None:
    import importlib

    module = importlib.import_module("locality.kernel.capabilities")
    module.capabilities = module.__dict__.pop("_real_capabilities", module.capabilities)


def test_point_needing_swap_fails_with_the_doctors_reason(tmp_path, cluster, client):
    # Other tests turn swap on and off on this machine: simulate the node
    # without it, so the test does not race them.
    client.run(_pretend_no_swap)
    try:
        reasons = {c["reason"] for c in client.run(_swap_capability).values()}
        point = _point("needs-swap", **{"reclaim.policy": "pageout-idle", "reclaim.idle_seconds": 1.0, "arena": "anon"})
        [d] = dist.run_points([point], tmp_path, scheduler=cluster.scheduler_address, progress=False)
    finally:
        client.run(_forget_pretence)
    m = _manifest(d)
    assert m["status"] == "failed"
    [reason] = reasons
    assert reason in m["error"]
    assert _files(d) == {"manifest.json"}  # no numbers at all, rather than wrong ones
    assert m["node"]["hostname"] == m["machine"]["hostname"]


def test_workers_without_node_resource_are_refused(tmp_path, no_leftover_processes):
    import dask
    from distributed import LocalCluster

    with dask.config.set({"temporary-directory": str(tmp_path)}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                         dashboard_address="127.0.0.1:0") as c:
        with pytest.raises(dist.ClusterSetupError, match="--resources node=1"):
            dist.run_points([_point("x")], tmp_path, scheduler=c.scheduler_address, progress=False)


def test_unreachable_scheduler_is_one_line_and_exit_2(tmp_path):
    with pytest.raises(dist.SchedulerUnreachable) as e:
        dist.run_points([_point("x")], tmp_path, scheduler="tcp://127.0.0.1:1", connect_timeout=2)
    assert "\n" not in str(e.value) and "127.0.0.1:1" in str(e.value)
    assert not any(tmp_path.iterdir())  # no marker or partial run left

    config = tmp_path / "c.toml"
    config.write_text('workers = 1000\nsteps = 2\n')
    proc = subprocess.run(
        [sys.executable, "-m", "locality", "sweep", str(config), "--grid", "seed=1,2", "--out", str(tmp_path / "runs"),
         "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("locality: error: cannot reach the Dask scheduler at tcp://127.0.0.1:1"), proc.stderr
    assert not list((tmp_path / "runs").glob("*"))  # nothing stored, not even a marker


def test_shared_node_with_lists_overlaps_on_the_same_host_only():
    intervals = {
        "a": ("n1", 0.0, 10.0),
        "b": ("n1", 9.0, 12.0),  # overlaps a
        "c": ("n1", 12.0, 13.0),  # touches b's end: no overlap
        "d": ("n2", 0.0, 20.0),  # other host
    }
    assert dist.shared_node_with("a", intervals) == ["b"]
    assert dist.shared_node_with("b", intervals) == ["a"]
    assert dist.shared_node_with("c", intervals) == []
    assert dist.shared_node_with("d", intervals) == []


@pytest.mark.parametrize("kind, exclusive, submit", [("slurm", "#SBATCH --exclusive", "sbatch"), ("pbs", "#PBS -l place=excl", "qsub")])
def test_jobqueue_job_runs_one_worker_per_exclusive_node(kind, exclusive, submit, tmp_path, monkeypatch):
    if shutil.which(submit) is None:
        # No batch system here: refused in one line instead of waiting for jobs that never start.
        with pytest.raises(dist.ClusterSetupError, match=f"needs `{submit}`"):
            dist.run_points([_point("x")], tmp_path, cluster=kind, progress=False)
        assert not list(tmp_path.iterdir())
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / submit).write_text("#!/bin/sh\nexit 1\n")
        (fake / submit).chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    c = dist.jobqueue_cluster(kind, runs_per_node=2, scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
    try:
        script = c.job_script()
    finally:
        dist.close_cluster(c)
    assert not Path(c.locality_scratch).exists()  # the local scheduler's scratch, removed with it
    assert exclusive in script
    assert "--resources node=2" in script
    assert "--nthreads 4" in script  # 2 cores per run x 2 runs
    assert "--nworkers" not in script and "--nprocs" not in script



CTRL_C_CONFIG = (
    'workers = 3000\nsteps = 5\nlayout = "slab"\nstep_interval = 0.01\n'
    '[pattern]\nname = "uniform"\np = 0.02\n[sampling]\ninterval = 0.05\n'
)


def _interrupt_second_point(tmp_path: Path, executor_args: list[str], whole_group: bool) -> tuple[Path, list]:
    """`locality sweep` of a short and a long point; SIGINT once the short one is stored and the long one runs.

    Returns (the stored run, the processes that made up the run of the long point).
    """
    config = tmp_path / "c.toml"
    config.write_text(CTRL_C_CONFIG)
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "locality", "sweep", str(config), "--grid", "steps=5,1000000", "--out", str(out),
         "--executor", "dask", *executor_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 40
        done: list = []
        population: list = []
        while time.monotonic() < deadline and proc.poll() is None:
            done = [d for d in out.glob("*") if (d / "manifest.json").exists() and _manifest(d)["status"] == "complete"] if out.exists() else []
            population = [p for p in psutil.Process().children(recursive=True) if "locality.experiment.child" in _cmdline(p)]
            if done and population:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the sweep did not reach its second point: {proc.stderr.read() if proc.poll() is not None else ''}")
        run_procs = [p for p in psutil.Process(proc.pid).children(recursive=True)] + population
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            proc.send_signal(signal.SIGINT)  # only the client: the workers must be told
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = proc.stderr.read()
    assert rc == 130, stderr
    assert stderr.strip().splitlines()[-1] == "locality: interrupted"
    gone, alive = psutil.wait_procs(run_procs, timeout=20)
    assert not alive, [(p.pid, _cmdline(p)) for p in alive]
    assert [d.name for d in out.iterdir()] == [done[0].name]  # no staging dir, marker or half run
    assert _manifest(done[0])["config"]["steps"] == 5
    return done[0], run_procs


def test_ctrl_c_closes_the_cluster_it_created_and_keeps_stored_runs(tmp_path):
    # One worker (runs-per-node 1): the short point runs first, then the long one.
    _interrupt_second_point(tmp_path, ["--cluster", "local"], whole_group=True)


def test_ctrl_c_on_a_remote_scheduler_stops_the_running_point_on_its_worker(tmp_path, cluster, client):
    _interrupt_second_point(tmp_path, ["--scheduler", cluster.scheduler_address], whole_group=False)
    # The workers stay up for the next sweep, with nothing left running.
    assert len(client.scheduler_info()["workers"]) == 2
    assert not any(client.processing().values())
