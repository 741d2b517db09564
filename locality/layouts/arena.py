"""Arenas: the mmap regions that hold worker state (anonymous or file-backed).

Split out of base.py (one concept per module); ``locality.layouts.base``
re-exports these names.
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np

from locality import tempfiles
from locality.errors import InvalidArgument, LocalityError
from locality.kernel import PAGE_SIZE
from locality.kernel.procfs import smaps


def round_up(x: int, to: int = PAGE_SIZE) -> int:
    return -(-x // to) * to


ARENA_KINDS = ("anon", "file")


class ArenaError(LocalityError):
    """An arena could not be created (size, directory, kind)."""


class Arena:
    """One mmap region holding worker state.

    ``kind="anon"``: private anonymous memory (reclaimable only with swap on).
    ``kind="file"``: a shared mapping of a file created in ``directory`` (or the
    temp dir): clean pages can be paged out without swap (msync first).
    Transparent huge pages are refused (MADV_NOHUGEPAGE) unless
    ``hugepages=True``, the explicit experiment axis: with THP on, reclaim and
    write tracking work per 2 MiB and page-level results mean nothing.
    """

    def __init__(
        self,
        name: str,
        length: int,
        *,
        kind: str = "anon",
        directory: str | os.PathLike | None = None,
        hugepages: bool = False,
    ) -> None:
        if kind not in ARENA_KINDS:
            raise InvalidArgument(f"unknown arena kind {kind!r}", "use one of: anon, file")
        if length <= 0:
            raise InvalidArgument(f"arena {name!r}: length must be > 0, got {length}")
        self.name = name
        self.kind = kind
        self.hugepages = bool(hugepages)
        self.length = round_up(int(length), 2 * 1024 * 1024 if hugepages else PAGE_SIZE)
        self.path: str | None = None
        self._fd: int | None = None
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        if kind == "anon":
            self._mm = mmap.mmap(-1, self.length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=prot)
        else:
            if directory is not None and not os.path.isdir(directory):
                raise ArenaError(f"arena directory {os.fspath(directory)!r} does not exist", "create it or pass another --arena-dir")
            try:
                fd, self.path = tempfile.mkstemp(prefix=tempfiles.prefix(name), suffix=".arena", dir=directory)
            except OSError as e:
                raise ArenaError(f"cannot create an arena file in {directory or tempfile.gettempdir()!r}: {e.strerror}",
                                 "pass a writable directory") from None
            self._fd = fd
            try:
                os.ftruncate(fd, self.length)
                self._mm = mmap.mmap(fd, self.length, flags=mmap.MAP_SHARED, prot=prot)
            except OSError as e:
                os.close(fd)
                os.unlink(self.path)
                raise ArenaError(f"cannot map a {self.length}-byte arena file: {e.strerror}", "free disk space") from None
        self._mm.madvise(mmap.MADV_HUGEPAGE if hugepages else mmap.MADV_NOHUGEPAGE)
        self.bytes = np.frombuffer(self._mm, dtype=np.uint8)
        self.address = int(self.bytes.ctypes.data)
        self.u32 = np.frombuffer(self._mm, dtype=np.uint32)
        self._views: list = [self.bytes, self.u32]

    # -- views ------------------------------------------------------------
    def words(self, fmt: str = "I") -> memoryview:
        """A memoryview of the whole arena as 4-byte items ("I" u32, "f" f32, "i" i32).

        Item assignment on these is the cheapest way to write a field from
        Python (no object created per call), which is what ``update`` uses.
        """
        mv = memoryview(self._mm).cast(fmt)
        self._views.append(mv)
        return mv

    def view(self, dtype: np.dtype | str, offset: int = 0, count: int = -1) -> np.ndarray:
        arr = np.frombuffer(self._mm, dtype=dtype, count=count, offset=offset)
        self._views.append(arr)
        return arr

    @property
    def n_pages(self) -> int:
        return self.length // PAGE_SIZE

    @property
    def end(self) -> int:
        return self.address + self.length

    def page_sizes(self) -> dict[str, int]:
        """Page sizes seen in this arena's VMA(s), from /proc/self/smaps.

        Returns {"kernel_page_size": bytes, "anon_huge_bytes": bytes backed by
        THP, "file_pmd_mapped_bytes": ...}.  The arena's VMA has its own THP flag
        (NOHUGEPAGE or HUGEPAGE), so the kernel does not merge it with the rest
        of the heap and these numbers are the arena's own.
        """
        return _smaps_page_sizes(self.address, self.end)

    def sync(self) -> None:
        """Write dirty pages of a file arena back (msync), so they can be paged out."""
        self._mm.flush()

    def close(self) -> None:
        if self._mm is None:
            return
        for v in self._views:
            if isinstance(v, memoryview):
                try:
                    v.release()
                except BufferError:
                    pass
        self._views.clear()
        self.bytes = self.u32 = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            # someone still holds a numpy view: the mapping goes when it does
            pass
        self._mm = None  # type: ignore[assignment]
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        return f"Arena({self.name!r}, {self.kind}, {self.length} B at {self.address:#x})"


def _smaps_page_sizes(start: int, end: int) -> dict[str, int]:
    vmas = [v for v in smaps(os.getpid()) if v.start < end and v.end > start]
    if not vmas:
        raise LocalityError(f"no VMA found for arena at {start:#x}", "the arena was closed")
    return {
        "kernel_page_size": max(v.kernel_page_size for v in vmas),
        "anon_huge_bytes": sum(v.anon_huge for v in vmas),
        "file_pmd_mapped_bytes": sum(v.file_pmd_mapped for v in vmas),
    }
