"""WriteTracker (userfaultfd WP_ASYNC + PAGEMAP_SCAN) against ground truth."""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest
from childproc import Child

from locality.errors import InvalidArgument, NoSuchProcess
from locality.kernel import PAGE_SIZE, WriteTracker, pagemap, register_write_tracking, unregister_write_tracking
from locality.kernel import writetrack

N_PAGES = 1024


def subset(seed: int, k: int = 200, n: int = N_PAGES) -> list[int]:
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def pages(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


@pytest.fixture
def child():
    with Child(pages=N_PAGES) as c:
        yield c


def test_inside_the_child_written_is_exactly_the_written_pages(child):
    child.touch(subset(10))  # populated before tracking starts: must not count
    child.tracker_start()
    assert child.tracker_written() == []
    written = subset(11)
    child.write(written)
    assert child.tracker_written() == written


def test_from_the_parent_through_the_childs_pagemap(child):
    child.touch(subset(20))
    child.register_write_tracking()
    with WriteTracker(child.addr, child.length, pid=child.pid) as tracker:
        tracker.reset()
        assert pages(tracker.written()) == []
        w1 = subset(21)
        child.write(w1)
        assert pages(tracker.written()) == w1  # query alone does not reset
        assert pages(tracker.written_and_reset()) == w1
        assert pages(tracker.written()) == []
        w2 = subset(22, k=5)
        child.read(subset(23))  # reads are not writes
        child.write(w2)
        assert pages(tracker.written_and_reset()) == w2
        # the tracker write-protects through uffd-wp bits the parent can see in pagemap
        pm = pagemap(child.pid, child.addr, child.addr + child.length)
        assert pm.uffd_wp[w2].all()


def test_more_regions_than_the_kernel_buffer_holds(child):
    # Alternate pages written: 512 regions for 1024 pages, and with a small user
    # buffer many ioctls; the walk_end pitfall would report pages twice or miss some.
    child.register_write_tracking()
    alternate = list(range(0, N_PAGES, 2))
    for max_regions in (writetrack.DEFAULT_MAX_REGIONS, 512, 511, 100, 1):
        with WriteTracker(child.addr, child.length, pid=child.pid, max_regions=max_regions) as tracker:
            tracker.reset()
            child.write(alternate)
            assert pages(tracker.written()) == alternate, max_regions
            assert pages(tracker.written_and_reset()) == alternate, max_regions
            assert pages(tracker.written()) == [], max_regions


def test_large_range_with_alternate_pages_in_this_process():
    n = 8192  # 4096 regions: eight times the kernel's internal 512-region buffer
    m = mmap.mmap(-1, n * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    buf = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(buf)
    view = np.frombuffer(m, dtype=np.uint8)
    try:
        with WriteTracker(addr, len(m), max_regions=1000) as tracker:
            view[::2 * PAGE_SIZE] = 1
            assert pages(tracker.written()) == list(range(0, n, 2))
            assert pages(tracker.written_and_reset()) == list(range(0, n, 2))
            view[PAGE_SIZE::2 * PAGE_SIZE] = 1
            view[:] = 2  # everything: one region
            assert tracker.written().all()
        # closing the tracker unregistered the range and cleared its protection
        assert not pagemap(None, addr, addr + len(m)).uffd_wp.any()
        assert writetrack._uffd is None
    finally:
        del view, buf
        m.close()


def test_unregistered_range_is_refused_by_name(child):
    with WriteTracker(child.addr, child.length, pid=child.pid) as tracker:
        with pytest.raises(InvalidArgument, match="not .*registered for write tracking"):
            tracker.reset()


def test_register_and_unregister_in_this_process():
    m = mmap.mmap(-1, 16 * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(buf)
    try:
        register_write_tracking(addr, len(m))
        with WriteTracker(addr, len(m)) as tracker:  # reuses the registration
            m[3 * PAGE_SIZE] = 1
            assert pages(tracker.written()) == [3]
        with WriteTracker(addr, len(m), pid=None) as tracker:
            assert pages(tracker.written()) == []  # still registered after the first tracker closed
        unregister_write_tracking(addr, len(m))
        assert writetrack._uffd is None
    finally:
        del buf
        m.close()


@pytest.mark.parametrize(
    "args",
    [(PAGE_SIZE + 1, PAGE_SIZE), (PAGE_SIZE, -1), (PAGE_SIZE, 0), (-PAGE_SIZE, PAGE_SIZE)],
    ids=["unaligned", "negative-length", "empty", "negative-address"],
)
def test_bad_ranges(args):
    with pytest.raises(InvalidArgument):
        WriteTracker(*args)
    with pytest.raises(InvalidArgument):
        register_write_tracking(*args)


def test_unmapped_range_cannot_be_registered():
    with pytest.raises(InvalidArgument, match="cannot register"):
        register_write_tracking(PAGE_SIZE, PAGE_SIZE)


def test_nonexistent_pid():
    with Child(pages=1) as c:
        pid = c.pid
    with pytest.raises(NoSuchProcess) as e:
        WriteTracker(0x10000, PAGE_SIZE, pid=pid)
    assert e.value.pid == pid


def test_child_exiting_under_the_tracker_is_no_such_process():
    c = Child(pages=16)
    c.register_write_tracking()
    tracker = WriteTracker(c.addr, c.length, pid=c.pid)
    try:
        c.close()
        with pytest.raises(NoSuchProcess):
            tracker.written()
    finally:
        tracker.close()


def test_a_forked_child_starts_without_registrations():
    m = mmap.mmap(-1, 8 * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(buf)
    register_write_tracking(addr, len(m))
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: the inherited registration is gone, a tracker registers anew
            ok = writetrack._uffd is None and writetrack._registered == []
            with WriteTracker(addr, len(m)) as t:
                m[2 * PAGE_SIZE] = 1
                ok = ok and pages(t.written()) == [2]
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"1"
        os.waitpid(pid, 0)
        os.close(r)
    finally:
        unregister_write_tracking(addr, len(m))
        del buf
        m.close()


def test_a_range_mapped_again_at_the_same_address_is_tracked():
    # Layouts free and recreate arenas; mmap often hands back the same address.
    m = mmap.mmap(-1, 8 * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(buf)
    register_write_tracking(addr, len(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    MAP_FIXED = 0x10
    try:
        # Replace the mapping in place: the new VMA is not registered with the uffd.
        assert libc.mmap(addr, len(m), mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED, -1, 0) == addr
        with WriteTracker(addr, len(m)) as t:
            m[5 * PAGE_SIZE] = 1
            assert pages(t.written()) == [5]
    finally:
        unregister_write_tracking(addr, len(m))
        del buf
        m.close()


def test_missing_kernel_features_are_unsupported_with_the_reason(monkeypatch):
    import errno

    from locality.errors import Unsupported

    def no_syscall(name, *args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(writetrack, "syscall", no_syscall)
    with pytest.raises(Unsupported, match="CONFIG_USERFAULTFD") as e:
        writetrack._open_uffd()
    assert e.value.feature == "userfaultfd"

    def old_api(fd, request, arg):  # a kernel < 6.7 rejects the WP_ASYNC feature bits
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.undo()
    monkeypatch.setattr(writetrack, "_ioctl", old_api)
    with pytest.raises(Unsupported, match="asynchronous write-protect"):
        writetrack._open_uffd()


def test_missing_pagemap_scan_is_unsupported(child, monkeypatch):
    import errno

    from locality.errors import Unsupported

    child.register_write_tracking()
    with WriteTracker(child.addr, child.length, pid=child.pid) as tracker:
        import importlib

        pagemap_module = importlib.import_module("locality.kernel.pagemap")

        def no_scan(fd, arg):
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

        monkeypatch.setattr(pagemap_module, "pm_scan_ioctl", no_scan)
        with pytest.raises(Unsupported, match="older than 6.7"):
            tracker.written()


@pytest.mark.skipif(os.geteuid() != 0, reason="pagemap shows swap types (marker vs swap) to root only")
def test_uffd_markers_of_never_populated_pages_are_not_swapped(child):
    from locality.kernel.pagemap import residency

    touched = subset(30, k=100)
    child.touch(touched)
    child.register_write_tracking()
    with WriteTracker(child.addr, child.length, pid=child.pid) as tracker:
        tracker.reset()  # WP_UNPOPULATED: every never-touched page now holds a marker
        pm = pagemap(child.pid, child.addr, child.addr + child.length)
        assert pages(pm.uffd_marker) == sorted(set(range(N_PAGES)) - set(touched))
        assert not pm.swapped.any()
        assert pages(pm.present) == touched
        r = residency(child.pid, child.addr, child.addr + child.length)
        assert not r.swapped.any()
        assert pages(r.present) == touched
