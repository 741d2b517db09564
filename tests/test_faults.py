"""Fault injection: SIGINT, SIGTERM and SIGKILL at seeded random moments of run, sweep, compare, probe and beam.

Each moment starts the command in its own session, waits a delay drawn from a
seeded RNG over the command's whole life (start-up, spawn, sampling, writing
files, report), sends the signal (SIGINT to the process group, as a terminal's
Ctrl-C does; SIGTERM and SIGKILL to the runner alone), and then checks:

1. status: every run is complete, interrupted or (after SIGKILL only) crashed,
   never failed; SIGINT/SIGTERM exit 130, or 0 once the work had ended;
2. files: every JSON, CSV (pandas) and npz under the output parses, and no
   temporary file is left in a run directory except by a SIGKILLed writer;
3. processes: nothing the command started outlives it (the population child,
   the VM's beam.smp, Dask workers): found by a tag in their environment;
4. system: no new locality cgroup, the same swap devices as before, and no
   temporary file of the dead runner that `leftovers` (doctor, the next run)
   would not find and remove.

LOCALITY_FAULT_MOMENTS sets the moments per command and signal (default:
sized to keep the suite near two minutes on two cores); LOCALITY_FAULT_SEED
the seed.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from locality.experiment import leftovers, load_run, store
from locality.experiment.appendstore import FLUSH_EVERY_S, read_pages

SWAP_LOCK = "/tmp/locality-swap.lock"
SEED = int(os.environ.get("LOCALITY_FAULT_SEED", "20261130"))
MOMENTS = os.environ.get("LOCALITY_FAULT_MOMENTS")
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
RUN_TOML = ('workers = 3000\nsteps = 25\nstep_interval = 0.02\n[pattern]\nname = "uniform"\np = 0.05\n'
            '[sampling]\ninterval = 0.1\n')


def moments(default: int) -> int:
    return int(MOMENTS) if MOMENTS else default


def _env(tag: str) -> dict[str, str]:
    return dict(os.environ, LOCALITY_FAULT_TAG=tag, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def tagged(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries ``tag`` (what a command started)."""
    needle = f"LOCALITY_FAULT_TAG={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if needle in Path(entry.path, "environ").read_bytes().split(b"\0"):
                if Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def cgroups() -> set[str]:
    return {str(p) for root in leftovers.CGROUP_ROOTS if root.is_dir() for p in root.glob("locality-*")}


def swaps() -> list[str]:
    return [line.split()[0] for line in Path("/proc/swaps").read_text().splitlines()[1:]]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("manifest.json") if not any(part.startswith(".") for part in p.relative_to(out).parts))


def check_files(out: Path, killed: bool) -> None:
    """Every file under ``out`` parses; temporaries only beside a SIGKILLed writer."""
    for path in out.rglob("*"):
        if path.is_dir():
            continue
        if path.name.startswith(".") or any(part.startswith(".") for part in path.relative_to(out).parts):
            assert killed, f"temporary file left after a catchable signal: {path}"
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                [z[k] for k in z.files]


