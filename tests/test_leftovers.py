"""Leftovers of killed locality processes: listed by `doctor`, removed by `doctor --fix`, `swap off` and the next run.

Fake leftovers are made the way a killed run leaves them: by a child process
that creates them and is then SIGKILLed, or as files naming a PID that has
exited. Nothing whose owner still runs may be listed or removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT

from locality import tempfiles
from locality.experiment import cgroup, leftovers
from locality.kernel import swap as zram


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def listed(cli) -> list[dict]:
    rc, out, err = cli("doctor", "--json")
    assert rc == 0, err
    return json.loads(out)["leftovers"]


def paths(items: list[dict]) -> set[str]:
    return {i["path"] for i in items}


def test_tempfile_names_carry_their_owner():
    name = tempfiles.prefix("state-pages") + "x1y2.npy"
    assert name.startswith(f"locality-state-pages-{os.getpid()}-")
    assert tempfiles.owner_of(name) == os.getpid()
    assert tempfiles.owner_of(f".zram-state.{os.getpid()}.abc") == os.getpid()
    assert tempfiles.owner_of("locality-latency-k2x_9q.npy") is None  # no PID: never ours to judge
    assert tempfiles.owner_of(f"locality-test-distributed-{os.getpid()}") is None
    assert tempfiles.owner_alive(os.getpid()) and not tempfiles.owner_alive(dead_pid())


def test_temp_files_of_dead_owners_are_listed_and_fixed_live_ones_left(cli):
    tmp = Path(tempfile.gettempdir())
    dead = tmp / f"locality-latency-{dead_pid()}-abc.npy"
    dead_dir = tmp / f"locality-point-{dead_pid()}-xyz"
    live = tmp / f"{tempfiles.prefix('latency')}def.npy"
    try:
        dead.write_bytes(b"x")
        dead_dir.mkdir()
        (dead_dir / "inside").write_text("x")
        live.write_bytes(b"x")
        found = paths(listed(cli))
        assert {str(dead), str(dead_dir)} <= found
        assert str(live) not in found
        rc, out, err = cli("doctor", "--fix", "--json")
        assert rc == 0, err
        assert {str(dead), str(dead_dir)} <= paths(json.loads(out)["removed"])
        assert not dead.exists() and not dead_dir.exists() and live.exists()
    finally:
        for f in (dead, live):
            f.unlink(missing_ok=True)
        if dead_dir.exists():
            shutil.rmtree(dead_dir)


def test_a_pid_reused_by_a_younger_process_does_not_own_an_older_file(tmp_path):
    old = tmp_path / "f"
    old.write_text("x")
    # psutil's create_time adds the start ticks to /proc/stat's btime, whole seconds cut down, so it reads
    # up to 1 s early; owner_alive allows 1 s more. 1.5 s passed or failed with the boot's fraction.
    time.sleep(2.2)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # well after the file was made
    try:
        assert not tempfiles.owner_alive(p.pid, old)
        new = tmp_path / "g"
        new.write_text("x")
        assert tempfiles.owner_alive(p.pid, new)
    finally:
        p.kill()
        p.wait()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@needs_root
def test_a_half_written_zram_state_of_a_dead_process(cli):
    made_dir = not zram.STATE_FILE.parent.exists()
    zram.STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    stale = zram.STATE_FILE.parent / f".zram-state.{dead_pid()}.q8x"
    mine = zram.STATE_FILE.parent / f".zram-state.{os.getpid()}.q9x"
    try:
        stale.write_text("{")
        mine.write_text("{")
        found = [i for i in listed(cli) if i["kind"] == "zram-state"]
        assert paths(found) == {str(stale)}
        rc, _, err = cli("doctor", "--fix")
        assert rc == 0, err
        assert not stale.exists() and mine.exists()
    finally:
        stale.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)
        if made_dir:
            zram.STATE_FILE.parent.rmdir()


CGROUP_CHILD = """
import os, sys, time
from locality.experiment.cgroup import RunCgroup
cg = RunCgroup("leftover-test", 64 << 20).__enter__()
cg.add(os.getpid())
print(cg.path, flush=True)
time.sleep(60)
"""


@needs_root
@pytest.mark.skipif(cgroup.available() is None, reason="no memory cgroup hierarchy")
def test_a_cgroup_left_by_a_sigkilled_run_is_listed_then_removed(cli):
    p = subprocess.Popen([sys.executable, "-c", CGROUP_CHILD], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    path = Path(p.stdout.readline().strip())
    try:
        assert path.is_dir() and path.name == f"locality-leftover-test-{p.pid}"
        assert str(path) not in paths(listed(cli))  # its owner runs
        p.send_signal(signal.SIGKILL)
        p.wait()
        (item,) = [i for i in listed(cli) if i["path"] == str(path)]
        assert item["kind"] == "cgroup" and item["owner_pid"] == p.pid
        rc, out, err = cli("doctor", "--fix")
        assert rc == 0, err
        assert "(removed)" in out and not path.exists()
        assert str(path) not in paths(listed(cli))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if path.is_dir():
            path.rmdir()


SWAP_CHILD = """
import time
from locality.kernel.swap import zram_swap_on
zram_swap_on(64 << 20)
print("on", flush=True)
time.sleep(60)
"""


@pytest.mark.swap
@needs_root
@pytest.mark.skipif(not zram.ZRAM_SYSFS.is_dir(), reason="no zram device")
def test_zram_swap_left_on_by_a_killed_process_is_turned_off_but_swap_on_from_the_cli_is_kept(cli):
    from conftest import zram_swap_active

    if zram_swap_active():
        pytest.skip("zram swap is in use on this machine")
    p = subprocess.Popen([sys.executable, "-c", SWAP_CHILD], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert p.stdout.readline().strip() == "on"
        assert "zram-swap" not in {i["kind"] for i in listed(cli)}  # its owner runs
        p.send_signal(signal.SIGKILL)
        p.wait()
        (item,) = [i for i in listed(cli) if i["kind"] == "zram-swap"]
        assert item["owner_pid"] == p.pid and item["path"] == str(zram.STATE_FILE)
        rc, _, err = cli("doctor", "--fix")
        assert rc == 0, err
        assert not zram_swap_active() and not zram.STATE_FILE.exists()
        # `locality swap on` exits at once; its swap is meant to stay on: not a leftover.
        rc, _, err = cli("swap", "on", "--size", "64M")
        assert rc == 0, err
        assert "zram-swap" not in {i["kind"] for i in listed(cli)}
        # `swap off` turns it off and removes the other leftovers too.
        stale = Path(tempfile.gettempdir()) / f"locality-latency-{dead_pid()}-zz.npy"
        stale.write_bytes(b"x")
        rc, out, err = cli("swap", "off")
        assert rc == 0, err
        assert not zram_swap_active() and not stale.exists() and f"removed leftover temp {stale}" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if zram.STATE_FILE.exists():
            zram.zram_swap_off(force=True)


def test_the_next_run_removes_leftovers(cli, tmp_path):
    stale = Path(tempfile.gettempdir()) / f"locality-state-pages-{dead_pid()}-zz.npy"
    stale.write_bytes(b"x")
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text('workers = 1000\nsteps = 3\n[pattern]\nname = "uniform"\np = 0.1\n[sampling]\ninterval = 0.05\n')
        rc, _, err = cli("run", str(cfg), "--out", str(tmp_path / "runs"), "--id", "r", "--json")
        assert rc == 0, err
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)


def test_find_lists_nothing_of_a_live_owner():
    mine = Path(tempfile.gettempdir()) / f"{tempfiles.prefix('probe')}x"
    mine.write_text("x")
    try:
        assert str(mine) not in {i.path for i in leftovers.find()}
    finally:
        mine.unlink()


@pytest.mark.parametrize("moment", ["creating", "removing"])
def test_a_ctrl_c_while_a_scratch_directory_is_made_or_removed_leaves_nothing(monkeypatch, moment):
    # A SIGINT inside mkdtemp or rmtree (the calibration run's window, seen once in test_faults):
    # the directory is still removed whole, and the interrupt is delivered right after.
    from locality.experiment import scratch

    made: list[Path] = []
    real_mkdtemp, real_rmtree = tempfile.mkdtemp, shutil.rmtree

    def mkdtemp(**kw):
        made.append(Path(real_mkdtemp(**kw)))
        if moment == "creating":
            os.kill(os.getpid(), signal.SIGINT)
        return str(made[-1])

    def rmtree(path, **kw):
        if moment == "removing":
            os.kill(os.getpid(), signal.SIGINT)
        real_rmtree(path, **kw)

    monkeypatch.setattr(scratch.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(scratch.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        with scratch.scratch_directory("calibrate") as d:
            (d / "run").mkdir()
            (d / "run" / "metrics.json").write_text("{}")
    assert made and made[0].name.startswith(tempfiles.prefix("calibrate"))
    assert not made[0].exists()
