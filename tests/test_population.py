"""Population: schedulers wake exactly the pattern's workers; attribution is exact."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from locality.errors import InvalidArgument
from locality.kernel import PAGE_SIZE, WriteTracker
from locality.layouts import make_layout
from locality.population import SCHEDULERS, Population, make_pattern
from locality.population.patterns import grid_xy, sheet_width

SCHEDULER_NAMES = list(SCHEDULERS)


def expected_counts(steps, n):
    counts = np.zeros(n, np.int64)
    for ids in steps:
        counts[ids] += 1
    return counts


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_each_worker_counts_exactly_its_activations(scheduler):
    n = 2000
    pop = Population(n, scheduler=scheduler, pattern=make_pattern("zipf", n, seed=3, p=0.02), seed=3)
    pop.spawn()
    seen = []
    stats = pop.run(15, on_step=lambda r: seen.append(r.ids))
    try:
        want = expected_counts(seen, n)
        got = np.array([pop.activations_of(i) for i in range(n)])
        assert np.array_equal(got, want)
        assert stats.steps == 15 and np.array_equal(stats.activations, [s.size for s in seen])
        assert stats.latency_ns.size == want.sum() and np.all(stats.latency_ns > 0)
        # the ids are the pattern's own stream
        ref = make_pattern("zipf", n, seed=3, p=0.02).steps()
        assert all(np.array_equal(s, next(ref)) for s in seen)
    finally:
        pop.close()


@pytest.mark.parametrize("scheduler", ["lean", "asyncio"])
@pytest.mark.parametrize("layout_name", ["slab", "grouped"])
def test_layout_state_is_updated_once_per_activation(scheduler, layout_name):
    n = 3000
    layout = make_layout(layout_name, n)
    try:
        before = layout.state(np.arange(n))["count"].astype(np.int64)
        pop = Population(n, scheduler=scheduler, pattern=make_pattern("sheet", n, seed=2, p=0.02), seed=2, layout=layout)
        pop.spawn()
        seen = []
        pop.run(8, on_step=lambda r: seen.append(r.ids))
        after = layout.state(np.arange(n))["count"].astype(np.int64)
        assert np.array_equal(after - before, expected_counts(seen, n))
        k = layout.group_size
        assert pop.units == layout.unit_count() >= -(-n // k)  # Hilbert blocks: holes off the sheet too
        if layout_name == "grouped":
            assert k > 1  # one coroutine per block of K workers
        pop.close()
    finally:
        layout.close()


def test_same_seed_same_run_including_fanout():
    def ids(seed):
        pop = Population(4000, pattern=make_pattern("uniform", 4000, seed=seed, p=0.005), seed=seed, fanout=0.5)
        pop.spawn()
        out = [pop.step().ids for _ in range(10)]
        pop.close()
        return out

    a, b, c = ids(7), ids(7), ids(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))


def test_fanout_wakes_a_sheet_neighbour_next_step(tmp_path):
    n, k = 100, 55
    trace = tmp_path / "t.csv"
    trace.write_text(f"step,worker\n0,{k}\n3,1\n")
    pop = Population(n, pattern=make_pattern("replay", n, path=trace), fanout=1.0)
    pop.spawn()
    assert pop.step().ids.tolist() == [k]
    nxt = pop.step().ids
    assert nxt.size == 1
    (x0, y0), (x1, y1) = [np.ravel(v) for v in grid_xy(np.array([k]), n)], [np.ravel(v) for v in grid_xy(nxt, n)]
    w = sheet_width(n)
    dx, dy = abs(int(x1[0] - x0[0])), abs(int(y1[0] - y0[0]))
    assert min(dx, w - dx) + min(dy, w - dy) == 1
    assert pop.activations_of(int(nxt[0])) == 1
    pop.close()


def test_replay_end_stops_the_run(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("0,1\n1,2\n2,3\n")
    pop = Population(10, pattern=make_pattern("replay", 10, path=trace))
    pop.spawn()
    stats = pop.run(10)
    assert stats.steps == 3 and stats.activations.tolist() == [1, 1, 1]
    with pytest.raises(StopIteration):
        pop.step()
    pop.close()


def test_latency_every_k_times_every_kth_activation(tmp_path):
    pop = Population(1000, pattern=make_pattern("uniform", 1000, seed=1, p=0.1), latency_every=4)
    pop.spawn()
    r = pop.step()
    assert r.latency_ns.size == -(-r.ids.size // 4)
    pop.close()
    pop = Population(1000, pattern=make_pattern("uniform", 1000, seed=1, p=0.1), latency_every=0)
    pop.spawn()
    assert pop.step().latency_ns.size == 0
    pop.close()


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(InvalidArgument) as e:
        Population(10, scheduler="trio")
    assert "asyncio" in str(e.value) and "lean" in str(e.value)
    with pytest.raises(InvalidArgument, match="pattern is for 20 workers"):
        Population(10, pattern=make_pattern("uniform", 20))
    with pytest.raises(InvalidArgument, match="spawn"):
        Population(10).step()
    with pytest.raises(InvalidArgument, match="fanout"):
        Population(10, fanout=2)
    pop = Population(10)
    pop.spawn()
    with pytest.raises(InvalidArgument, match="at most once"):
        pop.activate([1, 1])
    with pytest.raises(InvalidArgument, match=r"\[0, 10\)"):
        pop.activate([10])
    pop.close()


# -- attribution ------------------------------------------------------------


def pages_of(ranges):
    out = set()
    for start, end in ranges:
        out.update(range(start // PAGE_SIZE * PAGE_SIZE, (end - 1) // PAGE_SIZE * PAGE_SIZE + PAGE_SIZE, PAGE_SIZE))
    return out


def page_runs(pages):
    runs = []
    for p in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1][1] += PAGE_SIZE
        else:
            runs.append([p, PAGE_SIZE])
    return runs


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_owners_map_every_byte_of_a_worker_to_it(scheduler):
    n = 500
    pop = Population(n, scheduler=scheduler)
    pop.spawn()
    for i in (0, 17, 499):
        for start, end in pop.worker_ranges(i):
            addrs = np.arange(start, end, 8)
            assert np.all(pop.owners(addrs) == i)
            indptr, who = pop.page_owners(np.array(sorted(pages_of([(start, end)]))))
            assert all(i in who[indptr[j] : indptr[j + 1]] for j in range(len(indptr) - 1))
    # bytes outside every worker object belong to no worker
    assert pop.owners(np.array([id(pop), 8]))[1] == -1
    spans = [r for i in range(n) for r in pop.worker_ranges(i)]
    starts = np.array([s for s, _ in spans])
    assert np.unique(pop.owners(starts)).size == n
    pop.close()


@pytest.mark.parametrize("layout_name", [None, "slab"])
def test_waking_worker_k_writes_only_pages_owned_by_k(layout_name):
    """Ground truth from the kernel: the exact pages written while worker k wakes."""
    n = 3000
    layout = make_layout(layout_name, n) if layout_name else None
    pop = Population(n, scheduler="lean", layout=layout)
    pop.spawn()
    coroutine_pages = pages_of(r for i in range(n) for r in pop.worker_ranges(i))
    runs = page_runs(coroutine_pages)
    if layout is not None:
        runs += [[a.address, a.length] for a in layout.arenas.values()]
    trackers = [WriteTracker(start, length) for start, length in runs]

    def written_while_waking(worker: int) -> set[int]:
        for t in trackers:
            t.reset()
        pop.activate([worker])
        sets = [t.written() for t in trackers]  # every set taken before building on them
        return {t.start + PAGE_SIZE * int(p) for t, w in zip(trackers, sets) for p in np.flatnonzero(w)}

    def owners(pages: set[int]) -> list[set[int]]:
        addrs = np.array(sorted(pages), dtype=np.int64)
        indptr, who = pop.page_owners(addrs)
        return [set(who[indptr[i] : indptr[i + 1]].tolist()) for i in range(addrs.size)]

    # This process is the population, so the wake path's and the query's own short-lived objects
    # can reuse a free pymalloc slot in a pool shared with other workers' frames (in CI: a page
    # of workers 14/15/29/42 written while worker 0 woke, whenever the heap was laid out so).
    # Those writes do not depend on who wakes: waking a distant worker j in the same way writes
    # them too, so what only waking k writes must be k's, and what only waking j writes, j's.
    # No cyclic-GC pass inside a window: it writes the GC headers of young objects anywhere.
    gc.collect()
    gc.disable()
    try:
        for warm_up in (1500, 1501):  # first wakes of a code path allocate caches: not part of the check
            written_while_waking(warm_up)
        for k in (0, 1, 777, 1234, 2998, 2999):
            j = (k + n // 2) % n
            mine, theirs = written_while_waking(k), written_while_waking(j)
            for who, only in ((k, mine - theirs), (j, theirs - mine)):
                assert all(who in o for o in owners(only)), (who, sorted(hex(p) for p in only), owners(only))
                assert only & pages_of(pop.worker_ranges(who))  # its coroutine frame was written
                if layout is not None:
                    assert only - coroutine_pages  # and its state record (owned by it: checked above)
    finally:
        gc.enable()
        for t in trackers:
            t.close()
        pop.close()
        if layout is not None:
            layout.close()


# -- benchmark command --------------------------------------------------------


def test_bench_population_measures_each_scheduler_in_a_fresh_process():
    from conftest import run_cli

    rc, out, err = run_cli("bench", "population", "--sizes", "1k", "--schedulers", "asyncio,lean", "--no-slab",
                           "--steps", "3", "--rounds", "1", "--activity", "0.5", "--json")
    assert rc == 0, err
    doc = __import__("json").loads(out)
    rows = {r["scheduler"]: r for r in doc["rows"]}
    assert set(rows) == {"asyncio", "lean"}
    for r in rows.values():
        assert r["workers"] == 1000 and r["steps"] >= 3
        assert r["rss_after"] > r["rss_before"] and r["bytes_per_worker"] > 0
        assert r["activations"] > 0 and r["activations_per_s"] > 0
    # a Task + Event + Future per worker is heavier than a bare coroutine
    assert rows["asyncio"]["bytes_per_worker"] > rows["lean"]["bytes_per_worker"]
    assert doc["comparison"][0]["workers"] == 1000


def test_bench_population_rejects_bad_sizes_and_schedulers():
    from conftest import run_cli

    rc, out, err = run_cli("bench", "population", "--sizes", "10q")
    assert rc == 2 and "--sizes" in err and "Traceback" not in err
    rc, out, err = run_cli("bench", "population", "--schedulers", "trio")
    assert rc == 2 and "trio" in err and "lean" in err and "Traceback" not in err


def test_block_coroutine_of_a_group_layout_is_attributed_to_its_block():
    n = 1000
    layout = make_layout("grouped", n, blocks="id")  # blocks of consecutive ids
    try:
        k = layout.group_size
        pop = Population(n, layout=layout)
        pop.spawn()
        assert pop.units == -(-n // k)
        worker = k + 3  # second block
        ranges = pop.worker_ranges(worker)
        assert ranges == pop.worker_ranges(k)  # one coroutine for the whole block
        start, end = ranges[0]
        assert np.all(pop.owners(np.arange(start, end, 8)) == k)  # the block's first worker
        indptr, who = pop.page_owners(np.array([start // PAGE_SIZE * PAGE_SIZE]))
        assert set(range(k, min(2 * k, n))) <= set(who[indptr[0] : indptr[1]].tolist())
        pop.close()
    finally:
        layout.close()
