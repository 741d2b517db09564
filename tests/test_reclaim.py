"""pageout / cold / process_pageout against ground truth (mincore, pagemap) in a child."""

from __future__ import annotations

import os

import numpy as np
import pytest
from childproc import Child

from locality.errors import InvalidArgument, NoSuchProcess
from locality.kernel import PAGE_SIZE, cold, pagemap, pageout, process_cold, process_pageout, swap_active

N_PAGES = 256


def subset(seed: int, k: int, n: int = N_PAGES) -> list[int]:
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


@pytest.fixture
def file_child(tmp_path):
    with Child(pages=N_PAGES, backing="file", directory=tmp_path) as c:
        yield c


def test_pageout_of_a_file_mapping_leaves_it_non_resident(file_child):
    touched = subset(1, 100)
    file_child.touch(touched)
    assert file_child.mincore() == touched
    file_child.msync()  # dirty pages must be written back before they can be dropped
    assert file_child.pageout() == N_PAGES * PAGE_SIZE
    assert file_child.mincore() == []
    assert not pagemap(file_child.pid, file_child.addr, file_child.addr + file_child.length).present.any()


def test_process_pageout_of_some_file_pages_from_the_parent(file_child):
    touched = subset(2, 120)
    evicted = touched[::3]
    file_child.touch(touched)
    file_child.msync()
    ranges = [(file_child.addr + p * PAGE_SIZE, PAGE_SIZE) for p in evicted]
    assert process_pageout(file_child.pid, ranges) == len(evicted) * PAGE_SIZE
    assert file_child.mincore() == sorted(set(touched) - set(evicted))


def test_process_pageout_batches_more_ranges_than_iov_max(tmp_path):
    n = 2100  # > 2 x IOV_MAX single-page ranges
    with Child(pages=n, backing="file", directory=tmp_path) as c:
        c.touch(range(n))
        c.msync()
        ranges = [(c.addr + p * PAGE_SIZE, PAGE_SIZE) for p in range(0, n)]
        assert process_pageout(c.pid, ranges) == n * PAGE_SIZE
        assert c.mincore() == []


def test_dirty_file_pages_are_not_dropped_without_msync(file_child):
    # Ground truth for the msync rule: MADV_PAGEOUT starts writeback of dirty
    # shared file pages but cannot drop them in the same call.
    touched = subset(3, 50)
    file_child.touch(touched)
    file_child.pageout()
    assert set(file_child.mincore()) <= set(touched)
    assert file_child.mincore() != []


def test_cold_keeps_pages_resident(file_child):
    touched = subset(4, 60)
    file_child.touch(touched)
    assert process_cold(file_child.pid, [(file_child.addr, file_child.length)]) == file_child.length
    assert file_child.mincore() == touched


def test_anonymous_pages_stay_resident_without_swap():
    with Child(pages=64) as c:
        c.touch(range(64))
        if swap_active():  # checked at run time: another run on this machine may have swap on
            pytest.skip("only true without swap")
        c.pageout()
        resident = c.mincore()
        if swap_active():
            pytest.skip("swap was turned on during the test")
        assert resident == list(range(64))


def test_pageout_and_cold_in_this_process_validate_ranges():
    for advise in (pageout, cold):
        with pytest.raises(InvalidArgument, match="not page-aligned"):
            advise(PAGE_SIZE + 1, PAGE_SIZE)
        with pytest.raises(InvalidArgument, match="negative"):
            advise(PAGE_SIZE, -PAGE_SIZE)
        with pytest.raises(InvalidArgument, match="empty"):
            advise(PAGE_SIZE, 0)
        with pytest.raises(InvalidArgument, match="not .*mapped"):
            advise(PAGE_SIZE, PAGE_SIZE)


def test_process_madvise_bad_input():
    with Child(pages=4) as c:
        pid, addr = c.pid, c.addr
        with pytest.raises(InvalidArgument, match="no ranges"):
            process_pageout(pid, [])
        with pytest.raises(InvalidArgument, match="not page-aligned"):
            process_pageout(pid, [(addr + 1, PAGE_SIZE)])
        with pytest.raises(InvalidArgument, match="not .*mapped"):
            process_pageout(pid, [(PAGE_SIZE, PAGE_SIZE)])
    with pytest.raises(NoSuchProcess) as e:
        process_pageout(pid, [(addr, PAGE_SIZE)])
    assert e.value.pid == pid
    with pytest.raises(InvalidArgument):
        process_cold(-5, [(addr, PAGE_SIZE)])

