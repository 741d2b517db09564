"""grouped with Hilbert blocks: one block per 16 x 16 tile, writing exactly clustered's pages."""

from __future__ import annotations

import itertools

import numpy as np

from locality.layouts import PAGE_SIZE, make_layout
from locality.layouts.base import HOT_BYTES
from locality.layouts.measure import measure
from locality.population import Population
from locality.population.patterns import make_pattern

N = 40_000


def test_a_block_is_one_hot_page_of_hilbert_slots():
    layout = make_layout("grouped", N)
    try:
        assert layout.group_size * HOT_BYTES == PAGE_SIZE
        for g in (0, 5, layout.unit_count() - 1):
            members = layout.block(g)
            pages = np.unique(layout.pos[members].astype(np.int64) * HOT_BYTES // PAGE_SIZE)
            assert pages.tolist() == [g] or members.size == 0
            assert (layout.unit_of(members) == g).all()
    finally:
        layout.close()


def test_grouped_writes_exactly_the_pages_clustered_writes():
    steps = [np.asarray(a) for a in itertools.islice(make_pattern("sheet", N, 0, p=0.01).steps(), 20)]
    pages = {}
    for name in ("clustered", "grouped"):
        layout = make_layout(name, N)
        try:
            pages[name] = [s.pages_written for s in measure(layout, steps).steps]
        finally:
            layout.close()
    assert pages["grouped"] == pages["clustered"]


def test_population_wakes_one_coroutine_per_tile():
    layout = make_layout("grouped", N)
    try:
        pop = Population(N, layout=layout)
        pop.spawn()
        tile = layout.block(7)
        before = layout.state(tile)["count"].astype(np.int64)
        pop.activate(tile[::-1])
        assert (layout.state(tile)["count"].astype(np.int64) == before + 1).all()
        assert pop.worker_ranges(int(tile[0])) == pop.worker_ranges(int(tile[-1]))  # one coroutine
        start, end = pop.worker_ranges(int(tile[3]))[0]
        assert pop.owners(np.array([start]))[0] == tile[0]  # a block coroutine belongs to its first worker
        indptr, who = pop.page_owners(np.array([start // PAGE_SIZE * PAGE_SIZE]))
        assert set(tile.tolist()) <= set(who[indptr[0]:indptr[1]].tolist())
        pop.close()
    finally:
        layout.close()
