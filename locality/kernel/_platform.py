"""Platform facts: page size, libc, syscall and ioctl numbers, kernel constants.

The only module in locality that holds such numbers. Values are copied from
the kernel's uapi headers (include/uapi/linux/fs.h, userfaultfd.h,
mman-common.h, asm-generic/ioctl.h) of Linux 6.18; the layouts of the
structs passed to ioctls live next to the code that uses them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys

import psutil

from locality.errors import AccessDenied, InvalidArgument, NoSuchProcess, Unsupported

PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")
PAGE_SHIFT: int = PAGE_SIZE.bit_length() - 1

if sys.byteorder != "little":  # pagemap decoding reads the top byte of each little-endian u64
    raise ImportError("locality.kernel supports little-endian machines only (x86_64, aarch64)")

MACHINE = platform.machine()

# --- libc -------------------------------------------------------------------

libc = ctypes.CDLL("libc.so.6", use_errno=True)

libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
libc.mincore.restype = ctypes.c_int
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.restype = ctypes.c_int
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int
libc.syscall.restype = ctypes.c_long
libc.swapon.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.swapon.restype = ctypes.c_int
libc.swapoff.argtypes = [ctypes.c_char_p]
libc.swapoff.restype = ctypes.c_int

# --- syscall numbers (not all are wrapped by glibc 2.36) ---------------------

_SYSCALLS = {
    "x86_64": {"userfaultfd": 323, "pidfd_open": 434, "process_madvise": 440, "perf_event_open": 298},
    "aarch64": {"userfaultfd": 282, "pidfd_open": 434, "process_madvise": 440, "perf_event_open": 241},
}


def syscall_number(name: str) -> int:
    try:
        return _SYSCALLS[MACHINE][name]
    except KeyError:
        raise Unsupported(name, f"no syscall number known for {MACHINE}", "locality supports x86_64 and aarch64") from None


def syscall(name: str, *args: int) -> int:
    """Call a raw syscall; returns its result, or raises OSError with errno."""
    rv = libc.syscall(ctypes.c_long(syscall_number(name)), *(ctypes.c_long(a) for a in args))
    if rv < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rv


# --- ioctl encoding (asm-generic/ioctl.h, same on x86_64 and aarch64) --------

_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def _IOR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


# userfaultfd (include/uapi/linux/userfaultfd.h)
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_API = _IOWR(0xAA, 0x3F, 24)  # struct uffdio_api {u64 api, features, ioctls}
UFFDIO_REGISTER = _IOWR(0xAA, 0x00, 32)  # struct uffdio_register {u64 start, len, mode, ioctls}
UFFDIO_UNREGISTER = _IOR(0xAA, 0x01, 16)  # struct uffdio_range {u64 start, len}

# PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux >= 6.7)
PAGEMAP_SCAN = _IOWR(ord("f"), 16, 96)  # struct pm_scan_arg: 12 x u64
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7

# /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_BITS = 55  # bits 0-54: PFN if present (0 without CAP_SYS_ADMIN)
PM_SWAP_TYPE_BITS = 5  # if swapped: bits 0-4 swap type, 5-54 swap offset
PM_SOFT_DIRTY_BIT = 55
PM_EXCLUSIVE_BIT = 56
PM_UFFD_WP_BIT = 57
PM_FILE_SHARED_BIT = 61
PM_SWAPPED_BIT = 62
PM_PRESENT_BIT = 63
# A never-populated page write-protected through userfaultfd (WP_UNPOPULATED) holds a
# PTE marker, which pagemap and PAGEMAP_SCAN report as "swapped". Its swap type is
# SWP_PTE_MARKER, the last 5-bit type (include/linux/swap.h); pagemap shows the type
# only to CAP_SYS_ADMIN (with the PFNs).
SWP_PTE_MARKER = 31

# madvise advice (include/uapi/asm-generic/mman-common.h)
MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23

# swapon(2) flags (linux/swap.h)
SWAP_FLAG_PREFER = 0x8000
SWAP_FLAG_PRIO_MASK = 0x7FFF

IOV_MAX = 1024


# --- shared argument checks and errno mapping --------------------------------


def _user_address_limit() -> int:
    """End of the user address space (the kernel's TASK_SIZE_MAX): no range reaches past it."""
    if MACHINE == "x86_64":
        try:
            with open("/proc/cpuinfo", "rb") as f:
                la57 = b" la57" in f.read(1 << 16)
        except OSError:
            la57 = False
        # The top page below the canonical hole is a guard the kernel never maps.
        return (1 << (56 if la57 else 47)) - PAGE_SIZE
    return 1 << 52  # aarch64: 52-bit VAs at most (48 on most kernels)


USER_ADDRESS_LIMIT: int = _user_address_limit()


def check_range(addr: int, length: int, result_bytes_per_page: int = 0) -> int:
    """Validate a user range like the kernel does; returns the length rounded up to pages.

    ``result_bytes_per_page``: what the caller will allocate per page of the
    range; a range whose result cannot fit in available memory is refused
    here, before anything is allocated or the kernel is asked.
    """
    if isinstance(addr, bool) or isinstance(length, bool) or not isinstance(addr, int) or not isinstance(length, int):
        raise InvalidArgument(f"address and length must be integers, got {type(addr).__name__}, {type(length).__name__}")
    if addr < 0 or length < 0:
        raise InvalidArgument(f"negative range: address {addr:#x}, length {length}")
    if length == 0:
        raise InvalidArgument(f"empty range at {addr:#x}", "pass a length of at least one byte")
    if addr % PAGE_SIZE:
        raise InvalidArgument(f"address {addr:#x} is not page-aligned", f"page size is {PAGE_SIZE}")
    length = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if addr + length > USER_ADDRESS_LIMIT:
        raise InvalidArgument(
            f"range {addr:#x}-{addr + length:#x} reaches past the user address space (ends at {USER_ADDRESS_LIMIT:#x})",
            "pass a range of mapped addresses",
        )
    if result_bytes_per_page:
        need = (length // PAGE_SIZE) * result_bytes_per_page
        available = psutil.virtual_memory().available
        if need > available // 2:
            raise InvalidArgument(
                f"range {addr:#x}-{addr + length:#x} has {length // PAGE_SIZE:,} pages; its result needs "
                f"{need / 2**30:,.1f} GiB, more than half of the {available / 2**30:,.1f} GiB available",
                "ask for a smaller range",
            )
    return length


def check_pid(pid: int) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidArgument(f"PID must be a positive integer, got {pid!r}")
    return pid


def process_error(err: int, pid: int, what: str) -> Exception:
    """Map an errno from a /proc or pidfd operation on ``pid`` to a locality error."""
    if err in (errno.ENOENT, errno.ESRCH):
        return NoSuchProcess(pid)
    if err in (errno.EACCES, errno.EPERM):
        return AccessDenied(pid, what)
    return OSError(err, f"{what} of PID {pid}: {os.strerror(err)}")


def open_proc(pid: int | None, name: str, flags: int = os.O_RDONLY) -> int:
    """Open /proc/PID/<name> (``pid=None``: this process) with errors carrying the PID."""
    path = f"/proc/{'self' if pid is None else pid}/{name}"
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise process_error(e.errno, os.getpid() if pid is None else pid, name) from None


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent thread exits."""
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
