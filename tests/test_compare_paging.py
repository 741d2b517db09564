"""`locality compare` paging: bad input, the no-swap path as an unprivileged user, a real zram page-out,
swap shared by concurrent compares and restored exactly (the verdict and curves in a browser: test_compare.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, UNPRIVILEGED, run_cli
from locality.cli import main
from locality.kernel import swap as zram
from locality.kernel import swap_active

needs_root_and_zram = pytest.mark.skipif(os.geteuid() != 0 or not zram.ZRAM_SYSFS.is_dir(),
                                         reason="needs root and /sys/block/zram0")
ZRAM_ATTRS = ("disksize", "comp_algorithm", "max_comp_streams", "mem_limit")


def swap_state() -> tuple:
    """Everything --swap must leave exactly as found: `swapon --show` and the device's settings."""
    shown = subprocess.run(["swapon", "--show", "--raw", "--bytes"], capture_output=True, text=True).stdout
    attrs = {}
    for a in ZRAM_ATTRS:
        try:
            attrs[a] = (zram.ZRAM_SYSFS / a).read_text()
        except OSError:
            attrs[a] = None
    return shown, attrs, zram.STATE_FILE.exists(), zram.USERS_FILE.parent.exists()


def _refused(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("locality: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("args, needles", [
    (["--idle", "0"], ["--idle 0: thresholds must be > 0"]),
    (["--idle=-5"], ["--idle -5: thresholds must be > 0"]),
    (["--idle", "10,50"], ["--idle 50: longer than the run (40 s)", "--duration"]),
    (["--duration", "20", "--idle", "20"], ["--idle 20: longer than the run (20 s)"]),
    (["--swap", "64T"], ["--swap 65536.0 GiB is larger than this machine's memory", "smaller --swap"]),
])
def test_bad_paging_arguments_exit_2_with_the_fix(args, needles, tmp_path, capsys):
    if "--swap" in args and os.geteuid() != 0:
        pytest.skip("as non-root --swap is refused for root first (tested below)")
    with pytest.raises(SystemExit) as e:
        main(["compare", "--workers", "1000", *args, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "c.html")])
    _refused(e.value.code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "c.html").exists()


def test_pageout_idle_without_swap_names_both_fixes(tmp_path, capsys):
    if swap_active():
        pytest.skip("swap is active here")
    with pytest.raises(SystemExit) as e:
        main(["compare", "--workers", "1000", "--reclaim", "pageout-idle", "--runs", str(tmp_path / "runs"),
              "--out", str(tmp_path / "c.html")])
    _refused(e.value.code, capsys.readouterr().err, "--reclaim pageout-idle needs swap", "--swap SIZE",
             "locality swap on")
    assert not (tmp_path / "runs").exists()


def _skip_if_swap_came(differs: bool) -> None:
    """The machine is shared: another process may turn swap on while a no-swap test runs."""
    if differs and (swap_active() or Path("/run/locality/zram-state.json").exists()):
        pytest.skip("swap was turned on by another process during the test")


def _nobody_dir(tmp_path: Path) -> Path:
    work = tmp_path / "w"
    work.mkdir()
    work.chmod(0o777)
    tmp_path.chmod(0o755)
    return work


@pytest.mark.parametrize("args, needles", [
    (["--swap", "1G"], ["--swap needs root", "leave --swap out"]),
    (["--reclaim", "pageout-idle"], ["--reclaim pageout-idle needs swap", "--swap SIZE", "locality swap on"]),
])
def test_unprivileged_refusals(args, needles, tmp_path):
    if swap_active() and "--reclaim" in args:
        pytest.skip("swap is active here")
    work = _nobody_dir(tmp_path)
    rc, out, err = run_cli("compare", "--workers", "1000", "--layouts", "slab", "--duration", "2", *args, cwd=work,
                           prefix=UNPRIVILEGED)
    _skip_if_swap_came("--reclaim" in args and rc != 2)
    _refused(rc, err, *needles)
    assert list(work.iterdir()) == []


def test_no_swap_path_as_unprivileged_user(tmp_path):
    """Without swap (and without root) the report has the simulated curve alone, and says so once."""
    if swap_active():
        pytest.skip("swap is active here: auto would page out for real")
    work = _nobody_dir(tmp_path)
    rc, out, err = run_cli("compare", "--workers", "5000", "--layouts", "slab,clustered", "--duration", "3",
                           "--interval", "0.5", "--step-interval", "0.02", "--json", cwd=work, prefix=UNPRIVILEGED,
                           timeout=300)
    assert rc == 0, err[-3000:]
    note = "no swap is active, so the paging figures are simulated"
    _skip_if_swap_came(note not in err)
    assert err.count(note) == 1 and "--swap 4G" in err and "locality swap on" in err
    res = json.loads(out)
    assert set(res["runs"]) == {"slab", "clustered", "waves-slab", "waves-clustered"} or \
        set(res["runs"]) == {"slab", "clustered", "waves-slab"}
    html = (work / res["report"]).read_text() if not os.path.isabs(res["report"]) else Path(res["report"]).read_text()
    assert note in html and 'id="verdict-table"' in html
    m = json.loads((Path(res["runs"]["clustered"]["run_dir"]) if os.path.isabs(res["runs"]["clustered"]["run_dir"])
                    else work / res["runs"]["clustered"]["run_dir"]).joinpath("metrics.json").read_text())
    assert m["reclaim"] == "none" and m["paging"]["state"]["pages"] > 0 and m["pageout_check"] is None
    assert set(m["idle_profile"]["share_idle_at_least"]) >= {"1", "10", "60", "600"}
    run_dir = Path(res["runs"]["clustered"]["run_dir"])
    manifest = json.loads(((work / run_dir) if not run_dir.is_absolute() else run_dir).joinpath("manifest.json").read_text())
    # UNPRIVILEGED keeps CAP_DAC_READ_SEARCH (see conftest), so the run reads the root-only DAMON
    # files as root does (the unreadable case is tested on a fake tree in test_damon.py).
    from locality.kernel import active_kdamonds

    assert manifest["system_damon"] == active_kdamonds()


