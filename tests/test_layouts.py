"""Layouts: the pages each strategy says an activation writes are exactly the pages the kernel sees written.

Ground truth is the kernel's written-page instrument (userfaultfd WP_ASYNC +
PAGEMAP_SCAN), reset before the activations and read right after them.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from locality.errors import InvalidArgument, LocalityError
from locality.kernel import WriteTracker, faults, mincore, pageout, vmas
from locality.layouts import LAYOUTS, PAGE_SIZE, Arena, make_layout
from locality.layouts.base import COLD_BYTES, COLD_EVERY, HOT_BYTES, RECORD_BYTES
from locality.layouts.clustered import hilbert_index, hilbert_order
from locality.layouts.measure import activate

N = 20_000
ARENA_LAYOUTS = [name for name in LAYOUTS if name != "objects"]


def _steps(n: int, count: int, seed: int = 7) -> list[np.ndarray]:
    """Random id sets plus a few workers activated every step (so cold parts are touched)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(count):
        k = 1500 if s % 7 == 0 else 40
        ids = rng.choice(n, k, replace=False)
        out.append(np.unique(np.concatenate([ids, np.arange(10)])))
    return out


@pytest.mark.parametrize("name", ARENA_LAYOUTS)
def test_expected_written_equals_written_pages(name):
    layout = make_layout(name, N, warm=True)
    trackers = {k: WriteTracker(a.address, a.length) for k, a in layout.arenas.items()}
    cold_steps = 0
    try:
        for step, ids in enumerate(_steps(N, 140)):
            predicted = layout.expected_written(ids)  # before the activation
            for t in trackers.values():
                t.reset()
            activate(layout, ids, step)
            for arena, t in trackers.items():
                got = t.written()
                assert np.array_equal(got, predicted[arena]), (
                    f"{name} step {step} arena {arena}: unexpected pages {np.flatnonzero(got & ~predicted[arena])[:5]}, "
                    f"missing {np.flatnonzero(predicted[arena] & ~got)[:5]}")
            after = layout.expected_written(ids, step)  # the same facts after it
            assert all(np.array_equal(after[k], predicted[k]) for k in predicted)
            cold_steps += bool(layout.cold_touched(ids, step).any())
            layout.maintain(step, ids)
        assert cold_steps > 10  # the test exercised cold touches, not only hot ones
    finally:
        for t in trackers.values():
            t.close()
        layout.close()


def test_all_layouts_compute_the_same_state():
    ref = None
    for name in LAYOUTS:
        layout = make_layout(name, 3000, seed=3)
        for step, ids in enumerate(_steps(3000, 70, seed=1)):
            activate(layout, ids, step)
            layout.maintain(step, ids)
        st = layout.state(np.arange(3000))
        layout.close()
        if ref is None:
            ref = st
            continue
        for f in ("count", "last_step", "flags", "neighbours"):
            assert np.array_equal(st[f], ref[f]), (name, f)
        np.testing.assert_allclose(st["potential"], ref["potential"], rtol=1e-5)
        np.testing.assert_allclose(st["weights"], ref["weights"], rtol=1e-5)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_useful_bytes_counts_hot_and_cold_parts(name):
    layout = make_layout(name, 1000, warm=False)
    try:
        # worker 5 reaches count 64 at its 64th activation: that one touches cold
        for step in range(63):
            layout.update(5, step)
        ids = np.array([5, 6, 7])
        assert layout.cold_touched(ids, 63).tolist() == [True, False, False]
        assert layout.useful_bytes(ids, 63) == 3 * HOT_BYTES + COLD_BYTES
        activate(layout, ids, 63)
        assert layout.useful_bytes(ids, 63) == 3 * HOT_BYTES + COLD_BYTES  # same answer after
        assert layout.useful_bytes(ids, 64) == 3 * HOT_BYTES
        assert layout.state(ids)["count"].tolist() == [64, 1, 1]
    finally:
        layout.close()


