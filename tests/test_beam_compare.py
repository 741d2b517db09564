"""`locality beam compare`: the VM techniques, each checked against what it must do.

Every technique runs once, at 20k columns, in its own fresh VM (marker
`beam`; the module's VM runs take about 40 s here). Each run directory must pass
the checks a Python run passes; each technique must show the one fact that
makes it that technique (hibernated processes, pid serials in Hilbert order,
exactly the hot columns migrated, 64 columns a process (256 off-heap), state in atomics,
the allocator strategy the VM reports). Then the exit paths: no beam.smp is
left after Ctrl-C, SIGTERM or a failing technique, and bad input is one line
with exit status 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import IN_CI, run_cli

from locality.experiment.beam import BeamConfig, BeamVM
from locality.experiment.beam.compare import compare_techniques
from locality.experiment.beam.techniques import registry, resolve
from locality.experiment.beam.verdict import verdict
from test_beam import DRIVER_SAY, HAVE_ERLANG, _alive, signal_mid_run

needs_erlang = pytest.mark.skipif(not HAVE_ERLANG and not IN_CI, reason="needs erlang-nox (apt-get install erlang-nox)")
N = 20_000
STEPS = 10  # migrate-hot migrates after step 10


def _check_run_dir(run_dir: Path) -> dict:
    """The checks a Python run passes: complete, every file parses, and they agree with each other."""
    from locality.report.data import load_run_data

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["kind"] == "beam", manifest.get("error")
    assert manifest["finished"] and manifest["page_sizes_seen"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timeline = pd.read_csv(run_dir / "timeline.csv")
    assert len(timeline) >= 1 and timeline["rss_bytes"].gt(0).all()
    assert len(pd.read_csv(run_dir / "vmas.csv")) >= len(timeline)
    assert len(pd.read_csv(run_dir / "latency.csv")) > 0
    steps = json.loads((run_dir / "steps.json").read_text())
    assert len(steps) == metrics["steps"] == STEPS
    with np.load(run_dir / "pages.npz") as z:
        assert z["resident"].shape == (len(timeline), (int(z["n_pages"]) + 7) // 8)
    data = load_run_data(run_dir)  # what `locality report` reads
    assert data.kind == "beam" and data.pages is not None and data.latency_ns is not None
    return metrics


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every technique once, 20k columns, 10 steps of the harness's sheet at 1%."""
    if not HAVE_ERLANG:
        pytest.skip("needs erlang-nox")
    root = tmp_path_factory.mktemp("beam-compare")
    base = BeamConfig(processes=N, steps=STEPS, interval=0.05, windows=(0.1,), seed=5, report_ids=True)
    result = compare_techniques(resolve("all"), base, runs=root, progress=False)
    return {"result": result, "base": base}


@pytest.mark.beam
@needs_erlang
def test_every_technique_runs_and_its_run_directory_is_sound(compared: dict) -> None:
    result = compared["result"]
    assert list(result.statuses) == list(registry())
    assert set(result.statuses.values()) == {"complete"}, result.statuses
    expected = list(islice(_schedule(compared["base"]), STEPS))
    for name, run_dir in result.runs.items():
        m = _check_run_dir(run_dir)
        assert m["technique"] == name and m["workers"] == N
        # The same seeded schedule everywhere, and every activated column replied.
        steps = json.loads((run_dir / "steps.json").read_text())
        assert [s["ids"] for s in steps] == [sorted(e.tolist()) for e in expected], name
        assert m["activations"] == sum(len(e) for e in expected), name
        assert not _alive(json.loads((run_dir / "manifest.json").read_text())["config"]["pid"])


def _schedule(cfg: BeamConfig):
    from locality.population import make_pattern

    return make_pattern("sheet", cfg.processes, seed=cfg.seed, p=cfg.p, radius=float(cfg.radius)).steps()


def _metrics(compared: dict, name: str) -> dict:
    return json.loads((compared["result"].runs[name] / "metrics.json").read_text())