@needs_root_and_zram
@pytest.mark.swap
def test_real_pageout_with_swap_restores_the_device(tmp_path):
    """--swap turns zram on, the best layout is paged out for real, and the device ends exactly as found."""
    if swap_active():
        pytest.skip("swap is already active: --swap would not turn it on")
    before = swap_state()
    runs = tmp_path / "runs"
    rc, out, err = run_cli("compare", "--workers", "20000", "--layouts", "objects,clustered", "--duration", "6",
                           "--interval", "0.5", "--step-interval", "0.02", "--swap", "1G", "--idle", "2",
                           "--runs", str(runs), "--out", str(tmp_path / "c.html"), "--json", timeout=600)
    assert swap_state() == before
    assert rc == 0, err[-3000:]
    res = json.loads(out)
    measured = [k for k in res["runs"] if k.endswith("-pageout-idle-2s")]
    assert len(measured) == 1, res["runs"]
    m = json.loads((Path(res["runs"][measured[0]]["run_dir"]) / "metrics.json").read_text())
    assert m["reclaim"] == "pageout-idle" and m["pageout_bytes"] > 0
    check = m["pageout_check"]["state"]
    assert check["saved_fraction"] > 0
    assert check["measured_refaults"] > 0 and check["simulated_refaults"] is not None
    assert check["measured_refaults"] == check["refaulted_written"] + check["refaulted_readonly"]
    html = (tmp_path / "c.html").read_text()
    assert "real page-out after 2 s idle brought back" in html


@needs_root_and_zram
@pytest.mark.swap
def test_a_second_user_keeps_swap_on_until_it_leaves(tmp_path):
    """Two concurrent users of --swap: the first to leave must not switch swap off under the second."""
    if swap_active():
        pytest.skip("swap is already active")
    before = swap_state()
    code = ("import sys; from locality.kernel.swap import shared_zram_swap\n"
            "with shared_zram_swap(None) as on:\n    print(on, flush=True); sys.stdin.readline()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        with zram.shared_zram_swap(64 << 20) as turned_on:
            assert turned_on
            second = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env)
            assert second.stdout.readline().strip() == "False"
        assert any(a["filename"] == "/dev/zram0" for a in swap_active()), "switched off under the second user"
        second.stdin.write("\n")
        second.stdin.flush()
        assert second.wait(timeout=60) == 0
        assert swap_state() == before
    finally:
        if zram.STATE_FILE.exists():
            zram.zram_swap_off(force=True)
        zram.USERS_FILE.unlink(missing_ok=True)


@needs_root_and_zram
@pytest.mark.swap
def test_sigterm_keeps_finished_runs_and_restores_swap(tmp_path):
    """SIGTERM to the runner alone (test_compare.py sends a terminal's SIGINT to the group)."""
    import glob
    import signal
    import time

    if swap_active():
        pytest.skip("swap is already active")
    before = swap_state()
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "locality", "compare", "--workers", "5000", "--layouts", "slab,objects",
         "--duration", "6", "--idle", "2", "--interval", "0.5", "--swap", "1G", "--runs", str(runs), "--out", str(tmp_path / "c.html")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 180
        while not glob.glob(str(runs / "*" / "objects" / "manifest.json")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        assert any(a["filename"] == "/dev/zram0" for a in swap_active())
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert swap_state() == before
    assert f"report: {tmp_path / 'c.html'}" in out
    (root,) = runs.iterdir()
    statuses = {p.name: json.loads((p / "manifest.json").read_text())["status"] for p in root.iterdir()}
    assert statuses == {"slab": "complete", "objects": "interrupted"}


@pytest.mark.parametrize("active, reclaim, swap, mode, noted", [
    ([], "auto", None, "none", True),  # no swap: simulated alone, said once
    ([{"filename": "/dev/zram0"}], "auto", None, "pageout-idle", False),  # swap active: page out for real
    ([], "none", None, "none", True),
    ([{"filename": "/dev/sda2"}], "cgroup", None, "cgroup", False),
])
def test_reclaim_plan(monkeypatch, active, reclaim, swap, mode, noted):
    from locality.experiment import reclaim_plan

    monkeypatch.setattr("locality.kernel.swap_active", lambda: active)
    plan = reclaim_plan.plan_reclaim(reclaim, swap, [10.0], 40.0)
    assert plan.mode == mode and plan.idle == [10.0]
    assert bool(plan.notes) == noted
    if noted:
        assert "--swap 4G" in plan.notes[0] and "locality swap on" in plan.notes[0]
    if mode == "pageout-idle":
        assert plan.reclaim_config(10.0, Path("."), {}) == {"policy": "pageout-idle", "idle_seconds": 10.0,
                                                              "scope": "state"}


def test_auto_with_swap_given_by_root_pages_out_for_real(monkeypatch):
    from locality.experiment import reclaim_plan

    monkeypatch.setattr("locality.kernel.swap_active", lambda: [])
    monkeypatch.setattr("os.geteuid", lambda: 0)
    plan = reclaim_plan.plan_reclaim("auto", 1 << 30, None, 40.0)
    assert plan.mode == "pageout-idle" and plan.swap_bytes == 1 << 30 and not plan.notes
