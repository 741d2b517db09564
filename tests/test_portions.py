"""Portions: every page of a child in the portion its known objects put it in.

Ground truth: tests/portions_child.py allocates a slab arena, a lean
population's coroutines and list, 100k floats, an 8 MiB bytearray and a
sleeping thread, and tells us their addresses; the portion map built from its
walk and its VMAs must put every page of each in its portion, and the
portions' resident bytes must add up to its smaps Rss.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from locality.experiment import portions
from locality.experiment.sampler import Sampler, anonymous_ranges
from locality.kernel import PAGE_SIZE, rollup, smaps, vmas
from locality.population.portions import CODE, PORTIONS

PS = int(PAGE_SIZE)
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    path = tmp_path_factory.mktemp("portions") / "walk.npz"
    proc = subprocess.Popen([sys.executable, str(HERE / "portions_child.py"), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "the child died before reporting"
        facts = json.loads(line)
        pmap = portions.start(proc.pid, _sampler(proc.pid, facts), path)
        yield proc, facts, pmap
    finally:
        proc.kill()
        proc.wait()


def _sampler(pid: int, facts: dict) -> Sampler:
    sampler = Sampler(pid, [1.0], keep_pages=False)
    now = time.monotonic()
    for start, length in facts["arenas"]:
        sampler.add_region("arena", start, length, now, writes=False)
    for name, start, length in anonymous_ranges(vmas(pid), exclude=[tuple(a) for a in facts["arenas"]]):
        sampler.add_region(name, start, length, now, writes=False)
    return sampler


def _pages(ranges) -> np.ndarray:
    """Every page any of the [start, end) byte ranges has a byte on."""
    r = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    first, last = r[:, 0] // PS, (r[:, 1] - 1) // PS
    return np.unique(np.concatenate([np.arange(f, l + 1) for f, l in zip(first, last)])) * PS


def _portions_of(pmap: portions.PortionMap, pages: np.ndarray) -> dict[str, int]:
    codes = np.concatenate([pmap.map.classify(int(p), 1)[0] for p in pages])
    return {PORTIONS[c]: int(n) for c, n in zip(*np.unique(codes, return_counts=True))}


def test_every_page_of_each_known_allocation_is_in_its_portion(child):
    _, facts, counter = child
    arena_pages = _pages([[s, s + ln] for s, ln in facts["arenas"]])
    assert _portions_of(counter, arena_pages) == {"worker_state": arena_pages.size}
    coro_pages = _pages(facts["coroutines"])
    assert _portions_of(counter, coro_pages) == {"coroutine_frames": coro_pages.size}
    items, length = facts["scheduler_items"]
    inner = _pages([[items, items + length]])[1:-1]  # the ends share pages with other malloc chunks
    assert _portions_of(counter, inner) == {"scheduler": inner.size}
    float_pages = _pages(facts["floats"])
    assert _portions_of(counter, float_pages) == {"runtime_heap": float_pages.size}
    blob, length = facts["blob"]
    blob_pages = _pages([[blob, blob + length]])[1:-1]
    assert _portions_of(counter, blob_pages) == {"native_heap": blob_pages.size}
    low, high = facts["thread_stack"]
    stack_pages = _pages([[low, high]])
    assert _portions_of(counter, stack_pages) == {"stacks": stack_pages.size}
    main_stack = next(v for v in vmas(child[0].pid) if v.path == "[stack]")
    assert counter.map.vma_portion(main_stack.start) == CODE["stacks"]
    assert counter.map.vma_portion(facts["code"]) == CODE["code"]


def test_tracked_columns_get_the_portion_of_their_page(child):
    _, facts, counter = child
    sampler = counter.sampler
    assert counter.portion.size == sampler.n_cols
    blob, length = facts["blob"]
    addr = np.concatenate([r.start + np.arange(r.n_pages, dtype=np.int64) * PS for r in sampler.regions])
    inside = (addr > blob) & (addr + PS < blob + length)
    assert inside.sum() >= length // PS - 2
    assert set(counter.portion[inside].tolist()) == {CODE["native_heap"]}


def test_portions_resident_bytes_add_up_to_smaps_rss(child):
    proc, _, counter = child
    counter.sampler.sample(time.monotonic())
    by_portion = portions.resident_bytes(proc.pid, counter.sampler, counter, counter.map)
    rss = sum(e.rss for e in smaps(proc.pid))
    assert rss == pytest.approx(rollup(proc.pid)["rss"], rel=0.02)
    assert sum(by_portion.values()) == pytest.approx(rss, rel=0.02)
    for name in ("worker_state", "coroutine_frames", "scheduler", "runtime_heap", "native_heap", "code", "stacks"):
        assert by_portion[name] > 0, name
    # The 8 MiB bytearray alone is resident native heap.
    assert by_portion["native_heap"] >= 8 << 20


def test_a_run_stores_one_portion_per_tracked_page_and_portion_figures_that_add_up(tmp_path):
    import pandas as pd

    from locality.experiment.config import validate
    from locality.experiment.runner import run

    config = validate({"workers": 5000, "layout": "slab", "scheduler": "lean", "pattern": {"name": "sheet"},
                       "steps": 12, "step_interval": 0.05, "sampling": {"interval": 0.2, "cold_thresholds": [0.2]}})
    run_dir = run(config, tmp_path, run_id="p", progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    figures = metrics["portions"]
    assert sorted(figures) == sorted(PORTIONS)
    assert sum(f["resident_bytes"] for f in figures.values()) == pytest.approx(metrics["portions_rss_bytes"], rel=0.02)
    # Each written tracked page is in exactly one portion: the portions' WSS is the process's.
    assert sum(f["wss_pages_mean"] for f in figures.values()) == pytest.approx(metrics["wss_pages_mean"], rel=1e-9)
    assert figures["worker_state"]["page_utilization"] == pytest.approx(metrics["state_page_utilization"], rel=1e-9)
    assert metrics["portion_dominating_wss"] == max(figures, key=lambda n: figures[n]["wss_bytes_mean"])
    table = pd.read_csv(run_dir / "portions.csv")
    timeline = pd.read_csv(run_dir / "timeline.csv")
    per_sample = table.groupby("sample")[["written_pages", "resident_pages", "tracked_pages"]].sum()
    assert per_sample["written_pages"].tolist() == timeline["written_pages"].tolist()
    assert per_sample["resident_pages"].tolist() == timeline["resident_pages"].tolist()
    with np.load(run_dir / "pages.npz") as z:
        assert [str(n) for n in z["portion_names"]] == list(PORTIONS)
        portion, regions, region = z["portion"], [str(r) for r in z["regions"]], z["region"]
        assert portion.shape == (int(z["n_pages"]),)
        arena = np.isin(region, [i for i, r in enumerate(regions) if r.startswith("arena:")])
        assert arena.any() and set(portion[arena].tolist()) == {CODE["worker_state"]}
        assert set(portion[~arena].tolist()) >= {CODE["coroutine_frames"], CODE["runtime_heap"], CODE["native_heap"]}
        addr = z["page_addr"].astype(np.int64)
    assert 0 < metrics["portions_walk_s"] < 60
    # The child's own bookkeeping (latency sample, window marks) is one mapping the sampler never
    # tracks: none of its pages is in the run's pages (its resident ones count as `other`).
    manifest = json.loads((run_dir / "manifest.json").read_text())
    start, length = manifest["bookkeeping"]["start"], manifest["bookkeeping"]["length"]
    assert length >= 100_000 * 4 and not ((addr >= start) & (addr < start + length)).any()


@pytest.mark.swap
def test_paged_out_and_refaulted_pages_are_split_by_portion(tmp_path, swap_on):
    import pandas as pd

    from locality.experiment.config import validate
    from locality.experiment.runner import run

    config = validate({"workers": 20000, "layout": "slab", "scheduler": "lean", "duration": 6, "step_interval": 0.5,
                       "seed": 1, "pattern": {"name": "sheet", "p": 0.01, "radius": 3, "waves": 1},
                       "sampling": {"interval": 0.25, "cold_thresholds": [1.0]},
                       "reclaim": {"policy": "pageout-idle", "idle_seconds": 1}})
    run_dir = run(config, tmp_path, run_id="po", progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = pd.read_csv(run_dir / "portions.csv")
    timeline = pd.read_csv(run_dir / "timeline.csv")
    per_sample = table.groupby("sample")[["paged_out_pages", "refaulted_pages", "swapped_pages"]].sum()
    for column in ("paged_out_pages", "refaulted_pages", "swapped_pages"):
        assert per_sample[column].tolist() == timeline[column].tolist(), column
    figures = metrics["portions"]
    assert sum(f["refaulted_pages"] for f in figures.values()) == metrics["refaulted_pages"] > 0
    assert figures["worker_state"]["paged_out_pages_max"] > 0


def test_the_asyncio_walk_names_every_task_coroutine_event_future_and_deque_block():
    import ctypes

    from locality.layouts import make_layout
    from locality.population import Population, make_pattern
    from locality.population.portions import page_bytes, population_ranges
    from locality.population.schedulers import object_span

    n = 2000
    layout = make_layout("slab", n)
    pop = Population(n, scheduler="asyncio", pattern=make_pattern("uniform", n), layout=layout)
    pop.spawn()
    try:
        page, code, count = page_bytes(population_ranges(pop, layout, PS))
        sched = pop._scheduler
        coros = [t.get_coro() for t in sched._tasks]
        waits = [c.cr_await for c in coros]
        frames_bytes = sum(-(-(object_span(o)[1] - object_span(o)[0]) // 16) * 16 for o in coros + waits)
        assert int(count[code == CODE["coroutine_frames"]].sum()) == frames_bytes
        blocks = [ctypes.c_void_p.from_address(id(e._waiters) + 24).value for e in sched._events]
        spans = [object_span(o) for o in sched._tasks + sched._events + [t._fut_waiter for t in sched._tasks]]
        wanted = set(_pages(spans + [[b, b + 528] for b in blocks]).tolist())
        assert wanted <= set(page[code == CODE["scheduler"]].tolist())
    finally:
        pop.close()


def test_ranges_are_cut_at_page_boundaries_byte_for_byte():
    from locality.population.portions import _split_by_page

    rng = np.random.default_rng(0)
    starts = rng.integers(0, 64 * PS, 2000)
    lengths = np.concatenate([rng.integers(1, 513, 1900), rng.integers(1, 5 * PS, 100)])  # small objects, arenas
    page, count = _split_by_page(starts, lengths, PS)
    truth = np.zeros(80, np.int64)
    for s0, n in zip(starts.tolist(), lengths.tolist()):
        b = np.arange(s0, s0 + n) // PS
        truth += np.bincount(b, minlength=80)
    assert (count > 0).all() and np.array_equal(np.bincount(page, weights=count, minlength=80).astype(np.int64), truth)



def test_a_range_given_as_other_is_other_inside_any_vma():
    # The child's bookkeeping mapping may be merged by the kernel with a neighbouring anonymous VMA.
    from types import SimpleNamespace

    walk = portions.ChildWalk(np.empty(0, np.uint64), np.zeros((0, len(PORTIONS)), np.int64),
                              np.empty((0, 2), np.int64), 0.0)
    anon = SimpleNamespace(start=16 * PS, end=32 * PS, perms="rw-p", path="")
    pmap = portions.PortionMap([anon], walk, [], PS, other=[(20 * PS, 2 * PS)])
    code, _ = pmap.classify(16 * PS, 16)
    assert code.tolist() == [CODE["native_heap"]] * 4 + [CODE["other"]] * 2 + [CODE["native_heap"]] * 10
