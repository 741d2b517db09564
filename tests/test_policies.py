"""The out-of-process sampler and the reclaim policies, against a child whose writes we choose."""

from __future__ import annotations

import os

import numpy as np
import pytest
from childproc import Child

from locality.errors import Unsupported
from locality.experiment import cgroup
from locality.experiment.config import validate
from locality.experiment.policies import CgroupLimit, NoReclaim, PageoutIdle, make_policy
from locality.experiment.sampler import Sampler, anonymous_ranges, runs, subtract
from locality.kernel import SWP_PTE_MARKER
from locality.kernel.pagemap import pagemap


def written_set(sampler: Sampler, row: int) -> list[int]:
    m = sampler.page_matrices()
    w = np.unpackbits(m["written"], axis=1, count=int(m["n_pages"])).astype(bool)
    return np.flatnonzero(w[row]).tolist()


def test_sampler_sees_exactly_the_pages_written_per_window_and_their_age():
    with Child(pages=64) as c:
        c.register_write_tracking()
        s = Sampler(c.pid, cold_thresholds=[1.0, 2.0])
        s.add_region("arena", c.addr, c.length, now=0.0)
        first = s.sample(0.0)
        assert first.written_pages == 0 and first.resident_pages == 0
        c.touch([3, 7])
        a = s.sample(0.5)
        assert (a.written_pages, a.resident_pages, a.populated_pages) == (2, 2, 2)
        c.touch([7, 9])
        b = s.sample(1.6)
        assert (b.written_pages, b.resident_pages) == (2, 3)
        # Page 3 was last written at 0.5: 1.1 s old at 1.6, so cold at T=1 only.
        assert b.cold_pages == {1.0: 1, 2.0: 0}
        c.read([3])  # a read is not a write
        d = s.sample(2.6)
        assert d.written_pages == 0
        # 3: 2.1 s old; 7 and 9: 1.0 s old.
        assert d.cold_pages == {1.0: 3, 2.0: 1}
        assert [written_set(s, i) for i in range(4)] == [[], [3, 7], [7, 9], []]
        m = s.page_matrices()
        assert m["page_addr"][5] == c.addr + 5 * c.page_size
        assert m["regions"].tolist() == ["arena"] and m["t"].tolist() == [0.0, 0.5, 1.6, 2.6]
        # The idle pages for pageout at T=1.5: only page 3.
        assert s.idle_ranges(2.6, 1.5) == [(c.addr + 3 * c.page_size, c.page_size)]
        s.close()


def test_regions_added_later_read_as_zero_before():
    with Child(pages=16) as c:
        c.register_write_tracking()
        half = 8 * c.page_size
        s = Sampler(c.pid, cold_thresholds=[1.0])
        s.add_region("low", c.addr, half, now=0.0)
        c.touch([1, 9])
        s.sample(1.0)
        s.add_region("high", c.addr + half, half, now=1.0)
        c.touch([2, 10])
        s.sample(2.0)
        assert s.covers(c.addr, c.length) and not s.covers(c.addr, c.length + c.page_size)
        m = s.page_matrices()
        w = np.unpackbits(m["written"], axis=1, count=16).astype(bool)
        assert np.flatnonzero(w[0]).tolist() == [1]  # page 9 was not tracked yet
        assert np.flatnonzero(w[1]).tolist() == [2, 10]
        assert m["region"].tolist() == [0] * 8 + [1] * 8
        s.close()


def test_interval_helpers():
    assert subtract((0, 100), [(10, 10), (50, 60)]) == [(0, 10), (20, 50)]
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]

    class V:
        def __init__(self, start, end, perms, path):
            self.start, self.end, self.perms, self.path = start, end, perms, path

    vm = [V(0, 100, "rw-p", ""), V(100, 200, "rw-p", "[heap]"), V(200, 300, "r--p", ""),
          V(300, 400, "rw-s", ""), V(400, 500, "rw-p", "/lib/x.so"), V(500, 600, "rw-p", "[stack]")]
    assert anonymous_ranges(vm, exclude=[(20, 30)]) == [("anon", 0, 20), ("anon", 50, 50), ("[heap]", 100, 100)]