class Moment:
    """One command, one signal, one delay; ``check`` asserts the four properties."""

    def __init__(self, args: list[str], cwd: Path, out: Path, sig: str, delay: float) -> None:
        self.args, self.cwd, self.out, self.sig, self.delay = args, cwd, out, sig, delay
        self.tag = uuid.uuid4().hex
        self.cgroups = cgroups()
        self.swaps: list[str] | None = None  # checked only when play() held the swap lock
        self.sent_at: float | None = None  # wall-clock time the signal was sent (None: the command ended first)

    def _swap_lock(self) -> int | None:
        """The machine's swap lock if free: then nobody else turns swap on or off during the moment."""
        fd = os.open(SWAP_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            os.close(fd)
            return None

    def play(self, timeout: float = 120) -> int:
        lock = self._swap_lock()
        try:
            self.swaps = swaps() if lock is not None else None
            return self._play(timeout)
        finally:
            if lock is not None:
                self.swaps_after = swaps()
                os.close(lock)

    def _play(self, timeout: float) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "locality", *self.args], cwd=self.cwd, env=_env(self.tag),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.pid = proc.pid
        try:
            try:
                proc.wait(self.delay)
            except subprocess.TimeoutExpired:
                self.sent_at = time.time()
                if self.sig == "INT":
                    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole foreground group
                else:
                    os.kill(proc.pid, SIGNALS[self.sig])
            self.stdout, self.stderr = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.rc = proc.returncode
        return self.rc

    def __str__(self) -> str:
        return f"SIG{self.sig} at {self.delay:.2f}s of `locality {' '.join(self.args)}` (rc {getattr(self, 'rc', None)}): {getattr(self, 'stderr', '')[-800:]}"

    def _check_nothing_outlives(self, grace: float = 20) -> None:
        deadline = time.monotonic() + grace
        while tagged(self.tag) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tagged(self.tag), f"processes outlived {self}: {tagged(self.tag)}"

    def check(self) -> list[str]:
        """The four properties; returns the effective statuses of the runs found."""
        killed = self.sig == "KILL"
        if self.rc == -SIGNALS[self.sig] and not self.out.exists() and self.delay < 0.5:
            # The signal landed before locality wrote anything: in interpreter start-up (no handler yet
            # to turn it into exit 130), or just after `beam` started its VM, which then dies of its
            # parent-death signal a moment later. Either way nothing may be left once that has landed.
            self._check_nothing_outlives()
            return []
        if killed:
            assert self.rc in (0, -signal.SIGKILL), str(self)
        else:
            assert self.rc in (0, 130), str(self)
            assert "Traceback" not in self.stderr, str(self)
        statuses = []
        for d in run_dirs(self.out):
            status = store.effective_status(d)
            statuses.append(status)
            allowed = ("complete", "interrupted", "crashed") if killed else ("complete", "interrupted")
            assert status in allowed, f"{d}: {status} ({store.read_manifest(d).get('error')}) after {self}"
            if self.rc == 0:
                assert status == "complete", f"{d}: {status} but exit 0 after {self}"
            if status == "complete" and self.sent_at is not None and not killed:
                # A run that started after the signal and ran to its end: the signal was dropped.
                created = datetime.fromisoformat(store.read_manifest(d)["created"]).timestamp()  # whole seconds
                assert created <= self.sent_at, f"{d} started after the signal and completed: {self}"
            if status == "crashed":
                run = load_run(d)  # what a crashed run kept reads back
                assert run.timeline is not None
                read_pages(d)
        check_files(self.out, killed)
        self._check_nothing_outlives()
        mine = [x for x in leftovers.find() if x.owner_pid == self.pid]
        if killed:
            leftovers.clean()  # what doctor --fix and the next run do
            assert not [x for x in leftovers.find() if x.owner_pid == self.pid], f"leftovers not cleaned after {self}"
        else:
            assert not mine, f"leftovers after {self}: {mine}"
        # Other users of this machine make cgroups and swap of their own: only the runner's count here.
        left = {c for c in cgroups() - self.cgroups if c.endswith(f"-{self.pid}")}
        assert not left, f"cgroup left after {self}: {left}"
        if self.swaps is not None:  # else another user held the swap lock: swap state is theirs to change
            assert set(self.swaps_after) <= set(self.swaps), f"swap left on after {self}"
        return statuses


def plan(command: str, sig: str, n: int, span: float) -> list[float]:
    """``n`` seeded delays over ``span`` s: one early (start-up), the rest spread at random."""
    rng = random.Random(f"{SEED}-{command}-{sig}")
    if n == 1:
        return [rng.uniform(0.3, span)]
    return sorted([rng.uniform(0.05, 0.6)] + [rng.uniform(0.3, span) for _ in range(n - 1)])


CGROUP_TOML = RUN_TOML.replace("workers = 3000", 'workers = 3000\nlayout = "slab"\narena = "file"') + '[reclaim]\npolicy = "cgroup"\nlimit = "256M"\n'


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_run(tmp_path, sig):
    """Every other moment runs under the cgroup policy: its memory cgroup must not outlive the run."""
    (tmp_path / "c.toml").write_text(RUN_TOML)
    (tmp_path / "cg.toml").write_text(CGROUP_TOML)
    for i, delay in enumerate(plan("run", sig, moments(4), 4.0)):
        config = "cg.toml" if i % 2 else "c.toml"
        m = Moment(["run", config, "--out", f"runs{i}", "--id", "r", "--json"], tmp_path, tmp_path / f"runs{i}", sig, delay)
        m.play()
        m.check()


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_sweep(tmp_path, sig):
    (tmp_path / "c.toml").write_text(RUN_TOML.replace("steps = 25", "steps = 10"))
    for i, delay in enumerate(plan("sweep", sig, moments(2), 6.0)):
        out = tmp_path / f"s{i}"
        m = Moment(["sweep", "c.toml", "--grid", "workers=2000,2500,3000", "--out", str(out), "--json"], tmp_path, out, sig, delay)
        m.play()
        statuses = m.check()  # a point that started after the signal and completed fails check()
        if sig != "KILL" and m.rc == 0:
            assert statuses == ["complete"] * 3, str(m)


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_compare(tmp_path, sig):
    for i, delay in enumerate(plan("compare", sig, moments(2), 7.0)):
        out = tmp_path / f"c{i}"
        report = tmp_path / f"c{i}.html"
        m = Moment(["compare", "--workers", "2000", "--layouts", "objects,slab", "--steps", "8", "--step-interval", "0.02",
                    "--interval", "0.1", "--pattern", "uniform", "--runs", str(out), "-o", str(report), "--json"],
                   tmp_path, out, sig, delay)
        m.play()
        statuses = m.check()
        if sig != "KILL" and "complete" in statuses:
            assert report.exists(), f"no report of the finished runs after {m}"
        if sig != "KILL":
            assert not [p for p in tmp_path.glob(".c*") if p.is_file()], f"temporary report left after {m}"