@pytest.mark.parametrize("name", ARENA_LAYOUTS)
def test_owners_map_bytes_back_to_workers(name):
    layout = make_layout(name, 5000)
    try:
        for step, ids in enumerate(_steps(5000, 20)):
            activate(layout, ids, step)
            layout.maintain(step, ids)
        workers = np.array([0, 1, 17, 2500, 4999])
        (hot_a, hot_off), (cold_a, cold_off) = layout._locate(workers)
        hot = layout.arenas[hot_a].address + hot_off
        cold = layout.arenas[cold_a].address + cold_off
        for delta in (0, HOT_BYTES - 1):
            assert layout.owners(hot + delta).tolist() == workers.tolist()
        for delta in (0, COLD_BYTES - 1):
            assert layout.owners(cold + delta).tolist() == workers.tolist()
        foreign = np.array([id(layout), 0])
        assert layout.owners(foreign).tolist() == [-1, -1]
        # every hot and cold byte range is owned by somebody, and they add up
        hr, cr = layout.hot_ranges(), layout.cold_ranges()
        assert hr[:, 1].sum() >= 5000 * HOT_BYTES and cr[:, 1].sum() == 5000 * COLD_BYTES
    finally:
        layout.close()


def test_isolated_padding_has_no_owner_and_records_have_own_pages():
    layout = make_layout("isolated", 100)
    try:
        base = layout.arenas["isolated"].address
        assert layout.owners(np.array([base + 3 * PAGE_SIZE + RECORD_BYTES - 1, base + 3 * PAGE_SIZE + RECORD_BYTES])).tolist() == [3, -1]
        written = layout.expected_written(np.array([3, 50]))["isolated"]
        assert np.flatnonzero(written).tolist() == [3, 50]
    finally:
        layout.close()


def test_objects_owners_and_expected_pages_are_a_lower_bound():
    layout = make_layout("objects", 4000)
    trackers = []
    try:
        w = layout.workers[3000]
        small = layout.workers[10]["neighbours"][1]  # 11: a small int, the interpreter's, not the worker's
        addrs = np.array([id(w), id(w["weights"]), id(w["weights"][5]), id(w["neighbours"][2]), id(small), id(layout)])
        assert layout.owners(addrs).tolist() == [3000, 3000, 3000, 3000, -1, -1]
        pages = layout.heap_pages()
        for v in vmas(os.getpid()):
            if v.is_anonymous and "w" in v.perms and np.any((pages >= v.start) & (pages < v.end)):
                trackers.append((v.start, WriteTracker(v.start, v.end - v.start)))
        ids = np.arange(100, 4000, 37)
        predicted = layout.expected_written(ids)["heap"]
        for _, t in trackers:
            t.reset()
        activate(layout, ids, 0)
        written = np.concatenate([start + np.flatnonzero(t.written()) * PAGE_SIZE for start, t in trackers])
        assert np.isin(predicted, written).all()
        assert written.size >= predicted.size
    finally:
        for _, t in trackers:
            t.close()
        layout.close()


def test_objects_ranges_read_from_headers_equal_a_walk_by_id_and_getsizeof():
    # object_ranges reads addresses and sizes in numpy gathers (layouts.peek); hot_ranges and
    # cold_ranges take them object by object from id() and sys.getsizeof: the same blocks.
    layout = make_layout("objects", 3000)
    try:
        for step, ids in enumerate(_steps(3000, 300)):  # new floats, ints shared by a step (last_step > 256)
            activate(layout, ids, step)
        layout.workers[7]["count"] = 1 << 40  # a two-digit int
        layout.workers[8]["weights"].append(2.5)  # an item array grown past its length
        s, ln, own = layout.object_ranges()
        walked = np.concatenate([layout.hot_ranges(), layout.cold_ranges()])
        assert sorted(zip(s.tolist(), ln.tolist())) == sorted(map(tuple, walked.tolist()))
        assert np.bincount(own, minlength=3000).min() > 0
        sub = np.array([8, 2999, 7])
        s2, ln2, own2 = layout.object_ranges(sub)
        assert set(own2.tolist()) == set(sub.tolist()) and s2.size == np.isin(own, sub).sum()
    finally:
        layout.close()


