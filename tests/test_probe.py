"""`locality probe` against ground truth: children that touch known pages at known times."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from childproc import Child
from conftest import ROOT

from locality.experiment import probe as probe_module
from locality.experiment.probe import probe
from locality.experiment.store import read_manifest, unpack_bits
from locality.kernel import PAGE_SIZE, procfs

N_PAGES = 1024
RESIDENT = 100  # pages 0..99 touched once
HOT = list(range(40, 50))  # then touched again and again


def arena_rows(timeline: pd.DataFrame, c: Child) -> pd.DataFrame:
    rows = timeline[timeline.start == c.addr]
    assert (rows.end == c.addr + c.length).all()
    return rows.sort_values("sample")


def load_pages(run_dir):
    with np.load(run_dir / "pages.npz") as z:
        pages = {k: z[k] for k in z.files}
    n = int(pages["n_pages"])
    return pages, unpack_bits(pages["resident"], n), unpack_bits(pages["swapped"], n)


def test_probe_cli_reports_residency_and_referenced_bytes_of_a_known_region(cli, tmp_path):
    with Child(pages=N_PAGES) as c:
        c.touch(range(RESIDENT))
        c.start("loop_touch", pages=HOT, rate=200, seconds=60)  # every hot page ~20 times a second
        out = tmp_path / "run"
        rc, stdout, err = cli("probe", c.pid, "--interval", "400ms", "--duration", "1600ms", "--track-refs",
                              "--range", f"{c.addr:x}-{c.addr + c.length:x}", "--out", out, "--json")
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["status"] == "complete" and summary["samples"] == 5 and summary["run_dir"] == str(out)
    assert err == ""  # --json: no live lines
    manifest = read_manifest(out)
    assert (manifest["kind"], manifest["status"], manifest["config"]["pid"]) == ("probe", "complete", c.pid)
    assert manifest["page_sizes_seen"] == [PAGE_SIZE] and manifest["capabilities"]["clear_refs"]["available"]

    timeline = pd.read_csv(out / "timeline.csv")
    rows = arena_rows(timeline, c)
    assert len(timeline) == len(rows) == 5  # --range: only the arena VMA
    assert (rows.resident_pages == RESIDENT).all() and (rows.swapped_pages == 0).all()
    assert (rows.rss_bytes == RESIDENT * PAGE_SIZE).all()
    assert np.isnan(rows.referenced_bytes.iloc[0])  # no interval before the first sample
    referenced = rows.referenced_bytes.iloc[1:].to_numpy()
    assert np.all(np.abs(referenced - len(HOT) * PAGE_SIZE) <= PAGE_SIZE), referenced

    pages, resident, swapped = load_pages(out)
    np.testing.assert_array_equal(pages["page_addr"], c.addr + np.arange(RESIDENT, dtype=np.uint64) * PAGE_SIZE)
    assert resident.shape == (5, RESIDENT) and resident.all() and not swapped.any()
    assert len(pages["t"]) == 5 and np.all(np.diff(pages["t"]) > 0)
    assert pages["regions"][pages["region"][0]].startswith(f"{c.addr:#x}-")


def test_without_track_refs_the_target_is_not_written(tmp_path):
    with Child(pages=64) as c:
        c.touch(range(30))
        procfs.clear_refs(c.pid)
        c.touch(range(7))
        run = probe(c.pid, tmp_path / "run", interval=0.1, duration=0.3)
        (vma,) = [e for e in procfs.smaps(c.pid) if e.start == c.addr]
        assert vma.referenced == 7 * PAGE_SIZE  # the probe did not reset the bits
    rows = arena_rows(pd.read_csv(run / "timeline.csv"), c)
    assert rows.referenced_bytes.isna().all() and (rows.resident_pages == 30).all()


def test_live_line_per_sample_on_stderr(cli, tmp_path):
    with Child(pages=16) as c:
        c.touch(range(5))
        rc, out, err = cli("probe", c.pid, "--interval", "100ms", "--duration", "300ms", "--out", tmp_path / "r")
    assert rc == 0, err
    lines = err.splitlines()
    assert len(lines) == 4 and all(line.startswith("t=") for line in lines), err
    assert out.startswith("complete: 4 samples in ")


def test_unused_vmas_are_not_read(tmp_path, monkeypatch):
    # A huge reservation with nothing resident (think: a VM's heap carriers)
    # must cost nothing: smaps says rss 0, so its pagemap is never read.
    script = textwrap.dedent(
        """
        import ctypes, mmap, sys
        big = mmap.mmap(-1, 8 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)  # MAP_NORESERVE
        print(ctypes.addressof(ctypes.c_char.from_buffer(big)), flush=True)
        sys.stdin.read()
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    calls = []
    real = probe_module.pagemap

    def spy(pid, start, end):
        calls.append((start, end))
        return real(pid, start, end)

    monkeypatch.setattr(probe_module, "pagemap", spy)
    try:
        big = int(p.stdout.readline())
        run = probe(p.pid, tmp_path / "run", interval=0.1, duration=0.1)
    finally:
        p.stdin.close()
        p.wait()
    assert calls and not any(start < big + (8 << 30) and end > big for start, end in calls)
    rows = pd.read_csv(run / "timeline.csv")
    big_rows = rows[rows.start == big]
    assert len(big_rows) == 2 and (big_rows.resident_pages == 0).all() and (big_rows.rss_bytes == 0).all()


