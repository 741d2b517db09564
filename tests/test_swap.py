"""zram swap on/off, and paging anonymous memory out and back in against ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from childproc import Child
from conftest import zram_swap_active as zram_active

from locality.errors import InvalidArgument, LocalityError, Unsupported
from locality.kernel import PAGE_SIZE, pagemap, process_pageout, swap_active
from locality.kernel import swap as zram
from locality.kernel.pagemap import residency

needs_root_and_zram = pytest.mark.skipif(
    os.geteuid() != 0 or not zram.ZRAM_SYSFS.is_dir(), reason="needs root and /sys/block/zram0"
)


def device_is_as_found() -> bool:
    return not zram_active() and zram._read("disksize") == "0" and not zram.STATE_FILE.exists()


def majflt(pid: int) -> int:
    # /proc/PID/stat field 12 (majflt); the command name may contain spaces, so split after ')'.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])


@pytest.mark.swap
@needs_root_and_zram
def test_swap_on_records_prior_state(swap_on):
    (area,) = [a for a in swap_active() if a["filename"] == "/dev/zram0"]
    assert area["priority"] == zram.SWAP_PRIORITY
    assert area["size_bytes"] > 250 << 20
    state = json.loads(zram.STATE_FILE.read_text())
    assert state["disksize"] == 0 and state["was_swap"] is False
    with pytest.raises(LocalityError, match="already on"):
        zram.zram_swap_on(64 << 20)


@pytest.mark.swap
@needs_root_and_zram
def test_anonymous_pageout_swaps_exactly_those_pages_and_touching_brings_them_back(swap_on):
    n = 1024
    with Child(pages=n) as c:
        c.touch(range(n))
        evicted = sorted(np.random.default_rng(7).choice(n, size=300, replace=False).tolist())
        ranges = [(c.addr + p * PAGE_SIZE, PAGE_SIZE) for p in evicted]
        assert process_pageout(c.pid, ranges) == len(evicted) * PAGE_SIZE
        pm = pagemap(c.pid, c.addr, c.addr + c.length)
        assert np.flatnonzero(pm.swapped).tolist() == evicted
        assert np.flatnonzero(~pm.present).tolist() == evicted
        assert (pm.pfn[pm.swapped] == 0).all()
        assert len(np.unique(pm.swap_offset[pm.swapped])) == len(evicted)
        assert c.mincore() == sorted(set(range(n)) - set(evicted))
        r = residency(c.pid, c.addr, c.addr + c.length)
        assert np.array_equal(r.swapped, pm.swapped) and np.array_equal(r.present, pm.present)

        before = majflt(c.pid)
        c.read(evicted)
        # zram is a synchronous device: no swap readahead, one major fault per page.
        assert majflt(c.pid) - before == len(evicted)
        pm = pagemap(c.pid, c.addr, c.addr + c.length)
        assert pm.present.all() and not pm.swapped.any()


@pytest.mark.swap
@needs_root_and_zram
def test_swapped_pages_are_told_apart_from_uffd_markers_in_a_tracked_range(swap_on):
    from locality.kernel import WriteTracker

    n = 512
    with Child(pages=n) as c:
        touched = list(range(0, n, 2))
        c.touch(touched)
        c.register_write_tracking()
        with WriteTracker(c.addr, c.length, pid=c.pid) as tracker:
            tracker.reset()  # markers on the never-touched odd pages
            evicted = touched[::5]
            process_pageout(c.pid, [(c.addr + p * PAGE_SIZE, PAGE_SIZE) for p in evicted])
            pm = pagemap(c.pid, c.addr, c.addr + c.length)
            assert np.flatnonzero(pm.swapped).tolist() == evicted
            assert np.flatnonzero(pm.uffd_marker).tolist() == list(range(1, n, 2))
            r = residency(c.pid, c.addr, c.addr + c.length)
            assert np.array_equal(r.swapped, pm.swapped) and np.array_equal(r.present, pm.present)
            c.write(evicted[:3])  # swap-in by a write: written, present again
            assert np.flatnonzero(tracker.written()).tolist() == evicted[:3]


@pytest.mark.swap
@needs_root_and_zram
def test_cli_swap_on_status_off_leaves_no_swap():
    if zram_active():
        pytest.skip("zram swap is already in use on this machine (another run?)")
    run = lambda *args: subprocess.run([sys.executable, "-m", "locality", "swap", *args], capture_output=True, text=True, timeout=60)
    try:
        on = run("on", "--size", "64M")
        assert on.returncode == 0, on.stderr
        status = json.loads(run("status", "--json").stdout)
        assert [a["filename"] for a in status["swap"]] == ["/dev/zram0"]
        assert status["locality_zram"]["size_bytes"] == 64 << 20
        off = run("off")
        assert off.returncode == 0, off.stderr
        assert "/dev/zram0" not in Path("/proc/swaps").read_text()
        assert device_is_as_found()
    finally:
        zram.zram_swap_off()


@pytest.mark.swap
@needs_root_and_zram
def test_failure_half_way_undoes_everything(monkeypatch):
    if zram_active():
        pytest.skip("zram swap is already in use on this machine (another run?)")

    def broken_swapon():
        raise LocalityError("swapon failed on purpose")

    monkeypatch.setattr(zram, "_swapon", broken_swapon)
    with pytest.raises(LocalityError, match="on purpose"):
        zram.zram_swap_on(64 << 20)
    assert device_is_as_found()


@pytest.mark.swap
@needs_root_and_zram
def test_off_is_refused_while_the_process_that_turned_it_on_runs():
    if zram_active():
        pytest.skip("zram swap is already in use on this machine (another run?)")
    code = "from locality.kernel.swap import zram_swap_on; import time; zram_swap_on(64 << 20); print('on', flush=True); time.sleep(60)"
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "on"
        with pytest.raises(LocalityError, match=f"PID {owner.pid} turned it on"):
            zram.zram_swap_off()
        assert zram_active()
        zram.zram_swap_off(force=True)
        assert device_is_as_found()
    finally:
        owner.kill()
        owner.wait()
        if zram.STATE_FILE.exists():
            zram.zram_swap_off(force=True)


def test_bad_sizes_are_refused():
    for size in (0, -1, 4096, "4G", 1.5e9):
        with pytest.raises(InvalidArgument):
            zram.zram_swap_on(size)


def test_refused_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(Unsupported, match="root"):
        zram.zram_swap_on(64 << 20)
    with pytest.raises(Unsupported, match="root"):
        zram.zram_swap_off()


def test_refused_without_zram(monkeypatch, tmp_path):
    monkeypatch.setattr(zram, "ZRAM_SYSFS", tmp_path / "no-zram")
    with pytest.raises(Unsupported, match="zram"):
        zram.zram_swap_on(64 << 20)


def test_cli_rejects_a_bad_size_with_status_2():
    out = subprocess.run([sys.executable, "-m", "locality", "swap", "on", "--size", "4Q"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "'4Q' is not a size" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("text,expected", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("65536", 65536), ("2k", 2048)])
def test_size_parsing(text, expected):
    from locality.cli.swap import parse_size

    assert parse_size(text) == expected


def test_swap_active_parses_proc_swaps():
    areas = swap_active()
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    assert [a["filename"] for a in areas] == [line.split()[0] for line in lines]


@pytest.mark.swap
@needs_root_and_zram
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pageout_reaches_pages_still_in_another_cpus_lru_batch(swap_on):
    # Freshly faulted pages wait in the LRU-add batch of the CPU that touched
    # them, where reclaim cannot isolate them. The child touches on one CPU and
    # we page out from another: every page must still be swapped.
    cpus = sorted(os.sched_getaffinity(0))
    mine = os.sched_getaffinity(0)
    with Child(pages=16) as c:
        os.sched_setaffinity(c.pid, {cpus[-1]})
        os.sched_setaffinity(0, {cpus[0]})
        try:
            c.touch(range(8))
            assert process_pageout(c.pid, [(c.addr, 8 * PAGE_SIZE)]) == 8 * PAGE_SIZE
        finally:
            os.sched_setaffinity(0, mine)
        assert np.flatnonzero(pagemap(c.pid, c.addr, c.addr + c.length).swapped).tolist() == list(range(8))