def test_policy_choice_and_refusals():
    base = {"workers": 10, "steps": 1}
    assert isinstance(make_policy(validate(base)), NoReclaim)
    pol = make_policy(validate({**base, "reclaim": {"policy": "pageout-idle", "idle_seconds": 3}}))
    assert isinstance(pol, PageoutIdle) and pol.idle_seconds == 3.0
    no_swap = {"process_madvise": {"available": True, "reason": ""}, "swap": {"available": False, "reason": "no swap device is active", "hint": "x"}}
    with pytest.raises(Unsupported) as e:
        pol.check(validate({**base, "reclaim": {"policy": "pageout-idle", "idle_seconds": 3}}), no_swap)
    assert str(e.value) == (
        "reclaim policy pageout-idle is not available: no swap device is active; anonymous memory cannot be paged "
        "out without swap (turn swap on with `locality swap on`, or use arena = \"file\")"
    )
    # A file arena of a record layout needs no swap.
    pol.check(validate({**base, "arena": "file", "reclaim": {"policy": "pageout-idle", "idle_seconds": 3}}), no_swap)
    assert isinstance(make_policy(validate({**base, "reclaim": {"policy": "cgroup", "limit": "64M"}})), CgroupLimit)


@pytest.mark.skipif(os.geteuid() != 0 or cgroup.available() is None, reason="needs root and a memory cgroup hierarchy")
def test_cgroup_limit_applies_and_is_removed_even_on_error():
    version, root = cgroup.available()
    pol = CgroupLimit(64 << 20, "test")
    with pytest.raises(RuntimeError):
        with pol:
            path = pol.cgroup.path
            with Child(pages=4) as c:
                pol.attach(c.pid)
                assert str(c.pid) in (path / "cgroup.procs").read_text().split()
                limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
                assert int((path / limit_file).read_text()) == 64 << 20
                assert pol.info()["cgroup"]["version"] == version
                raise RuntimeError("boom")
    assert not path.exists()


@pytest.mark.swap
def test_pageout_idle_pages_out_exactly_the_idle_pages_and_counts_refaults(swap_on):
    with Child(pages=32) as c:
        c.register_write_tracking()
        s = Sampler(c.pid, cold_thresholds=[1.0])
        s.add_region("arena", c.addr, c.length, now=0.0)
        c.touch(list(range(10)))
        s.sample(0.0)
        pol = PageoutIdle(1.0)
        pol.attach(c.pid)
        c.touch([2, 5])
        s.sample(1.5)  # pages 0..9 present; 2 and 5 written at 1.5, the others at 0.0
        advised = pol.after_sample(s, 1.5)
        assert advised == 8 * c.page_size
        pm = pagemap(c.pid, c.addr, c.addr + c.length)
        assert np.flatnonzero(pm.swapped & (pm.swap_type != SWP_PTE_MARKER)).tolist() == [0, 1, 3, 4, 6, 7, 8, 9]
        c.read([1, 8])  # reading a swapped page brings it back
        x = s.sample(2.0)
        assert x.refaulted_pages == 2
        assert x.swapped_pages == 6 and x.populated_pages == 10
        # Cold share counts swapped pages too (a policy does not hide what it moved out).
        assert x.cold_pages == {1.0: 8}
        s.close()


def test_untracked_lists_new_anonymous_vmas_until_they_are_tracked():
    from locality.kernel import vmas

    with Child(pages=64) as c:
        c.register_write_tracking()
        s = Sampler(c.pid, cold_thresholds=[1.0])
        new = s.untracked(vmas(c.pid))
        assert any(start <= c.addr and c.addr + c.length <= start + ln for _, start, ln in new)
        s.add_region("arena", c.addr, c.length, now=0.0)
        assert not any(start < c.addr + c.length and c.addr < start + ln for _, start, ln in s.untracked(vmas(c.pid)))
        s.pending = [(start, ln) for _, start, ln in s.untracked(vmas(c.pid))]
        assert s.untracked(vmas(c.pid)) == []  # asked for: not asked again
        s.close()
