"""Coroutine frames allocated in the layout's locality order (issue 14): ground truth from the kernel.

Each case runs in a fresh interpreter: pymalloc reuses the pools a closed
population freed, so a second population in one process is laid out by
that history, not by its spawn order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Wakes one 16 x 16 tile of the sheet (the first 256 workers in Hilbert order) with the frame
# pages write-tracked, and prints the pages written, those holding the tile's frames, and the
# frame geometry; with respawn, the layout's order changes first and the population follows it.
SCRIPT = r"""
import gc, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_population import pages_of, page_runs
from locality.kernel import PAGE_SIZE, WriteTracker
from locality.layouts import make_layout
from locality.layouts.clustered import hilbert_slots
from locality.population import Population

n, layout_name, frames_order, respawn = 4096, sys.argv[2], sys.argv[3], sys.argv[4] == "1"
kw = {"warmup": 1, "validate": 0, "prior": "id"} if layout_name == "clustered-learned" else {}
layout = make_layout(layout_name, n, **kw)
pop = Population(n, layout=layout, frames_order=frames_order)
pop.spawn()
moved = 0
if respawn:
    # the layout learns the Hilbert order from one step that activates every worker in it
    r = pop.activate(hilbert_slots(n)[hilbert_slots(n) >= 0])
    moved = pop.respawned_units
    assert r.relocation_ns > 0
frames = pages_of(r for i in range(n) for r in pop.worker_ranges(i))
trackers = [WriteTracker(s, l) for s, l in page_runs(frames)]
tile = hilbert_slots(n)[:256]
def written(ids):
    for t in trackers:
        t.reset()
    pop.activate(ids)
    sets = [t.written() for t in trackers]
    return sorted(t.start + PAGE_SIZE * int(p) for t, w in zip(trackers, sets) for p in np.flatnonzero(w))
gc.collect()
gc.disable()
written(hilbert_slots(n)[1024:1280])  # first wakes of the code path allocate caches
w = written(tile)
gc.enable()
mine = sorted(pages_of(r for i in tile for r in pop.worker_ranges(int(i))))
c = pop._sched()._coros[int(tile[0])]
print(json.dumps({"written": w, "tile_frame_pages": mine, "size": sys.getsizeof(c), "moved": moved,
                  "starts": [pop.worker_ranges(int(i))[0][0] for i in tile]}))
"""


def run_case(layout: str, frames_order: str, respawn: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "tests"), layout, frames_order, "1" if respawn else "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def packed_pages(frames: int, size: int) -> int:
    """Pages ``frames`` coroutines fill when allocated back to back from the first block of a fresh
    16 KiB pymalloc pool (CPython 3.11: 16-byte size classes, 48-byte pool header)."""
    block = -(-size // 16) * 16
    per_pool = (16384 - 48) // block
    full, rest = divmod(frames, per_pool)
    return full * 4 + (-(-(48 + rest * block) // 4096) if rest else 0)


def test_frames_of_a_sheet_tile_are_packed_when_spawned_in_hilbert_order():
    ordered = run_case("clustered", "layout")
    by_id = run_case("clustered", "id")
    for case in (ordered, by_id):
        # the kernel saw exactly the pages holding the tile's 256 frames written, no other frame page
        assert case["written"] == case["tile_frame_pages"]
    # in locality order the tile's frames are consecutive blocks of fresh pools ...
    block = -(-ordered["size"] // 16) * 16
    starts = ordered["starts"]
    assert all(0 < b - a < 2 * block + 48 for a, b in zip(starts, starts[1:]))  # the next block, or the next pool's first
    assert len(ordered["written"]) == packed_pages(256, ordered["size"])  # 15 pages for 224-byte blocks
    # ... in id order they are 16 runs of 16, one grid row apart (measured 30 pages)
    assert len(by_id["written"]) >= 2 * len(ordered["written"])


def test_a_learned_order_moves_the_frames_with_the_state():
    # clustered-learned from id order, which then learns the Hilbert order: its frames follow
    moved = run_case("clustered-learned", "layout", respawn=True)
    assert moved["moved"] == 4096
    assert moved["written"] == moved["tile_frame_pages"]
    assert len(moved["written"]) == packed_pages(256, moved["size"])
    still = run_case("clustered-learned", "id", respawn=True)  # frames kept where spawn put them
    assert still["moved"] == 0
    assert len(still["written"]) >= 2 * len(moved["written"])


@pytest.mark.parametrize("bad", ["hilbert", ""])
def test_frames_order_is_validated(bad):
    from locality.errors import InvalidArgument
    from locality.population import Population

    with pytest.raises(InvalidArgument, match="frames_order"):
        Population(10, frames_order=bad)
