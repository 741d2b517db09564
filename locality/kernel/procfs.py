"""/proc/PID files: VMAs, smaps, smaps_rollup, clear_refs, fault counters.

One small function per kernel file, psutil-style: each reads its file in one
go and maps errno to a precise exception carrying the PID (ENOENT/ESRCH ->
NoSuchProcess, EACCES/EPERM -> AccessDenied). All sizes are bytes.

smaps of a large process (a BEAM VM, a Python heap with many arenas) can
have 10k+ VMAs and ~25 lines each, so it is read in one go and parsed by
slicing: the kernel prints every VMA record whole with the same fields in
the same order, so field j of every record sits at lines[j::stride]. If a
kernel ever prints a field conditionally (records of different lengths), a
line-by-line parser takes over.
"""

from __future__ import annotations

import functools
import mmap
import os
import re
from dataclasses import dataclass

import numpy as np

from locality.errors import InvalidArgument
from locality.kernel._platform import check_pid, process_error

__all__ = ["Vma", "SmapsEntry", "vmas", "smaps", "rollup", "clear_refs", "faults", "thread_stack_pointers"]


@dataclass(slots=True)
class Vma:
    """One line of /proc/PID/maps: a virtual memory area [start, end)."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str  # "" for anonymous, "[heap]", "[stack]", a file path (" (deleted)" kept)

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def is_anonymous(self) -> bool:
        return self.inode == 0 and not self.path.startswith("/")


@dataclass(slots=True)
class SmapsEntry(Vma):
    """A VMA with its /proc/PID/smaps counters (bytes)."""

    size: int = 0
    rss: int = 0
    pss: int = 0
    referenced: int = 0
    anonymous: int = 0
    swap: int = 0
    anon_huge: int = 0  # AnonHugePages
    kernel_page_size: int = 0
    file_pmd_mapped: int = 0  # FilePmdMapped: file pages mapped as 2 MiB


_HEADER = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) ?[ \t]*([^\n]*)$",
    re.M,
)
# SmapsEntry field -> smaps key
_SMAPS_FIELDS = {
    "size": b"Size",
    "kernel_page_size": b"KernelPageSize",
    "rss": b"Rss",
    "pss": b"Pss",
    "referenced": b"Referenced",
    "anonymous": b"Anonymous",
    "anon_huge": b"AnonHugePages",
    "swap": b"Swap",
    "file_pmd_mapped": b"FilePmdMapped",
}
_KEY_TO_FIELD = {key: name for name, key in _SMAPS_FIELDS.items()}
_KV = re.compile(rb"^(\w+):\s+(\d+) kB$", re.M)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _read(pid: int, name: str) -> bytes:
    """The whole of /proc/PID/<name>, read in one go."""
    check_pid(pid)
    path = f"/proc/{pid}/{name}"
    try:
        with open(path, "rb", buffering=0) as f:
            chunks = []
            # seq_file hands out at most a few pages per read(); large reads
            # keep the syscall count low for a 10k-VMA smaps.
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise process_error(e.errno, pid, name) from None


def _vma(m: re.Match, names: dict[bytes, str] | None = None) -> tuple:
    """A header match -> Vma fields. ``names`` caches the few distinct
    perms/dev/path strings of one file (decoding dominates otherwise)."""
    start, end, perms, offset, dev, inode, path = m.groups()
    if names is None:
        names = {}
    try:
        p = names[perms]
    except KeyError:
        p = names[perms] = perms.decode()
    try:
        d = names[dev]
    except KeyError:
        d = names[dev] = dev.decode()
    try:
        name = names[path]
    except KeyError:
        name = names[path] = path.decode("utf-8", "surrogateescape")  # os.fsdecode, faster
    return (int(start, 16), int(end, 16), p, int(offset, 16), d, int(inode), name)


def vmas(pid: int) -> list[Vma]:
    """The VMAs of ``pid`` from /proc/PID/maps, in address order."""
    names: dict[bytes, str] = {}
    return [Vma(*_vma(_HEADER.match(line), names)) for line in _read(pid, "maps").splitlines()]


def smaps(pid: int) -> list[SmapsEntry]:
    """Every VMA of ``pid`` with Size, Rss, Pss, Referenced, Anonymous, Swap,
    AnonHugePages and KernelPageSize (bytes), from /proc/PID/smaps."""
    return _parse_smaps(_read(pid, "smaps"))


def _parse_smaps(text: bytes) -> list[SmapsEntry]:
    if not text:
        return []
    buf = np.frombuffer(text, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)  # each line [starts[i], ends[i])
    if len(ends) == 0 or ends[-1] != len(buf) - 1:
        return _smaps_by_lines(text)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1

    def line(i: int) -> bytes:
        return text[starts[i] : ends[i]]

    # Every record has the same fields in the same order, so field j of
    # every VMA is line j of each stride-long record: parse columns at once.
    if _HEADER.match(line(0)) is None:
        return _smaps_by_lines(text)
    stride = next((i for i in range(1, len(ends)) if _HEADER.match(line(i))), len(ends))
    if len(ends) % stride:
        return _smaps_by_lines(text)
    columns: dict[str, np.ndarray] = {}
    for j in range(1, stride):
        key = line(j).partition(b":")[0]
        name = _KEY_TO_FIELD.get(key)
        if name is None:
            continue
        values = _kb_column(buf, starts[j::stride], ends[j::stride], key + b":")
        if values is None:
            return _smaps_by_lines(text)
        columns[name] = values
    headers = []
    names: dict[bytes, str] = {}
    match = _HEADER.match
    for s, e in zip(starts[0::stride].tolist(), ends[0::stride].tolist()):
        m = match(text, s, e)
        if m is None:
            return _smaps_by_lines(text)
        headers.append(_vma(m, names))
    names = [n for n in SmapsEntry.__dataclass_fields__ if n in columns]
    if len(names) != len(_SMAPS_FIELDS):
        return _smaps_by_lines(text)
    values = zip(*(columns[n].tolist() for n in names))
    return [SmapsEntry(*h, *v) for h, v in zip(headers, values)]


_DIGITS = 16  # kB values below 10**16: far beyond any machine


def _kb_column(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, prefix: bytes) -> np.ndarray | None:
    """Values in bytes of lines ``<prefix>   <digits> kB``, or None if a line
    does not have that shape (then the caller falls back to line parsing)."""
    p = np.frombuffer(prefix, dtype=np.uint8)
    if np.any(ends - starts < len(prefix) + 4):
        return None
    if not np.array_equal(buf[starts[:, None] + np.arange(len(p))], np.broadcast_to(p, (len(starts), len(p)))):
        return None
    if not (np.all(buf[ends - 3] == 32) and np.all(buf[ends - 2] == 107) and np.all(buf[ends - 1] == 66)):
        return None  # " kB"
    idx = np.maximum((ends - 4)[:, None] - np.arange(_DIGITS), starts[:, None])
    chars = buf[idx].astype(np.int64) - 48
    is_digit = (chars >= 0) & (chars <= 9)
    in_number = np.cumprod(is_digit, axis=1).astype(bool)  # digits back to the first non-digit
    if not np.all(in_number[:, 0]):
        return None
    return (np.where(in_number, chars, 0) @ (10 ** np.arange(_DIGITS, dtype=np.int64))) << 10


def _smaps_by_lines(text: bytes) -> list[SmapsEntry]:
    """Slow but order-independent parser: the fallback of smaps()."""
    out: list[SmapsEntry] = []
    header: tuple | None = None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            if header is not None:
                out.append(SmapsEntry(*header, **fields))
            header, fields = _vma(m), {}
            continue
        key, _, rest = line.partition(b":")
        name = _KEY_TO_FIELD.get(key)
        if name is not None:
            fields[name] = int(rest.split()[0]) << 10
    if header is not None:
        out.append(SmapsEntry(*header, **fields))
    return out


def _snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower().replace("__", "_")


def rollup(pid: int) -> dict[str, int]:
    """Totals over all VMAs from /proc/PID/smaps_rollup, lower_snake keys in bytes
    (rss, pss, pss_dirty, pss_anon, referenced, anonymous, anon_huge_pages, swap, ...)."""
    text = _read(pid, "smaps_rollup")
    return {_snake(k.decode()): int(v) << 10 for k, v in _KV.findall(text)}


_CLEAR_REFS_MODES = {1: "all", 2: "anonymous", 3: "file-mapped", 4: "soft-dirty", 5: "peak RSS"}


def clear_refs(pid: int, mode: int = 1, *, flush_tlb: bool = True) -> None:
    """Reset the referenced (accessed) bits of ``pid``'s pages, so smaps
    Referenced afterwards counts only pages touched since.

    mode: 1 all pages, 2 anonymous, 3 file-mapped, 4 soft-dirty, 5 peak RSS.
    This writes to the target process's page tables: only on explicit request.

    Modes 1-3 clear the accessed bits without flushing the TLB (only mode 4
    flushes), so a page whose translation a CPU still caches is not marked
    again when touched and Referenced undercounts: measured here, pages read
    right after the clear were missed in 2% to 50% of trials. On a kernel
    without CONFIG_MEM_SOFT_DIRTY, mode 4 does nothing but that flush, so with
    ``flush_tlb`` (default) modes 1-3 are followed by a mode 4 write. With
    soft-dirty built in, mode 4 would also write-protect every page, so it is
    not used and a just-touched page may go uncounted.
    """
    check_pid(pid)
    if mode not in _CLEAR_REFS_MODES:
        raise InvalidArgument(f"clear_refs mode must be one of {sorted(_CLEAR_REFS_MODES)}, not {mode!r}")
    modes = [mode]
    if flush_tlb and mode in (1, 2, 3) and not _soft_dirty_built_in():
        modes.append(4)
    try:
        fd = os.open(f"/proc/{pid}/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            for m in modes:
                os.write(fd, b"%d" % m)
        finally:
            os.close(fd)
    except OSError as e:
        raise process_error(e.errno, pid, "clear_refs") from None


@functools.cache
def _soft_dirty_built_in() -> bool:
    """True if the kernel tracks soft-dirty pages: then it marks every new VMA
    "sd" (this process never clears soft-dirty bits, so its fresh map shows)."""
    with mmap.mmap(-1, mmap.PAGESIZE):
        text = _read(os.getpid(), "smaps")
    return re.search(rb"^VmFlags:(?: \w\w)* sd", text, re.M) is not None


def faults(pid: int) -> tuple[int, int]:
    """(minor, major) page faults of ``pid`` so far, from /proc/PID/stat."""
    text = _read(pid, "stat")
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state); minflt is field 10, majflt field 12.
    return int(rest[7]), int(rest[9])


def thread_stack_pointers(pid: int) -> list[int]:
    """Stack pointer of each thread of ``pid`` blocked in a system call, from
    /proc/PID/task/TID/syscall (the VMA holding it is that thread's stack).

    A running thread shows no registers, and reading another process's
    registers needs ptrace rights over it (a parent has them over its child):
    threads not readable are left out.
    """
    check_pid(pid)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError as e:
        raise process_error(e.errno, pid, "task") from None
    out = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as f:
                fields = f.read().split()
        except OSError:
            continue  # the thread exited, or no ptrace rights over it
        if len(fields) == 9:  # number, 6 arguments, sp, pc
            out.append(int(fields[7], 16))
    return out