@pytest.mark.beam
@needs_erlang
def test_each_technique_does_what_it_says(compared: dict) -> None:
    m = {name: _metrics(compared, name) for name in compared["result"].runs}
    default = m["default"]
    assert default["processes"] == N and default["workers_hibernated"] == 0
    assert m["hibernate"]["workers_hibernated"] == N
    # heap-tuned: every heap is sized to the state (+hms 38: 38..90 words), not the default 233.
    assert m["heap-tuned"]["workers_heap_words_sum"] <= 90 * N < default["workers_heap_words_sum"]
    # grouped: 64 columns a process, each answered by its group.
    assert m["grouped"]["processes"] == -(-N // 64)
    # state-off-heap: the state is off the heaps, in one atomics array of 10 words a column.
    off = m["state-off-heap"]
    assert off["workers_hibernated"] == N
    atomics = off["bytes_per_process_vm_total"] - off["bytes_per_process_vm"]
    assert 80 <= atomics < 80 + 32, atomics
    assert off["bytes_per_process_erlang"] < m["hibernate"]["bytes_per_process_erlang"]
    # grouped+state-off-heap+spawn-order: 256-column groups (16x16 tiles), the state in the atomics.
    tiles = m["grouped+state-off-heap+spawn-order"]
    assert tiles["processes"] == -(-N // 256) and tiles["spawn_order"] == "hilbert"
    assert 80 <= tiles["bytes_per_process_vm_total"] - tiles["bytes_per_process_vm"] < 80 + 32
    # migrate-hot: after step 10, exactly the distinct columns of steps 0..9 re-created themselves.
    hot = np.unique(np.concatenate(list(islice(_schedule(compared["base"]), STEPS))))
    (migration,) = m["migrate-hot"]["migrations"]
    assert migration["migrated"] == hot.size == m["migrate-hot"]["migrated_total"]
    assert m["migrate-hot"]["relocation_ms_per_step"] > 0
    # allocator: the VM runs eheap_alloc with the strategy the flag set names.
    for name in ("allocator:aobf", "allocator:bf"):
        beam = json.loads((compared["result"].runs[name] / "beam.json").read_text())
        assert beam["hello"]["eheap_alloc_strategy"] == name.split(":")[1]
    beam = json.loads((compared["result"].runs["default"] / "beam.json").read_text())
    assert beam["hello"]["eheap_alloc_strategy"] == "aoffcbf"  # OTP 25's default


@pytest.mark.beam
@needs_erlang
def test_spawn_order_spawns_along_the_hilbert_curve() -> None:
    """The VM numbers processes as it spawns them: the serials follow the Hilbert order exactly."""
    from locality.experiment.beam.metrics import spawn_order
    from locality.layouts.clustered import hilbert_order

    n = 4_096
    for order, expected in (("hilbert", hilbert_order(n)), ("id", np.arange(n))):
        cfg = BeamConfig(processes=n, order=order)
        with BeamVM(cfg) as vm:
            with spawn_order(vm, cfg):
                vm.request("spawn", "ready")
            serials = np.asarray(vm.request("where " + " ".join(map(str, range(n))), "where")["serials"])
        # Column expected[k] was the k-th spawned: its serial is the k-th smallest.
        assert (np.argsort(serials, kind="stable") == expected).all(), order


@pytest.mark.beam
@needs_erlang
def test_report_holds_the_techniques_and_python_runs_together(compared: dict, tmp_path: Path) -> None:
    from fixtures_runs import make_run

    from locality.report.html import write_report

    result = compared["result"]
    python_run = make_run(tmp_path / "py", "slab-1", layout="slab")
    out = write_report([*result.reported, python_run], tmp_path / "r.html", title=result.title,
                       notes=result.notes, verdict=result.verdict)
    html = out.read_text()
    assert 'id="verdict-table"' in html and 'id="technique-table"' in html
    for name in result.runs:
        assert f"beam {name}" in html  # each technique is a labelled row
    assert 'data-run="slab-1"' in html
    rc, _, err = run_cli("report", str(result.runs["default"]), str(python_run), "-o", str(tmp_path / "cli.html"))
    assert rc == 0, err


# ------------------------------------------------------------------ the verdict, from metrics alone


def _m(wss10: float, bytes_: float, p99: float, untouched: float | None = None, **kw: float) -> dict:
    return {"wss_bytes_by_window": {"10": wss10}, "bytes_per_worker": bytes_, "latency_p99_us": p99,
            "untouched_after_pageout": {"10": untouched} if untouched is not None else {},
            "activations_per_s": kw.get("rate", 1e5), "rss_vs_vm_total_ratio": kw.get("ratio", 1.0)}


def test_verdict_names_each_questions_winner_from_the_metrics() -> None:
    v = verdict({
        "default": _m(100 << 20, 2649, 1000, 0.5),
        "slow-small": _m(10 << 20, 900, 2000, 0.9, ratio=1.3),
        "fast-mid": _m(30 << 20, 1500, 1200, rate=2e5),
    })
    winners = {row["question"].split(" (")[0]: row["winner"] for row in v["questions"]}
    assert winners == {"smallest working set": "slow-small", "fewest bytes per column": "slow-small",
                       "lowest activation latency": "default", "most memory left out after a page-out": "slow-small",
                       "highest throughput": "fast-mid"}
    wss_target, bytes_target, agreement = v["targets"]
    # slow-small's p99 is 2x default's: the WSS target takes the best within 1.5x, fast-mid (3.33x smaller).
    assert wss_target["met"] is False and wss_target["measured"].startswith("fast-mid: 3.33×")
    assert bytes_target["met"] is True and "2.94× fewer" in bytes_target["measured"]
    assert agreement["met"] is False and "slow-small 1.300" in agreement["measured"]
    assert v["table"]["rows"][1]["technique"] == "slow-small"


def test_verdict_without_a_10s_window_uses_the_longest() -> None:
    m = {"default": {"wss_bytes_by_window": {"1": 5.0, "2": 8.0}}, "other": {"wss_bytes_by_window": {"1": 4.0, "2": 2.0}}}
    v = verdict(m)
    assert v["window"] == "2" and v["questions"][0]["winner"] == "other"


# ------------------------------------------------------------------ exit paths


_DRIVER = DRIVER_SAY + """
from locality.experiment.beam import BeamConfig
from locality.experiment.beam.compare import compare_techniques
from locality.experiment.beam.techniques import resolve
base = BeamConfig(processes=2_000, steps=600, interval=0.1)
compare_techniques(resolve("default,hibernate"), base, runs=sys.argv[1], progress=False, on_event=say)
"""


@pytest.mark.beam
@needs_erlang
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_no_vm_left_after_a_signal(tmp_path: Path, sig: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        signal_mid_run(driver, getattr(signal, sig))
        assert not _beam_children_of(driver.pid)
    finally:
        if driver.poll() is None:
            driver.kill()
    (root,) = tmp_path.iterdir()
    (run_dir,) = root.iterdir()  # the second technique never started
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    # What was measured before the signal is kept.
    assert len(pd.read_csv(run_dir / "timeline.csv")) >= 1
    assert json.loads((run_dir / "metrics.json").read_text())["complete"] is False


def _beam_children_of(pid: int) -> list[int]:
    """beam.smp processes whose parent is ``pid`` or was one of its children (now reparented or not)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if comm.startswith("beam") and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@pytest.mark.beam
@needs_erlang
def test_a_failing_technique_is_a_failed_row_and_its_vm_is_killed(tmp_path: Path) -> None:
    pids: dict[str, int] = {}
    current: list[str] = []

    def say(message: str) -> None:
        if message.startswith("technique ") and ":" in message:
            current.append(message.split()[1].rstrip(":"))
        if message.startswith("spawning"):
            pids[current[-1]] = int(message.rsplit("pid ", 1)[1].rstrip(")"))
        if message.startswith("running") and current[-1] == "hibernate":
            raise RuntimeError("injected failure")

    base = BeamConfig(processes=2_000, steps=2, interval=0.05, windows=(0.05,))
    result = compare_techniques(resolve("default,hibernate,grouped"), base, runs=tmp_path, progress=False, on_event=say)
    assert result.statuses == {"default": "complete", "hibernate": "failed", "grouped": "complete"}
    assert set(pids) == {"default", "hibernate", "grouped"}
    assert not any(_alive(p) for p in pids.values())
    failed = json.loads((result.runs["hibernate"] / "manifest.json").read_text())
    assert failed["status"] == "failed" and "injected failure" in failed["error"]
    assert set(result.verdict["table"]["rows"][i]["technique"] for i in range(2)) == {"default", "grouped"}


# ------------------------------------------------------------------ bad input


@needs_erlang
@pytest.mark.parametrize("args, says", [
    (["--techniques", "default,quantum"], "unknown technique 'quantum'"),
    (["--allocator", "broken=+MHas xyz", "--techniques", "allocator:broken"], 'the VM said "bad "MHa" value: xyz"'),
    (["-n", "200000000", "--techniques", "default"], "above the VM's process limit"),
    (["--allocator", "evil=-eval halt()."], "only memory allocator flags"),
    (["--interval", "-1s"], "interval"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    rc, out, err = run_cli("beam", "compare", *args, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "r.html"))
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("locality: error: ") and says in lines[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.html").exists()


def test_readme_documents_every_technique_as_the_registry_does() -> None:
    from locality.experiment.beam.techniques import describe

    readme = (Path(__file__).resolve().parents[1] / "experiments" / "beam" / "README.md").read_text()
    assert describe(registry().values(), width=78) in readme  # regenerate the block if this fails
    rc, out, _ = run_cli("beam", "compare", "--help")
    assert rc == 0
    for name in registry():
        assert f"\n  {name}\n" in out


@pytest.mark.beam
@pytest.mark.swap
@needs_erlang
def test_swap_is_on_for_the_comparison_and_restored_after_ctrl_c(tmp_path: Path) -> None:
    """--swap: zram on while the techniques run (they page out and watch), then exactly as before,
    also when Ctrl-C ends the comparison in the middle of a technique."""
    from conftest import skip_or_fail, zram_swap_active

    from locality.kernel import swap as zram

    if os.geteuid() != 0 or not zram.ZRAM_SYSFS.is_dir():
        skip_or_fail("zram swap needs root and /sys/block/zram0")
    if zram_swap_active():
        pytest.skip("zram swap is already in use on this machine (another run?)")
    seen: dict[str, object] = {"swap": [], "pids": []}

    def say(message: str) -> None:
        if message.startswith("spawning"):
            seen["pids"].append(int(message.rsplit("pid ", 1)[1].rstrip(")")))
        if message.startswith("running"):
            seen["swap"].append(zram_swap_active())
            if len(seen["pids"]) == 2:
                raise KeyboardInterrupt

    base = BeamConfig(processes=5_000, steps=4, interval=0.25, windows=(0.5,))
    result = compare_techniques(resolve("default,hibernate"), base, swap_bytes=256 << 20, runs=tmp_path,
                                progress=False, on_event=say)
    assert seen["swap"] == [True, True]
    assert result.statuses == {"default": "complete", "hibernate": "interrupted"}
    assert not zram_swap_active() and zram._read("disksize") == "0" and not zram.STATE_FILE.exists()
    assert not any(_alive(p) for p in seen["pids"])
    m = _metrics({"result": result}, "default")
    assert m["pageouts"] and m["pageouts"][0]["paged_out_pages"] > 0
    assert 0 < m["untouched_after_pageout"]["0.5"] <= 1


@pytest.mark.swap
def test_swap_already_on_is_shared_and_left_on(swap_on) -> None:
    """Swap the user turned on is used as `locality compare` uses it: --swap does not refuse,
    and the device is neither resized nor turned off when the comparison ends."""
    from conftest import zram_swap_active

    from locality.experiment.beam.compare import swap_for_comparison
    from locality.kernel import swap as zram

    size = zram._read("disksize")
    for given in (1 << 30, None):
        with swap_for_comparison(given) as on:
            assert on
        assert zram_swap_active() and zram._read("disksize") == size
