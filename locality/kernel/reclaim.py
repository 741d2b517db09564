"""Ask the kernel to reclaim pages now: madvise / process_madvise.

MADV_PAGEOUT reclaims the range immediately (anonymous pages need swap;
clean file pages are dropped, dirty ones must be written back first, e.g.
with msync); MADV_COLD only moves the pages to the inactive list. The
``process_*`` variants act on another process through a pidfd and change its
memory: call them only when the user asked for it explicitly.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Iterable, Sequence

from locality.errors import InvalidArgument, Unsupported
from locality.kernel._platform import (
    IOV_MAX,
    MADV_COLD,
    MADV_PAGEOUT,
    PAGE_SIZE,
    check_pid,
    check_range,
    libc,
    process_error,
    syscall,
)

_ADVICE_NAMES = {MADV_PAGEOUT: "MADV_PAGEOUT", MADV_COLD: "MADV_COLD"}


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _madvise(addr: int, length: int, advice: int) -> int:
    length = check_range(addr, length)
    if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), advice) != 0:
        err = ctypes.get_errno()
        name = _ADVICE_NAMES[advice]
        if err == errno.ENOMEM:
            raise InvalidArgument(f"range {addr:#x}-{addr + length:#x} is not (entirely) mapped in this process")
        if err == errno.EINVAL:
            raise Unsupported(name, f"madvise refused it for {addr:#x}-{addr + length:#x} (kernel < 5.4, or locked/special pages)")
        raise OSError(err, f"madvise({addr:#x}, {length}, {name}): {os.strerror(err)}")
    return length


_scratch: mmap.mmap | None = None


def drain_lru_batches() -> None:
    """Flush every CPU's LRU-add batch, so recently touched pages can be reclaimed.

    A page faulted in first waits in its CPU's small per-CPU batch before it
    reaches an LRU list, and reclaim cannot isolate it there: MADV_PAGEOUT
    then skips it silently. madvise drains only the calling CPU's batch, so
    we madvise a scratch page of our own once from each CPU we may run on.
    """
    global _scratch
    if _scratch is None:
        _scratch = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        _scratch[0] = 1
    addr = ctypes.addressof(ctypes.c_char.from_buffer(_scratch))
    mine = os.sched_getaffinity(0)
    try:
        # Every CPU the target may have run on, not only those we may run on now.
        for cpu in range(os.cpu_count() or 1):
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:  # offline, or outside our cpuset: nothing of ours there
                continue
            _madvise(addr, PAGE_SIZE, MADV_COLD)
    finally:
        os.sched_setaffinity(0, mine)


def pageout(addr: int, length: int) -> int:
    """Reclaim ``[addr, addr + length)`` of this process now (MADV_PAGEOUT); returns bytes advised."""
    drain_lru_batches()
    return _madvise(addr, length, MADV_PAGEOUT)


def cold(addr: int, length: int) -> int:
    """Deactivate ``[addr, addr + length)`` of this process (MADV_COLD); returns bytes advised."""
    return _madvise(addr, length, MADV_COLD)


def _pidfd_open(pid: int) -> int:
    try:
        return syscall("pidfd_open", pid, 0)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            raise Unsupported("pidfd_open", "the kernel is older than 5.3") from None
        raise process_error(e.errno, pid, "pidfd_open") from None


def _process_madvise(pid: int, ranges: Iterable[Sequence[int]], advice: int) -> int:
    check_pid(pid)
    checked = [(addr, check_range(addr, length)) for addr, length in ranges]
    if not checked:
        raise InvalidArgument("no ranges given", "pass a list of (address, length) pairs")
    name = _ADVICE_NAMES[advice]
    pidfd = _pidfd_open(pid)
    advised = 0
    try:
        for i in range(0, len(checked), IOV_MAX):  # the kernel takes at most IOV_MAX ranges per call
            batch = checked[i : i + IOV_MAX]
            iov = (_Iovec * len(batch))(*[_Iovec(addr, length) for addr, length in batch])
            try:
                advised += syscall("process_madvise", pidfd, ctypes.addressof(iov), len(batch), advice, 0)
            except OSError as e:
                if e.errno == errno.ENOSYS:
                    raise Unsupported("process_madvise", "the kernel is older than 5.10") from None
                if e.errno == errno.ENOMEM:
                    raise InvalidArgument(f"a range is not (entirely) mapped in PID {pid}") from None
                if e.errno == errno.EINVAL:
                    raise Unsupported(name, f"process_madvise refused it for PID {pid}") from None
                raise process_error(e.errno, pid, f"process_madvise({name})") from None
    finally:
        os.close(pidfd)
    return advised


def process_pageout(pid: int, ranges: Iterable[Sequence[int]]) -> int:
    """Reclaim ``ranges`` [(addr, length), ...] of process ``pid`` now; returns bytes advised.

    The kernel may advise fewer bytes than asked when a range disappears meanwhile.
    """
    drain_lru_batches()
    return _process_madvise(pid, ranges, MADV_PAGEOUT)


def process_cold(pid: int, ranges: Iterable[Sequence[int]]) -> int:
    """Deactivate ``ranges`` of process ``pid`` (MADV_COLD); returns bytes advised."""
    return _process_madvise(pid, ranges, MADV_COLD)