def test_reading_objects_by_address_refuses_a_null_pointer_and_reads_what_id_and_getsizeof_say():
    from locality.layouts.peek import list_items, scalar_sizes, words_at

    values = [0.5, 7, 1 << 40, -(1 << 70), "text", (1, 2)]
    addrs = list_items(values)
    assert addrs.tolist() == [id(v) for v in values]
    assert scalar_sizes(addrs).tolist() == [sys.getsizeof(v) for v in values]
    assert words_at(addrs + 8).tolist() == [id(type(v)) for v in values]  # ob_type
    with pytest.raises(ValueError, match="below"):
        words_at(np.array([0, 8]))  # a null pointer would otherwise index from the view's end


def test_grouped_update_group_writes_like_single_updates():
    a = make_layout("grouped", 4096, group_size=64, blocks="id")
    b = make_layout("hot-cold", 4096)
    try:
        assert a.group_size == 64
        for step, ids in enumerate(_steps(4096, 80)):
            activate(a, ids, step)
            activate(b, ids, step)
        sa, sb = a.state(np.arange(4096)), b.state(np.arange(4096))
        for f in ("count", "last_step", "flags", "neighbours"):
            np.testing.assert_array_equal(sa[f], sb[f])
        np.testing.assert_allclose(sa["weights"], sb["weights"], rtol=1e-5)
        # integer fields byte for byte (floats differ in rounding: numpy computes in f32, update in f64)
        for arena, words in (("hot", 4), ("cold", 20)):
            ua = a.arenas[arena].u32[: 4096 * words].reshape(4096, words)
            ub = b.arenas[arena].u32[: 4096 * words].reshape(4096, words)
            ints = slice(1, 4) if arena == "hot" else slice(16, 20)
            np.testing.assert_array_equal(ua[:, ints], ub[:, ints])
    finally:
        a.close()
        b.close()


