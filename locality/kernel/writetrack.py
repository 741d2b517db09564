"""Exact set of pages written since a reset: userfaultfd WP_ASYNC + PAGEMAP_SCAN.

A process registers its ranges with a userfaultfd in asynchronous
write-protect mode (``register_write_tracking``); the kernel then resolves
write faults on protected pages itself, only clearing the page's uffd-wp bit,
so tracked code runs at full speed after its first write to each page. The
PAGEMAP_SCAN ioctl on ``/proc/PID/pagemap`` reports the pages whose bit is
clear (PAGE_IS_WRITTEN) and re-protects them, in one call. The ioctl works
on another process's pagemap, so a sampler can watch a child that only
registered its ranges and keeps its userfaultfd open (Linux >= 6.7).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import threading

import numpy as np

from locality import ranges
from locality.errors import InvalidArgument, LocalityError, NoSuchProcess, Unsupported
from locality.kernel._platform import (
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    PAGE_IS_WPALLOWED,
    PAGE_IS_WRITTEN,
    PAGE_SHIFT,
    PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
    UFFD_API,
    UFFD_FEATURE_WP_ASYNC,
    UFFD_FEATURE_WP_UNPOPULATED,
    UFFD_USER_MODE_ONLY,
    UFFDIO_API,
    UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_WP,
    UFFDIO_UNREGISTER,
    check_pid,
    check_range,
    libc,
    open_proc,
    syscall,
)
from locality.kernel.pagemap import DEFAULT_MAX_REGIONS, PAGE_REGION, PmScanArg, mark_regions, scan_error, scan_regions

_u64 = ctypes.c_uint64


class _UffdioApi(ctypes.Structure):
    _fields_ = [("api", _u64), ("features", _u64), ("ioctls", _u64)]


class _UffdioRegister(ctypes.Structure):
    _fields_ = [("start", _u64), ("len", _u64), ("mode", _u64), ("ioctls", _u64)]


class _UffdioRange(ctypes.Structure):
    _fields_ = [("start", _u64), ("len", _u64)]


# A written page that is neither present nor in swap was dropped after its last
# write-protect: the kernel reads an empty PTE in a tracked VMA as written.
_HOLDS_PAGE = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
_HINT_KERNEL = "needs Linux >= 6.7 with CONFIG_USERFAULTFD (see `locality doctor`)"

# --- this process's registrations --------------------------------------------

_lock = threading.Lock()
_uffd: int | None = None  # one userfaultfd per process, kept open while anything is registered
_registered: list[tuple[int, int]] = []  # [start, end) ranges registered through this module


def _forget_after_fork() -> None:
    # A forked child inherits the fd but not the registrations (no UFFD_FEATURE_EVENT_FORK):
    # start from nothing, so it registers its own ranges again.
    global _uffd
    if _uffd is not None:
        os.close(_uffd)
    _uffd = None
    _registered.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _ioctl(fd: int, request: int, arg: ctypes.Structure) -> int:
    rv = libc.ioctl(fd, request, ctypes.addressof(arg))
    if rv < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rv


def _open_uffd() -> int:
    try:
        fd = syscall("userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            raise Unsupported("userfaultfd", "the kernel was built without CONFIG_USERFAULTFD", _HINT_KERNEL) from None
        if e.errno == errno.EPERM:
            raise Unsupported(
                "userfaultfd", "not permitted for this user", "set sysctl vm.unprivileged_userfaultfd=1 or run as root"
            ) from None
        raise
    api = _UffdioApi(api=UFFD_API, features=UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
    try:
        _ioctl(fd, UFFDIO_API, api)
    except OSError as e:
        os.close(fd)
        raise Unsupported(
            "userfaultfd WP_ASYNC", f"UFFDIO_API refused asynchronous write-protect ({os.strerror(e.errno)})", _HINT_KERNEL
        ) from None
    return fd


def _covered(start: int, end: int) -> bool:
    return any(s <= start and end <= e for s, e in _registered)


def register_write_tracking(addr: int, length: int) -> None:
    """Register ``[addr, addr + length)`` of this process for write tracking.

    Keeps one process-wide userfaultfd open (it must stay open for a sampler in
    another process to use PAGEMAP_SCAN on these pages). May be called again
    for more ranges, e.g. for VMAs that appear later. The range must be mapped.
    """
    global _uffd
    length = check_range(addr, length)
    with _lock:
        if _uffd is None:
            _uffd = _open_uffd()
        reg = _UffdioRegister(start=addr, len=length, mode=UFFDIO_REGISTER_MODE_WP)
        try:
            _ioctl(_uffd, UFFDIO_REGISTER, reg)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOMEM):
                raise InvalidArgument(
                    f"cannot register {addr:#x}-{addr + length:#x} for write tracking: "
                    f"not entirely mapped, or a mapping type userfaultfd refuses ({os.strerror(e.errno)})"
                ) from None
            if e.errno == errno.EBUSY:
                raise LocalityError(
                    f"{addr:#x}-{addr + length:#x} is already registered with another userfaultfd",
                    "unregister it there first",
                ) from None
            raise
        if not _covered(addr, addr + length):
            _registered.append((addr, addr + length))


def unregister_write_tracking(addr: int, length: int) -> None:
    """Stop tracking ``[addr, addr + length)``; clears its write-protection bits.

    The userfaultfd is closed when nothing registered through this module remains.
    """
    global _uffd
    length = check_range(addr, length)
    with _lock:
        if _uffd is None:
            return
        try:
            _ioctl(_uffd, UFFDIO_UNREGISTER, _UffdioRange(start=addr, len=length))
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOMEM):  # already unmapped: nothing to undo
                raise
        _registered[:] = ranges.subtract(_registered, [(addr, length)])
        if not _registered:
            os.close(_uffd)
            _uffd = None


# --- the tracker ---------------------------------------------------------------


class WriteTracker:
    """Exact set of pages of ``[addr, addr + length)`` written since ``reset()``.

    ``pid=None``: this process; the tracker registers the range itself (again,
    if it already was: a no-op then) and resets it, so ``written()`` starts
    empty; ``close()`` unregisters it unless it was registered before the
    tracker was made. ``pid=PID``: another process that has called
    ``register_write_tracking`` on the range and keeps its userfaultfd open;
    nothing is reset until you call ``reset()`` (pages never protected read as
    written). Reset and query write to the target's page tables (uffd-wp bits)
    and nothing else.

    ``max_regions`` is the size of the region buffer handed to the kernel; a
    longer answer takes more ioctls, never a wrong one.
    """

    def __init__(self, addr: int, length: int, pid: int | None = None, *, max_regions: int = DEFAULT_MAX_REGIONS):
        self.length = check_range(addr, length, 4)  # written and discarded, with their region marks
        self.start = addr
        self.end = addr + self.length
        self.pid = None if pid is None or pid == os.getpid() else check_pid(pid)
        self.n_pages = self.length >> PAGE_SHIFT
        if max_regions < 1:
            raise InvalidArgument(f"max_regions must be >= 1, got {max_regions}")
        # A page vector of n pages splits into at most ceil(n / 2) regions.
        self._regions = np.zeros(max(1, min(max_regions, (self.n_pages + 1) // 2)), dtype=PAGE_REGION)
        self._arg = PmScanArg(size=ctypes.sizeof(PmScanArg))
        self._registered_here = False
        self._fd: int | None = None
        self._pidfd: int | None = None
        if self.pid is None:
            with _lock:
                already = _covered(self.start, self.end)
            # Register even when already registered: the range may have been unmapped and
            # mapped again since (new VMAs start unregistered); same-uffd re-registration is a no-op.
            register_write_tracking(self.start, self.length)
            self._registered_here = not already
        try:
            self._fd = open_proc(self.pid, "pagemap")
            if self.pid is not None:
                # An exited process's pagemap still answers a scan, with an empty
                # mm: "nothing written". The pidfd tells that apart from a real
                # empty answer, and cannot be fooled by the PID being reused.
                try:
                    self._pidfd = os.pidfd_open(self.pid)
                except ProcessLookupError:
                    raise NoSuchProcess(self.pid) from None
            if self.pid is None:
                self.reset()
        except BaseException:
            self.close()
            raise

    # -- context manager
    def __enter__(self) -> "WriteTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Close the pagemap file; unregister the range if this tracker registered it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._registered_here:
            self._registered_here = False
            unregister_write_tracking(self.start, self.length)

    # -- operations
    def reset(self) -> None:
        """Write-protect every page of the range: the written set becomes empty."""
        self._scan(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WPALLOWED, 0, collect=False)

    def written(self) -> np.ndarray:
        """Pages written since the last reset that hold a page (bool per page); does not reset.

        A page dropped since the reset (MADV_DONTNEED, as allocators do) reads
        as written to the kernel whether or not it was stored to; it holds no
        page, so it is in ``discarded()``, not here.
        """
        return self.scan()[0]

    def discarded(self) -> np.ndarray:
        """Pages the kernel reads as written but that hold no page: dropped since the last reset."""
        return self.scan()[1]

    def written_and_reset(self) -> np.ndarray:
        """``written()`` and ``reset()`` atomically per page, in one ioctl walk."""
        return self.scan(reset=True)[0]

    def scan(self, *, reset: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(written, discarded) in one ioctl walk; with ``reset`` it also re-protects them."""
        flags = PM_SCAN_CHECK_WPASYNC | (PM_SCAN_WP_MATCHING if reset else 0)
        return self._scan(flags, PAGE_IS_WRITTEN, PAGE_IS_WRITTEN | _HOLDS_PAGE, collect=True)

    def _scan(self, flags: int, category_mask: int, return_mask: int, *, collect: bool) -> tuple[np.ndarray, np.ndarray]:
        if self._fd is None:
            raise InvalidArgument("this WriteTracker is closed")
        held = np.zeros(self.n_pages, dtype=np.bool_)
        dropped = np.zeros(self.n_pages, dtype=np.bool_)
        arg = self._arg
        arg.flags = flags
        arg.category_mask = category_mask
        arg.return_mask = return_mask
        # Without an output buffer the kernel walks the whole range in one call.
        regions = self._regions if collect else None
        try:
            for batch in scan_regions(self._fd, arg, self.start, self.end, regions):
                holds = (batch["categories"] & _HOLDS_PAGE) != 0
                mark_regions(held, batch[holds], self.start)
                mark_regions(dropped, batch[~holds], self.start)
        except OSError as e:
            raise self._error(e.errno) from None
        if self._pidfd is not None and select.select([self._pidfd], [], [], 0)[0]:
            raise NoSuchProcess(self.pid)  # it exited before or during the walk
        return held, dropped

    def _error(self, err: int) -> Exception:
        who = os.getpid() if self.pid is None else self.pid
        if err == errno.EPERM:
            # PM_SCAN_CHECK_WPASYNC: a page in the range is not registered for async write-protect.
            return InvalidArgument(
                f"{self.start:#x}-{self.end:#x} of PID {who} is not (entirely) registered for write tracking",
                "call register_write_tracking(addr, length) in that process first and keep it running",
            )
        return scan_error(err, who)
