"""Residency of this process's pages: mincore(2)."""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np

from locality.errors import InvalidArgument, Unsupported
from locality.kernel._platform import PAGE_SIZE, check_range, libc


def mincore(addr: int, length: int) -> np.ndarray:
    """Which pages of ``[addr, addr + length)`` in this process are resident.

    ``addr`` must be page-aligned; ``length`` is rounded up to whole pages, as
    the kernel does. Returns one bool per page. For file-backed mappings this
    is page-cache residency; swapped-out anonymous pages are not resident.
    """
    length = check_range(addr, length, 2)  # the kernel's byte vector and the bool result
    vec = np.empty(length // PAGE_SIZE, dtype=np.uint8)
    if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec.ctypes.data_as(ctypes.c_void_p)) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOMEM:
            raise InvalidArgument(f"range {addr:#x}-{addr + length:#x} is not (entirely) mapped in this process")
        if err == errno.ENOSYS:
            raise Unsupported("mincore", "the kernel does not implement mincore(2)")
        raise OSError(err, f"mincore({addr:#x}, {length}): {os.strerror(err)}")
    # Only bit 0 is defined; the others are reserved.
    return (vec & 1).view(np.bool_)