def test_compacting_moves_recent_workers_into_the_dense_region():
    layout = make_layout("compacting", 10_000, window=2, capacity=6, promote=1)
    try:
        ids = np.array([9000, 10, 5000, 77])
        activate(layout, ids, 0)
        before = layout.state(np.arange(10_000)).copy()
        seconds = layout.maintain(0, ids)
        assert seconds > 0
        assert layout.members.tolist() == [9000, 10, 5000, 77]  # activation order
        assert (layout.slot[ids] == layout.dense_base + np.arange(4)).all()
        np.testing.assert_array_equal(layout.state(np.arange(10_000)), before)  # moves keep the state
        # the next activation writes one dense page, not four home pages
        expected = layout.expected_written(ids)["hot"]
        assert np.flatnonzero(expected).tolist() == [layout.dense_base * HOT_BYTES // PAGE_SIZE]
        # the ring fills up: fresh workers evict from its tail, oldest first
        activate(layout, np.array([1]), 1)
        layout.maintain(1, np.array([1]))
        assert layout.members.tolist() == [9000, 10, 5000, 77, 1]
        activate(layout, np.array([2, 3]), 2)
        layout.maintain(2, np.array([2, 3]))  # one slot short: 9000 (last active at step 0, window 2) goes home
        assert layout.members.tolist() == [10, 5000, 77, 1, 2, 3]
        assert layout.slot[9000] == layout.home[9000]
        assert layout.slot[3] == layout.dense_base  # the ring wrapped: 3 took 9000's slot
        activate(layout, np.array([10, 4]), 3)
        layout.maintain(3, np.array([10, 4]))  # 10 is evicted but was active now: it survives
        assert layout.members.tolist() == [77, 1, 2, 3, 10, 4]
        assert (layout.slot[[5000]] == layout.home[[5000]]).all()
        np.testing.assert_array_equal(layout.state(ids)["count"], before[ids]["count"] + np.array([0, 1, 0, 0]))
    finally:
        layout.close()


def test_compacting_home_region_is_in_hilbert_order_like_clustered():
    side = 256  # 65,536 workers: the sheet is exactly the 2**8 Hilbert grid, so no holes
    layout = make_layout("compacting", side * side, capacity=256, promote=1)
    clustered = make_layout("clustered", side * side)
    tracker = WriteTracker(layout.arenas["hot"].address, layout.arenas["hot"].length)
    try:
        np.testing.assert_array_equal(layout.home, clustered.pos)  # the same home slots, not a copy of the curve
        np.testing.assert_array_equal(layout.cold_home, clustered.cold_pos)
        # an aligned 16 x 16 tile of the sheet, never active: written at home, on exactly one hot page
        x, y = np.meshgrid(np.arange(32, 48), np.arange(16, 32))
        tile = (y * side + x).ravel()
        expected = layout.expected_written(tile)["hot"]
        tracker.reset()
        activate(layout, tile, 0)
        written = tracker.written()
        np.testing.assert_array_equal(written, expected)
        assert np.flatnonzero(written).tolist() == [int(clustered.pos[tile[0]]) * HOT_BYTES // PAGE_SIZE]
        # moved into the dense region, their home bytes have no owner; copied back home, they do again
        layout.maintain(0, tile)
        home = layout.arenas["hot"].address + layout.home[tile].astype(np.int64) * HOT_BYTES
        assert (layout.owners(home) == -1).all()
        assert (layout.slot[tile] >= layout.dense_base).all()
        other = tile + 64  # the next tile but three, as many workers: it evicts the whole first tile
        activate(layout, other, 1 + layout.window)
        layout.maintain(1 + layout.window, other)
        assert (layout.slot[tile] == layout.home[tile]).all()
        assert layout.owners(home).tolist() == tile.tolist()
    finally:
        tracker.close()
        clustered.close()
        layout.close()


def test_clustered_learned_reorders_by_first_activation():
    layout = make_layout("clustered-learned", 1000, warmup=2, validate=0, prior="id")
    try:
        activate(layout, np.array([900, 5]), 0)
        assert layout.maintain(0, np.array([900, 5])) >= 0.0  # still observing (its time counts as relocation)
        assert layout.order.tolist() == list(range(1000))
        activate(layout, np.array([300, 5, 2]), 1)
        before = layout.state(np.arange(1000)).copy()
        assert layout.maintain(1, np.array([300, 5, 2])) > 0
        # first-activation rank: step 0 in activation order, then step 1's newcomers in order
        assert layout.order[:5].tolist() == [900, 5, 300, 2, 0]
        np.testing.assert_array_equal(layout.state(np.arange(1000)), before)
        assert layout.maintain(2) == 0.0  # learned once
    finally:
        layout.close()


def test_hilbert_order_is_a_continuous_curve():
    side = 64
    x, y = np.meshgrid(np.arange(side), np.arange(side))
    d = hilbert_index(x.ravel(), y.ravel(), 6)
    assert sorted(d.tolist()) == list(range(side * side))
    o = np.argsort(d)
    steps = np.abs(np.diff(x.ravel()[o])) + np.abs(np.diff(y.ravel()[o]))
    assert (steps == 1).all()
    assert sorted(hilbert_order(1000).tolist()) == list(range(1000))


def test_huge_pages_are_off_by_default_and_an_explicit_axis():
    for hugepages, flag in ((False, "nh"), (True, "hg")):
        a = Arena("t", 16 << 20, hugepages=hugepages)
        try:
            a.bytes[:: PAGE_SIZE] = 1  # touch every page
            flags = _vm_flags(a.address)
            assert flag in flags
            sizes = a.page_sizes()
            assert sizes["kernel_page_size"] == PAGE_SIZE
            if not hugepages:
                assert sizes["anon_huge_bytes"] == 0
        finally:
            a.close()


def _vm_flags(addr: int) -> list[str]:
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError("arena VMA not found")


def test_file_arena_is_deleted_on_close(tmp_path):
    layout = make_layout("hot-cold", 1000, arena="file", directory=tmp_path)
    paths = [a.path for a in layout.arenas.values()]
    assert all(os.path.exists(p) and os.path.dirname(p) == str(tmp_path) for p in paths)
    layout.close()
    assert not any(os.path.exists(p) for p in paths)


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(InvalidArgument, match="unknown layout 'nope'"):
        make_layout("nope", 10)
    with pytest.raises(InvalidArgument, match="no option 'window'"):
        make_layout("slab", 10, window=3)
    with pytest.raises(InvalidArgument, match="arena kind"):
        make_layout("slab", 10, arena="disk")
    with pytest.raises(InvalidArgument):
        make_layout("slab", 0)
    with pytest.raises(LocalityError, match="does not exist"):
        make_layout("slab", 10, arena="file", directory="/nonexistent/dir")
    with pytest.raises(InvalidArgument, match="no arena"):
        make_layout("objects", 10, arena="file")


def test_file_backed_cold_arena_pages_out_while_hot_keeps_working(tmp_path):
    n = 250_000
    layout = make_layout("hot-cold", n, arena="file", directory=tmp_path, warm=False)
    hot, cold = layout.arenas["hot"], layout.arenas["cold"]
    try:
        rng = np.random.default_rng(0)
        for step in range(20):  # activity: every worker's count stays far below 64
            activate(layout, rng.choice(n, n // 100, replace=False), step)
        hot.bytes[:: PAGE_SIZE].sum()  # hot arena fully resident before the experiment
        assert mincore(hot.address, hot.length).all()
        cold.sync()
        pageout(cold.address, cold.length)
        assert not mincore(cold.address, cold.length).any()
        _, major0 = faults(os.getpid())
        for step in range(20, 120):  # the next 100 steps of 1% activation
            ids = rng.choice(n, n // 100, replace=False)
            assert not layout.cold_touched(ids, step).any()
            activate(layout, ids, step)
        _, major1 = faults(os.getpid())
        assert major1 - major0 == 0
        assert mincore(hot.address, hot.length).all()
        assert not mincore(cold.address, cold.length).any()
        # control: a cold touch does fault the cold page back in
        w = 4242
        count = int(layout.state(np.array([w]))["count"][0])
        for step in range(120, 120 + COLD_EVERY - count):
            layout.update(w, step)
        _, major2 = faults(os.getpid())
        page = (w * COLD_BYTES) // PAGE_SIZE
        assert mincore(cold.address, cold.length)[page]
        assert major2 > major1
    finally:
        layout.close()


def test_bench_layouts_json_reports_every_layout(capsys):
    import json

    from locality.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "layouts", "-n", "20k", "--steps", "4", "--warmup", "2", "--window", "2", "--driver", "direct",
              "--json"])
    assert e.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["layout"]: r for r in doc["rows"]}
    assert sorted(rows) == sorted(LAYOUTS)
    assert rows["objects"]["utilization_x_objects"] == 1.0
    for r in rows.values():
        assert 0 < r["page_utilization"] <= 1
        assert r["wss_pages_per_step"] >= r["wss_min_pages_per_step"]
    assert rows["slab"]["bytes_per_worker_mapped"] == pytest.approx(96, abs=0.5)
    assert {t["target"].split(" (")[0] for t in doc["targets"]} >= {"page utilization clustered / objects",
                                                                     "page utilization clustered / its ceiling"}
    # the ceiling column is the pattern's, for each layout's record packing (layouts/ceiling.py)
    from itertools import islice

    from locality.layouts.ceiling import ceiling
    from locality.population.patterns import make_pattern

    steps = [np.asarray(a) for a in islice(make_pattern("sheet", 20_000, 0, p=0.01).steps(), 6)]
    for name, packing in (("hot-cold", [16, 80]), ("slab", [96, 0]), ("isolated", [4096, 0])):
        c = ceiling([[x] for x in steps[2:]], 20_000, packing, skip=steps[:2])
        assert rows[name]["packing"] == packing
        assert rows[name]["page_utilization_ceiling"] == pytest.approx(c.utilization)
        assert rows[name]["utilization_of_ceiling"] == pytest.approx(rows[name]["page_utilization"] / c.utilization)
    assert rows["isolated"]["utilization_of_ceiling"] == pytest.approx(1.0)  # a page per worker is its own bound


@pytest.mark.parametrize("args, message", [
    (["--layouts", "slab,bogus"], "unknown layout 'bogus'"),
    (["--param", "depth=3"], "bad --param 'depth=3'"),
    (["--pattern", "nope"], "unknown pattern 'nope'"),
])
def test_bench_layouts_bad_input_exits_2(capsys, args, message):
    from locality.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "layouts", "-n", "1000", "--steps", "1", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