def test_vmas_appearing_and_disappearing_between_samples(tmp_path):
    # Region A (5 pages) lives first; then B (7 pages) is mapped and A unmapped.
    script = textwrap.dedent(
        """
        import ctypes, mmap, sys, time
        def region(n):
            m = mmap.mmap(-1, n * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            m.madvise(mmap.MADV_NOHUGEPAGE)
            for i in range(n):
                m[i * mmap.PAGESIZE] = 1
            buf = ctypes.c_char.from_buffer(m)
            addr = ctypes.addressof(buf)
            del buf
            return m, addr
        a, a_addr = region(5)
        print(a_addr, flush=True)
        sys.stdin.readline()
        b, b_addr = region(7)
        a.close()
        print(b_addr, flush=True)
        sys.stdin.readline()
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen: list[int] = []
    b_addr = None

    def on_sample(s):
        nonlocal b_addr
        seen.append(s.sample)
        if s.sample == 1:  # switch regions between samples 1 and 2
            p.stdin.write("\n")
            p.stdin.flush()
            b_addr = int(p.stdout.readline())

    try:
        a_addr = int(p.stdout.readline())
        run = probe(p.pid, tmp_path / "run", interval=0.3, duration=0.9, on_sample=on_sample)
    finally:
        p.stdin.close()
        p.wait()
    timeline = pd.read_csv(run / "timeline.csv")
    a_rows = timeline[(timeline.start <= a_addr) & (timeline.end > a_addr) & (timeline.resident_pages == 5)]
    b_rows = timeline[(timeline.start <= b_addr) & (timeline.end > b_addr) & (timeline.resident_pages == 7)]
    assert sorted(a_rows["sample"]) == [0, 1] and sorted(b_rows["sample"]) == [2, 3]
    assert a_rows.vma.nunique() == 1 and b_rows.vma.nunique() == 1 and a_rows.vma.iloc[0] != b_rows.vma.iloc[0]

    pages, resident, _ = load_pages(run)
    a_pages = a_addr + np.arange(5, dtype=np.uint64) * PAGE_SIZE
    b_pages = b_addr + np.arange(7, dtype=np.uint64) * PAGE_SIZE
    addr = pages["page_addr"]
    in_a, in_b = np.isin(addr, a_pages), np.isin(addr, b_pages)
    assert in_a.sum() == 5 and in_b.sum() == 7  # union over samples
    assert resident[:, in_a].sum(axis=1).tolist() == [5, 5, 0, 0]
    assert resident[:, in_b].sum(axis=1).tolist() == [0, 0, 7, 7]
    names = pages["regions"]
    assert names[a_rows.vma.iloc[0]].startswith(f"{int(a_rows.start.iloc[0]):#x}-")


def test_target_exiting_mid_probe_completes_with_a_note(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    try:
        run = probe(p.pid, tmp_path / "run", interval=0.1, duration=30)
    finally:
        p.wait()
    m = read_manifest(run)
    assert m["status"] == "complete" and f"PID {p.pid} exited" in m["note"]
    assert 1 <= m["samples"] < 30
    timeline = pd.read_csv(run / "timeline.csv")
    assert timeline["sample"].nunique() == m["samples"]
    pages, resident, _ = load_pages(run)
    assert len(pages["t"]) == resident.shape[0] == m["samples"]


def test_ctrl_c_keeps_every_sample_and_marks_the_run_interrupted(tmp_path):
    with Child(pages=32) as c:
        c.touch(range(9))
        out = tmp_path / "run"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, "-m", "locality", "probe", str(c.pid), "--interval", "100ms", "--duration", "1m",
             "--out", str(out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(3):  # three live lines: three samples taken
            assert proc.stderr.readline().startswith("t=")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; kept" in err
    m = read_manifest(out)
    assert m["status"] == "interrupted" and m["samples"] >= 3
    rows = arena_rows(pd.read_csv(out / "timeline.csv"), c)
    assert len(rows) == m["samples"] and (rows.resident_pages == 9).all()
    pages, resident, _ = load_pages(out)
    assert resident.shape[0] == m["samples"]
    assert sorted(os.listdir(out)) == ["manifest.json", "pages.npz", "timeline.csv"]  # no temp files left


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("500ms", 0.5), ("2m", 120.0), ("1.5h", 5400.0),
                                           ("30", 30.0), (" 0.25s ", 0.25), ("3min", 180.0)])
def test_durations(text, seconds):
    from locality.cli.probe import parse_duration

    assert parse_duration(text, "--interval") == seconds


def test_ranges_parse_like_proc_maps():
    from locality.cli.probe import parse_range

    assert parse_range("7f0000000000-7f0000100000") == (0x7F0000000000, 0x7F0000100000)
    assert parse_range("0x1000-0X3000") == (0x1000, 0x3000)


def test_page_history_rebuilds_every_sample_exactly():
    # Random page sets that grow, shrink and repeat, as a foreign process's do.
    rng = np.random.default_rng(0)
    history, sets = probe_module._PageHistory(), []
    for i in range(40):
        resident = np.unique(rng.integers(0, 500, size=rng.integers(0, 200))).astype(np.uint64) * PAGE_SIZE
        swapped = np.unique(rng.integers(300, 700, size=rng.integers(0, 50))).astype(np.uint64) * PAGE_SIZE
        if i % 5 == 1:
            resident, swapped = sets[-1]
        sets.append((resident, swapped))
        history.add(resident, swapped)
    addr, packed_resident, packed_swapped = history.matrices()
    np.testing.assert_array_equal(addr, np.unique(np.concatenate([np.concatenate(s) for s in sets])))
    resident_bits = unpack_bits(packed_resident, len(addr))
    swapped_bits = unpack_bits(packed_swapped, len(addr))
    for i, (resident, swapped) in enumerate(sets):
        np.testing.assert_array_equal(addr[resident_bits[i]], resident)
        np.testing.assert_array_equal(addr[swapped_bits[i]], swapped)


def test_whole_process_totals_come_from_smaps_rollup_not_truncated_per_vma_values(tmp_path, monkeypatch):
    # 300 one-page shared mappings, each shared by 3 processes: PSS 1.33 kB per VMA,
    # which smaps prints as 1 kB. The sum over VMAs reads 100 kB low; smaps_rollup does not.
    script = textwrap.dedent(
        """
        import mmap, os, sys
        maps = [mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS) for _ in range(300)]
        for m in maps:
            m[0] = 1
        r, w = os.pipe()
        for _ in range(2):  # two children map every page too: three sharers
            if os.fork() == 0:
                for m in maps:
                    m[0]
                os.write(w, b"x")
                sys.stdin.read()
                os._exit(0)
        os.read(r, 1), os.read(r, 1)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rolled, samples = [], []
    real = probe_module.rollup

    def spy(pid):
        rolled.append(real(pid))
        return rolled[-1]

    monkeypatch.setattr(probe_module, "rollup", spy)
    try:
        assert p.stdout.readline().strip() == "ready"
        run = probe(p.pid, tmp_path / "run", interval=0.1, duration=0.1, on_sample=samples.append)
    finally:
        p.stdin.close()
        p.wait()
    assert len(samples) == len(rolled) == 2
    assert [s.pss_bytes for s in samples] == [r["pss"] for r in rolled]
    assert [s.rss_bytes for s in samples] == [r["rss"] for r in rolled]
    rows = pd.read_csv(run / "timeline.csv")
    per_vma_sum = rows.groupby("sample").pss_bytes.sum().tolist()
    assert all(s.pss_bytes - v >= 300 * (4096 // 3 - 1024) - 8 * 1024 for s, v in zip(samples, per_vma_sum))