TARGET = ("import mmap, sys, time\n"
          "m = mmap.mmap(-1, 64 << 20)\n"
          "i = 0\n"
          "while True:\n"
          "    m[(i * 4096) % len(m)] = 1; i += 997\n"
          "    time.sleep(0.001)\n")


@pytest.fixture(scope="module")
def target():
    proc = subprocess.Popen([sys.executable, "-c", TARGET], start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_probe(tmp_path, sig, target):
    for i, delay in enumerate(plan("probe", sig, moments(2), 4.0)):
        out = tmp_path / f"p{i}"
        m = Moment(["probe", str(target), "--interval", "100ms", "--duration", "3s", "--out", str(out / "run"), "--json"],
                   tmp_path, out, sig, delay)
        m.play()
        m.check()
        assert Path(f"/proc/{target}").exists(), "the probed process must survive its probe"


@pytest.mark.beam
@pytest.mark.parametrize("sig", list(SIGNALS))
def test_beam(tmp_path, sig):
    from locality.experiment.beam.vm import find_escript

    try:
        find_escript()
    except Exception as e:  # noqa: BLE001 - the error says what is missing
        pytest.skip(str(e))
    for i, delay in enumerate(plan("beam", sig, moments(3), 5.0)):
        out = tmp_path / f"b{i}"
        m = Moment(["beam", "-n", "5000", "--steps", "5", "--interval", "200ms", "--pattern", "uniform", "--out", str(out),
                    "--json"], tmp_path, out, sig, delay)
        m.play()
        m.check()


def test_sigkill_loses_at_most_the_last_interval(tmp_path):
    """A runner killed mid-run has appended its timeline and chunked its pages up to the last flush."""
    (tmp_path / "c.toml").write_text(RUN_TOML.replace("steps = 25", "steps = 100000").replace("interval = 0.1", "interval = 0.05"))
    m = Moment(["run", "c.toml", "--out", "runs", "--id", "k"], tmp_path, tmp_path / "runs", "KILL", 0)
    proc = subprocess.Popen([sys.executable, "-m", "locality", *m.args], cwd=tmp_path, env=_env(m.tag),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "runs" / "k"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((run_dir / "pages").glob("chunk-00001.npz")):
            time.sleep(0.05)
        time.sleep(FLUSH_EVERY_S * 1.5)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    m.pid, m.rc, m.stderr = proc.pid, proc.returncode, ""
    assert m.check() == ["crashed"]
    run = load_run(run_dir)
    pages = read_pages(run_dir)
    assert not (run_dir / "pages.npz").exists() and pages is not None
    t_rows = run.timeline["t"].to_numpy()
    # The timeline and the chunks are flushed together: the pages' samples are the timeline's, in order
    # (the timeline may be one flush ahead if the kill fell between the two writes).
    assert len(pages["t"]) >= 2 and len(t_rows) >= len(pages["t"])
    np.testing.assert_allclose(pages["t"], t_rows[: len(pages["t"])], atol=1e-6)
    assert run.pages["written"].shape == (len(pages["t"]), int(pages["n_pages"]))
    from locality.report.html import write_report

    html = write_report([run_dir], tmp_path / "report.html").read_text()
    assert f"crashed: its runner (PID {proc.pid}) died while it ran. It kept {len(t_rows)} timeline rows, " \
           f"{len(pages['t'])} page-matrix samples; it lacks pages.npz, latency.csv, metrics.json" in html


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_sweep_on_dask(tmp_path, sig):
    """The Dask executor: its scheduler, workers and point processes end with the sweep."""
    pytest.importorskip("distributed")
    (tmp_path / "c.toml").write_text(RUN_TOML.replace("steps = 25", "steps = 10"))
    for i, delay in enumerate(plan("dask", sig, moments(1), 12.0)):
        out = tmp_path / f"d{i}"
        m = Moment(["sweep", "c.toml", "--grid", "workers=2000,2500", "--out", str(out), "--executor", "dask", "--json"],
                   tmp_path, out, sig, delay)
        m.play()
        m.check()
